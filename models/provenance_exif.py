"""EXIF: a bounded TIFF-IFD reader and what the fields say about a camera.

The reader is written here rather than taken from piexif or Pillow because broken EXIF must come out as a
list of named problems ("IFD0 entry 7 points past the end") next to whatever could still be read, never as
an exception that loses the rest, and because generators put tags where libraries do not look (the early
DALL-E 2 files keep MakerNote and UserComment in IFD0, which piexif drops).

:func:`camera_evidence` turns the fields into ``exif_score`` in [0, 1]: the weighted share of the things a
camera writes and a generator or a screenshot does not (make and model, exposure settings, capture date,
maker note, thumbnail, lens). 0 means no EXIF; a straight-out-of-camera JPEG scores about 0.9 to 1.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
from dataclasses import dataclass, field
from typing import Any

MAX_ENTRIES = 1000  # per IFD; real IFDs have tens
MAX_VALUE_BYTES = 1 << 20  # one tag value larger than this is reported, not read

# TIFF field types: (struct code, byte size). ASCII becomes str; BYTE, SBYTE and UNDEFINED stay bytes.
ASCII, BYTES = "ascii", "bytes"
TYPES = {
    1: (BYTES, 1),
    2: (ASCII, 1),
    3: ("H", 2),
    4: ("I", 4),
    5: ("II", 8),
    6: (BYTES, 1),
    7: (BYTES, 1),
    8: ("h", 2),
    9: ("i", 4),
    10: ("ii", 8),
    11: ("f", 4),
    12: ("d", 8),
    13: ("I", 4),
}

# The tags this module reads, by IFD. Everything else is counted but not kept.
TAGS = {
    "IFD0": {
        0x010E: "ImageDescription",
        0x010F: "Make",
        0x0110: "Model",
        0x0112: "Orientation",
        0x0131: "Software",
        0x0132: "DateTime",
        0x013B: "Artist",
        0x013C: "HostComputer",
        0x000B: "ProcessingSoftware",
        0x8298: "Copyright",
        0x02BC: "XMLPacket",
        0x927C: "MakerNote",
        0x9286: "UserComment",
        0x8769: "ExifIFD",
        0x8825: "GPSIFD",
    },
    "Exif": {
        0x829A: "ExposureTime",
        0x829D: "FNumber",
        0x8827: "ISOSpeedRatings",
        0x8822: "ExposureProgram",
        0x9003: "DateTimeOriginal",
        0x9004: "DateTimeDigitized",
        0x9209: "Flash",
        0x920A: "FocalLength",
        0x9207: "MeteringMode",
        0xA403: "WhiteBalance",
        0x927C: "MakerNote",
        0x9286: "UserComment",
        0xA433: "LensMake",
        0xA434: "LensModel",
        0xA431: "BodySerialNumber",
        0x9010: "OffsetTime",
    },
    "GPS": {
        0x0001: "GPSLatitudeRef",
        0x0002: "GPSLatitude",
        0x0003: "GPSLongitudeRef",
        0x0004: "GPSLongitude",
        0x0006: "GPSAltitude",
        0x001D: "GPSDateStamp",
    },
    "IFD1": {0x0201: "ThumbnailOffset", 0x0202: "ThumbnailLength"},
}


@dataclass
class ExifData:
    """The tags read from one EXIF block, by IFD, plus everything that did not add up."""

    ifds: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    thumbnail: bool = False
    tag_count: int = 0

    def get(self, name: str) -> Any:
        """A tag by name from IFD0, then the Exif IFD (some writers put Exif tags in IFD0)."""
        for ifd in ("IFD0", "Exif"):
            if name in self.ifds.get(ifd, {}):
                return self.ifds[ifd][name]
        return None

    def text(self, name: str) -> str | None:
        value = self.get(name)
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(value, str):
            value = value.replace("\x00", " ").strip()
            return value or None
        return None


def parse_exif(block: bytes) -> ExifData:
    """Read IFD0, the Exif and GPS IFDs and IFD1 (thumbnail) of a TIFF-structured EXIF block."""
    exif = ExifData()
    if len(block) < 8 or block[:4] not in (b"II*\x00", b"MM\x00*"):
        exif.problems.append(f"not a TIFF header: {block[:4]!r}")
        return exif
    order = "<" if block[:2] == b"II" else ">"
    (ifd0_offset,) = struct.unpack(order + "I", block[4:8])
    visited: set[int] = set()
    next_offset = _read_ifd(block, order, ifd0_offset, "IFD0", exif, visited)
    ifd0 = exif.ifds.get("IFD0", {})
    for pointer, name in (("ExifIFD", "Exif"), ("GPSIFD", "GPS")):
        offset = ifd0.pop(pointer, None)
        if isinstance(offset, int):
            _read_ifd(block, order, offset, name, exif, visited)
    if next_offset:
        _read_ifd(block, order, next_offset, "IFD1", exif, visited)
        ifd1 = exif.ifds.get("IFD1", {})
        start, length = ifd1.get("ThumbnailOffset"), ifd1.get("ThumbnailLength")
        if isinstance(start, int) and isinstance(length, int) and length > 0:
            if start + length <= len(block) and block[start : start + 2] == b"\xff\xd8":
                exif.thumbnail = True
            else:
                exif.problems.append("IFD1 thumbnail points outside the EXIF block or is not a JPEG")
    return exif


def _read_ifd(block: bytes, order: str, offset: int, name: str, exif: ExifData, visited: set[int]) -> int:
    """Read one IFD into ``exif.ifds[name]``; return the offset of the next IFD (0 if none)."""
    if offset in visited:
        exif.problems.append(f"{name} at offset {offset} was already read (IFD loop)")
        return 0
    visited.add(offset)
    if offset < 8 or offset + 2 > len(block):
        exif.problems.append(f"{name} offset {offset} is outside the {len(block)}-byte EXIF block")
        return 0
    (count,) = struct.unpack(order + "H", block[offset : offset + 2])
    if count > MAX_ENTRIES:
        exif.problems.append(f"{name} claims {count} entries")
        return 0
    if offset + 2 + 12 * count > len(block):
        exif.problems.append(f"{name} with {count} entries runs past the end of the EXIF block")
        count = (len(block) - offset - 2) // 12
    known = TAGS[name]
    tags = exif.ifds.setdefault(name, {})
    for index in range(count):
        entry = offset + 2 + 12 * index
        tag, kind, n = struct.unpack(order + "HHI", block[entry : entry + 8])
        exif.tag_count += 1
        if tag not in known:
            continue
        if kind not in TYPES:
            exif.problems.append(f"{name} tag 0x{tag:04X} has unknown type {kind}")
            continue
        code, size = TYPES[kind]
        total = size * n
        if total > MAX_VALUE_BYTES:
            exif.problems.append(f"{name} tag 0x{tag:04X} claims {total} bytes")
            continue
        if total <= 4:
            raw = block[entry + 8 : entry + 8 + total]
        else:
            (value_offset,) = struct.unpack(order + "I", block[entry + 8 : entry + 12])
            if value_offset + total > len(block):
                exif.problems.append(f"{name} tag {known[tag]} points past the end of the EXIF block")
                continue
            raw = block[value_offset : value_offset + total]
        tags[known[tag]] = _decode_value(raw, order, code, n)
    end = offset + 2 + 12 * count
    if end + 4 <= len(block):
        (next_offset,) = struct.unpack(order + "I", block[end : end + 4])
        return next_offset if name == "IFD0" else 0
    return 0


def _decode_value(raw: bytes, order: str, code: str, n: int) -> Any:
    """One tag value: str for ASCII, bytes for BYTE/UNDEFINED, a number or tuple of numbers for the rest."""
    if code == ASCII:
        return raw.split(b"\x00")[0].decode("latin-1")
    if code == BYTES:
        return raw
    if code in ("II", "ii"):
        pairs = struct.unpack(order + code[0] * (2 * n), raw)
        values = tuple(num / den if den else float("nan") for num, den in zip(pairs[0::2], pairs[1::2]))
    else:
        values = struct.unpack(order + code * n, raw)
    return values[0] if n == 1 else values


# ---- what the fields say ------------------------------------------------------------------------------
EXPOSURE_FIELDS = ("ExposureTime", "FNumber", "ISOSpeedRatings", "FocalLength")
CAPTURE_FIELDS = ("Flash", "MeteringMode", "ExposureProgram", "WhiteBalance")
# Weights of exif_score; they sum to 1. Make/model and exposure are what a camera always writes.
WEIGHTS = {
    "make_model": 0.30,
    "exposure": 0.30,
    "capture_date": 0.15,
    "maker_note": 0.10,
    "capture_settings": 0.05,
    "thumbnail": 0.05,
    "lens": 0.05,
}
EARLIEST_CAPTURE = dt.datetime(1990, 1, 1)  # before consumer digital cameras wrote EXIF


def parse_exif_datetime(value: Any) -> dt.datetime | None:
    """EXIF ``YYYY:MM:DD HH:MM:SS`` (also with ``-`` or ``/``); None when absent or not a real date."""
    if not isinstance(value, str):
        return None
    match = re.match(r"\s*(\d{4})[:\-/](\d{2})[:\-/](\d{2})[ T](\d{2}):(\d{2}):(\d{2})", value)
    if not match:
        return None
    try:
        return dt.datetime(*(int(part) for part in match.groups()))
    except ValueError:  # "0000:00:00 00:00:00" and other impossible dates
        return None


def camera_evidence(exif: ExifData, now: dt.datetime | None = None) -> dict[str, Any]:
    """Score and explain how camera-like the EXIF fields are. ``exif_score`` is in [0, 1]."""
    now = now or dt.datetime.now()
    make, model = exif.text("Make"), exif.text("Model")
    parts: dict[str, float] = {}
    parts["make_model"] = 1.0 if _plausible_name(make) and _plausible_name(model) else 0.0
    exposure_ok = [name for name in EXPOSURE_FIELDS if _positive_number(exif.get(name))]
    parts["exposure"] = len(exposure_ok) / len(EXPOSURE_FIELDS)
    dates = _date_check(exif, now)
    parts["capture_date"] = dates["score"]
    maker_note = exif.get("MakerNote")
    parts["maker_note"] = 1.0 if isinstance(maker_note, bytes) and len(maker_note) >= 16 else 0.0
    present = [name for name in CAPTURE_FIELDS if exif.get(name) is not None]
    parts["capture_settings"] = len(present) / len(CAPTURE_FIELDS)
    parts["thumbnail"] = 1.0 if exif.thumbnail else 0.0
    parts["lens"] = 1.0 if exif.text("LensModel") or exif.text("LensMake") else 0.0
    score = sum(WEIGHTS[name] * value for name, value in parts.items())
    return {
        "exif_score": round(min(max(score, 0.0), 1.0), 4),
        "score_parts": {name: round(value, 3) for name, value in parts.items()},
        "make": make,
        "model": model,
        "exposure_fields": exposure_ok,
        "dates": dates,
        "gps": _gps_check(exif.ifds.get("GPS", {})),
        "thumbnail": exif.thumbnail,
        "maker_note_bytes": len(maker_note) if isinstance(maker_note, bytes) else 0,
    }


def _plausible_name(value: str | None) -> bool:
    return bool(value) and 1 <= len(value) <= 80 and any(ch.isalnum() for ch in value)


def _positive_number(value: Any) -> bool:
    if isinstance(value, tuple):
        value = value[0] if value else None
    return isinstance(value, (int, float)) and value == value and 0 < value < 1e6


def _date_check(exif: ExifData, now: dt.datetime) -> dict[str, Any]:
    """Capture date present, a real date in [1990, now + 2 days], and consistent with the other two."""
    raw = {name: exif.text(name) for name in ("DateTimeOriginal", "DateTimeDigitized", "DateTime")}
    parsed = {name: parse_exif_datetime(value) for name, value in raw.items()}
    latest = now + dt.timedelta(days=2)
    problems = [f"{name} {raw[name]!r} is not a valid date" for name in raw if raw[name] and not parsed[name]]
    problems += [
        f"{name} {value:%Y-%m-%d} is outside {EARLIEST_CAPTURE:%Y}..today"
        for name, value in parsed.items()
        if value and not EARLIEST_CAPTURE <= value <= latest
    ]
    original, digitized, modified = parsed["DateTimeOriginal"], parsed["DateTimeDigitized"], parsed["DateTime"]
    day = dt.timedelta(days=1)
    # Editors move DateTime forward; scanners digitize later than the original. The reverse is odd.
    if original and modified and modified < original - day:
        problems.append("DateTime (last change) is more than a day before DateTimeOriginal")
    if original and digitized and digitized < original - day:
        problems.append("DateTimeDigitized is more than a day before DateTimeOriginal")
    if original and not problems:
        score = 1.0
    elif modified and not problems:
        score = 0.5  # only a file date: editors and converters write that too
    else:
        score = 0.0
    return {"values": {k: v for k, v in raw.items() if v}, "problems": problems, "score": score}


def _gps_check(gps: dict[str, Any]) -> dict[str, Any]:
    """GPS IFD: is there a position, and is it a real one (refs N/S/E/W, within range, not 0,0)?"""
    if not gps:
        return {"present": False}
    if "GPSLatitude" not in gps and "GPSLongitude" not in gps:
        return {"present": True, "position": "missing"}  # a GPS IFD without a fix (common on phones)
    lat, lon = _degrees(gps.get("GPSLatitude")), _degrees(gps.get("GPSLongitude"))
    refs_ok = gps.get("GPSLatitudeRef") in ("N", "S") and gps.get("GPSLongitudeRef") in ("E", "W")
    if lat is None or lon is None or not refs_ok or lat > 90 or lon > 180:
        return {"present": True, "position": "invalid"}
    return {"present": True, "position": "zero" if lat == lon == 0 else "valid"}


def _degrees(value: Any) -> float | None:
    if not isinstance(value, tuple) or len(value) != 3:
        return None
    degrees, minutes, seconds = value
    if seconds != seconds:  # "0/0" seconds: writers that put the fraction in the minutes
        seconds = 0.0
    if degrees != degrees or minutes != minutes or min(degrees, minutes, seconds) < 0:
        return None
    return degrees + minutes / 60 + seconds / 3600


# ---- EXIF text fields that carry generator parameters ---------------------------------------------------
USER_COMMENT_CODES = {b"ASCII\x00\x00\x00": "ascii", b"UNICODE\x00": "utf-16", b"JIS\x00\x00\x00\x00\x00": "shift_jis"}


def decode_user_comment(value: Any) -> str | None:
    """EXIF UserComment: an 8-byte character-code prefix, then the text (AUTOMATIC1111 writes UTF-16)."""
    if isinstance(value, str):
        return value.strip() or None
    if not isinstance(value, bytes) or not value:
        return None
    code, body = USER_COMMENT_CODES.get(value[:8]), value[8:]
    if code == "utf-16":
        text = body.decode(_utf16_byte_order(body), "replace")
    elif code:
        text = body.decode(code, "replace")
    else:
        body = value[8:] if value[:8] == b"\x00" * 8 else value
        text = body.decode("utf-8", "replace")
    text = text.replace("\x00", "").strip()
    return text or None


def _utf16_byte_order(body: bytes) -> str:
    """Pick UTF-16 byte order: a BOM if present, else where the zero bytes of ASCII text sit."""
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return "utf-16"
    head = body[:512]
    zeros_even = head[0::2].count(0)
    zeros_odd = head[1::2].count(0)
    return "utf-16-be" if zeros_even >= zeros_odd else "utf-16-le"
