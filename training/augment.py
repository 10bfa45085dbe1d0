"""Processing applied identically to real and AI images, so models learn the image, not the container.

The data's classes differ in format, size and compression (camera JPEGs vs generator PNGs). Every
training image of either class therefore passes through the same random crop, resize and JPEG
re-encode (``Reencode``); evaluation adds fixed perturbations (``ROBUSTNESS``). Both return encoded
bytes, which go through the service's own ``decode_image`` like any upload.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from models.forensics import GENERATOR_SIZES
from models.image_input import DecodedImage

# Standard generator output sizes in a fixed order, so seeded draws and the evaluation variant reproduce.
GENERATOR_SIZE_LIST: tuple[tuple[int, int], ...] = tuple(sorted(GENERATOR_SIZES))


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


@dataclass(frozen=True)
class Reencode:
    """Random crop, resize and re-encode (JPEG by default); metadata is dropped (Pillow does not copy it).

    ``formats``, ``blur_probability`` and ``generator_size_probability`` widen the processing for the fusion
    model; with their defaults no extra random draw is made, so the ghostnet and DINO training that use the
    defaults reproduce.
    """

    quality: tuple[int, int] = (65, 97)
    scale: tuple[float, float] = (0.5, 1.0)
    crop_fraction: tuple[float, float] = (0.6, 1.0)  # side of the crop relative to the image side
    max_side: int = 1024
    min_side: int = 32
    formats: tuple[tuple[str, float], ...] = (("JPEG", 1.0),)  # (Pillow format, probability)
    blur_probability: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    # Share of images cropped and resized to a standard generator size (both classes alike), as a CMS or a
    # share sheet does to real photos every day; without it a model can learn "generator size means AI".
    generator_size_probability: float = 0.0

    def __call__(self, image: DecodedImage, rng: np.random.Generator) -> bytes:
        if self.generator_size_probability and rng.random() < self.generator_size_probability:
            size = GENERATOR_SIZE_LIST[int(rng.integers(len(GENERATOR_SIZE_LIST)))]
            pil = crop_resize_to(image.to_pil(), size, position=(rng.random(), rng.random()))
        else:
            pil = self._random_crop_resize(image.to_pil(), rng)
        quality = int(rng.integers(self.quality[0], self.quality[1] + 1))
        subsampling = int(rng.choice([0, 2]))  # 4:4:4 or 4:2:0, both common in the wild
        if self.blur_probability and rng.random() < self.blur_probability:
            pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*self.blur_sigma))))
        fmt = self.formats[0][0]
        if len(self.formats) > 1:
            names, weights = zip(*self.formats)
            fmt = str(rng.choice(names, p=np.asarray(weights) / sum(weights)))
        if fmt == "JPEG":
            return _encode(pil, "JPEG", quality=quality, subsampling=subsampling)
        if fmt == "WEBP":
            return _encode(pil, "WEBP", quality=quality)
        return _encode(pil, fmt)  # lossless (PNG)

    def _random_crop_resize(self, pil: Image.Image, rng: np.random.Generator) -> Image.Image:
        width, height = pil.size
        fraction = rng.uniform(*self.crop_fraction)
        crop_w, crop_h = max(1, round(width * fraction)), max(1, round(height * fraction))
        x0, y0 = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        pil = pil.crop((x0, y0, x0 + crop_w, y0 + crop_h))
        scale = min(rng.uniform(*self.scale), self.max_side / max(pil.size))
        size = (max(self.min_side, round(pil.width * scale)), max(self.min_side, round(pil.height * scale)))
        if size != pil.size:
            pil = pil.resize(size, Image.Resampling.BICUBIC)
        return pil


def crop_resize_to(pil: Image.Image, size: tuple[int, int], position: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
    """The largest crop of ``pil`` with the aspect ratio of ``size`` (placed at ``position``, 0..1 along each
    free axis), resized to exactly ``size``: what a CMS or a social network does to fit an upload."""
    target_w, target_h = size
    crop_w = min(pil.width, round(pil.height * target_w / target_h))
    crop_h = min(pil.height, round(pil.width * target_h / target_w))
    x0 = round((pil.width - crop_w) * position[0])
    y0 = round((pil.height - crop_h) * position[1])
    return pil.crop((x0, y0, x0 + crop_w, y0 + crop_h)).resize(size, Image.Resampling.LANCZOS)


def generator_size_variant(image: DecodedImage) -> bytes:
    """The evaluation's real-photo trap: centre crop + resize to a standard generator size (chosen from the
    image's sha256, so each image always gets the same one), saved as JPEG q90 like a web upload."""
    size = GENERATOR_SIZE_LIST[int(image.sha256[:8], 16) % len(GENERATOR_SIZE_LIST)]
    return _encode(crop_resize_to(image.to_pil(), size), "JPEG", quality=90)


# What the fusion model's training images go through: the shared data's AI images are mostly PNG and its
# photos JPEG, so every format has to occur in both classes (and some blur, which real photos and
# generated images both get on the way to a platform), or the model learns "PNG means AI".
# A third of them are also brought to a standard generator size, real photos as often as AI images.
FUSION_PROCESSING = Reencode(
    formats=(("JPEG", 0.6), ("PNG", 0.2), ("WEBP", 0.2)), blur_probability=0.15, generator_size_probability=0.3
)


def _center_crop(pil: Image.Image, fraction: float = 0.75) -> Image.Image:
    w, h = round(pil.width * fraction), round(pil.height * fraction)
    x0, y0 = (pil.width - w) // 2, (pil.height - h) // 2
    return pil.crop((x0, y0, x0 + w, y0 + h))


# Fixed perturbations of the evaluation's robustness grid. Geometric ones are saved losslessly (PNG) so
# that each row changes one thing only.
ROBUSTNESS: dict[str, Callable[[DecodedImage], bytes]] = {
    "jpeg95": lambda im: _encode(im.to_pil(), "JPEG", quality=95),
    "jpeg75": lambda im: _encode(im.to_pil(), "JPEG", quality=75),
    "jpeg50": lambda im: _encode(im.to_pil(), "JPEG", quality=50),
    "resize0.75": lambda im: _encode(
        im.to_pil().resize((max(1, round(im.width * 0.75)), max(1, round(im.height * 0.75))), Image.Resampling.BICUBIC),
        "PNG",
    ),
    "resize0.5": lambda im: _encode(
        im.to_pil().resize((max(1, im.width // 2), max(1, im.height // 2)), Image.Resampling.BICUBIC), "PNG"
    ),
    "center_crop": lambda im: _encode(_center_crop(im.to_pil()), "PNG"),
    "blur1": lambda im: _encode(im.to_pil().filter(ImageFilter.GaussianBlur(radius=1.0)), "PNG"),
    "generator_size": generator_size_variant,
}
