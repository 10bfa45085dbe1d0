"""The weight-free ``forensics`` detector on real files: JPEG container facts, double compression,
error levels, noise, spectrum, geometry, and the edge cases (no tables, tiny images, EXIF rotation)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import cv2
import numpy as np
import piexif
import pytest
from PIL import Image

from models import create_detector
from models.forensics import (
    ANNEX_K_LUMA,
    estimate_jpeg_quality,
    ijg_table,
    parse_container,
    webp_quality_from_quantizer,
)
from models.image_input import decode_image

JPEG_ONLY = {"jpeg_quality", "jpeg_table_nonstandard", "jpeg_chroma_subsampling", "jpeg_double_compression"}
PIXEL_FEATURES = {
    "image_entropy",
    "ela_mean",
    "ela_std",
    "ela_high_fraction",
    "noise_log_variance",
    "noise_log_kurtosis",
    "spectrum_hf_slope",
    "spectrum_upsampling_peak",
    "jpeg_double_compression",
}


# ---- helpers --------------------------------------------------------------------------------------------


def encode(rgb: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    if fmt == "PNG":
        options.setdefault("compress_level", 1)  # fast; PNG is lossless at any level
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buffer, format=fmt, **options)
    return buffer.getvalue()


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encode(rgb, quality=quality))).convert("RGB"))


def strip_dqt(jpeg: bytes) -> bytes:
    """The same JPEG without its DQT (quantisation table) segments."""
    out, position = bytearray(jpeg[:2]), 2
    while position < len(jpeg):
        marker = jpeg[position + 1]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out += jpeg[position:]
            break
        length = int.from_bytes(jpeg[position + 2 : position + 4], "big")
        if marker != 0xDB:
            out += jpeg[position : position + 2 + length]
        position += 2 + length
    return bytes(out)


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The same JPEG (pixels untouched) with an EXIF Orientation tag."""
    out = io.BytesIO()
    piexif.insert(piexif.dump({"0th": {piexif.ImageIFD.Orientation: orientation}}), jpeg, out)
    return out.getvalue()


@pytest.fixture(scope="module")
def detector():
    return create_detector("forensics")


@pytest.fixture(scope="module")
def photos(fixtures: Path) -> list[np.ndarray]:
    """20 real photos, halved with area averaging (which erases their JPEG history): 640x360 RGB."""
    files = sorted((fixtures / "modern-matched" / "real").glob("*.jpg"))[:20]
    out = []
    for path in files:
        rgb = decode_image(path.read_bytes()).rgb
        out.append(cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA))
    return out


def features_of(detector, data: bytes) -> dict[str, float]:
    (result,) = detector.predict([decode_image(data)])
    assert result.ok, result.error or result.skipped
    return result.features


# ---- JPEG quality from the quantisation tables ------------------------------------------------------------


def test_cifake_tables_are_ijg_quality_75(data_set):
    """Both CIFAKE classes share one table with luma q[0]=8: that is IJG quality 75, exactly."""
    assert ijg_table(ANNEX_K_LUMA, 75)[0, 0] == 8
    for label in ("real", "ai"):
        for path in sorted((data_set("cifake-32px") / label).glob("*.jpg"))[:100]:
            container = parse_container(path.read_bytes(), "JPEG")
            assert container.jpeg_luma_table[0, 0] == 8
            assert estimate_jpeg_quality(container.jpeg_luma_table, container.jpeg_chroma_table) == (75, 0.0)


def test_cifake_detector_reports_quality_75(detector, data_set):
    files = sorted((data_set("cifake-32px") / "ai").glob("*.jpg"))[:4]
    results = detector.predict([decode_image(path.read_bytes()) for path in files])
    assert [r.features["jpeg_quality"] for r in results] == [75.0] * 4
    assert [r.features["compression_level"] for r in results] == [pytest.approx(25 / 90)] * 4


def test_modern_matched_is_quality_85(detector, data_set):
    files = sorted(data_set("modern-matched").glob("*/*.jpg"))
    assert len(files) == 520  # 260 AI + 260 real since the set grew (was 80 + 80)
    for path in files:
        container = parse_container(path.read_bytes(), "JPEG")
        quality, _ = estimate_jpeg_quality(container.jpeg_luma_table, container.jpeg_chroma_table)
        assert abs(quality - 85) <= 1, path
    # And through the whole detector, on one image of each class.
    for label in ("ai", "real"):
        path = sorted((data_set("modern-matched") / label).glob("*.jpg"))[0]
        features = features_of(detector, path.read_bytes())
        assert abs(features["jpeg_quality"] - 85) <= 1
        assert features["jpeg_table_nonstandard"] == 0.0
        assert features["jpeg_chroma_subsampling"] == 4.0


@pytest.mark.parametrize("quality", [50, 75, 95])
@pytest.mark.parametrize("subsampling", [0, 2])
def test_quality_of_known_saves(detector, photos, quality, subsampling):
    features = features_of(detector, encode(photos[0], quality=quality, subsampling=subsampling))
    assert abs(features["jpeg_quality"] - quality) <= 2
    assert features["compression_level"] == pytest.approx((100 - quality) / 90, abs=2 / 90)


def test_custom_tables_are_flagged(detector, photos):
    """A camera-style custom table (not a scaled Annex K table) gets jpeg_table_nonstandard > 0."""
    custom = [[int(v) for v in (np.arange(64) % 7 + 3)]] * 2
    features = features_of(detector, encode(photos[0], qtables=custom))
    assert features["jpeg_table_nonstandard"] > 0.5


# ---- chroma subsampling, lossless and WebP containers -------------------------------------------------------


@pytest.mark.parametrize(("subsampling", "expected"), [(0, 1.0), (1, 2.0), (2, 4.0)])
def test_chroma_subsampling(detector, photos, subsampling, expected):
    features = features_of(detector, encode(photos[1], quality=90, subsampling=subsampling))
    assert features["jpeg_chroma_subsampling"] == expected


def test_png_is_lossless_without_jpeg_features(detector, photos):
    (result,) = detector.predict([decode_image(encode(photos[2], "PNG"))])
    assert result.features["compression_level"] == 0.0
    assert not JPEG_ONLY & set(result.features)
    assert set(result.details["omitted"]) >= JPEG_ONLY
    assert PIXEL_FEATURES - JPEG_ONLY <= set(result.features)


def test_webp_lossless_and_lossy(detector, photos):
    assert features_of(detector, encode(photos[3], "WEBP", lossless=True))["compression_level"] == 0.0
    levels = []
    for quality in (30, 60, 90):
        data = encode(photos[3], "WEBP", quality=quality)
        container = parse_container(data, "WEBP")
        estimate = webp_quality_from_quantizer(float(np.mean(container.webp_quantizers)))
        assert abs(estimate - quality) <= 12  # approximate: libwebp varies the quantiser per segment
        features = features_of(detector, data)
        assert not JPEG_ONLY & set(features)
        levels.append(features["compression_level"])
    assert levels[0] > levels[1] > levels[2] > 0.0


def test_real_webp_grid_is_lossy(detector, fixtures):
    path = sorted((fixtures / "sd15-grids").rglob("*.webp"))[0]
    features = features_of(detector, path.read_bytes())
    assert 0.05 < features["compression_level"] < 1.0


def test_jpeg_without_quantisation_tables_is_reported(detector, photos):
    """Pillow cannot decode a JPEG without DQT, so the stripped bytes go in after a normal decode."""
    original = encode(photos[4], quality=80)
    stripped = strip_dqt(original)
    assert parse_container(original, "JPEG").jpeg_luma_table is not None
    assert parse_container(stripped, "JPEG").jpeg_luma_table is None
    image = decode_image(original)
    image.data = stripped
    (result,) = detector.predict([image])
    assert result.ok
    need_tables = {"jpeg_quality", "jpeg_table_nonstandard", "compression_level", "jpeg_double_compression"}
    assert not need_tables & set(result.features)
    assert any("quantisation" in problem for problem in result.details["container_problems"])
    assert any("quantisation" in sentence for sentence in result.evidence)
    assert result.features["jpeg_chroma_subsampling"] == 4.0  # the frame header is still there
    assert result.features["ela_mean"] > 0.0  # the pixels are still measured


def test_unreadable_container_is_reported(detector, photos):
    image = decode_image(encode(photos[4], quality=80))
    image.data = b"not a jpeg at all"
    (result,) = detector.predict([image])
    assert result.ok
    assert "jpeg_quality" not in result.features
    assert any("unreadable" in problem for problem in result.details["container_problems"])


# ---- double compression --------------------------------------------------------------------------------------


def test_double_compression_orders_70_then_90_above_single_90(detector, photos):
    single, double = [], []
    for rgb in photos:
        single.append(features_of(detector, encode(rgb, quality=90))["jpeg_double_compression"])
        double.append(features_of(detector, encode(jpeg_roundtrip(rgb, 70), quality=90))["jpeg_double_compression"])
    rate = np.mean(np.array(double) > np.array(single))
    assert rate >= 0.8, (single, double)
    assert np.median(single) < 0.5 < 1.0 < np.median(double)


# ---- error levels, entropy, noise, spectrum --------------------------------------------------------------------


def test_ela_heatmap_matches_image_and_orientation(detector, photos):
    jpeg = encode(photos[5][:352, :600], quality=75)
    upright = decode_image(jpeg)
    rotated = decode_image(with_orientation(jpeg, 6))
    assert rotated.rgb.shape == (600, 352, 3)
    plain, turned = detector.predict([upright, rotated], artifacts=True)
    for image, result in ((upright, plain), (rotated, turned)):
        heatmap = result.artifacts["ela_heatmap"]
        assert heatmap.shape == (image.height, image.width) and heatmap.dtype == np.float32
        assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0 and heatmap.mean() > 0.0
    # The heatmap is computed on the stored pixels and turned like the displayed image.
    np.testing.assert_array_equal(turned.artifacts["ela_heatmap"], np.rot90(plain.artifacts["ela_heatmap"], -1))
    # Block-grid statistics do not change with the EXIF orientation: they read the pixels as stored.
    for name in ("jpeg_double_compression", "ela_mean", "ela_high_fraction", "jpeg_quality"):
        assert turned.features[name] == plain.features[name]
    assert "ela_heatmap" not in detector.predict([upright])[0].artifacts


def test_entropy_of_flat_and_uniform_images(detector):
    flat = features_of(detector, encode(np.full((64, 64, 3), 77, np.uint8), "PNG"))
    assert flat["image_entropy"] == 0.0
    assert flat["noise_log_variance"] == 0.0
    assert "noise_log_kurtosis" not in flat and "spectrum_hf_slope" not in flat
    ramp = np.repeat(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 64, axis=0), 3, axis=2)
    assert features_of(detector, encode(ramp, "PNG"))["image_entropy"] == pytest.approx(8.0)


def test_noise_statistics_of_gaussian_noise(detector):
    """The 3x3 Laplacian multiplies white-noise variance by 20; Gaussian kurtosis is 3."""
    sigma = 10.0
    rng = np.random.default_rng(0)
    grey = np.clip(np.rint(128 + sigma * rng.standard_normal((512, 512))), 0, 255).astype(np.uint8)
    features = features_of(detector, encode(np.repeat(grey[:, :, None], 3, axis=2), "PNG"))
    assert features["noise_log_variance"] == pytest.approx(math.log10(1 + 20 * (sigma**2 + 1 / 12)), abs=0.02)
    assert features["noise_log_kurtosis"] == pytest.approx(math.log10(3.0), abs=0.02)
    assert features["spectrum_hf_slope"] == pytest.approx(0.0, abs=0.3)  # white noise: a flat spectrum


def test_photo_spectrum_falls_off(detector, photos):
    slopes = [features_of(detector, encode(rgb, "PNG"))["spectrum_hf_slope"] for rgb in photos[:5]]
    assert all(-5.0 < slope < -1.0 for slope in slopes), slopes


@pytest.mark.parametrize("interpolation", [cv2.INTER_NEAREST, cv2.INTER_LINEAR])
def test_upsampling_peaks(detector, photos, interpolation):
    for rgb in photos[:5]:
        rgb = rgb[:320, :320]  # upsampled to 640x640: inside the 1024 crop, so the whole image is measured
        original = features_of(detector, encode(rgb, "PNG"))["spectrum_upsampling_peak"]
        upsampled = cv2.resize(rgb, None, fx=2, fy=2, interpolation=interpolation)
        (result,) = detector.predict([decode_image(encode(upsampled, "PNG"))])
        # +0.3: one of the photos of the grown modern-matched set already has a peak of 1.0 before upsampling
        assert result.features["spectrum_upsampling_peak"] > max(1.0, original + 0.3)
        peak = result.features["spectrum_upsampling_peak"]
        assert result.details["upsampling_peaks"]["1/2"] == pytest.approx(peak, abs=1e-3)  # 2x: period 2
        assert any("upsampling" in sentence for sentence in result.evidence)


# ---- geometry -----------------------------------------------------------------------------------------------------


def test_geometry_flags(detector):
    generator = features_of(detector, encode(np.zeros((1024, 1024, 3), np.uint8), "PNG"))
    camera = features_of(detector, encode(np.zeros((700, 1000, 3), np.uint8), "PNG"))
    sdxl = features_of(detector, encode(np.zeros((832, 1216, 3), np.uint8), "PNG"))
    assert (generator["geometry_pow2_alignment"], generator["geometry_generator_size"]) == (7.0, 1.0)
    assert (camera["geometry_pow2_alignment"], camera["geometry_generator_size"]) == (2.0, 0.0)
    assert (sdxl["geometry_pow2_alignment"], sdxl["geometry_generator_size"]) == (6.0, 1.0)


# ---- contract: batches, tiny images, configuration ------------------------------------------------------------------


def test_batch_equals_single(detector, photos, data_set):
    images = [
        decode_image(encode(photos[6], quality=70)),
        decode_image(encode(photos[7], "PNG")),
        decode_image(sorted((data_set("cifake-32px") / "real").glob("*.jpg"))[0].read_bytes()),
        decode_image(encode(photos[8], "WEBP", quality=80)),
    ]
    batch = detector.predict(images)
    for image, result in zip(images, batch):
        (single,) = detector.predict([image])
        assert result.features == single.features
        assert result.evidence == single.evidence


def test_tiny_images_keep_container_and_geometry_only(detector, photos):
    one_pixel = detector.predict([decode_image(encode(photos[0][:1, :1], "PNG"))])[0]
    assert one_pixel.ok
    assert set(one_pixel.features) == {"compression_level", "geometry_pow2_alignment", "geometry_generator_size"}
    eight = detector.predict([decode_image(encode(photos[0][:8, :8], quality=60))])[0]
    assert eight.ok
    assert eight.features["jpeg_quality"] == 60.0 and eight.features["geometry_pow2_alignment"] == 3.0
    assert not PIXEL_FEATURES & set(eight.features)
    assert set(eight.details["omitted"]) >= PIXEL_FEATURES


def test_version_follows_config_and_unknown_keys_are_refused():
    assert create_detector("forensics").version != create_detector("forensics", {"ela_quality": 80}).version
    with pytest.raises(ValueError, match="unknown config keys"):
        create_detector("forensics", {"quality": 80})


def test_crop_size_bounds_the_work(photos):
    """Statistics run on the configured centre crop; container and geometry features do not change."""
    small = create_detector("forensics", {"crop_size": 128})
    (result,) = small.predict([decode_image(encode(photos[9], quality=85))])
    crop = result.details["crop"]
    assert (crop["top"], crop["left"], crop["height"], crop["width"]) == (112, 256, 128, 128)
    assert result.features["jpeg_quality"] == 85.0


@pytest.mark.parametrize(("mode", "fmt"), [("CMYK", "JPEG"), ("RGB", "PNG"), ("RGB", "JPEG"), ("L", "PNG")])
def test_flat_images_are_measured_not_failed(mode, fmt):
    """A single-colour image has no spectrum or noise: those features are omitted with a reason, the rest measured."""
    colour = {"CMYK": (0, 200, 200, 0), "RGB": (0, 200, 200), "L": 7}[mode]
    buffer = io.BytesIO()
    Image.new(mode, (64, 64), colour).save(buffer, fmt)
    (result,) = create_detector("forensics").predict([decode_image(buffer.getvalue())])
    assert result.error is None
    assert "spectrum_hf_slope" not in result.features and "flat" in result.details["omitted"]["spectrum_hf_slope"]
    assert result.features["ela_mean"] >= 0 and "compression_level" in result.features
