"""The one image-input module: formats, modes, orientation, limits and broken files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import image_bytes
from models.image_input import ImageInputError, InputLimits, decode_image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_accepted_format_decodes_to_rgb(fmt):
    image = decode_image(image_bytes(fmt, size=(40, 30)))
    assert image.rgb.shape == (30, 40, 3) and image.rgb.dtype == np.uint8
    assert image.format == fmt
    assert len(image.sha256) == 64 and image.data[:2] in (b"\xff\xd8", b"\x89P", b"RI", b"GI", b"BM", b"II", b"MM")


def test_lossless_pixels_are_kept_exactly():
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(encode(Image.fromarray(rgb), "PNG")).rgb, rgb)


def test_exif_orientation_is_applied():
    # A 40x20 image tagged "rotate 90 CW" (orientation 6) must come out 20 wide and 40 tall.
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.rgb.shape == (40, 20, 3) and decoded.orientation == 6
    assert decoded.rgb[2, 10, 2] > 200 and decoded.rgb[-3, 10, 0] > 200  # left strip is now on top


def test_cmyk_jpeg_converts_to_rgb():
    decoded = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert decoded.source_mode == "CMYK"
    red, green, blue = decoded.rgb[8, 8].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_png_scales_instead_of_clipping():
    wide = np.array([[0, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    decoded = decode_image(encode(Image.fromarray(wide), "PNG"))  # uint16 -> Pillow mode I;16
    assert decoded.source_mode.startswith("I")
    assert decoded.rgb[0, :, 0].tolist() == [0, 128, 255]


def test_rgba_is_composited_on_white_deterministically():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 0, 255))
    decoded = decode_image(encode(rgba, "PNG"))
    assert decoded.rgb[0, 0].tolist() == [0, 0, 0] and decoded.rgb[5, 5].tolist() == [255, 255, 255]
    assert np.array_equal(decoded.rgb, decode_image(encode(rgba, "PNG")).rgb)


def test_palette_and_grey_images():
    palette = Image.new("P", (8, 8), 3)
    palette.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 756)
    assert decode_image(encode(palette, "PNG")).rgb[0, 0].tolist() == [70, 80, 90]
    assert decode_image(encode(Image.new("L", (8, 8), 77), "PNG")).rgb[0, 0].tolist() == [77, 77, 77]


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (10, 10), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(data)
    assert decoded.n_frames == 3 and decoded.rgb[5, 5, 0] > 200 and decoded.rgb[5, 5, 1] < 50


def test_one_pixel_image_is_accepted_by_default():
    assert decode_image(image_bytes("PNG", size=(1, 1))).rgb.shape == (1, 1, 3)
    with pytest.raises(ImageInputError) as err:
        decode_image(image_bytes("PNG", size=(1, 1)), InputLimits(min_side=16))
    assert err.value.code == "too_small"


@pytest.mark.parametrize(
    ("data", "code", "status"),
    [
        (b"", "empty_input", 400),
        (b"this is not an image at all", "not_an_image", 415),
        (encode(Image.new("RGB", (8, 8)), "ICO"), "unsupported_format", 415),
        (encode(Image.new("RGB", (8, 8)), "PPM"), "unsupported_format", 415),
    ],
)
def test_bad_bytes_are_named(data, code, status):
    with pytest.raises(ImageInputError) as err:
        decode_image(data)
    assert (err.value.code, err.value.status) == (code, status)
    assert err.value.to_dict()["error"] == code and err.value.message


def test_truncated_jpeg_is_refused():
    data = image_bytes("JPEG", size=(256, 256), quality=95)
    with pytest.raises(ImageInputError) as err:
        decode_image(data[: len(data) // 2])
    assert err.value.code == "truncated_image"


CAMERA_JPEG = "camera-models/real/Canon_EOS_7D.jpg"  # baseline, 600x900
PROGRESSIVE_JPEG = "modern-matched/real/real_0001.jpg"  # progressive, 1280x720


@pytest.mark.parametrize("name", [CAMERA_JPEG, PROGRESSIVE_JPEG])
def test_a_jpeg_missing_its_last_33_bytes_decodes_with_a_warning(fixtures, name):
    """As a real phone photo in a public set is: browsers show it, so it gets a verdict that says it is damaged."""
    data = (fixtures / name).read_bytes()
    whole, cut = decode_image(data), decode_image(data[:-33])
    assert (whole.warnings, cut.warnings) == ([], ["truncated_image"])
    assert cut.rgb.shape == whole.rgb.shape and cut.data == data[:-33]
    # The rows the file still holds are the intact file's, exactly; the decoder made up the rest (the note says how
    # many) and no more than the 5% allowed.
    filled = int(cut.notes[-1].split("the last ")[1].split(" of ")[0])
    assert 0 < filled <= 0.05 * whole.height
    assert np.array_equal(cut.rgb[: whole.height - filled], whole.rgb[: whole.height - filled])
    assert not np.array_equal(cut.rgb, whole.rgb)


@pytest.mark.parametrize("name", [CAMERA_JPEG, PROGRESSIVE_JPEG])
def test_a_jpeg_cut_to_half_stays_refused(fixtures, name):
    data = (fixtures / name).read_bytes()
    with pytest.raises(ImageInputError) as err:
        decode_image(data[: len(data) // 2])
    assert (err.value.code, err.value.status) == ("truncated_image", 400)


def test_byte_limit():
    data = image_bytes("PNG", size=(64, 64))
    with pytest.raises(ImageInputError) as err:
        decode_image(data, InputLimits(max_bytes=len(data) - 1))
    assert (err.value.code, err.value.status) == ("too_large", 413)


def test_pixel_limit_stops_decompression_bombs_before_decoding():
    # 8000 x 8000 of one colour compresses to about 60 KB and would take 192 MB decoded.
    bomb = encode(Image.new("L", (8000, 8000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(ImageInputError) as err:
        decode_image(bomb, InputLimits(max_pixels=40_000_000))
    assert (err.value.code, err.value.status) == ("too_many_pixels", 413)
    assert "8000x8000" in err.value.message


def test_real_files_with_broken_exif_still_decode(data_set):
    broken = sorted((data_set("exif-samples") / "real" / "jpg" / "invalid").glob("*.jpg"))
    assert broken, "expected the exif-samples invalid-EXIF files"
    for path in broken:
        assert decode_image(path.read_bytes()).rgb.ndim == 3


def test_mpo_camera_file_is_reported_as_jpeg(data_set):
    decoded = decode_image((data_set("c2pa") / "real" / "nikon-20221019-building.jpeg").read_bytes())
    assert decoded.format == "JPEG" and decoded.width == 4128 and decoded.height == 2752


def test_images_travel_between_stages_as_columns_unchanged():
    """Batch scoring and feature extraction carry decoded images as columns: pixels, bytes and notes survive."""
    from models.image_input import images_from_columns, images_to_columns

    rgba = Image.new("RGBA", (40, 30), (10, 200, 30, 128))
    image = decode_image(encode(rgba, "PNG"))
    assert image.notes  # alpha composited on white
    image.warnings = ["truncated_image"]
    columns = images_to_columns([image, None], [image.data, b"not an image"])
    batch = {**columns, "sha256": np.asarray([image.sha256, "x"], dtype=object), "error": np.asarray(["", "bad"])}
    back, missing = images_from_columns(batch)
    assert missing is None
    assert np.array_equal(back.rgb, image.rgb) and back.data == image.data and back.notes == image.notes
    assert back.warnings == ["truncated_image"]
    assert (back.format, back.source_mode, back.sha256, back.n_frames, back.orientation) == (
        image.format,
        image.source_mode,
        image.sha256,
        image.n_frames,
        image.orientation,
    )
