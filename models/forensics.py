"""Weight-free image forensics: JPEG container, error levels, noise, spectrum and geometry.

The ``forensics`` detector reads two things of a :class:`DecodedImage`: the pixels (``image.rgb``) and the
original file bytes (``image.data``), whose container it parses with Pillow without decoding pixels again
(JPEG quantisation tables and chroma sampling, the WebP VP8/VP8L chunk, TIFF compression). It loads no
weights; every feature is a deterministic function of the file.

Which pixels each feature sees (crop = the centre ``crop_size`` x ``crop_size`` window, default 1024, at
native resolution, never resized: resizing erases the noise these statistics measure):

=============================  ===============  ==========================================================
feature                        pixels           method
=============================  ===============  ==========================================================
image_entropy                  whole image      Shannon entropy (bits) of the 8-bit grey histogram
compression_level              none (container) 0 = lossless (PNG/BMP/GIF/lossless WebP/TIFF) or JPEG q100,
                                                1 = JPEG q <= 10; linear in the estimated quality between
jpeg_quality                   none (container) IJG quality whose scaled Annex K tables fit the file's
                                                tables best (least squares over all 64 entries)
jpeg_table_nonstandard         none (container) fraction of table entries that differ from that IJG table
jpeg_chroma_subsampling        none (container) luma samples per chroma sample: 1 (4:4:4), 2 (4:2:2), 4 (4:2:0)
jpeg_double_compression        crop, luma       double-quantisation periodicity of DCT histograms (below)
ela_mean / ela_std             crop, RGB        |pixels - pixels re-saved as JPEG at ``ela_quality``|
ela_high_fraction              crop, RGB        share of crop pixels whose error level exceeds ``ela_high_level``
noise_log_variance             crop, luma       log10(1 + variance) of the 3x3 Laplacian residual
noise_log_kurtosis             crop, luma       log10 of the residual's (Pearson) kurtosis; 0.48 = Gaussian
spectrum_hf_slope              crop, luma       slope of log10 power vs log10 frequency, 1/8..1/2 cycles/px
spectrum_upsampling_peak       crop, luma       log10 peak / background at 1/2, 1/3, 1/4 cycles/px in the
                                                spectrum of the residual profiles (upsampling periodicity)
geometry_pow2_alignment        size             largest k <= 7 with both sides multiples of 2**k
geometry_generator_size        size             1 if width x height is a standard generator output size
=============================  ===============  ==========================================================

Block-grid statistics (ELA, the DCT histograms) are computed on the pixels in the order they are stored in
the file (EXIF orientation undone) and on a crop whose offset is a multiple of 16, so the crop's 8x8
blocks are the JPEG's own blocks (16 keeps the 4:2:0 chroma blocks aligned too).

Double compression (``jpeg_double_compression``): the luma crop is cut into its 8x8 JPEG blocks, each block
is DCT-transformed and divided by the file's luma quantisation step, which gives back the quantised
coefficients. For the 14 lowest AC frequencies the histogram of ``|k|`` is compared with a smooth envelope
(the geometric mean of the bins k-2, k-1, k+1, k+2); the score is the mean absolute log ratio. A JPEG
compressed once has a smooth, near-Laplacian histogram (score ~0.1-0.5). A JPEG compressed first with a
coarser step q1 and then re-saved with a finer step q2 (e.g. q70 then q90) has periodically empty or
over-full bins (score ~1.3-2.5). Limits: it does not see a second compression that is coarser than the
first (q90 then q70: the coarser step erases the first one's trace), nor a re-compression on a shifted 8x8
grid (a crop between the two saves); small images have too few blocks and the feature is then omitted.

Upsampling peaks (``spectrum_upsampling_peak``): the absolute first and second differences of the luma
are averaged along rows (and along columns) into profiles whose spectra show peaks at 1/f cycles/px when
the image was upsampled by f (2x nearest: period 2 in the first difference; 2x bilinear: in the second).
Limit: JPEG's 8x8 block grid also puts peaks at multiples of 1/8, which include 1/4 and 1/2, so a strongly
compressed JPEG scores higher than the same pixels stored losslessly.

For non-JPEG files the jpeg_* features are omitted (not invented); ``compression_level`` is given for
lossless files (0) and for lossy WebP, whose quality is estimated from the VP8 quantiser indices (the
inverse of libwebp's quality-to-quantiser map, approximate: libwebp varies the quantiser per segment).
Tiny images keep their container and geometry features; pixel statistics need a side of 16 px (32 px for
the double-compression histograms, 64 px for the spectrum); the reason for every omitted feature is in
``details["omitted"]``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
from PIL import Image

from models.base import CONTEXT_PREFIX, Detector, DetectorResult
from models.image_input import DecodedImage
from models.registry import register_detector
from models.schema import entry_of, features_of

CODE_VERSION = "1"

# A crop whose luminance varies less than this (in 8-bit levels) is flat: it has no spectrum to measure.
FLAT_STD = 1e-3
# Pixel statistics below these sides are omitted, not guessed.
PIXEL_MIN_SIDE = 16
DOUBLE_COMPRESSION_MIN_SIDE = 32
SPECTRUM_MIN_SIDE = 64

# Evidence sentences are written above these values (they do not change any feature).
DOUBLE_COMPRESSION_EVIDENCE = 1.0
UPSAMPLING_EVIDENCE = 1.0

# ---- JPEG quantisation: ITU-T T.81 Annex K tables (natural order) and the IJG quality scaling ------------

ANNEX_K_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
)
ANNEX_K_CHROMA = np.array(
    [
        [17, 18, 24, 47, 99, 99, 99, 99],
        [18, 21, 26, 66, 99, 99, 99, 99],
        [24, 26, 56, 99, 99, 99, 99, 99],
        [47, 66, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
    ],
    dtype=np.int64,
)


def ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    """The table libjpeg's ``jpeg_set_quality(quality, force_baseline=TRUE)`` writes for ``base``."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * scale + 50) // 100, 1, 255)


# All 100 IJG table pairs, computed once: shape (100, 2, 8, 8), index = quality - 1.
IJG_TABLES = np.stack([np.stack([ijg_table(ANNEX_K_LUMA, q), ijg_table(ANNEX_K_CHROMA, q)]) for q in range(1, 101)])


def estimate_jpeg_quality(luma: np.ndarray, chroma: np.ndarray | None) -> tuple[int, float]:
    """Least-squares IJG quality for the given tables, and the fraction of entries that differ from it.

    Ties (equal squared error) go to the highest quality.
    """
    tables = luma[None] if chroma is None else np.stack([luma, chroma])
    candidates = IJG_TABLES[:, : len(tables)]
    squared_error = ((candidates - tables[None].astype(np.int64)) ** 2).sum(axis=(1, 2, 3))
    best = int(np.flatnonzero(squared_error == squared_error.min())[-1])
    nonstandard = float(np.mean(candidates[best] != tables))
    return best + 1, nonstandard


def compression_level_from_quality(quality: float) -> float:
    """0 at quality 100 (or a lossless file), 1 at quality 10 or below, linear between."""
    return float(np.clip((100.0 - quality) / 90.0, 0.0, 1.0))


# ---- Sizes that image generators emit (width, height); both orientations are matched ----------------------

GENERATOR_SQUARE_SIDES = (256, 384, 512, 640, 768, 1024, 1328, 1536, 2048)
GENERATOR_SIZES = frozenset(
    {(side, side) for side in GENERATOR_SQUARE_SIDES}
    | {
        (size if flip else size[::-1])
        for flip in (True, False)
        for size in (
            (768, 512),  # SD 1.x / 2.x
            (1152, 896),
            (1216, 832),
            (1344, 768),
            (1536, 640),  # SDXL training buckets
            (1792, 1024),  # DALL-E 3
            (1536, 1024),  # GPT-image-1
            (1456, 816),
            (1344, 896),
            (1232, 928),  # Midjourney 16:9, 3:2, 4:3
            (1248, 832),
            (1184, 864),
            (1536, 672),
            (1376, 768),  # Gemini / Imagen ("Nano Banana")
            (1408, 768),
            (1280, 896),  # Imagen 3
            (1664, 928),
            (1472, 1140),
            (1584, 1056),  # Qwen-Image
        )
    }
)


def pow2_alignment(width: int, height: int, cap: int = 7) -> int:
    """Largest k <= cap such that both sides are multiples of 2**k (6 = both multiples of 64)."""
    k = 0
    while k < cap and width % (2 ** (k + 1)) == 0 and height % (2 ** (k + 1)) == 0:
        k += 1
    return k


# ---- Container parsing (no pixel decoding) ----------------------------------------------------------------


@dataclass
class ContainerInfo:
    """What the file's container says about how its pixels were compressed."""

    lossless: bool | None = None  # True: no lossy step in the container; None: unknown
    jpeg_luma_table: np.ndarray | None = None  # (8, 8) natural order
    jpeg_chroma_table: np.ndarray | None = None
    jpeg_components: int | None = None
    jpeg_chroma_subsampling: int | None = None  # luma samples per chroma sample
    webp_quantizers: list[int] | None = None  # VP8 luma AC quantiser index per segment, 0..127
    problems: list[str] = field(default_factory=list)


def parse_container(data: bytes, fmt: str) -> ContainerInfo:
    """Read compression facts from the file bytes; problems are listed, never raised."""
    info = ContainerInfo()
    if fmt in ("PNG", "BMP", "GIF"):
        # GIF counts as lossless: its LZW coding is; a palette reduction before it is not a container fact.
        info.lossless = True
        return info
    if fmt == "WEBP":
        _parse_webp(data, info)
        return info
    try:
        container = Image.open(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - an unreadable container is reported, not fatal
        info.problems.append(f"container unreadable: {type(err).__name__}: {err}")
        return info
    if fmt == "TIFF":
        compression = str(container.info.get("compression", "unknown"))
        info.lossless = "jpeg" not in compression.lower()
        if not info.lossless:
            info.problems.append(f"TIFF with {compression} compression: quality not estimated")
        return info
    if fmt == "JPEG":
        info.lossless = False
        _parse_jpeg(container, info)
    return info


def _parse_jpeg(container: Image.Image, info: ContainerInfo) -> None:
    """Sampling factors and quantisation tables from Pillow's parsed JPEG header."""
    layers = list(getattr(container, "layer", []) or [])  # (component id, h, v, table id) per component
    tables = dict(getattr(container, "quantization", {}) or {})  # table id -> 64 values, natural order
    if not layers:
        info.problems.append("JPEG has no frame header (SOF): components unknown")
        return
    info.jpeg_components = len(layers)
    if len(layers) == 3:
        max_h = max(layer[1] for layer in layers)
        max_v = max(layer[2] for layer in layers)
        chroma_h, chroma_v = layers[1][1], layers[1][2]
        if chroma_h and chroma_v:
            info.jpeg_chroma_subsampling = (max_h * max_v) // (chroma_h * chroma_v)
    if not tables:
        info.problems.append("JPEG has no quantisation tables (DQT segment missing): quality cannot be read")
        return
    luma_id = layers[0][3]
    if luma_id not in tables:
        info.problems.append(f"JPEG luma component uses quantisation table {luma_id}, which the file lacks")
        return
    info.jpeg_luma_table = np.asarray(tables[luma_id], dtype=np.int64).reshape(8, 8)
    if len(layers) == 3:
        chroma_id = layers[1][3]
        if chroma_id in tables:
            info.jpeg_chroma_table = np.asarray(tables[chroma_id], dtype=np.int64).reshape(8, 8)
        else:
            info.problems.append(f"JPEG chroma component uses quantisation table {chroma_id}, which the file lacks")


def _parse_webp(data: bytes, info: ContainerInfo) -> None:
    """Lossless (VP8L) or lossy (VP8, with its quantiser indices), from the RIFF chunks."""
    chunk = _webp_image_chunk(data)
    if chunk is None:
        info.problems.append("WebP has no VP8/VP8L image chunk")
        return
    fourcc, payload = chunk
    if fourcc == b"VP8L":
        info.lossless = True
        return
    info.lossless = False
    try:
        info.webp_quantizers = _vp8_quantizers(payload)
    except ValueError as err:
        info.problems.append(f"VP8 frame header unreadable: {err}")


def _webp_image_chunk(data: bytes) -> tuple[bytes, bytes] | None:
    """The first VP8 or VP8L chunk (looking inside the first ANMF frame of an animation)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    position, end = 12, len(data)
    while position + 8 <= end:
        fourcc = data[position : position + 4]
        size = int.from_bytes(data[position + 4 : position + 8], "little")
        payload = data[position + 8 : position + 8 + size]
        if fourcc in (b"VP8 ", b"VP8L"):
            return fourcc, payload
        if fourcc == b"ANMF":
            # An ANMF payload is a 16-byte frame header followed by the frame's own chunks.
            position, end = position + 8 + 16, position + 8 + size
            continue
        position += 8 + size + (size & 1)
    return None


class _BoolDecoder:
    """VP8's boolean entropy decoder (RFC 6386, section 7.3), enough to read the frame header."""

    def __init__(self, buffer: bytes):
        if len(buffer) < 2:
            raise ValueError("first partition shorter than 2 bytes")
        self.buffer, self.position = buffer, 2
        self.value, self.range, self.bit_count = (buffer[0] << 8) | buffer[1], 255, 0

    def read_bool(self, probability: int) -> int:
        split = 1 + (((self.range - 1) * probability) >> 8)
        if self.value >= split << 8:
            bit, self.range, self.value = 1, self.range - split, self.value - (split << 8)
        else:
            bit, self.range = 0, split
        while self.range < 128:
            self.value, self.range = self.value << 1, self.range << 1
            self.bit_count += 1
            if self.bit_count == 8:
                self.bit_count = 0
                if self.position < len(self.buffer):
                    self.value |= self.buffer[self.position]
                    self.position += 1
        return bit

    def literal(self, bits: int) -> int:
        value = 0
        for _ in range(bits):
            value = (value << 1) | self.read_bool(128)
        return value

    def optional_signed(self, bits: int) -> int | None:
        """A flag, then (if set) a magnitude and a sign; None when the flag is clear."""
        if not self.literal(1):
            return None
        magnitude = self.literal(bits)
        return -magnitude if self.literal(1) else magnitude


def _vp8_quantizers(payload: bytes) -> list[int]:
    """Luma AC quantiser index (0..127) of each segment of a VP8 key frame (RFC 6386, section 19.2)."""
    if len(payload) < 11:
        raise ValueError("VP8 chunk too short")
    if payload[0] & 1:
        raise ValueError("first VP8 frame is not a key frame")
    if payload[3:6] != b"\x9d\x01\x2a":
        raise ValueError("VP8 start code missing")
    header = _BoolDecoder(payload[10:])
    header.literal(2)  # colour space, clamping type
    segment_values: list[int | None] = [None] * 4
    absolute_segments = False
    if header.literal(1):  # segmentation enabled
        update_map = header.literal(1)
        if header.literal(1):  # update segment feature data
            absolute_segments = bool(header.literal(1))
            segment_values = [header.optional_signed(7) for _ in range(4)]
            for _ in range(4):
                header.optional_signed(6)  # loop filter level per segment
        if update_map:
            for _ in range(3):
                if header.literal(1):
                    header.literal(8)
    header.literal(1 + 6 + 3)  # filter type, loop filter level, sharpness
    if header.literal(1) and header.literal(1):  # loop filter deltas enabled and updated
        for _ in range(8):
            header.optional_signed(6)
    header.literal(2)  # log2 of the number of DCT partitions
    base = header.literal(7)  # y_ac_qi
    if all(value is None for value in segment_values):
        return [base]
    if absolute_segments:
        return [int(np.clip(value or 0, 0, 127)) for value in segment_values]
    return [int(np.clip(base + (value or 0), 0, 127)) for value in segment_values]


def webp_quality_from_quantizer(quantizer: float) -> float:
    """Invert libwebp's ``QualityToCompression``: quantiser index 0..127 -> quality 0..100 (approximate)."""
    compression = 1.0 - quantizer / 127.0
    linear = compression**3
    quality = linear * 1.5 if linear < 0.5 else (linear + 1.0) / 2.0
    return 100.0 * quality


# ---- Pixel geometry: stored orientation and the grid-aligned centre crop --------------------------------

# Displayed pixels -> pixels as stored in the file, undoing what decode_image's EXIF transpose did.
_UNDO_ORIENTATION: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, -1),
}
# Stored -> displayed (what ImageOps.exif_transpose does), for maps computed on the stored pixels.
_APPLY_ORIENTATION: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    **_UNDO_ORIENTATION,
    6: lambda a: np.rot90(a, -1),
    8: lambda a: np.rot90(a, 1),
}


def centre_crop_box(height: int, width: int, size: int, align: int = 16) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width): centred, offsets multiples of ``align``, sides multiples of 8."""
    crop_h, crop_w = min(height, size) // 8 * 8, min(width, size) // 8 * 8
    top = (height - crop_h) // 2 // align * align
    left = (width - crop_w) // 2 // align * align
    return top, left, crop_h, crop_w


def luminance(rgb: np.ndarray) -> np.ndarray:
    """JPEG's (BT.601 full range) luma as float32: what the encoder quantised."""
    return (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


# ---- Statistics -------------------------------------------------------------------------------------------


def grey_entropy(rgb: np.ndarray) -> float:
    """Shannon entropy in bits of the 256-bin grey-level histogram."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    # calcHist counts uint8 in place (np.bincount would first widen every pixel to int64).
    counts = cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def error_levels(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Per-pixel mean absolute difference (0..255) between ``rgb`` and its JPEG re-save at ``quality``.

    Saved 4:4:4 so that the map shows quantisation error, not chroma resampling.
    """
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buffer, format="JPEG", quality=quality, subsampling=0)
    resaved = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return cv2.absdiff(np.ascontiguousarray(rgb), resaved).mean(axis=2, dtype=np.float32)


def noise_statistics(luma: np.ndarray) -> dict[str, float]:
    """log10(1 + variance) and log10(kurtosis) of the 3x3 Laplacian residual (image borders excluded)."""
    residual = cv2.Laplacian(luma, cv2.CV_32F, ksize=1)[1:-1, 1:-1]
    squared = residual - np.float32(residual.mean(dtype=np.float64))
    squared *= squared  # in place: one crop-sized buffer
    variance = float(squared.mean(dtype=np.float64))
    stats = {"noise_log_variance": math.log10(1.0 + variance)}
    if variance > 1e-12:
        squared *= squared
        fourth_moment = float(squared.mean(dtype=np.float64))
        stats["noise_log_kurtosis"] = math.log10(max(1.0, fourth_moment / variance**2))
    return stats


@lru_cache(maxsize=8)
def _radial_bins(height: int, width: int, low: float, high: float, bins: int) -> tuple[np.ndarray, ...]:
    """Hann window, annulus index per rfft2 bin (-1 outside [low, high]) and annulus centres; per shape."""
    window = np.outer(np.hanning(height), np.hanning(width)).astype(np.float32)
    radius = np.hypot(np.fft.rfftfreq(width)[None, :], np.fft.fftfreq(height)[:, None])
    edges = np.geomspace(low, high, bins + 1)
    which = np.digitize(radius, edges) - 1
    which[(which < 0) | (which >= bins)] = -1
    return window, which.ravel(), np.sqrt(edges[:-1] * edges[1:])


def spectrum_slope(luma: np.ndarray, low: float = 1 / 8, high: float = 1 / 2, bins: int = 16) -> float | None:
    """Least-squares slope of log10 power against log10 radial frequency in [low, high] cycles/px.

    The crop is Hann-windowed (no edge cross); power is averaged in ``bins`` log-spaced annuli. None when
    fewer than two annuli carry any power (a flat or nearly flat crop has no slope to measure).
    """
    window, which, centres = _radial_bins(*luma.shape, low, high, bins)
    spectrum = np.fft.rfft2((luma - np.float32(luma.mean(dtype=np.float64))) * window)
    power = (spectrum.real**2 + spectrum.imag**2).ravel()
    inside = which >= 0
    sums = np.bincount(which[inside], weights=power[inside], minlength=bins)
    counts = np.bincount(which[inside], minlength=bins)
    usable = (counts > 0) & (sums > 0)
    if usable.sum() < 2:
        return None
    slope, _ = np.polyfit(np.log10(centres[usable]), np.log10(sums[usable] / counts[usable]), 1)
    return float(slope)


def upsampling_peak(luma: np.ndarray, frequencies: tuple[float, ...] = (1 / 2, 1 / 3, 1 / 4)) -> tuple[float, dict]:
    """Strongest log10 peak-to-background ratio at ``frequencies`` in the residual profiles' spectra.

    For each axis, |first difference| and |second difference| along that axis are averaged across the
    other axis into a profile; a resampled image has periodic residual energy, so its profile spectrum
    has a peak at 1/factor. Per frequency: the better of the two residuals, averaged over the two axes.
    """
    scores: dict[str, list[float]] = {f"1/{round(1 / f)}": [] for f in frequencies}
    for axis in (0, 1):
        best = {name: -np.inf for name in scores}
        for order in (1, 2):
            profile = np.abs(np.diff(luma, n=order, axis=axis)).mean(axis=1 - axis, dtype=np.float64)
            n = len(profile) // 24 * 24  # 1/2, 1/3 and 1/4 then fall exactly on spectrum bins
            magnitude = np.abs(np.fft.rfft(profile[:n] - profile[:n].mean()))
            floor = 1e-9 * max(1.0, float(profile.mean())) * n  # keeps a flat profile's ratio finite
            half_width = max(8, n // 32)
            for name, frequency in zip(scores, frequencies):
                peak_index = round(frequency * n)
                near = np.arange(max(1, peak_index - half_width), min(n // 2, peak_index + half_width) + 1)
                background = np.median(magnitude[near[np.abs(near - peak_index) > 2]])
                ratio = (magnitude[peak_index] + floor) / (background + floor)
                best[name] = max(best[name], math.log10(ratio))
        for name in scores:
            scores[name].append(best[name])
    per_frequency = {name: float(np.mean(values)) for name, values in scores.items()}
    return max(per_frequency.values()), per_frequency


# Zig-zag positions 1..14 (the lowest AC frequencies), as (row, column) of the 8x8 DCT block.
LOW_AC_ZIGZAG = (
    (0, 1),
    (1, 0),
    (2, 0),
    (1, 1),
    (0, 2),
    (0, 3),
    (1, 2),
    (2, 1),
    (3, 0),
    (4, 0),
    (3, 1),
    (2, 2),
    (1, 3),
    (0, 4),
)


def _dct_matrix() -> np.ndarray:
    """Orthonormal 8-point DCT-II matrix: JPEG's forward DCT is ``C @ block @ C.T``."""
    n = np.arange(8)
    matrix = np.sqrt(2 / 8) * np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 16)
    matrix[0] /= np.sqrt(2)
    return matrix


DCT_8 = _dct_matrix()


def double_compression_score(
    luma: np.ndarray, luma_table: np.ndarray, max_bin: int = 20, min_count: float = 30.0
) -> tuple[float | None, int]:
    """Double-quantisation periodicity of the DCT histograms (see the module docstring).

    ``luma`` must start on the JPEG's 8x8 grid. Returns (score, number of frequencies used); the score is
    None when fewer than 3 frequencies have enough blocks to judge.
    """
    height, width = luma.shape[0] // 8 * 8, luma.shape[1] // 8 * 8
    blocks = luma[:height, :width].reshape(height // 8, 8, width // 8, 8).swapaxes(1, 2).reshape(-1, 8, 8)
    coefficients = DCT_8 @ (blocks.astype(np.float64) - 128.0) @ DCT_8.T
    rows, columns = np.array(LOW_AC_ZIGZAG).T
    steps = luma_table[rows, columns].astype(np.float64)
    quantised = np.abs(np.rint(coefficients[:, rows, columns] / steps)).astype(np.int64)  # (blocks, 14)
    # One histogram of |k| per frequency, bins 0..max_bin (larger values dropped).
    offsets = np.arange(len(steps)) * (max_bin + 2)
    flat = (np.minimum(quantised, max_bin + 1) + offsets).ravel()
    histograms = np.bincount(flat, minlength=len(steps) * (max_bin + 2)).reshape(len(steps), max_bin + 2)
    histograms = histograms[:, : max_bin + 1].astype(np.float64)
    # For bins k = 2 .. max_bin-2: the envelope is the geometric mean of (h + 1) over k-2, k-1, k+1, k+2.
    log_h = np.log(histograms + 1.0)
    k = np.arange(2, max_bin - 1)
    neighbour_log_mean = (log_h[:, k - 2] + log_h[:, k - 1] + log_h[:, k + 1] + log_h[:, k + 2]) / 4.0
    neighbour_count = (histograms[:, k - 2] + histograms[:, k - 1] + histograms[:, k + 1] + histograms[:, k + 2]) / 4.0
    deviation = np.abs(log_h[:, k] - neighbour_log_mean)
    enough = neighbour_count >= min_count  # bins with too few blocks are Poisson noise, not evidence
    judged = enough.sum(axis=1) >= 2
    if judged.sum() < 3:
        return None, int(judged.sum())
    per_frequency = (deviation * enough).sum(axis=1)[judged] / enough.sum(axis=1)[judged]
    return float(per_frequency.mean()), int(judged.sum())


# ---- The detector ---------------------------------------------------------------------------------------


JPEG_FEATURES = ("jpeg_quality", "jpeg_table_nonstandard", "jpeg_chroma_subsampling", "jpeg_double_compression")
PIXEL_FEATURES = (
    "image_entropy",
    "ela_mean",
    "ela_std",
    "ela_high_fraction",
    "noise_log_variance",
    "noise_log_kurtosis",
    "jpeg_double_compression",
    "spectrum_hf_slope",
    "spectrum_upsampling_peak",
)


@dataclass
class _Report:
    """What one image's measurement collects; ``omitted`` says why each absent feature is absent."""

    features: dict[str, float] = field(default_factory=dict)
    omitted: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)

    def omit(self, names: Iterable[str], reason: str) -> None:
        for name in names:
            self.omitted.setdefault(name, reason)  # the first reason is the real one


@dataclass
class ForensicsInput:
    """One image, ready for the statistics: stored-orientation pixels and the parsed container."""

    stored_rgb: np.ndarray  # (H, W, 3) uint8 view, pixels in file order (EXIF orientation undone)
    orientation: int
    width: int  # displayed size
    height: int
    format: str
    source_mode: str
    container: ContainerInfo


@dataclass
class ForensicsOutput:
    """One image's measurements, or the error that stopped them."""

    features: dict[str, float]
    details: dict[str, Any]
    evidence: list[str]
    source: ForensicsInput  # kept for the ELA heatmap, computed only when artifacts are asked for
    error: str | None = None


@register_detector
class ForensicsDetector(Detector):
    """Weight-free forensic statistics of the pixels and the JPEG/WebP container."""

    name = "forensics"
    features = features_of(name)
    default_config: dict[str, Any] = {
        "crop_size": 1024,  # side of the centre crop for ELA, noise, spectrum and DCT statistics
        "ela_quality": 90,  # JPEG quality of the error-level re-save
        "ela_high_level": 3.0,  # grey levels above which a pixel counts as "high error" in ela_high_fraction
        "ela_heatmap_full_scale": 10.0,  # error level shown as 1.0 in the ela_heatmap artifact
    }
    min_side = 1  # container and geometry features apply to any size; pixel statistics check their own
    has_artifacts = entry_of(name).has_artifacts

    @property
    def version(self) -> str:
        config = ",".join(f"{key}={self.config[key]}" for key in sorted(self.config))
        return f"forensics-{CODE_VERSION} {config}"

    def preprocess(self, image: DecodedImage) -> ForensicsInput:
        return ForensicsInput(
            stored_rgb=_UNDO_ORIENTATION.get(image.orientation, _UNDO_ORIENTATION[1])(image.rgb),
            orientation=image.orientation if image.orientation in _UNDO_ORIENTATION else 1,
            width=image.width,
            height=image.height,
            format=image.format,
            source_mode=image.source_mode,
            container=parse_container(image.data, image.format),
        )

    def _forward(self, inputs: list[ForensicsInput]) -> list[ForensicsOutput]:
        """No model to batch: each image is measured on its own; a failure stays that image's error."""
        outputs = []
        for item in inputs:
            try:
                outputs.append(self._measure(item))
            except Exception as err:  # noqa: BLE001 - reported in this image's result only
                outputs.append(ForensicsOutput({}, {}, [], item, error=f"{type(err).__name__}: {err}"))
        return outputs

    def postprocess(self, output: ForensicsOutput, artifacts: bool) -> DetectorResult:
        if output.error is not None:
            return DetectorResult(error=output.error)
        result = DetectorResult(features=output.features, details=output.details, evidence=output.evidence)
        if artifacts:
            result.artifacts["ela_heatmap"] = self.ela_heatmap(output.source)
        return result

    # ---- measurement ----------------------------------------------------------------------------------

    def _measure(self, item: ForensicsInput) -> ForensicsOutput:
        report = _Report(details={"format": item.format})
        self._container_features(item, report)
        self._geometry_features(item, report)
        if min(item.stored_rgb.shape[:2]) < PIXEL_MIN_SIDE:
            report.omit(PIXEL_FEATURES, f"image side below {PIXEL_MIN_SIDE} px")
        else:
            self._pixel_features(item, report)
        report.details["omitted"] = report.omitted
        return ForensicsOutput(report.features, report.details, report.evidence, item)

    def _container_features(self, item: ForensicsInput, report: _Report) -> None:
        """compression_level and the jpeg_* container features."""
        container = item.container
        report.details["container_problems"] = container.problems
        report.evidence.extend(f"{problem}." for problem in container.problems)
        if item.format != "JPEG":
            report.omit(JPEG_FEATURES, f"not a JPEG ({item.format})")
            if container.lossless:
                report.features["compression_level"] = 0.0
                report.details["compression"] = "lossless"
            elif container.webp_quantizers:
                quality = webp_quality_from_quantizer(float(np.mean(container.webp_quantizers)))
                report.features["compression_level"] = compression_level_from_quality(quality)
                report.details.update(
                    compression="lossy WebP (VP8)",
                    webp_quantizers=container.webp_quantizers,
                    webp_quality_estimate=round(quality, 1),
                )
            else:
                report.omit(["compression_level"], "the file's compression could not be read")
            return
        if container.jpeg_chroma_subsampling is not None:
            report.features["jpeg_chroma_subsampling"] = float(container.jpeg_chroma_subsampling)
        elif container.jpeg_components is None:
            report.omit(["jpeg_chroma_subsampling"], "JPEG frame header unreadable")
        else:
            report.omit(["jpeg_chroma_subsampling"], f"JPEG has {container.jpeg_components} component(s), not YCbCr")
        if container.jpeg_luma_table is None:
            no_table = ["jpeg_quality", "jpeg_table_nonstandard", "compression_level", "jpeg_double_compression"]
            report.omit(no_table, "no usable quantisation table")
            return
        quality, nonstandard = estimate_jpeg_quality(container.jpeg_luma_table, container.jpeg_chroma_table)
        report.features.update(
            jpeg_quality=float(quality),
            jpeg_table_nonstandard=nonstandard,
            compression_level=compression_level_from_quality(quality),
        )
        report.details.update(compression="JPEG", jpeg_luma_table=container.jpeg_luma_table.tolist())
        tables = "standard libjpeg tables" if nonstandard == 0 else f"custom tables ({nonstandard:.0%} differ)"
        report.evidence.append(f"JPEG quality about {quality} with {tables}.")

    def _geometry_features(self, item: ForensicsInput, report: _Report) -> None:
        alignment = pow2_alignment(item.width, item.height)
        generator_size = (item.width, item.height) in GENERATOR_SIZES
        report.features["geometry_pow2_alignment"] = float(alignment)
        report.features["geometry_generator_size"] = float(generator_size)
        # Context, never a reason on its own: any photo can be cropped and resized to these sizes by a CMS or an
        # app, so these features are not fusion inputs (FeatureSpec.fusion_input) and the sentence says so.
        if generator_size:
            report.evidence.append(
                f"{CONTEXT_PREFIX}{item.width}x{item.height} is a common generator size, which is weak evidence "
                "(photos are often resized to it); not used by the verdict."
            )
        elif alignment >= 6:
            report.evidence.append(
                f"{CONTEXT_PREFIX}both sides of {item.width}x{item.height} are multiples of 64, as generators emit; "
                "weak evidence, not used by the verdict."
            )

    def _pixel_features(self, item: ForensicsInput, report: _Report) -> None:
        """Entropy on the whole image; everything else on the grid-aligned centre crop."""
        stored = item.stored_rgb
        report.features["image_entropy"] = grey_entropy(stored)
        top, left, crop_h, crop_w = centre_crop_box(*stored.shape[:2], int(self.config["crop_size"]))
        report.details["crop"] = {
            "top": top,
            "left": left,
            "height": crop_h,
            "width": crop_w,
            "orientation": "as stored in the file",
        }
        crop = np.ascontiguousarray(stored[top : top + crop_h, left : left + crop_w])
        luma = luminance(crop)

        levels = error_levels(crop, int(self.config["ela_quality"]))
        report.features.update(
            ela_mean=float(levels.mean()),
            ela_std=float(levels.std()),
            ela_high_fraction=float(np.mean(levels > float(self.config["ela_high_level"]))),
        )
        noise = noise_statistics(luma)
        report.features.update(noise)
        if "noise_log_kurtosis" not in noise:
            report.omit(["noise_log_kurtosis"], "the crop is flat: no residual to measure")
        if item.format == "JPEG" and item.container.jpeg_luma_table is not None:
            self._double_compression(item, luma, report)
        self._spectrum_features(item, luma, report)

    def _double_compression(self, item: ForensicsInput, luma: np.ndarray, report: _Report) -> None:
        if min(luma.shape) < DOUBLE_COMPRESSION_MIN_SIDE:
            report.omit(["jpeg_double_compression"], f"image side below {DOUBLE_COMPRESSION_MIN_SIDE} px")
            return
        if item.source_mode not in ("RGB", "L"):
            report.omit(["jpeg_double_compression"], f"{item.source_mode} JPEG: its luma is not the RGB's luma")
            return
        score, used = double_compression_score(luma, item.container.jpeg_luma_table)
        report.details["double_compression_frequencies_used"] = used
        if score is None:
            report.omit(["jpeg_double_compression"], "too few 8x8 blocks for the DCT histograms")
            return
        report.features["jpeg_double_compression"] = score
        if score > DOUBLE_COMPRESSION_EVIDENCE:
            report.evidence.append(
                f"DCT histograms show double-quantisation periodicity (score {score:.2f}): "
                "the JPEG was saved at least twice."
            )

    def _spectrum_features(self, item: ForensicsInput, luma: np.ndarray, report: _Report) -> None:
        spectrum_features = ["spectrum_hf_slope", "spectrum_upsampling_peak"]
        if min(luma.shape) < SPECTRUM_MIN_SIDE:
            report.omit(spectrum_features, f"image side below {SPECTRUM_MIN_SIDE} px")
            return
        slope = spectrum_slope(luma) if float(luma.std()) > FLAT_STD else None
        if slope is None:
            report.omit(spectrum_features, "the crop is flat: no spectrum")
            return
        peak, per_frequency = upsampling_peak(luma)
        report.features.update(spectrum_hf_slope=slope, spectrum_upsampling_peak=peak)
        report.details["upsampling_peaks"] = {name: round(value, 3) for name, value in per_frequency.items()}
        strongest = max(per_frequency, key=per_frequency.get)
        # In a JPEG, peaks at 1/2 and 1/4 may be its 8x8 block grid: no sentence for those.
        if peak > UPSAMPLING_EVIDENCE and (item.format != "JPEG" or strongest == "1/3"):
            report.evidence.append(
                f"Periodic residual peaks at {strongest} cycles/px (log10 ratio {peak:.2f}), typical of upsampling."
            )

    def ela_heatmap(self, item: ForensicsInput) -> np.ndarray:
        """Whole-image error levels as float32 in [0, 1], shape (H, W) of the displayed image."""
        levels = error_levels(item.stored_rgb, int(self.config["ela_quality"]))
        heatmap = np.clip(levels / float(self.config["ela_heatmap_full_scale"]), 0.0, 1.0).astype(np.float32)
        return np.ascontiguousarray(_APPLY_ORIENTATION[item.orientation](heatmap))
