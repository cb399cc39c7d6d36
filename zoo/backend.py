"""Backends: how a block runs on this machine (CPU eager, ONNX Runtime, CUDA, TensorRT) and at what precision.

Why a description plus one ``prepare_block`` function: the zoo builds every block on the CPU
in float32 from its safetensors weights, then hands it here to become whatever the chosen
backend runs — the same module moved and cast (CPU eager, CUDA), a captured CUDA graph, a
TensorRT engine, or an ONNX Runtime session (CPU). Everything that needs CUDA, torch-tensorrt or
onnxruntime is guarded: a machine without them still imports this module, lists what it has
and says why the rest is missing, and a request for a missing backend raises
``BackendUnavailableError`` with that reason.

Fixed shapes: CUDA graphs and TensorRT engines are specialised to one input shape (the
``static_batch_size`` of the backend). Any other shape runs the same block eagerly on the same
device and precision, so a node that micro-batches never fails, it only loses the speed-up.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from zoo.accounting import parameter_count
from zoo.cache import cache_dir
from zoo.errors import BackendUnavailableError, ZooError

BACKEND_NAMES = ("cpu-eager", "onnxruntime", "cuda", "tensorrt")
CPU_BACKENDS = ("cpu-eager", "onnxruntime")
PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ENGINE_SUFFIX = ".ep"  # TensorRT engines are saved as torch.export ExportedPrograms (torch_tensorrt.save's default)
ONNX_SUFFIX = ".onnx"  # ONNX Runtime blocks are cached as ONNX protobuf files (no pickle)
ONNX_OPSET = 17

Block = Callable[[torch.Tensor], torch.Tensor]


class EngineBuildError(ZooError, RuntimeError):
    """A backend that is available failed to compile a block (TensorRT build, graph capture)."""


def precision_name(dtype: torch.dtype | str) -> str:
    """``torch.float16`` or ``"float16"`` -> ``"float16"``; anything outside PRECISIONS is refused."""
    name = dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")
    if name not in PRECISIONS:
        raise ValueError(f"unsupported precision {name!r}; use one of {sorted(PRECISIONS)}")
    return name


@dataclass(frozen=True)
class Backend:
    """What runs a block: ``name`` (cpu-eager | onnxruntime | cuda | tensorrt), ``device`` and ``dtype``.

    Options (CUDA only): ``cuda_graphs`` captures each block once for ``static_batch_size``
    and replays it (kernel-launch overhead is most of a small block's time on a GPU);
    ``compile`` uses ``torch.compile(mode="reduce-overhead")`` instead (inductor kernels plus
    its own CUDA graphs). ``dla_core`` (TensorRT only) builds engines for that Jetson DLA
    core, with GPU fallback for layers the DLA cannot run. ``intra_op_threads`` (onnxruntime
    only) is the session's thread count, the unit's threads. A Backend is a pure description:
    constructing one never touches CUDA, so it can be gossiped, logged and used as a key.
    """

    name: str = "cpu-eager"
    device: str = "cpu"
    dtype: str = "float32"
    cuda_graphs: bool = False
    compile: bool = False
    static_batch_size: int = 1
    dla_core: int | None = None
    intra_op_threads: int = 1

    def __post_init__(self) -> None:
        if self.name not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {self.name!r}; use one of {list(BACKEND_NAMES)}")
        object.__setattr__(self, "dtype", precision_name(self.dtype))
        try:
            device_type = torch.device(self.device).type
        except RuntimeError as error:
            raise ValueError(f"bad device {self.device!r}: {error}") from None
        expected = "cpu" if self.name in CPU_BACKENDS else "cuda"
        if device_type != expected:
            raise ValueError(f"backend {self.name!r} runs on {expected} devices, not {self.device!r}")
        if self.device == "cuda":
            object.__setattr__(self, "device", "cuda:0")  # one spelling per device: keys and labels stay stable
        if (self.cuda_graphs or self.compile) and self.name != "cuda":
            raise ValueError("cuda_graphs and compile are options of the cuda backend")
        if self.cuda_graphs and self.compile:
            raise ValueError("choose cuda_graphs or compile (reduce-overhead already captures CUDA graphs)")
        if self.dla_core is not None and (self.name != "tensorrt" or self.dla_core < 0):
            raise ValueError("dla_core is a non-negative core index of the tensorrt backend")
        if self.static_batch_size < 1:
            raise ValueError("static_batch_size must be >= 1")
        if self.intra_op_threads < 1:
            raise ValueError("intra_op_threads must be >= 1")
        if self.name == "onnxruntime" and self.dtype != "float32":
            raise ValueError(f"the onnxruntime backend runs float32 blocks, not {self.dtype}")

    @classmethod
    def cpu(cls, dtype: torch.dtype | str = "float32") -> Backend:
        return cls("cpu-eager", "cpu", precision_name(dtype))

    @classmethod
    def onnxruntime(cls, intra_op_threads: int = 1) -> Backend:
        return cls("onnxruntime", "cpu", "float32", intra_op_threads=intra_op_threads)

    @classmethod
    def cuda(cls, device: str = "cuda:0", dtype: torch.dtype | str = "float32", cuda_graphs: bool = False,
             compile: bool = False, static_batch_size: int = 1) -> Backend:
        return cls("cuda", device, precision_name(dtype), cuda_graphs=cuda_graphs, compile=compile,
                   static_batch_size=static_batch_size)

    @classmethod
    def tensorrt(cls, device: str = "cuda:0", dtype: torch.dtype | str = "float16", static_batch_size: int = 1,
                 dla_core: int | None = None) -> Backend:
        return cls("tensorrt", device, precision_name(dtype), static_batch_size=static_batch_size,
                   dla_core=dla_core)

    @classmethod
    def for_device(cls, device: str | torch.device, dtype: torch.dtype | str = "float32") -> Backend:
        """The plain backend of a device: cpu -> cpu-eager, cuda:N -> cuda (what load_slice did before backends)."""
        torch_device = torch.device(device)
        if torch_device.type == "cpu":
            return cls.cpu(dtype)
        if torch_device.type == "cuda":
            return cls.cuda(f"cuda:{torch_device.index or 0}", dtype)
        raise ValueError(f"no backend runs on device {str(device)!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return PRECISIONS[self.dtype]

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def label(self) -> str:
        """Short and unique, for logs and keys: ``cpu-eager@cpu/float32``, ``cuda@cuda:0/float16+graphs``,
        ``tensorrt@cuda:0/float16+dla0``."""
        options = []
        if self.cuda_graphs:
            options.append("graphs")
        if self.compile:
            options.append("compile")
        if self.dla_core is not None:
            options.append(f"dla{self.dla_core}")
        if (self.cuda_graphs or self.name == "tensorrt") and self.static_batch_size != 1:
            options.append(f"batch{self.static_batch_size}")
        if self.intra_op_threads != 1:
            options.append(f"threads{self.intra_op_threads}")
        return f"{self.name}@{self.device}/{self.dtype}" + "".join(f"+{option}" for option in options)


@dataclass(frozen=True)
class BackendInfo:
    """Whether this machine can run a backend, and if not, why (for the node's startup log)."""

    name: str
    available: bool
    reason: str = ""  # empty when available
    devices: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    detail: str = ""  # e.g. the GPU's name, torch_tensorrt's version

    def describe(self) -> str:
        if not self.available:
            return f"{self.name} unavailable: {self.reason}"
        return self.name + (f" ({self.detail})" if self.detail else "")


# ---- what this machine has -----------------------------------------------------------------


def package_installed(name: str) -> bool:
    """Whether ``name`` can be imported, found without importing it (importing torch_tensorrt costs seconds)."""
    return importlib.util.find_spec(name) is not None


def cuda_unavailable_reason() -> str | None:
    """None when CUDA can run here; otherwise the reason, most fundamental first."""
    if not torch.backends.cuda.is_built():
        return "torch built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device visible (driver missing, or CUDA_VISIBLE_DEVICES hides every GPU)"
    return None


def tensorrt_unavailable_reason() -> str | None:
    """None when torch_tensorrt imports and CUDA runs; the reason otherwise.

    The package is looked up before it is imported (importing it costs seconds and needs CUDA
    libraries), so a machine without it answers at once.
    """
    if not package_installed("torch_tensorrt"):
        return "torch_tensorrt not installed"
    cuda_reason = cuda_unavailable_reason()
    if cuda_reason is not None:
        return f"needs CUDA: {cuda_reason}"
    try:
        importlib.import_module("torch_tensorrt")
    except Exception as error:  # noqa: BLE001 - a broken install is a reason, not a crash
        return f"torch_tensorrt failed to import: {type(error).__name__}: {error}"
    return None


def onnxruntime_unavailable_reason() -> str | None:
    """None when blocks can be exported to ONNX (the ``onnx`` package, which torch's exporter
    needs) and run by ``onnxruntime``; the reason otherwise (both are the ``onnx`` extra)."""
    missing = [name for name in ("onnx", "onnxruntime") if not package_installed(name)]
    if missing:
        return f"{' and '.join(missing)} not installed (pip install 'p2pinfer[onnx]')"
    return None


def cuda_devices() -> tuple[str, ...]:
    if cuda_unavailable_reason() is not None:
        return ()
    return tuple(f"cuda:{index}" for index in range(torch.cuda.device_count()))


def cuda_precisions(device: str = "cuda:0") -> tuple[str, ...]:
    """float32 and float16 everywhere CUDA runs; bfloat16 where the GPU has it (Ampere and later)."""
    precisions = ["float32", "float16"]
    with torch.cuda.device(torch.device(device)):
        if torch.cuda.is_bf16_supported():
            precisions.append("bfloat16")
    return tuple(precisions)


def available_backends() -> list[BackendInfo]:
    """Every backend with whether this machine can run it, and why not (cpu-eager always can)."""
    infos = [BackendInfo("cpu-eager", True, devices=("cpu",), precisions=tuple(PRECISIONS), detail="torch " +
                         torch.__version__)]
    onnx_reason = onnxruntime_unavailable_reason()
    if onnx_reason is None:
        infos.append(BackendInfo("onnxruntime", True, devices=("cpu",), precisions=("float32",),
                                 detail=f"onnxruntime {importlib.metadata.version('onnxruntime')}"))
    else:
        infos.append(BackendInfo("onnxruntime", False, onnx_reason))
    cuda_reason = cuda_unavailable_reason()
    if cuda_reason is None:
        devices = cuda_devices()
        names = ", ".join(f"{device} {torch.cuda.get_device_name(torch.device(device))}" for device in devices)
        infos.append(BackendInfo("cuda", True, devices=devices, precisions=cuda_precisions(devices[0]),
                                 detail=f"CUDA {torch.version.cuda}: {names}"))
    else:
        infos.append(BackendInfo("cuda", False, cuda_reason))
    trt_reason = tensorrt_unavailable_reason()
    if trt_reason is None:
        torch_tensorrt = importlib.import_module("torch_tensorrt")
        infos.append(BackendInfo("tensorrt", True, devices=cuda_devices(), precisions=("float32", "float16"),
                                 detail=f"torch_tensorrt {getattr(torch_tensorrt, '__version__', '?')}"))
    else:
        infos.append(BackendInfo("tensorrt", False, trt_reason))
    return infos


def describe_backends(infos: list[BackendInfo] | None = None) -> str:
    """One line for a startup log: ``backends: cpu-eager; cuda unavailable: torch built without CUDA; ...``."""
    infos = available_backends() if infos is None else infos
    return "backends: " + "; ".join(info.describe() for info in infos)


def require_available(backend: Backend) -> None:
    """Raise ``BackendUnavailableError`` (with the reason) unless this machine can run ``backend``."""
    if backend.name == "cpu-eager":
        return
    if backend.name == "onnxruntime":
        reason = onnxruntime_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"backend {backend.label} is unavailable: {reason}")
        return
    reason = cuda_unavailable_reason() if backend.name == "cuda" else tensorrt_unavailable_reason()
    if reason is None:
        index = backend.torch_device.index or 0
        if index >= torch.cuda.device_count():
            reason = f"{backend.device} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
        elif backend.dtype == "bfloat16" and backend.name == "cuda" and "bfloat16" not in cuda_precisions(
                backend.device):
            reason = f"{torch.cuda.get_device_name(backend.torch_device)} has no bfloat16 support"
    if reason is not None:
        raise BackendUnavailableError(f"backend {backend.label} is unavailable: {reason}")


# ---- running a block on a backend ------------------------------------------------------------


class StaticShapeBlock(nn.Module):
    """Send inputs of the one specialised shape to ``fast`` (a CUDA graph, a TensorRT engine)
    and every other input to ``eager`` (the same block on the same device and precision).

    Why: graphs and engines are built for one shape; a node batching a different number of
    requests must still get a correct answer, just without the speed-up.
    """

    fast: Block  # set with object.__setattr__ below; declared so its type is not nn.Module.__getattr__'s

    def __init__(self, fast: Block, eager: nn.Module, shape: torch.Size, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        # not registered as a submodule: parameters() stay the block's own weights, counted once
        object.__setattr__(self, "fast", fast)
        self.eager = eager
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.device = device

    def specialised_for(self, tensor: torch.Tensor) -> bool:
        return tensor.shape == self.shape and tensor.dtype == self.dtype and tensor.device == self.device

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.fast(tensor) if self.specialised_for(tensor) else self.eager(tensor)


class CudaGraphReplay:
    """One block captured as a CUDA graph with static input and output buffers.

    Each call copies the input into the static input, replays the graph and returns a clone of
    the static output (the next replay overwrites it, and callers keep activations across
    blocks). A lock makes concurrent callers (two executor threads) take turns on the buffers.
    """

    def __init__(self, module: nn.Module, example_input: torch.Tensor, warmup: int = 3) -> None:
        device = example_input.device
        self.device = device
        self._lock = threading.Lock()
        with torch.inference_mode(), torch.cuda.device(device):  # capture on the block's GPU, not the current one
            self.static_input = example_input.detach().clone()
            # warm-up on a side stream, as capture requires (lazy cuDNN/cuBLAS init happens here, not in the graph)
            side_stream = torch.cuda.Stream(device)
            side_stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side_stream):
                for _ in range(warmup):
                    module(self.static_input)
            torch.cuda.current_stream(device).wait_stream(side_stream)
            torch.cuda.synchronize(device)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_output = module(self.static_input)
            torch.cuda.synchronize(device)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        with self._lock, torch.inference_mode(), torch.cuda.device(self.device):
            self.static_input.copy_(tensor)
            self.graph.replay()
            return self.static_output.clone()


class CompiledReplay:
    """A ``torch.compile(mode="reduce-overhead")`` block whose outputs survive the next call.

    reduce-overhead replays CUDA graphs whose outputs are overwritten by the next run; marking
    each call as a new step and cloning the output keeps earlier activations valid.
    """

    def __init__(self, module: nn.Module, example_input: torch.Tensor) -> None:
        self.compiled = torch.compile(module, mode="reduce-overhead", fullgraph=True)
        self._lock = threading.Lock()
        for _ in range(3):  # compile and record now, at load time, not on the first request
            self(example_input)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            torch.compiler.cudagraph_mark_step_begin()
            return self.compiled(tensor).clone()


def prepare_block(module: nn.Module, backend: Backend, example_input: torch.Tensor,
                  engine_key: EngineKey | None = None) -> nn.Module:
    """``module`` (float32, on the CPU) made ready to run on ``backend``.

    cpu-eager: the module cast to the backend's dtype, returned as is. onnxruntime: the module
    exported to ONNX (batch axis dynamic; cached on disk) and run by an ONNX Runtime session, or
    eager with a logged reason when the exporter cannot express it. cuda: moved and cast;
    with ``cuda_graphs`` or ``compile``, specialised to ``example_input``'s shape (other shapes
    run eagerly). tensorrt: a TensorRT engine for ``example_input``'s shape, read from the
    on-disk engine cache when ``engine_key`` (or the module's own weights) was built before.
    ``example_input`` may be on any device and dtype: it is moved and cast here.
    Raises ``BackendUnavailableError`` when this machine cannot run ``backend``.
    """
    require_available(backend)
    device, dtype = backend.torch_device, backend.torch_dtype
    eager = module.to(device=device, dtype=dtype).eval()
    if backend.name == "onnxruntime":
        return onnxruntime_block(eager, backend, example_input.to("cpu", torch.float32), engine_key)
    if backend.name == "cpu-eager" or not (backend.cuda_graphs or backend.compile or backend.name == "tensorrt"):
        return eager
    example = example_input.to(device=device, dtype=dtype)
    try:
        if backend.cuda_graphs:
            fast: Block = CudaGraphReplay(eager, example)
        elif backend.compile:
            fast = CompiledReplay(eager, example)
        else:
            fast = tensorrt_engine(eager, backend, example, engine_key)
    except (BackendUnavailableError, EngineBuildError):
        raise
    except Exception as error:  # noqa: BLE001 - capture/compile failures become one typed error
        raise EngineBuildError(f"could not prepare a block for {backend.label}: {type(error).__name__}: {error}") \
            from error
    return StaticShapeBlock(fast, eager, example.shape, dtype, device)


# ---- TensorRT engines and their on-disk cache ------------------------------------------------


@dataclass(frozen=True)
class EngineKey:
    """Everything a TensorRT engine depends on; its digest names the cached engine file.

    Why each part: the weights (variant name and sha256) and the block range decide the network;
    precision, input shape and DLA core decide the build; an engine is only valid on the GPU
    model and the torch / torch_tensorrt / TensorRT versions that built it.
    """

    variant: str
    weights_sha256: str
    first_block: int
    last_block: int
    part: str = "block"  # "block" or "head": block k and the exit head after block k share a range
    precision: str = "float16"
    input_shape: tuple[int, ...] = ()
    device_name: str = ""
    dla_core: int | None = None
    versions: str = ""

    def digest(self) -> str:
        text = "|".join(str(value) for value in (
            self.variant, self.weights_sha256, self.first_block, self.last_block, self.part, self.precision,
            "x".join(map(str, self.input_shape)), self.device_name, self.dla_core, self.versions))
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def file_name(self) -> str:
        readable = f"{self.variant}-{self.part}{self.first_block}-{self.last_block}-{self.precision}"
        return f"{readable}-{self.digest()}{ENGINE_SUFFIX}"


def module_digest(module: nn.Module) -> str:
    """sha256 over a module's state (names, dtypes, shapes, bytes): stands in for a weight file's sha256."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())  # bytes, whatever the dtype
    return digest.hexdigest()


def tensorrt_versions() -> str:
    torch_tensorrt = importlib.import_module("torch_tensorrt")
    versions = [f"torch {torch.__version__}", f"torch_tensorrt {getattr(torch_tensorrt, '__version__', '?')}"]
    if package_installed("tensorrt"):
        tensorrt = importlib.import_module("tensorrt")
        versions.append(f"tensorrt {getattr(tensorrt, '__version__', '?')}")
    return ", ".join(versions)


def engine_cache_dir() -> Path:
    """``$P2PINFER_CACHE_DIR/engines`` (default ``~/.cache/p2pinfer/engines``), beside the profiles."""
    return cache_dir() / "engines"


T = TypeVar("T")


class EngineCache(Generic[T]):
    """Build-once, load-after: a compiled artefact per key, written atomically to ``directory``.

    Why atomic (write a private temporary file, then rename): several node processes on one
    device may build the same engine at once; a reader must never see half a file. A file
    that fails to load (truncated, built by another version) is removed and rebuilt.
    """

    def __init__(self, directory: Path, save: Callable[[T, Path], None], load: Callable[[Path], T]) -> None:
        self.directory = Path(directory)
        self._save = save
        self._load = load
        self.hits = 0
        self.builds = 0

    def path(self, file_name: str) -> Path:
        return self.directory / file_name

    def get_or_build(self, file_name: str, build: Callable[[], T]) -> T:
        path = self.path(file_name)
        if path.exists():
            try:
                artefact = self._load(path)
            except Exception:  # noqa: BLE001 - an unreadable cache entry is rebuilt, never fatal
                path.unlink(missing_ok=True)
            else:
                self.hits += 1
                return artefact
        artefact = build()
        self.builds += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.partial-{os.getpid()}-{threading.get_ident()}{path.suffix}")
        try:
            self._save(artefact, partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return artefact


def _tensorrt_save(example: torch.Tensor) -> Callable[[Any, Path], None]:
    def save(compiled: Any, path: Path) -> None:
        torch_tensorrt = importlib.import_module("torch_tensorrt")
        torch_tensorrt.save(compiled, str(path), output_format="exported_program", inputs=[example])

    return save


def _tensorrt_load(path: Path) -> Any:
    """Load an engine saved as an ExportedProgram: ``torch_tensorrt.load`` where it exists, else torch.export."""
    torch_tensorrt = importlib.import_module("torch_tensorrt")  # registers the TensorRT engine ops first
    loader = getattr(torch_tensorrt, "load", None)
    loaded = loader(str(path)) if loader is not None else torch.export.load(str(path))
    return loaded.module() if hasattr(loaded, "module") and not isinstance(loaded, nn.Module) else loaded


def tensorrt_engine(module: nn.Module, backend: Backend, example: torch.Tensor,
                    engine_key: EngineKey | None = None, cache: EngineCache | None = None) -> Block:
    """A TensorRT engine for ``module`` at ``example``'s shape, from the on-disk cache when built before."""
    require_available(backend)
    torch_tensorrt = importlib.import_module("torch_tensorrt")
    if engine_key is None:  # a module outside the zoo: key it by its own weights
        engine_key = EngineKey(type(module).__name__, module_digest(module), 0, 0)
    key = EngineKey(engine_key.variant, engine_key.weights_sha256, engine_key.first_block, engine_key.last_block,
                    engine_key.part, backend.dtype, tuple(example.shape),
                    torch.cuda.get_device_name(backend.torch_device), backend.dla_core, tensorrt_versions())
    cache = cache or EngineCache(engine_cache_dir(), _tensorrt_save(example), _tensorrt_load)

    def build() -> Any:
        options: dict[str, Any] = {}
        if backend.dla_core is not None:
            options["device"] = torch_tensorrt.Device(f"dla:{backend.dla_core}", allow_gpu_fallback=True)
        try:
            return torch_tensorrt.compile(module, ir="dynamo", inputs=[example],
                                          enabled_precisions={backend.torch_dtype}, **options)
        except Exception as error:  # noqa: BLE001 - TensorRT raises many types; callers get one
            raise EngineBuildError(f"TensorRT could not build {key.file_name()}: {type(error).__name__}: {error}") \
                from error

    return cache.get_or_build(key.file_name(), build)


# ---- ONNX Runtime sessions (CPU) and their on-disk cache --------------------------------------

log = logging.getLogger("zoo.backend")


class OnnxRuntimeBlock(nn.Module):
    """A block run by an ONNX Runtime session: the same function as ``eager`` (within float32
    rounding, ~1e-5 on the zoo's logits), any batch size.

    Why: a session runs the whole block in C++ with the GIL released, where eager PyTorch takes
    the GIL back between every operator. Beside a busy event loop (a node answering requests)
    an eager block waits for the GIL at each operator — measured on digits-resnet-w1, one core
    each: 41 ms alone, 52 ms p50 and 63 ms p90 beside a thread holding the GIL half the time —
    while the session's time does not move (26 ms, 27 ms, 28 ms); it is also faster alone
    (0.09 ms against 0.58 ms for digits-cnn-w1's blocks at batch 1: no per-operator dispatch).
    Inputs are read as float32 numpy arrays without a copy where the tensor allows it; the
    output is a new tensor the caller owns."""

    def __init__(self, session: Any, parameter_count: int) -> None:
        super().__init__()
        self.session = session  # holds the weights: the eager module is not kept (no second copy)
        self.parameter_count = parameter_count  # what the eager module had, for the slice's accounting
        self.input_name = session.get_inputs()[0].name
        self.output_names = [output.name for output in session.get_outputs()]  # not re-listed per run

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dtype != torch.float32 or tensor.requires_grad or tensor.device.type != "cpu":
            tensor = tensor.detach().to("cpu", torch.float32)
        (output,) = self.session.run(self.output_names, {self.input_name: tensor.contiguous().numpy()})
        return torch.from_numpy(output)


def onnx_cache_dir() -> Path:
    """``$P2PINFER_CACHE_DIR/onnx`` (default ``~/.cache/p2pinfer/onnx``), beside the engines."""
    return cache_dir() / "onnx"


def export_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """``module`` as an ONNX model (opset ``ONNX_OPSET``) with a dynamic batch axis, in memory.

    torch's TorchScript-based exporter (``dynamo=False``): it needs only the ``onnx`` package,
    where the dynamo exporter also needs ``onnxscript``."""
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings, per block
        torch.onnx.export(module, (example,), buffer,  # type: ignore[arg-type]  # file-like: supported, untyped
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=ONNX_OPSET,
                          dynamo=False)
    return buffer.getvalue()


def unexportable_reason(module: nn.Module, example: torch.Tensor) -> str | None:
    """Why torch's ONNX exporter would fail on ``module``, for the cases known here; None when
    none applies. Checked before exporting because the exporter, failing, prints the whole
    TorchScript graph on the process's stdout (from C++: no Python redirect catches it)."""
    if any(type(child).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.quantization"))
           for child in module.modules()):
        return "a quantised PyTorch module (its packed weights do not trace to ONNX)"
    pools = [child for child in module.modules() if isinstance(child, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d)]
    if not pools:
        return None
    sizes: list[str] = []

    def record(pool: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        spatial_in, spatial_out = inputs[0].shape[-2:], output.shape[-2:]
        if any(size % out for size, out in zip(spatial_in, spatial_out, strict=True)):
            sizes.append(f"{tuple(spatial_in)} -> {tuple(spatial_out)}")

    handles = [pool.register_forward_hook(record) for pool in pools]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    if sizes:
        return f"an adaptive pooling whose output does not divide its input ({', '.join(sizes)})"
    return None


def _onnx_session(model: bytes, backend: Backend) -> Any:
    """A CPU session for ``model``: ``intra_op_threads`` threads, no spinning (a waiting pool
    thread would burn a core that the device's other work needs), every graph optimisation."""
    onnxruntime = importlib.import_module("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = backend.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _write_model(model: bytes, path: Path) -> None:
    path.write_bytes(model)


def _read_model(path: Path) -> bytes:
    """A cached model's bytes, parsed once as an ONNX ModelProto (protobuf, no pickle): a
    truncated or foreign file raises here, and the cache removes it and exports again."""
    model = path.read_bytes()
    importlib.import_module("onnx").load_model_from_string(model)
    return model


@functools.cache
def onnx_versions() -> str:
    return f"torch {torch.__version__}, onnx {importlib.metadata.version('onnx')}, opset {ONNX_OPSET}"


def onnxruntime_block(module: nn.Module, backend: Backend, example: torch.Tensor,
                      engine_key: EngineKey | None = None, cache: EngineCache[bytes] | None = None) -> nn.Module:
    """``module`` as an ``OnnxRuntimeBlock``, its ONNX model read from the on-disk cache when
    exported before (keyed like an engine: weights, block, input shape, versions).

    A module the exporter cannot express (a quantised PyTorch module; an adaptive pooling whose
    output does not divide its input) stays eager — it still answers, only without the session's
    speed — and the reason is logged once per block; a fresh export is checked against eager on
    the example, and one that disagrees beyond 1e-3 relative is refused the same way (and not kept)."""
    if engine_key is None:
        engine_key = EngineKey(type(module).__name__, module_digest(module), 0, 0)
    key = EngineKey(engine_key.variant, engine_key.weights_sha256, engine_key.first_block, engine_key.last_block,
                    engine_key.part, "float32", tuple(example.shape[1:]), "cpu", None, onnx_versions())
    cache = cache or EngineCache(onnx_cache_dir(), _write_model, _read_model)
    file_name = key.file_name().removesuffix(ENGINE_SUFFIX) + ONNX_SUFFIX
    try:
        reason = unexportable_reason(module, example)
        if reason is not None:
            raise EngineBuildError(reason)
        exported: list[bool] = []

        def build() -> bytes:
            exported.append(True)
            return export_onnx(module, example)

        model = cache.get_or_build(file_name, build)
        block = OnnxRuntimeBlock(_onnx_session(model, backend), parameter_count(module))
        if exported:  # checked once, when exported (a cached file is keyed by the same weights and versions)
            probe = torch.randn(example.shape, generator=torch.Generator().manual_seed(0))  # not the zeros traced
            with torch.no_grad():
                expected, actual = module(probe), block(probe)
            scale = float(expected.abs().max()) if expected.numel() else 0.0
            if actual.shape != expected.shape or float((actual - expected).abs().max()) > 1e-3 * max(scale, 1.0):
                cache.path(file_name).unlink(missing_ok=True)
                raise EngineBuildError(f"the ONNX Runtime session disagrees with eager on {file_name}")
    except Exception as error:  # noqa: BLE001 - an unexportable block runs eagerly, never a failed start
        log.warning("%s %s %d runs eagerly, not on onnxruntime: %s: %s", engine_key.variant, engine_key.part,
                    engine_key.first_block, type(error).__name__, str(error).splitlines()[0][:200])
        return module
    return block
