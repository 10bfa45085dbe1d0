"""The one place where an image is decoded and validated.

Every way into imgverify (HTTP, batch, training) turns bytes into a :class:`DecodedImage` here, once.
The pixels go to the pixel detectors as a deterministic 8-bit RGB array; the untouched original bytes go
to the metadata detectors (EXIF, XMP, C2PA, PNG text chunks live in the container, not in the pixels).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # libjpeg-turbo straight into a numpy array; optional, Pillow decodes everything without it
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a dependency, this only keeps Pillow-only installs working
    simplejpeg = None

# Our own pixel limit (checked on the header, from config) replaces Pillow's global one, which would
# otherwise refuse with its own limit and message, or only warn.
Image.MAX_IMAGE_PIXELS = None

# Pillow names the formats it decoded; MPO is the multi-picture JPEG many cameras write.
SUPPORTED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"}

# Fast path for the common upload, a single-frame YCbCr or grey JPEG: simplejpeg decodes it with libjpeg-turbo
# (accurate DCT, fancy upsampling: Pillow's own settings) directly into the output array, skipping Pillow's
# decode into its own buffer and the copy out of it. The pixels are identical to Pillow's (tests/test_fast_jpeg.py
# checks every JPEG fixture and real camera files); anything the fast path does not handle, or any libjpeg warning
# (strict mode: corrupt or truncated data), goes through Pillow, which then decides the error.
# IMGVERIFY_FAST_JPEG=0 switches it off (Pillow decodes everything; bench/serve_latency.py's "pillow" variant).
FAST_JPEG = simplejpeg is not None and os.environ.get("IMGVERIFY_FAST_JPEG", "1") != "0"
_FAST_JPEG_MODES = {"RGB": "RGB", "L": "GRAY"}
# numpy equivalents of the transposes ImageOps.exif_transpose applies (EXIF Orientation 2..8): exact pixel moves.
_ORIENT = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: a[::-1].transpose(1, 0, 2),  # ROTATE_270 (90 clockwise)
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: a[:, ::-1].transpose(1, 0, 2),  # ROTATE_90 (90 counter-clockwise)
}


# A JPEG that lost its last bytes still decodes: libjpeg fills in what the data no longer holds, and browsers show
# such files (a phone photo a few bytes short is a common find). When every scan's header is there and the decoder
# fills in at most this share of the pixel rows, the image is scored with the warning "truncated_image"; with more
# filled in, the pixels are the decoder's rather than the file's, and it stays refused (truncated_image, 400).
TRUNCATED_IMAGE = "truncated_image"
TRUNCATED_MAX_FILLED = 0.05
# The reasoning's sentence for each warning a decoded image can carry (``DecodedImage.warnings``).
WARNING_SENTENCES = {
    TRUNCATED_IMAGE: "The file is damaged: its data ends early (truncated_image). The decoder filled in the missing "
    f"last pixel rows (at most {TRUNCATED_MAX_FILLED:.0%} of them); the detectors read what the file holds.",
}
# Stands in for the missing bytes: rows that decode differently with it than without it are not in the file.
# Seeded, and never 0xFF (which would start a marker and end the scan).
_FILLERS = [np.random.default_rng(seed).integers(0, 255, 512, dtype=np.uint8).tobytes() for seed in (1, 2)]


class ImageInputError(ValueError):
    """Input that cannot become an image. ``code`` is stable and machine-readable; ``status`` is the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def to_dict(self) -> dict:
        return {"error": self.code, "detail": self.message}


@dataclass(frozen=True)
class InputLimits:
    """Limits enforced before any pixel is decoded (byte size) and before decompression (pixel count)."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000
    min_side: int = 1


@dataclass
class DecodedImage:
    """A validated image: RGB pixels for pixel detectors, original bytes for metadata detectors."""

    rgb: np.ndarray  # (height, width, 3) uint8, EXIF orientation applied
    data: bytes  # the original file, byte for byte
    format: str  # "JPEG", "PNG", ... as decoded (MPO reported as JPEG)
    source_mode: str  # Pillow mode before conversion: "RGB", "CMYK", "I;16", "P", ...
    sha256: str
    n_frames: int = 1
    orientation: int = 1  # EXIF orientation tag that was applied (1 = none)
    notes: list[str] = field(default_factory=list)  # what decoding had to do, e.g. "alpha composited on white"
    # Damage the verdict must carry (codes, e.g. "truncated_image"): the image was scored, but is not intact.
    warnings: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.rgb, mode="RGB")

    def summary(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "mode": self.source_mode,
            "frames": self.n_frames,
            "bytes": len(self.data),
            "sha256": self.sha256,
        }


def decode_image(data: bytes, limits: InputLimits = InputLimits()) -> DecodedImage:
    """Validate and decode ``data``; raise :class:`ImageInputError` naming the problem."""
    if not data:
        raise ImageInputError("empty_input", "the request carried no image bytes")
    if len(data) > limits.max_bytes:
        raise ImageInputError("too_large", f"image is {len(data)} bytes, the limit is {limits.max_bytes}", status=413)
    image = _open(data)
    fmt = "JPEG" if image.format == "MPO" else image.format
    width, height = image.size
    # Checked on the header, before decoding: this is what stops decompression bombs.
    if width * height > limits.max_pixels:
        raise ImageInputError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels, the limit is {limits.max_pixels}",
            status=413,
        )
    if min(width, height) < limits.min_side:
        raise ImageInputError("too_small", f"image is {width}x{height}, the smallest side allowed is {limits.min_side}")
    n_frames = int(getattr(image, "n_frames", 1) or 1)
    notes: list[str] = []
    if n_frames > 1:
        image.seek(0)
        notes.append(f"first of {n_frames} frames used")
    source_mode = image.mode
    warnings: list[str] = []
    fast = _fast_jpeg(data, image, fmt, n_frames) if FAST_JPEG else None
    if fast is None:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            if "truncated" not in str(err).lower():
                raise ImageInputError("corrupt_image", f"the {fmt} data cannot be decoded: {err}") from err
            fast = _truncated_jpeg(data, image, fmt, n_frames, err, notes)  # or refused, as truncated_image
            warnings.append(TRUNCATED_IMAGE)
        else:
            image, orientation = _apply_orientation(image, notes)
            rgb = _to_rgb(image, notes)
    if fast is not None:
        rgb, orientation = fast
        if orientation != 1:
            notes.append(f"EXIF orientation {orientation} applied")
    data = bytes(data)  # no copy when it already is bytes
    return DecodedImage(
        rgb=rgb,
        data=data,
        format=fmt,
        source_mode=source_mode,
        sha256=hashlib.sha256(data).hexdigest(),
        n_frames=n_frames,
        orientation=orientation,
        notes=notes,
        warnings=warnings,
    )


def _open(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as err:
        raise ImageInputError(
            "not_an_image", "the bytes are not an image in any format this service reads", status=415
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageInputError("corrupt_image", f"the image header cannot be read: {err}") from err
    if image.format not in SUPPORTED_FORMATS:
        raise ImageInputError(
            "unsupported_format",
            f"{image.format} images are not accepted; send one of {', '.join(sorted(SUPPORTED_FORMATS - {'MPO'}))}",
            status=415,
        )
    return image


def _fast_jpeg(
    data: bytes, image: Image.Image, fmt: str, n_frames: int, strict: bool = True
) -> tuple[np.ndarray, int] | None:
    """(RGB pixels with EXIF orientation applied, orientation) of a plain JPEG, exactly as the Pillow path gives
    them, or None to leave the image to Pillow (other modes, several frames, odd EXIF, any libjpeg warning unless
    ``strict`` is off: a truncated file's missing data filled in as Pillow's LOAD_TRUNCATED_IMAGES would)."""
    colorspace = _FAST_JPEG_MODES.get(image.mode)
    if fmt != "JPEG" or n_frames != 1 or colorspace is None:
        return None
    try:
        raw = image.getexif().get(0x0112, 1)
    except Exception:  # broken EXIF: Pillow's path writes the note and leaves the pixels as stored
        return None
    try:
        orientation = int(raw or 1)
    except (TypeError, ValueError):
        return None
    transpose = _ORIENT.get(orientation) if orientation in range(2, 9) else None
    if transpose is not None and _ORIENT.get(raw) is not transpose:
        return None  # a tag exif_transpose would read differently from int(); Pillow decides
    try:
        pixels = _libjpeg(data, colorspace, strict)
    except Exception:  # noqa: BLE001 - warnings, corrupt or truncated data: Pillow's path and its error codes
        return None
    if pixels.shape[:2] != (image.height, image.width):
        return None
    if colorspace == "GRAY":  # Pillow's L -> RGB copies the grey value into each channel
        pixels = np.repeat(pixels.reshape(pixels.shape[0], pixels.shape[1], 1), 3, axis=2)
    if transpose is None:
        return pixels, 1
    return np.ascontiguousarray(transpose(pixels)), orientation


def _libjpeg(data: bytes, colorspace: str, strict: bool = True) -> np.ndarray:
    """libjpeg-turbo's pixels with Pillow's settings (accurate DCT, fancy upsampling)."""
    return simplejpeg.decode_jpeg(data, colorspace=colorspace, fastdct=False, fastupsample=False, strict=strict)


def _truncated_jpeg(
    data: bytes, image: Image.Image, fmt: str, n_frames: int, err: Exception, notes: list[str]
) -> tuple[np.ndarray, int]:
    """(pixels, orientation) of a JPEG whose data ends early but holds every scan and all but at most
    ``TRUNCATED_MAX_FILLED`` of the rows; anything else is refused as ``truncated_image``."""
    colorspace = _FAST_JPEG_MODES.get(image.mode)
    if fmt != "JPEG" or simplejpeg is None or colorspace is None or n_frames != 1:
        raise ImageInputError(TRUNCATED_IMAGE, f"the {fmt} data ends early: {err}") from err
    if not _scans_complete(data):
        raise ImageInputError(
            TRUNCATED_IMAGE, "the JPEG data ends before its last scan starts: part of every pixel is missing"
        ) from err
    try:
        filled = _rows_filled_in(data, colorspace)
        salvaged = _fast_jpeg(data, image, fmt, n_frames, strict=False)
    except Exception as failed:  # noqa: BLE001 - libjpeg gave up on what is there
        raise ImageInputError(TRUNCATED_IMAGE, f"the JPEG data ends early: {err}; {failed}") from err
    if salvaged is None or filled > TRUNCATED_MAX_FILLED * image.height:
        raise ImageInputError(
            TRUNCATED_IMAGE,
            f"the JPEG data ends early: the decoder would make up the last {filled} of {image.height} pixel rows; "
            f"at most {TRUNCATED_MAX_FILLED:.0%} are scored (with a warning)",
        ) from err
    notes.append(f"the JPEG data ends early: the last {filled} of {image.height} pixel rows filled in by the decoder")
    return salvaged


def _rows_filled_in(data: bytes, colorspace: str) -> int:
    """How many pixel rows (of the stored, unrotated image) the data does not determine: decoded once as it is
    (libjpeg fills the missing data with zeros) and once per filler appended, the rows from the first that differs
    to the bottom are the decoder's own."""
    if data.endswith(b"\xff"):
        data += b"\x00"  # a cut between 0xFF and its stuffed 0x00: complete the byte, so the filler is data
    as_is = _libjpeg(data, colorspace, strict=False)
    first = as_is.shape[0]
    for filler in _FILLERS:
        differs = np.flatnonzero((_libjpeg(data + filler, colorspace, strict=False) != as_is).any(axis=(1, 2)))
        first = min(first, int(differs[0])) if differs.size else first
    return as_is.shape[0] - first


def _scans_complete(data: bytes) -> bool:
    """Whether the JPEG's scan headers cover every coefficient (0..63) of every frame component down to its last bit
    (Al = 0). A truncated file that passes lost only the rest of its last scan: what :func:`_rows_filled_in` sees;
    one that fails lost whole scans (a progressive file's later refinements), which no row count shows."""
    components: list[int] = []
    final: set[tuple[int, int]] = set()
    for marker, segment in _jpeg_segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and len(segment) >= 6:  # SOFn
            components = list(segment[6 : 6 + 3 * segment[5] : 3])
        elif marker == 0xDA and segment:  # SOS: Ns, (Cs, Td/Ta) * Ns, Ss, Se, Ah/Al
            n = segment[0]
            if len(segment) >= 4 + 2 * n and segment[3 + 2 * n] & 0x0F == 0:
                first, last = segment[1 + 2 * n], segment[2 + 2 * n]
                final.update((c, k) for c in segment[1 : 1 + 2 * n : 2] for k in range(first, last + 1))
    return bool(components) and all((c, k) in final for c in components for k in range(64))


def _jpeg_segments(data: bytes):
    """(marker, payload) of each complete marker segment after SOI, entropy-coded data skipped."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:  # entropy-coded data: on to the next 0xFF
            i = data.find(b"\xff", i + 1)
            if i < 0:
                return
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x00 or 0xD0 <= marker <= 0xD7:  # a stuffed 0xFF or a restart marker inside a scan
            i += 2
        elif marker == 0xD9:  # EOI
            return
        else:
            end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
            if end > len(data):
                return  # a segment cut short is not there
            yield marker, data[i + 4 : end]
            i = end


def _apply_orientation(image: Image.Image, notes: list[str]) -> tuple[Image.Image, int]:
    """Rotate as the EXIF Orientation tag says; broken EXIF leaves the pixels as stored."""
    try:
        orientation = int(image.getexif().get(0x0112, 1) or 1)
    except Exception as err:  # Broken EXIF is evidence for the provenance detector, not a decoding failure.
        notes.append(f"EXIF unreadable, orientation not applied: {type(err).__name__}")
        return image, 1
    if orientation not in range(2, 9):
        return image, 1
    rotated = ImageOps.exif_transpose(image)
    notes.append(f"EXIF orientation {orientation} applied")
    return rotated, orientation


def _to_rgb(image: Image.Image, notes: list[str]) -> np.ndarray:
    """Convert any Pillow mode to (H, W, 3) uint8 RGB, the same way every time."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)  # one copy, writable
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: scale 0..65535 to 0..255 (Pillow's own convert would clip at 255).
        wide = np.asarray(image, dtype=np.float64)
        scale = 257.0 if wide.max(initial=0) > 255 or mode.startswith("I;16") else 1.0
        grey = np.clip(np.rint(wide / scale), 0, 255).astype(np.uint8)
        notes.append(f"{mode} scaled to 8 bit")
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = values * 255.0 if values.max(initial=0) <= 1.0 else values
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        notes.append("float image clipped to 8 bit")
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels have no defined colour: composite on white, as a browser shows them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append("alpha composited on white")
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8).copy()
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


# ---- carrying decoded images between Ray Data stages ----------------------------------------------------
# Batch scoring and feature extraction decode once and pass the image on to every detector stage as columns;
# these two functions are the only code that knows which columns those are. IMAGE_COLUMNS are dropped after the
# last detector; WARNINGS_COLUMN stays, since the verdict carries it.
IMAGE_COLUMNS = ("rgb", "data", "format", "source_mode", "n_frames", "orientation", "notes")
WARNINGS_COLUMN = "warnings"


def images_to_columns(images: list[DecodedImage | None], datas: list[bytes]) -> dict[str, np.ndarray]:
    """Column arrays for a batch of images; ``None`` (a file that could not be decoded) keeps its bytes and gets
    empty pixels. The ``sha256`` and ``error`` columns are the caller's: an error row needs them too."""
    rgb = np.empty(len(images), dtype=object)  # ragged: one (H, W, 3) array per row
    rgb[:] = [image.rgb if image else np.zeros((0, 0, 3), np.uint8) for image in images]
    data = np.empty(len(images), dtype=object)
    data[:] = datas
    return {
        "rgb": rgb,
        "data": data,
        "format": np.asarray([image.format if image else "" for image in images], dtype=object),
        "source_mode": np.asarray([image.source_mode if image else "" for image in images], dtype=object),
        "n_frames": np.asarray([image.n_frames if image else 0 for image in images], dtype=np.int64),
        "orientation": np.asarray([image.orientation if image else 0 for image in images], dtype=np.int64),
        "notes": np.asarray(["\n".join(image.notes) if image else "" for image in images], dtype=object),
        WARNINGS_COLUMN: np.asarray(["\n".join(image.warnings) if image else "" for image in images], dtype=object),
    }


def column_lines(value: object) -> list[str]:
    """The list a ``notes`` or ``warnings`` cell carries (newline-joined; "" is none)."""
    return [line for line in str(value).split("\n") if line]


def images_from_columns(batch: dict[str, np.ndarray]) -> list[DecodedImage | None]:
    """The images :func:`images_to_columns` carried (no decoding here); ``None`` where ``batch["error"]`` is set."""
    return [
        None
        if batch["error"][i]
        else DecodedImage(
            rgb=np.asarray(batch["rgb"][i], dtype=np.uint8),
            data=bytes(batch["data"][i]),
            format=str(batch["format"][i]),
            source_mode=str(batch["source_mode"][i]),
            sha256=str(batch["sha256"][i]),
            n_frames=int(batch["n_frames"][i]),
            orientation=int(batch["orientation"][i]),
            notes=column_lines(batch["notes"][i]),
            warnings=column_lines(batch[WARNINGS_COLUMN][i]),
        )
        for i in range(len(batch["error"]))
    ]
