"""Invisible watermarks of the Stable Diffusion reference scripts, decoded as ``invisible-watermark`` does.

Stable Diffusion's own scripts mark every output with ``imwatermark.WatermarkEncoder(...).encode(bgr,
"dwtDct")`` (read from the public code):

* SD 1.x (CompVis ``scripts/txt2img.py``): bytes ``b"StableDiffusionV1"`` (136 bits); the RunwayML inpainting
  script uses ``b"StableDiffusionV1-Inpainting"`` (224 bits).
* SD 2.x (Stability-AI/stablediffusion ``scripts/txt2img.py``): bytes ``b"SDV2"`` (32 bits).
* SDXL (Stability-AI/generative-models ``WatermarkEmbedder``, copied into diffusers'
  ``StableDiffusionXLWatermarker``): the 48 bits of ``0b101100111110110010010000011110111011000110011110``.

All are given BGR (cv2 order) except diffusers' SDXL pipeline, which passes RGB arrays unchanged; so both
channel orders are tried. The "dwtDct" method works on the U channel of cv2's YUV: a one-level Haar DWT, then
4x4 blocks of the LL band in raster order; block ``n`` carries bit ``n % length`` in the remainder of its
largest non-first coefficient modulo 36. Decoding is a majority vote per bit over all blocks.

The library decodes block by block in Python (seconds on a 12-megapixel photo). This module computes the
same thing vectorised with numpy (same cv2 colour conversion, the Haar LL band with pywt's exact arithmetic,
same vote), bit for bit equal to ``WatermarkDecoder(...).decode(bgr, "dwtDct")`` (a test checks this).
Because bit ``n % length`` is tied to the block's raster index, only a stripe of whole rows from the top keeps
the mapping; resizing or cropping columns would not. The stripe is limited to ``max_pixels``, which bounds
the cost on large photos while a 1024 px generator output is read whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCALE = 36.0  # imwatermark's default scales=[0, 36, 36]: only the U channel (index 1) is used
BLOCK = 4
MIN_PIXELS = 256 * 256  # the library refuses smaller images
MATCH_FRACTION = 0.95  # at least this share of bits must agree (46/48, 131/136, 31/32, 213/224)


@dataclass(frozen=True)
class KnownWatermark:
    name: str
    generator: str
    bits: tuple[int, ...]


def _bytes_bits(message: bytes) -> tuple[int, ...]:
    return tuple(int(b) for b in np.unpackbits(np.frombuffer(message, dtype=np.uint8)))


SDXL_MESSAGE = 0b101100111110110010010000011110111011000110011110
KNOWN_WATERMARKS = (
    KnownWatermark("StableDiffusionV1", "Stable Diffusion 1.x", _bytes_bits(b"StableDiffusionV1")),
    KnownWatermark(
        "StableDiffusionV1-Inpainting", "Stable Diffusion 1.x inpainting", _bytes_bits(b"StableDiffusionV1-Inpainting")
    ),
    KnownWatermark("SDV2", "Stable Diffusion 2.x", _bytes_bits(b"SDV2")),
    KnownWatermark("SDXL 48-bit", "Stable Diffusion XL", tuple(int(b) for b in bin(SDXL_MESSAGE)[2:])),
)


def block_bits(rgb: np.ndarray, encoder_order: str = "BGR") -> np.ndarray:
    """The bit each 4x4 LL block of the U channel votes for, in the library's raster order.

    ``encoder_order`` is the channel order the encoder was given: "BGR" (the reference scripts; the
    library's ``decode(rgb[..., ::-1])``) or "RGB" (diffusers' SDXL pipeline; ``decode(rgb)``). cv2's
    RGB2YUV on RGB equals BGR2YUV on the flipped copy, without making that copy.
    """
    import cv2

    height, width = rgb.shape[:2]
    code = cv2.COLOR_RGB2YUV if encoder_order == "BGR" else cv2.COLOR_BGR2YUV
    yuv = cv2.cvtColor(np.ascontiguousarray(rgb[: height // 4 * 4, : width // 4 * 4]), code)
    u = yuv[:, :, 1].astype(np.float64)
    # Haar LL with pywt's arithmetic (rows first, then columns; each pair as x0*s + x1*s), so that the
    # remainders below are bit-identical to pywt.dwt2 even where they sit exactly on the threshold.
    s = np.sqrt(0.5)
    rows = u[0::2] * s + u[1::2] * s
    ll = rows[:, 0::2] * s + rows[:, 1::2] * s
    n_rows, n_cols = ll.shape[0] // BLOCK, ll.shape[1] // BLOCK
    blocks = ll[: n_rows * BLOCK, : n_cols * BLOCK].reshape(n_rows, BLOCK, n_cols, BLOCK).swapaxes(1, 2)
    largest = np.abs(blocks.reshape(n_rows, n_cols, BLOCK * BLOCK)[:, :, 1:]).max(axis=2)
    return ((largest % SCALE) > 0.5 * SCALE).reshape(-1)


def vote(bits: np.ndarray, length: int) -> np.ndarray:
    """Majority vote of block bits into a ``length``-bit message (the library's mean * 255 > 127)."""
    index = np.arange(bits.size) % length
    ones = np.bincount(index, weights=bits.astype(np.float64), minlength=length)
    counts = np.bincount(index, minlength=length)
    return (ones / np.maximum(counts, 1)) * 255 > 127


def check_watermarks(rgb: np.ndarray, max_pixels: int) -> dict:
    """Match the known watermarks on an RGB image; report the best match per watermark and channel order."""
    height, width = rgb.shape[:2]
    if height * width < MIN_PIXELS:
        return {"checked": False, "reason": f"image is {width}x{height}; dwtDct needs at least 256x256 pixels"}
    # Whole rows from the top keep each block's bit index; 8 px = one 4x4 block of the half-size LL band.
    rows = min(height, max(8, max_pixels // max(width, 1)) // 8 * 8)
    stripe = rgb[:rows]
    matches: dict[str, dict[str, float]] = {}
    best: tuple[float, str, str] | None = None
    for order in ("BGR", "RGB"):
        bits = block_bits(stripe, order)
        for mark in KNOWN_WATERMARKS:
            if bits.size < len(mark.bits):
                continue
            decoded = vote(bits, len(mark.bits))
            fraction = float(np.mean(decoded == np.asarray(mark.bits, dtype=bool)))
            matches.setdefault(mark.name, {})[order] = round(fraction, 4)
            if best is None or fraction > best[0]:
                best = (fraction, mark.name, order)
    report: dict = {
        "checked": True,
        "rows_used": rows,
        "pixels_used": rows * width,
        "matches": matches,
        "threshold": MATCH_FRACTION,
        "detected": None,
    }
    if best is not None and best[0] >= MATCH_FRACTION:
        mark = next(m for m in KNOWN_WATERMARKS if m.name == best[1])
        report.update(detected=mark.name, generator=mark.generator, channel_order=best[2], match=best[0])
    return report
