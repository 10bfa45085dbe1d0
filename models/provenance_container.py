"""Walk an image container (JPEG, PNG, WebP, TIFF, ...) and collect its metadata blocks, with bounds.

This is the provenance detector's first step: it never decodes pixels, it only finds where the file keeps
EXIF, XMP, IPTC, PNG text chunks and C2PA (JUMBF) data. Every length field is checked against the bytes that
are really there, text is cut at :data:`TEXT_LIMIT` and compressed text is inflated at most to that size, so a
hostile file costs at most one linear pass over its bytes. What does not add up is reported in ``errors``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

# How much of any one text block (PNG chunk, JPEG comment, XMP packet) is kept for parsing.
TEXT_LIMIT = 256 * 1024
# How many blocks of one kind are kept; a file with thousands of text chunks is reported, not parsed.
MAX_BLOCKS = 64
# JPEG segments / PNG or RIFF chunks walked before giving up (a real file has tens).
MAX_SEGMENTS = 20_000

EXIF_PREFIX = b"Exif\x00\x00"
XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
PHOTOSHOP_PREFIX = b"Photoshop 3.0\x00"
XMP_START_TAGS = (b"<x:xmpmeta", b"<x:xapmeta")
XMP_END_TAGS = (b"</x:xmpmeta>", b"</x:xapmeta>")


@dataclass
class ContainerMetadata:
    """The metadata blocks found in one file, each with where it was found."""

    container: str  # "JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP", "unknown"
    exif: list[tuple[str, bytes]] = field(default_factory=list)  # TIFF-structured EXIF (no "Exif\0\0" prefix)
    xmp: list[tuple[str, bytes]] = field(default_factory=list)  # XMP packets, at most TEXT_LIMIT each
    iptc: list[tuple[str, bytes]] = field(default_factory=list)  # Photoshop image resource blocks (APP13)
    text: dict[str, str] = field(default_factory=dict)  # PNG tEXt/zTXt/iTXt keyword -> text; JPEG "comment"
    text_where: dict[str, str] = field(default_factory=dict)  # keyword -> "PNG tEXt", "PNG iTXt", ...
    truncated: list[str] = field(default_factory=list)  # blocks cut at TEXT_LIMIT
    c2pa_box: str | None = None  # where a C2PA / JUMBF box was seen, if any
    has_alpha: bool = False  # PNG colour type with alpha, or tRNS (the stealth-pnginfo carrier)
    errors: list[str] = field(default_factory=list)

    def add_text(self, keyword: str, text: str, where: str) -> None:
        if len(self.text) >= MAX_BLOCKS:
            self.errors.append(f"more than {MAX_BLOCKS} text blocks; {where} {keyword!r} ignored")
            return
        if keyword in self.text:  # a repeated keyword keeps the first one, like every reader does
            return
        self.text[keyword] = text
        self.text_where[keyword] = where


def read_container(data: bytes, image_format: str) -> ContainerMetadata:
    """Collect the metadata blocks of ``data`` (``image_format`` as decode_image named it)."""
    if data.startswith(b"\xff\xd8"):
        meta = ContainerMetadata("JPEG")
        _walk_jpeg(data, meta)
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        meta = ContainerMetadata("PNG")
        _walk_png(data, meta)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        meta = ContainerMetadata("WEBP")
        _walk_webp(data, meta)
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        # A TIFF file is itself a TIFF structure: the EXIF parser reads its IFD0 (and XMP from tag 700).
        meta = ContainerMetadata("TIFF")
        meta.exif.append(("TIFF header", data))
    else:
        meta = ContainerMetadata(image_format or "unknown")
    if not meta.xmp and meta.container not in ("JPEG", "PNG", "WEBP"):
        # GIF/BMP/TIFF keep XMP in places we do not walk; a bounded raw search finds the packet.
        packet = find_xmp_packet(data)
        if packet is not None:
            meta.xmp.append(("raw packet search", packet))
    return meta


def find_xmp_packet(blob: bytes) -> bytes | None:
    """The first ``<x:xmpmeta>...</x:xmpmeta>`` packet in ``blob``, cut at TEXT_LIMIT."""
    for start_tag, end_tag in zip(XMP_START_TAGS, XMP_END_TAGS):
        start = blob.find(start_tag)
        if start < 0:
            continue
        end = blob.find(end_tag, start, start + TEXT_LIMIT)
        stop = end + len(end_tag) if end >= 0 else start + TEXT_LIMIT
        return bytes(blob[start:stop])
    return None


# ---- JPEG -----------------------------------------------------------------------------------------------
def _walk_jpeg(data: bytes, meta: ContainerMetadata) -> None:
    """Read the marker segments before the first scan: all metadata of a JPEG lives there."""
    pos, count = 2, 0
    while pos + 4 <= len(data) and count < MAX_SEGMENTS:
        count += 1
        if data[pos] != 0xFF:
            meta.errors.append(f"JPEG: expected a marker at byte {pos}, found 0x{data[pos]:02x}")
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no metadata after this point
            return
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            meta.errors.append(f"JPEG: segment 0xFF{marker:02X} at byte {pos} claims {length} bytes past the end")
            return
        body = data[pos + 4 : end]
        _jpeg_segment(marker, body, pos, meta)
        pos = end
    if count >= MAX_SEGMENTS:
        meta.errors.append(f"JPEG: more than {MAX_SEGMENTS} segments before the image data")


def _jpeg_segment(marker: int, body: bytes, pos: int, meta: ContainerMetadata) -> None:
    if marker == 0xE1 and body.startswith(EXIF_PREFIX):
        if not meta.exif:  # the first EXIF segment is the image's; later ones belong to embedded previews
            meta.exif.append(("JPEG APP1 Exif", body[len(EXIF_PREFIX) :]))
    elif marker == 0xE1 and body.startswith(XMP_PREFIX):
        packet = body[len(XMP_PREFIX) :]
        if len(meta.xmp) < MAX_BLOCKS:
            meta.xmp.append(("JPEG APP1 XMP", packet[:TEXT_LIMIT]))
    elif marker == 0xED and body.startswith(PHOTOSHOP_PREFIX):
        meta.iptc.append(("JPEG APP13 Photoshop", body[len(PHOTOSHOP_PREFIX) :]))
    elif marker == 0xEB and body[:2] == b"JP" and meta.c2pa_box is None:
        # APP11 carries JUMBF boxes; C2PA manifests are the JUMBF use that matters here.
        meta.c2pa_box = f"JPEG APP11 JUMBF at byte {pos}"
    elif marker == 0xFE:
        text = _decode_text(body[:TEXT_LIMIT])
        if len(body) > TEXT_LIMIT:
            meta.truncated.append("JPEG comment")
        meta.add_text("comment", text, "JPEG COM")


# ---- PNG ------------------------------------------------------------------------------------------------
def _walk_png(data: bytes, meta: ContainerMetadata) -> None:
    """Read every chunk header; keep text chunks (bounded), eXIf, caBX (C2PA) and the alpha layout."""
    pos, count = 8, 0
    while pos + 8 <= len(data) and count < MAX_SEGMENTS:
        count += 1
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end + 4 > len(data):
            meta.errors.append(f"PNG: chunk {kind!r} at byte {pos} claims {length} bytes past the end")
            return
        _png_chunk(kind, data, start, end, meta)
        if kind == b"IEND":
            return
        pos = end + 4  # skip the CRC
    if count >= MAX_SEGMENTS:
        meta.errors.append(f"PNG: more than {MAX_SEGMENTS} chunks")


def _png_chunk(kind: bytes, data: bytes, start: int, end: int, meta: ContainerMetadata) -> None:
    length = end - start
    if kind == b"IHDR" and length >= 13:
        colour_type = data[start + 9]
        meta.has_alpha = colour_type in (4, 6)
    elif kind == b"tRNS":
        meta.has_alpha = True
    elif kind == b"eXIf":
        body = data[start:end]
        meta.exif.append(("PNG eXIf", body[len(EXIF_PREFIX) :] if body.startswith(EXIF_PREFIX) else body))
    elif kind == b"caBX" and meta.c2pa_box is None:
        meta.c2pa_box = f"PNG caBX chunk at byte {start - 8}"
    elif kind in (b"tEXt", b"zTXt", b"iTXt"):
        # Only the first TEXT_LIMIT bytes of a chunk are looked at: a 5 MB chunk costs nothing more.
        head = data[start : min(end, start + TEXT_LIMIT + 1024)]
        try:
            keyword, text, cut = _png_text(kind, head, length)
        except (ValueError, zlib.error) as err:
            meta.errors.append(f"PNG: unreadable {kind.decode()} chunk at byte {start - 8}: {err}")
            return
        if cut:
            meta.truncated.append(f"PNG {kind.decode()} {keyword!r} ({length} bytes)")
        if keyword == "XML:com.adobe.xmp":
            meta.xmp.append((f"PNG {kind.decode()} XML:com.adobe.xmp", text.encode("utf-8")))
        else:
            meta.add_text(keyword, text, f"PNG {kind.decode()}")


def _png_text(kind: bytes, head: bytes, length: int) -> tuple[str, str, bool]:
    """(keyword, text, truncated) of one PNG text chunk; ``head`` is its first bytes only."""
    sep = head.find(b"\x00", 0, 80)
    if sep <= 0:
        raise ValueError("no keyword terminator in the first 80 bytes")
    keyword = head[:sep].decode("latin-1")
    rest = head[sep + 1 :]
    if kind == b"tEXt":
        return keyword, _decode_text(rest[:TEXT_LIMIT]), length - sep - 1 > TEXT_LIMIT
    if kind == b"zTXt":
        text, cut = _inflate(rest[1:])
        return keyword, _decode_text(text), cut
    # iTXt: compression flag, method, language tag \0, translated keyword \0, text
    if len(rest) < 2:
        raise ValueError("iTXt chunk too short")
    compressed = rest[0] == 1
    lang_end = rest.find(b"\x00", 2)
    trans_end = rest.find(b"\x00", lang_end + 1) if lang_end >= 0 else -1
    if trans_end < 0:
        raise ValueError("iTXt chunk without language / translated keyword terminators")
    body = rest[trans_end + 1 :]
    if compressed:
        text, cut = _inflate(body)
        return keyword, text.decode("utf-8", "replace"), cut
    return keyword, body[:TEXT_LIMIT].decode("utf-8", "replace"), length - sep - 1 > TEXT_LIMIT


def _inflate(blob: bytes) -> tuple[bytes, bool]:
    """Inflate at most TEXT_LIMIT bytes (a zip bomb stops there)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(blob, TEXT_LIMIT)
    return out, bool(inflater.unconsumed_tail)


def _decode_text(raw: bytes) -> str:
    """PNG tEXt is Latin-1 by the spec, but generators write UTF-8 there; accept both."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# ---- WebP -----------------------------------------------------------------------------------------------
def _walk_webp(data: bytes, meta: ContainerMetadata) -> None:
    pos, count = 12, 0
    while pos + 8 <= len(data) and count < MAX_SEGMENTS:
        count += 1
        kind = data[pos : pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end > len(data):
            meta.errors.append(f"WebP: chunk {kind!r} at byte {pos} claims {length} bytes past the end")
            return
        if kind == b"VP8X" and length >= 1:
            meta.has_alpha = bool(data[start] & 0x10)
        elif kind == b"EXIF":
            body = data[start:end]
            meta.exif.append(("WebP EXIF", body[len(EXIF_PREFIX) :] if body.startswith(EXIF_PREFIX) else body))
        elif kind == b"XMP ":
            meta.xmp.append(("WebP XMP", data[start : min(end, start + TEXT_LIMIT)]))
        elif kind == b"C2PA" and meta.c2pa_box is None:
            meta.c2pa_box = f"WebP C2PA chunk at byte {pos}"
        pos = end + (length & 1)  # chunks are padded to an even size
