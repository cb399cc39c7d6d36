"""Image inputs: a client's JPEG or PNG decoded and preprocessed as the family's manifest says.

A camera sends a JPEG of 10-20 KB, not 600 KB of float32: accepting it on the node keeps
the bytes on the first link small, and a node that runs block 0 elsewhere can forward the
image as it came (the planner prices that as an input codec). The manifest's
``preprocessing`` dict (``VariantInfo.preprocessing``) says how pixels become the model's
input; the keys understood are those of ``zoo.orientation_data.PREPROCESSING``:

``channel_order`` ("RGB" | "BGR"), ``resize_short_per_crop`` (short side = resolution x this)
or ``resize_short``, ``interpolation`` ("lanczos" | "bicubic" | "bilinear" | "nearest"),
``crop`` ("center"), ``scale``, ``mean``, ``std``, ``layout`` ("CHW"). The resolution is the
variant's input shape (so a 160 px variant crops 160). The arithmetic is the zoo's, in the
same float32 order, so the node's tensor equals ``zoo.orientation_data.preprocess``'s.

JPEG decodes with simplejpeg (libjpeg-turbo) when it is installed, else Pillow; PNG with
Pillow. Anything else, a truncated file or an image over ``max_pixels`` is ``BadImage``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
from PIL import Image

from p2pinfer.errors import BadImage

JPEG: Final = "image/jpeg"
PNG: Final = "image/png"
IMAGE_TYPES: Final = (JPEG, PNG)
MAX_PIXELS: Final = 40_000_000  # a 40 MP photo; beyond is a decompression bomb or a mistake
MAX_IMAGE_BYTES: Final = 32 * 1024 * 1024

_RESAMPLING: Final = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
                      "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}

try:  # a faster JPEG decoder when it installs; Pillow otherwise
    import simplejpeg as _simplejpeg  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - depends on the environment
    _simplejpeg = None


def sniff(data: bytes | memoryview) -> str:
    """The media type of ``data`` from its magic bytes; ``BadImage`` when neither JPEG nor PNG."""
    head = bytes(data[:8])
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    raise BadImage(f"the image is neither JPEG nor PNG (first bytes {head[:4].hex()}); send {' or '.join(IMAGE_TYPES)}")


def decode_image(data: bytes | memoryview, media_type: str | None = None, *,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB pixels of a JPEG or PNG.

    ``media_type`` (the declared content type) must agree with the bytes when given.
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise BadImage(f"image is {len(data)} bytes, over the limit of {MAX_IMAGE_BYTES}")
    found = sniff(data)
    if media_type is not None and media_type != found:
        raise BadImage(f"the body is declared {media_type} but holds {found} bytes")
    if found == JPEG and _simplejpeg is not None:
        return _decode_simplejpeg(bytes(data), max_pixels)
    return _decode_pillow(bytes(data), found, max_pixels)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise BadImage(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise BadImage(f"image is {width}x{height} pixels, over the limit of {max_pixels}")


def _decode_simplejpeg(data: bytes, max_pixels: int) -> np.ndarray:
    assert _simplejpeg is not None
    try:
        height, width, _, _ = _simplejpeg.decode_jpeg_header(data)
        _check_size(width, height, max_pixels)
        pixels: np.ndarray = _simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)
    except ValueError as error:
        raise BadImage(f"JPEG cannot be decoded: {error}") from None
    return pixels


def _decode_pillow(data: bytes, media_type: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["JPEG" if media_type == JPEG else "PNG"]) as image:
                _check_size(image.width, image.height, max_pixels)
                return np.asarray(image.convert("RGB"))
    except BadImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            EOFError) as error:
        kind = "JPEG" if media_type == JPEG else "PNG"
        raise BadImage(f"{kind} cannot be decoded: {error}") from None


def preprocess(pixels: np.ndarray, preprocessing: Mapping[str, Any], input_shape: Sequence[int], *,
               model: str = "the model") -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB pixels -> the float32 input tensor (``input_shape``, no batch axis)."""
    if not preprocessing:
        raise BadImage(f"{model} takes no image input (its manifest has no preprocessing); send a tensor")
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise BadImage(f"{model}'s input {list(input_shape)} is not a 3-channel image")
    if preprocessing.get("layout", "CHW") != "CHW" or preprocessing.get("crop", "center") != "center":
        raise BadImage(f"{model}'s preprocessing {dict(preprocessing)} is not supported by this node")
    height, width = int(input_shape[1]), int(input_shape[2])
    cropped = resize_and_crop(pixels, preprocessing, height, width)
    return normalize(cropped, preprocessing)


def resize_and_crop(pixels: np.ndarray, preprocessing: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """Resize the short side and centre-crop ``height x width`` (as ``zoo.orientation_data.crop_pixels``)."""
    resolution = min(height, width)
    if "resize_short_per_crop" in preprocessing:
        short = round(resolution * float(preprocessing["resize_short_per_crop"]))
    else:
        short = int(preprocessing.get("resize_short", resolution))
    resample = _RESAMPLING.get(str(preprocessing.get("interpolation", "bilinear")).lower())
    if resample is None:
        raise BadImage(f"interpolation {preprocessing.get('interpolation')!r} is not supported")
    image = Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
    scale = short / min(image.width, image.height)
    new_size = (max(round(image.width * scale), width), max(round(image.height * scale), height))
    resized = image.resize(new_size, resample)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return np.asarray(resized.crop((left, top, left + width, top + height)))


def normalize(pixels: np.ndarray, preprocessing: Mapping[str, Any]) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> float32 CHW: channel order, ``* scale``, ``- mean``, ``/ std``,
    in that float32 order (bit-equal to the zoo's torch arithmetic)."""
    values: np.ndarray = pixels.astype(np.float32)
    if str(preprocessing.get("channel_order", "RGB")).upper() == "BGR":
        values = values[..., ::-1]
    values = values * np.float32(preprocessing.get("scale", 1.0))
    if "mean" in preprocessing:
        values = values - np.asarray(preprocessing["mean"], dtype=np.float32)
    if "std" in preprocessing:
        values = values / np.asarray(preprocessing["std"], dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(values, -1, 0), dtype=np.float32)


def image_tensor(data: bytes | memoryview, preprocessing: Mapping[str, Any], input_shape: Sequence[int], *,
                 media_type: str | None = None, model: str = "the model") -> np.ndarray:
    """Decode and preprocess in one call: the ``(1, *input_shape)`` float32 batch of one image."""
    if not preprocessing:
        raise BadImage(f"{model} takes no image input (its manifest has no preprocessing); send a tensor")
    return preprocess(decode_image(data, media_type), preprocessing, input_shape, model=model)[np.newaxis]


__all__ = ["IMAGE_TYPES", "JPEG", "MAX_PIXELS", "PNG", "decode_image", "image_tensor", "normalize", "preprocess",
           "resize_and_crop", "sniff"]
