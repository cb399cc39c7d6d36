"""Boundary codecs: how an activation between two peers travels on ``/v1/stage``.

A boundary tensor (float32 on both ends) may travel as

- ``float32``: the raw bytes (exact);
- ``float16``: half precision (relative error ~5e-4; out-of-range values saturate to +-65504);
- ``uint8``: affine 8-bit, one ``scale`` and ``zero_point`` for the whole tensor,
  ``x ~= (q - zero_point) * scale`` with ``q`` in [0, 255];
- ``uint8-channel``: the same with one scale and zero point per channel (axis 1 of an
  ``[N, C, ...]`` tensor), for activations whose channels have very different ranges;

optionally with ``zlib`` or ``lz4`` on top (``"uint8+lz4"``). The codec's parameters ride in
the stage header (``BoundaryEncoding``), the payload is the frame's ``activation`` tensor, so
nothing but numbers and raw bytes crosses the wire (never pickle).

Why: bytes on the link decide whether a split pays (Neurosurgeon, JALAD, Auto-Split). uint8
cuts a boundary 4x for typically well under one point of accuracy (``zoo.codec_accuracy``
records the change per variant and cut in the manifest; the planner weighs it).

Encoding is vectorised numpy with one scratch buffer (no per-element Python); decoding of
``float32`` is a view, the others one pass into a new float32 array.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Final

import msgspec
import numpy as np

from p2pinfer.errors import BadCodec

CODEC_VERSION: Final = 1
"""Version of ``BoundaryEncoding``; a header from another version is refused."""

BASE_CODECS: Final = ("float32", "float16", "uint8", "uint8-channel")
COMPRESSIONS: Final = ("none", "zlib", "lz4")
MAX_CHANNELS: Final = 65536
ZLIB_LEVEL: Final = 1  # speed over ratio: the codec sits on the request's critical path

try:  # lz4 is optional: a node without it simply never offers "+lz4"
    import lz4.block as _lz4_block  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - depends on the environment
    _lz4_block = None

_ITEMSIZE: Final = {"float32": 4, "float16": 2, "uint8": 1, "uint8-channel": 1}
_WIRE_DTYPE: Final[dict[str, np.dtype[Any]]] = {
    "float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "uint8": np.dtype("u1"), "uint8-channel": np.dtype("u1")}


class BoundaryEncoding(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the frame's ``activation`` tensor is encoded (in ``StageHeader.encoding``).

    ``shape`` is the decoded float32 tensor's shape. ``scale``/``zero_point``: one value
    (``uint8``) or one per channel (``uint8-channel``), empty otherwise. With compression,
    the activation is the compressed bytes (a 1-D uint8 tensor) and ``raw_nbytes`` the size
    they inflate to (checked before inflating, so a small frame cannot expand without bound).
    """

    version: int = CODEC_VERSION
    codec: str = "float32"
    compression: str = "none"
    shape: list[int] = []
    scale: list[float] = []
    zero_point: list[float] = []
    raw_nbytes: int = 0

    @property
    def name(self) -> str:
        return codec_name(self.codec, self.compression)


def codec_name(codec: str, compression: str = "none") -> str:
    """``"uint8"`` or ``"uint8+lz4"``: the name plans and answers use."""
    return codec if compression == "none" else f"{codec}+{compression}"


def parse_codec(name: str) -> tuple[str, str]:
    """``"uint8+lz4"`` -> ``("uint8", "lz4")``; ``BadCodec`` for anything unknown."""
    codec, _, compression = name.partition("+")
    compression = compression or "none"
    if codec not in BASE_CODECS:
        raise BadCodec(f"unknown boundary codec {codec!r} in {name!r} (known: {', '.join(BASE_CODECS)})")
    if compression not in available_compressions():
        raise BadCodec(f"compression {compression!r} in {name!r} is not available here "
                       f"(available: {', '.join(available_compressions())})")
    return codec, compression


def available_compressions() -> tuple[str, ...]:
    return COMPRESSIONS if _lz4_block is not None else ("none", "zlib")


def available_codecs() -> tuple[str, ...]:
    """Every codec name this process can encode and decode."""
    return tuple(codec_name(codec, compression) for codec in BASE_CODECS for compression in available_compressions())


def encoded_nbytes(codec: str, element_count: int) -> int:
    """Payload bytes of a boundary of ``element_count`` float32 values under a base codec
    (compression excluded: its ratio depends on the data)."""
    base, _ = parse_codec(codec)
    return element_count * _ITEMSIZE[base]


# ---------------------------------------------------------------------------------------
# encode


def _affine_params(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point (float32) mapping ``[low, high]`` onto ``[0, 255]``."""
    span = (high - low).astype(np.float32)
    scale = np.where(span > 0, span / np.float32(255.0), np.float32(1.0)).astype(np.float32)
    zero_point = (-low / scale).astype(np.float32)
    return scale, zero_point


def _quantize(array: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 codes, scale and zero point of ``array`` (float32, finite)."""
    if per_channel:
        if array.ndim < 2 or array.shape[1] > MAX_CHANNELS:
            raise BadCodec(f"uint8-channel needs an [N, C, ...] tensor with C <= {MAX_CHANNELS}, "
                           f"got {list(array.shape)}")
        grouped = array.reshape(array.shape[0], array.shape[1], -1)
        low = grouped.min(axis=(0, 2))
        high = grouped.max(axis=(0, 2))
        scale, zero_point = _affine_params(low, high)
        broadcast = (1, -1) + (1,) * (array.ndim - 2)
        inverse = (np.float32(1.0) / scale).reshape(broadcast)
        offset = (zero_point + np.float32(0.5)).reshape(broadcast)
    else:
        low = np.asarray(array.min(), dtype=np.float32)
        high = np.asarray(array.max(), dtype=np.float32)
        scale, zero_point = _affine_params(low.reshape(1), high.reshape(1))
        inverse = np.float32(1.0) / scale[0]
        offset = zero_point[0] + np.float32(0.5)
    # q = floor(x / scale + zero_point + 0.5): values are >= low, so the argument is >= 0 and
    # truncation is flooring; clip guards the top against rounding past 255.
    scratch = np.multiply(array, inverse, dtype=np.float32)
    scratch += offset
    np.clip(scratch, 0.0, 255.0, out=scratch)
    return scratch.astype(np.uint8), scale, zero_point


def encode_boundary(array: np.ndarray, codec: str = "float32") -> tuple[BoundaryEncoding, np.ndarray]:
    """Encode a float32 boundary: its header and the payload array to put in the frame.

    ``float32`` returns ``array`` itself (no copy). With ``+zlib``/``+lz4``, a payload that
    compression does not shrink travels uncompressed (``encoding.compression == "none"``:
    ``encoding.name`` is what travelled). Non-finite values are refused
    (``BadCodec``): an affine range over NaN/Inf is meaningless.
    """
    base, compression = parse_codec(codec)
    array = np.ascontiguousarray(array, dtype=np.float32)
    shape = list(array.shape)
    scale: list[float] = []
    zero_point: list[float] = []
    if base == "float32":
        payload = array
    elif base == "float16":
        if array.size and max(-float(array.min()), float(array.max())) > 65504.0:
            array = np.clip(array, -65504.0, 65504.0)  # saturate instead of inf (rare: a float32 pass first)
        payload = array.astype(np.float16)
    else:
        if array.size == 0:
            payload = np.empty(shape, dtype=np.uint8)
        else:
            if not math.isfinite(float(array.min())) or not math.isfinite(float(array.max())):
                raise BadCodec("cannot quantise a boundary holding NaN or Inf")
            payload, scales, zeros = _quantize(array, base == "uint8-channel")
            scale, zero_point = scales.tolist(), zeros.tolist()
    raw_nbytes = payload.nbytes
    if compression != "none":
        packed = _compress(payload, compression)
        if len(packed) < raw_nbytes:
            payload = np.frombuffer(packed, dtype=np.uint8)
        else:  # no gain (dense codes): send them as they are, and the header says so
            compression = "none"
    encoding = BoundaryEncoding(codec=base, compression=compression, shape=shape, scale=scale,
                                zero_point=zero_point, raw_nbytes=raw_nbytes)
    return encoding, payload


def _compress(payload: np.ndarray, compression: str) -> bytes:
    data = payload.reshape(-1).view(np.uint8).data
    if compression == "zlib":
        return zlib.compress(data, ZLIB_LEVEL)
    assert _lz4_block is not None
    return bytes(_lz4_block.compress(data, store_size=False))


# ---------------------------------------------------------------------------------------
# decode


def _check(encoding: BoundaryEncoding, max_elements: int) -> int:
    if encoding.version != CODEC_VERSION:
        raise BadCodec(f"boundary encoding version {encoding.version} is not supported (this side speaks "
                       f"{CODEC_VERSION})")
    parse_codec(encoding.name)
    if any(dim < 0 for dim in encoding.shape) or len(encoding.shape) > 32:
        raise BadCodec(f"bad boundary shape {encoding.shape}")
    count = math.prod(encoding.shape)
    if count > max_elements:
        raise BadCodec(f"boundary of {count} elements is over the limit of {max_elements}")
    expected = count * _ITEMSIZE[encoding.codec]
    if encoding.raw_nbytes not in (0, expected) or (encoding.compression != "none" and encoding.raw_nbytes != expected):
        raise BadCodec(f"raw_nbytes={encoding.raw_nbytes} does not match {encoding.codec} of shape {encoding.shape} "
                       f"({expected} bytes)")
    if encoding.codec == "uint8":
        wanted = 1 if count else 0
        if len(encoding.scale) != wanted or len(encoding.zero_point) != wanted:
            raise BadCodec("uint8 needs exactly one scale and one zero_point")
    elif encoding.codec == "uint8-channel":
        channels = encoding.shape[1] if len(encoding.shape) >= 2 else -1
        wanted = channels if count else 0
        if len(encoding.scale) != wanted or len(encoding.zero_point) != wanted:
            raise BadCodec(f"uint8-channel needs one scale and zero_point per channel ({channels}), "
                           f"got {len(encoding.scale)} and {len(encoding.zero_point)}")
    elif encoding.scale or encoding.zero_point:
        raise BadCodec(f"{encoding.codec} takes no scale or zero_point")
    params = [*encoding.scale, *encoding.zero_point]
    if not all(math.isfinite(value) for value in params) or any(value <= 0 for value in encoding.scale):
        raise BadCodec("scales must be finite and > 0, zero points finite")
    return expected


def _inflate(payload: np.ndarray, encoding: BoundaryEncoding, expected: int) -> np.ndarray:
    data = np.ascontiguousarray(payload).reshape(-1).view(np.uint8).data
    try:
        if encoding.compression == "zlib":
            inflater = zlib.decompressobj()
            raw = inflater.decompress(data, expected)
            if len(raw) != expected or inflater.unconsumed_tail or not inflater.eof:
                raise BadCodec(f"zlib payload does not inflate to exactly {expected} bytes")
        else:
            assert _lz4_block is not None
            raw = _lz4_block.decompress(data, uncompressed_size=expected)
            if len(raw) != expected:
                raise BadCodec(f"lz4 payload does not inflate to exactly {expected} bytes")
    except (zlib.error, ValueError, RuntimeError) as error:  # lz4 raises LZ4BlockError(RuntimeError)
        raise BadCodec(f"{encoding.compression} payload is corrupt: {error}") from None
    return np.frombuffer(raw, dtype=np.uint8)


def decode_boundary(encoding: BoundaryEncoding, payload: np.ndarray, *, max_elements: int = 2**28) -> np.ndarray:
    """The float32 tensor back from its header and payload (``float32``: a view, no copy).

    Raises ``BadCodec`` for a malformed header, a payload of the wrong size, or corrupt
    compressed bytes.
    """
    expected = _check(encoding, max_elements)
    if encoding.compression != "none":
        raw = _inflate(payload, encoding, expected)
    else:
        raw = payload
        if raw.nbytes != expected:
            raise BadCodec(f"{encoding.codec} payload is {raw.nbytes} bytes, shape {encoding.shape} needs {expected}")
    wire_dtype = _WIRE_DTYPE[encoding.codec]
    if raw.dtype != wire_dtype:
        raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8).view(wire_dtype)
    codes = raw.reshape(encoding.shape)
    if encoding.codec == "float32":
        return codes
    if encoding.codec == "float16":
        return codes.astype(np.float32)
    if codes.size == 0:
        return np.empty(encoding.shape, dtype=np.float32)
    scale = np.asarray(encoding.scale, dtype=np.float32)
    offset = -np.asarray(encoding.zero_point, dtype=np.float32) * scale
    if encoding.codec == "uint8-channel":
        broadcast = (1, -1) + (1,) * (codes.ndim - 2)
        scale, offset = scale.reshape(broadcast), offset.reshape(broadcast)
    else:
        scale, offset = scale.reshape(()), offset.reshape(())
    out: np.ndarray = np.multiply(codes, scale, dtype=np.float32)
    out += offset
    return out


def max_abs_error(encoding: BoundaryEncoding) -> float:
    """The worst absolute reconstruction error an affine encoding allows (half a step)."""
    return 0.5 * max(encoding.scale, default=0.0)
