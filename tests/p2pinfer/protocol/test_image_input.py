"""Image inputs: JPEG/PNG decode, the manifest's preprocessing equal to the zoo's, bad images refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from p2pinfer.errors import BadImage
from p2pinfer.protocol import image_input
from zoo import orientation_data
from zoo.manifest import PRETRAINED_ZOO_DIR, read_manifest


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def page() -> Image.Image:
    return orientation_data.sample(orientation_data.HELD_OUT_SEED, 1).image


@pytest.mark.parametrize("variant", ["text-orientation-w1", "text-orientation-r160"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_node_preprocessing_equals_the_zoos(page: Image.Image, variant: str, fmt: str) -> None:
    info = read_manifest(PRETRAINED_ZOO_DIR).variant(variant)
    data = encoded(page, fmt)
    tensor = image_input.image_tensor(data, info.preprocessing, info.input_shape, media_type=f"image/{fmt.lower()}")
    decoded = Image.fromarray(image_input.decode_image(data))
    expected = orientation_data.preprocess(decoded, info.input_shape[-1]).numpy()
    assert tensor.shape == (1, *info.input_shape) and tensor.dtype == np.float32
    assert np.array_equal(tensor[0], expected)
    if fmt == "PNG":  # lossless: the same as preprocessing the original page
        assert np.array_equal(tensor[0], orientation_data.preprocess(page, info.input_shape[-1]).numpy())


@pytest.mark.parametrize("data, message", [
    (b"", "neither JPEG nor PNG"),
    (b"GIF89a....", "neither JPEG nor PNG"),
    (b"\xff\xd8\xff\xe0garbage garbage", "JPEG cannot be decoded"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG cannot be decoded"),
])
def test_garbage_is_bad_image(data: bytes, message: str) -> None:
    with pytest.raises(BadImage, match=message):
        image_input.decode_image(data)


def test_truncated_and_mislabelled_images(page: Image.Image) -> None:
    jpeg = encoded(page, "JPEG")
    png = encoded(page, "PNG")
    with pytest.raises(BadImage):
        image_input.decode_image(png[: len(png) // 2])
    with pytest.raises(BadImage, match="declared image/png"):
        image_input.decode_image(jpeg, "image/png")


def test_oversized_image_is_refused() -> None:
    data = encoded(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(BadImage, match="over the limit"):
        image_input.decode_image(data, max_pixels=100 * 100)


def test_family_without_preprocessing_takes_no_image(page: Image.Image) -> None:
    with pytest.raises(BadImage, match="no image input"):
        image_input.image_tensor(encoded(page, "PNG"), {}, [1, 8, 8], model="digits-cnn")
