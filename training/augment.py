"""Processing applied identically to real and AI images, so models learn the image, not the container.

The data's classes differ in format, size and compression (camera JPEGs vs generator PNGs). Every
training image of either class therefore passes through the same random crop, resize and JPEG
re-encode (``Reencode``) or one laundering route (``Launder``: screenshot, social re-encode, thumbnail, crop or
padding); evaluation adds fixed perturbations (``ROBUSTNESS``, the laundering routes among them). All return encoded
bytes, which go through the service's own ``decode_image`` like any upload.
"""

from __future__ import annotations

import hashlib
import inspect
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


# ---- laundering: what happens to an image between its maker and this service -------------------------------
# Applied to both classes alike, in training (random, ``Launder``) and in evaluation (``LAUNDERING``: one fixed draw
# per image, seeded by its sha256). Four routes, each what a real upload goes through:
#   screenshot: shown on a screen at some size and display scaling (1.0-2.0x device pixel ratio) with the resampler
#               a browser or OS uses, maybe inside page margins, maybe colour-managed into a wide-gamut display
#               space, then captured as an RGBA PNG;
#   social:     a messenger or social network: long side cut to 1080-2048 px, JPEG q60-90 with 4:2:0 chroma,
#               metadata stripped;
#   thumbnail:  a preview: long side 256-512 px, JPEG or WebP;
#   crop_pad:   cropped by a person, or letterboxed to a feed's aspect ratio, then saved as JPEG.
LAUNDERING_ROUTES = ("screenshot", "social", "thumbnail", "crop_pad")
# Browser and OS image scaling: Skia (Chrome) bilinear with mipmaps or bicubic, macOS / Pillow Lanczos, Windows box /
# bicubic. Pillow's filters stand in for them.
SCREEN_RESAMPLERS = (
    Image.Resampling.BILINEAR,
    Image.Resampling.BICUBIC,
    Image.Resampling.LANCZOS,
    Image.Resampling.BOX,
)
# Linear sRGB -> linear Display P3 (both D65): a colour-managed capture on a wide-gamut screen writes P3 numbers, and a
# screenshot that drops the profile is read back as sRGB: slightly desaturated colours. Rows sum to 1 (white stays).
SRGB_TO_P3 = np.array(
    [[0.8225, 0.1774, 0.0000], [0.0332, 0.9669, 0.0000], [0.0171, 0.0724, 0.9108]],
    dtype=np.float32,
)


def _resize_by(pil: Image.Image, factor: float, resample: int) -> Image.Image:
    size = (max(16, round(pil.width * factor)), max(16, round(pil.height * factor)))
    return pil if size == pil.size else pil.resize(size, resample)


def _long_side_at_most(pil: Image.Image, long_side: int, resample: int) -> Image.Image:
    factor = long_side / max(pil.size)
    return _resize_by(pil, factor, resample) if factor < 1 else pil


def to_display_p3(pil: Image.Image) -> Image.Image:
    """sRGB pixels as a colour-managed Display P3 capture writes them (the profile then dropped)."""
    srgb = np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    p3 = np.clip(linear @ SRGB_TO_P3.T, 0.0, 1.0)
    encoded = np.where(p3 <= 0.0031308, p3 * 12.92, 1.055 * p3 ** (1 / 2.4) - 0.055)  # P3 uses sRGB's curve
    return Image.fromarray(np.round(encoded * 255.0).astype(np.uint8))


def _pad(pil: Image.Image, margins: tuple[int, int, int, int], colour: tuple[int, int, int]) -> Image.Image:
    left, top, right, bottom = margins
    canvas = Image.new("RGB", (pil.width + left + right, pil.height + top + bottom), colour)
    canvas.paste(pil.convert("RGB"), (left, top))
    return canvas


def screenshot(pil: Image.Image, rng: np.random.Generator) -> bytes:
    """Shown at 0.5-1.0 of its size, captured at 1.0-2.0x display scaling; margins, P3 capture sometimes; RGBA PNG."""
    factor = float(rng.uniform(0.5, 1.0) * rng.uniform(1.0, 2.0))
    pil = _resize_by(pil.convert("RGB"), factor, SCREEN_RESAMPLERS[int(rng.integers(len(SCREEN_RESAMPLERS)))])
    if rng.random() < 0.5:  # the page around the image: a light or dark theme's background
        colour = (255, 255, 255) if rng.random() < 0.6 else (32, 33, 36)
        pil = _pad(pil, tuple(int(m) for m in rng.integers(0, 41, size=4)), colour)
    if rng.random() < 0.3:
        pil = to_display_p3(pil)
    return _encode(pil.convert("RGBA"), "PNG")


def social(pil: Image.Image, rng: np.random.Generator) -> bytes:
    """Long side at most 1080-2048 px, JPEG q60-90 4:2:0, no metadata (Pillow copies none)."""
    long_side = int(rng.choice([1080, 1280, 1600, 2048]))
    resample = Image.Resampling.LANCZOS if rng.random() < 0.5 else Image.Resampling.BILINEAR
    pil = _long_side_at_most(pil.convert("RGB"), long_side, resample)
    return _encode(pil, "JPEG", quality=int(rng.integers(60, 91)), subsampling=2)


def thumbnail(pil: Image.Image, rng: np.random.Generator) -> bytes:
    """Long side 256-512 px, JPEG q70-92 (or WebP q75, as some platforms serve previews)."""
    resample = SCREEN_RESAMPLERS[1 + int(rng.integers(len(SCREEN_RESAMPLERS) - 1))]  # bicubic, Lanczos or box
    pil = _long_side_at_most(pil.convert("RGB"), int(rng.integers(256, 513)), resample)
    if rng.random() < 0.25:
        return _encode(pil, "WEBP", quality=75)
    return _encode(pil, "JPEG", quality=int(rng.integers(70, 93)), subsampling=2)


def crop_pad(pil: Image.Image, rng: np.random.Generator) -> bytes:
    """A person's crop (50-90% of each side), or letterboxed to 1:1, 4:5 or 16:9 in black, white or grey; then JPEG
    q85-95."""
    pil = pil.convert("RGB")
    if rng.random() < 0.5:
        fraction = rng.uniform(0.5, 0.9, size=2)
        w, h = max(16, round(pil.width * fraction[0])), max(16, round(pil.height * fraction[1]))
        x0, y0 = int(rng.integers(0, pil.width - w + 1)), int(rng.integers(0, pil.height - h + 1))
        pil = pil.crop((x0, y0, x0 + w, y0 + h))
    else:
        aspect = float(rng.choice([1.0, 4 / 5, 16 / 9]))  # width / height of the frame
        width, height = max(pil.width, round(pil.height * aspect)), max(pil.height, round(pil.width / aspect))
        left, top = (width - pil.width) // 2, (height - pil.height) // 2
        colour = [(0, 0, 0), (255, 255, 255), (128, 128, 128)][int(rng.integers(3))]
        pil = _pad(pil, (left, top, width - pil.width - left, height - pil.height - top), colour)
    return _encode(pil, "JPEG", quality=int(rng.integers(85, 96)), subsampling=2)


LAUNDER_ROUTE = {"screenshot": screenshot, "social": social, "thumbnail": thumbnail, "crop_pad": crop_pad}


@dataclass(frozen=True)
class Launder:
    """One laundering route per call, drawn from ``routes`` (training: both classes alike, seeded per item)."""

    routes: tuple[str, ...] = LAUNDERING_ROUTES

    def __call__(self, image: DecodedImage, rng: np.random.Generator) -> bytes:
        route = self.routes[int(rng.integers(len(self.routes)))]
        return LAUNDER_ROUTE[route](image.to_pil(), rng)


def _fixed_draw(route: str) -> Callable[[DecodedImage], bytes]:
    """Route ``route`` with its random choices drawn from the image's own sha256: the same bytes every time."""

    def variant(image: DecodedImage) -> bytes:
        return LAUNDER_ROUTE[route](image.to_pil(), np.random.default_rng(int(image.sha256[:16], 16)))

    return variant


# The evaluation's laundering variants (``imgverify evaluate --robustness``), one per route.
LAUNDERING: dict[str, Callable[[DecodedImage], bytes]] = {route: _fixed_draw(route) for route in LAUNDERING_ROUTES}
# The laundering code's own fingerprint: feature caches key laundered rows by it (``training.features.row_key``), so
# an edit to any route recomputes what it changed instead of serving stale features.
LAUNDERING_ID = hashlib.sha256(
    "".join(
        inspect.getsource(part)
        for part in (_resize_by, _long_side_at_most, to_display_p3, _pad, *LAUNDER_ROUTE.values(), Launder, _fixed_draw)
    ).encode()
).hexdigest()[:8]


# Fixed perturbations of the evaluation's robustness grid: single changes (geometric ones saved losslessly, as PNG, so
# that each row changes one thing only), then the four laundering routes, each a whole chain of changes.
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
    **LAUNDERING,
}
