"""The simplejpeg fast path of ``decode_image`` gives exactly what Pillow gives: same pixels, same fields, same
errors. Verdicts depend on the pixels, so anything short of bit-identical would be a regression."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import image_bytes
from models import image_input
from models.image_input import ImageInputError, InputLimits, decode_image

pytestmark = pytest.mark.skipif(
    not image_input.FAST_JPEG, reason="simplejpeg is not installed, or IMGVERIFY_FAST_JPEG=0"
)

FIXTURES = Path(__file__).parent / "fixtures"
LIMITS = InputLimits(max_pixels=200_000_000)
FIELDS = ("format", "source_mode", "sha256", "n_frames", "orientation", "notes", "data")


def pillow_decode(data: bytes, limits: InputLimits = LIMITS):
    """The same call with the fast path switched off: Pillow decodes, the reference."""
    saved = image_input.FAST_JPEG
    image_input.FAST_JPEG = False
    try:
        return decode_image(data, limits)
    finally:
        image_input.FAST_JPEG = saved


def assert_same(data: bytes, expect_fast: bool | None = None) -> None:
    image = image_input._open(data)
    fmt = "JPEG" if image.format == "MPO" else image.format
    fast = image_input._fast_jpeg(data, image, fmt, int(getattr(image, "n_frames", 1) or 1))
    if expect_fast is not None:
        assert (fast is not None) == expect_fast
    got, want = decode_image(data, LIMITS), pillow_decode(data)
    for name in FIELDS:
        assert getattr(got, name) == getattr(want, name), name
    assert got.rgb.dtype == np.uint8 and got.rgb.shape == want.rgb.shape
    assert got.rgb.flags.c_contiguous and got.rgb.flags.writeable
    assert np.array_equal(got.rgb, want.rgb)


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def photo_like(size=(203, 131), mode="RGB") -> Image.Image:
    """Smooth gradients plus noise: exercises upsampling and the IDCT the way photos do."""
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(3)
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=2)
    rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    return image.convert(mode) if mode != "RGB" else image


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("size", [(203, 131), (16, 16), (1, 1), (1281, 719)])
def test_rgb_jpeg_pixels_identical(subsampling, progressive, size):
    data = jpeg(photo_like(size), quality=87, subsampling=subsampling, progressive=progressive)
    assert_same(data, expect_fast=True)


@pytest.mark.parametrize("progressive", [False, True])
def test_grey_jpeg_pixels_identical(progressive):
    assert_same(jpeg(photo_like(mode="L"), quality=90, progressive=progressive), expect_fast=True)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_every_exif_orientation_identical(orientation, mode):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg(photo_like((37, 23), mode), quality=92, exif=exif.tobytes())
    assert_same(data, expect_fast=True)
    assert decode_image(data).orientation == orientation


def test_cmyk_and_odd_orientation_go_to_pillow():
    assert_same(jpeg(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95), expect_fast=False)
    exif = Image.Exif()
    exif[0x0112] = 42  # not an orientation: Pillow's path leaves the pixels and says nothing
    assert_same(jpeg(photo_like((20, 10)), exif=exif.tobytes()), expect_fast=True)


def test_broken_data_gives_pillows_errors():
    data = image_bytes("JPEG", size=(256, 256), quality=95)
    for broken in (data[: len(data) // 2], data[:-2], data[:200] + b"\x00" * 50 + data[250:]):
        try:
            want = ("ok", pillow_decode(broken).sha256)
        except ImageInputError as err:
            want = (err.code, err.message)
        try:
            got = ("ok", decode_image(broken, LIMITS).sha256)
        except ImageInputError as err:
            got = (err.code, err.message)
        assert got == want
    with pytest.raises(ImageInputError) as err:
        decode_image(data[: len(data) // 2])
    assert err.value.code == "truncated_image"


def test_fixture_jpegs_identical():
    files = sorted(p for p in FIXTURES.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    assert files
    for path in files:
        assert_same(path.read_bytes())


def test_real_camera_files_identical(data_set):
    """Camera JPEGs (many makers, EXIF orientations, MPO) and the broken-EXIF samples."""
    files = sorted((data_set("camera-models") / "real").glob("*.jp*g"))
    files += sorted((data_set("exif-samples") / "real" / "jpg" / "invalid").glob("*.jpg"))
    files.append(data_set("c2pa") / "real" / "nikon-20221019-building.jpeg")  # MPO
    assert len(files) > 20
    fast = 0
    for path in files:
        data = path.read_bytes()
        assert_same(data)
        fast += image_input._fast_jpeg(data, image_input._open(data), "JPEG", 1) is not None
    assert fast > len(files) // 2  # most real uploads take the fast path
