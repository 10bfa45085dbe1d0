"""A seeded corpus of broken and hostile image files, for the HTTP fuzz test (issue 13).

``corpus(fixtures, count, seed)`` returns ``count`` (name, bytes) pairs, the same for the same seed. Each is one
committed real file (camera JPEG with EXIF, C2PA JPEG and WebP, generator-metadata PNG and JPEG) or a small
generated image, put through one mutation:

* generic: bit flips, truncation, random bytes spliced in;
* JPEG segments: a random APPn segment (EXIF APP1, XMP APP1, ICC APP2, C2PA JUMBF APP11) filled with random bytes,
  or its length field made to lie;
* hostile metadata: EXIF whose IFD claims 65535 entries pointing past the end, an XMP packet with a billion-laughs
  entity expansion, an ICC profile of random bytes, a PNG text chunk that inflates to 64 MB (zTXt bomb), a flood of
  20,000 PNG text chunks;
* headers that lie about size: PNG IHDR and JPEG SOF claiming 100,000 x 100,000 pixels (CRC kept valid), a TIFF
  whose IFD points to itself.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image

BASE_FIXTURES = (
    "camera-models/real/Canon_EOS_7D.jpg",
    "c2pa/ai/bing_creator_cloud_surfing_puppy.jpg",
    "c2pa/ai/DALL-E_cloud_surfing_puppy.webp",
    "generator-metadata/ai/ComfyUI__img2img_cropped.png",
    "generator-metadata/ai/AUTOMATIC1111__automatic1111_cropped.jpg",
    "generator-metadata/ai/InvokeAI__invokeai_sdmeta1.png",
)


def small_image(rng: random.Random, fmt: str, **save) -> bytes:
    width, height = rng.randint(8, 96), rng.randint(8, 96)
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def bases(fixtures: Path, rng: random.Random) -> dict[str, bytes]:
    files = {Path(name).name: (fixtures / name).read_bytes() for name in BASE_FIXTURES}
    for fmt in ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP"):
        files[f"generated.{fmt.lower()}"] = small_image(rng, fmt)
    return files


# ---- generic mutations ---------------------------------------------------------------------------------
def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 64)):
        position = rng.randrange(len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(1, max(2, len(data)))]


def splice(data: bytes, rng: random.Random) -> bytes:
    position = rng.randrange(len(data))
    return data[:position] + rng.randbytes(rng.randint(1, 4096)) + data[position:]


# ---- JPEG segments -------------------------------------------------------------------------------------
def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start of the length field, segment length) of each APPn / COM segment before the scan."""
    found, position = [], 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xDA:  # start of scan: metadata segments are all before it
            break
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            found.append((marker, position + 2, length))
        position += 2 + length
    return found


def scramble_segment(data: bytes, rng: random.Random) -> bytes:
    segments = jpeg_segments(data)
    if not segments:
        return flip_bits(data, rng)
    _, start, length = rng.choice(segments)
    body = start + 2
    size = length - 2
    if rng.random() < 0.5:  # the segment's bytes become random
        return data[:body] + rng.randbytes(size) + data[body + size :]
    lie = rng.choice([0, 1, 2, 3, length + rng.randint(1, 5000), 0xFFFF])  # its length field lies
    return data[:start] + struct.pack(">H", lie) + data[start + 2 :]


def insert_app_segment(data: bytes, marker: int, payload: bytes) -> bytes:
    """``payload`` as an APPn segment right after SOI (split to the 65533-byte segment limit)."""
    segments = b""
    for offset in range(0, len(payload), 65533):
        chunk = payload[offset : offset + 65533]
        segments += bytes([0xFF, marker]) + struct.pack(">H", len(chunk) + 2) + chunk
    return data[:2] + segments + data[2:]


def hostile_exif(rng: random.Random) -> bytes:
    """EXIF whose first IFD claims 65535 entries, each pointing at data far past the end."""
    entries = b"".join(
        struct.pack(
            "<HHII", rng.choice([0x010F, 0x0110, 0x8769, 0x8825, 0x927C]), rng.randint(1, 12), 0x7FFFFFFF, 0xFFFFFFF0
        )
        for _ in range(64)
    )
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 0xFFFF) + entries + struct.pack("<I", 8)
    return b"Exif\x00\x00" + tiff


def billion_laughs_xmp() -> bytes:
    entities = '<!ENTITY a0 "lol">' + "".join(
        f'<!ENTITY a{i} "{("&a" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
    )
    xml = (
        f'<?xml version="1.0"?><!DOCTYPE x [{entities}]>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>&a9;</dc:creator>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    return b"http://ns.adobe.com/xap/1.0/\x00" + xml.encode()


def with_hostile_exif(data: bytes, rng: random.Random) -> bytes:
    return insert_app_segment(data, 0xE1, hostile_exif(rng))


def with_billion_laughs(data: bytes, rng: random.Random) -> bytes:
    return insert_app_segment(data, 0xE1, billion_laughs_xmp())


def with_random_c2pa_box(data: bytes, rng: random.Random) -> bytes:
    """An APP11 JUMBF segment shaped like C2PA's ("JP" + box header) with random contents."""
    box = b"JP" + struct.pack(">HI", 0x0001, 1) + struct.pack(">I", rng.randint(0, 2**32 - 1)) + b"jumb"
    return insert_app_segment(data, 0xEB, box + rng.randbytes(rng.randint(16, 20000)))


def with_garbage_icc(data: bytes, rng: random.Random) -> bytes:
    return insert_app_segment(data, 0xE2, b"ICC_PROFILE\x00\x01\x01" + rng.randbytes(rng.randint(16, 3000)))


def jpeg_huge_dimensions(data: bytes, rng: random.Random) -> bytes:
    """The SOF header claims 100000 x 100000 pixels (a 10-gigapixel image in a small file)."""
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        at = data.find(marker)
        if at > 0:
            return data[: at + 5] + struct.pack(">HH", 65500, 65500) + data[at + 9 :]
    return flip_bits(data, rng)


# ---- PNG and TIFF --------------------------------------------------------------------------------------
def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_with_chunks(data: bytes, chunks: bytes) -> bytes:
    """``chunks`` inserted right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return data[:33] + chunks + data[33:]


def png_text_flood(rng: random.Random) -> bytes:
    chunks = b"".join(png_chunk(b"tEXt", b"k%d\x00%s" % (i, rng.randbytes(8).hex().encode())) for i in range(20000))
    return png_with_chunks(small_image(rng, "PNG"), chunks)


def png_ztxt_bomb(rng: random.Random) -> bytes:
    bomb = zlib.compress(b"A" * (64 * 1024 * 1024), 9)
    return png_with_chunks(small_image(rng, "PNG"), png_chunk(b"zTXt", b"parameters\x00\x00" + bomb))


def png_huge_dimensions(rng: random.Random) -> bytes:
    data = small_image(rng, "PNG")
    ihdr = struct.pack(">II", 100_000, 100_000) + data[24:29]
    return data[:8] + png_chunk(b"IHDR", ihdr) + data[33:]


def tiff_ifd_loop(rng: random.Random) -> bytes:
    """A little-endian TIFF whose first IFD's next-IFD offset points back to itself."""
    entries = [
        (256, 3, 1, 4),
        (257, 3, 1, 4),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),
        (277, 3, 1, 1),
        (279, 4, 1, 16),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 8)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + rng.randbytes(16)


JPEG_MUTATIONS: tuple[Callable[[bytes, random.Random], bytes], ...] = (
    scramble_segment,
    with_hostile_exif,
    with_billion_laughs,
    with_random_c2pa_box,
    with_garbage_icc,
    jpeg_huge_dimensions,
)
GENERIC_MUTATIONS = (flip_bits, truncate, splice)
CRAFTED = (png_text_flood, png_ztxt_bomb, png_huge_dimensions, tiff_ifd_loop)


def corpus(fixtures: Path, count: int = 500, seed: int = 13) -> list[tuple[str, bytes]]:
    """``count`` mutated files, reproducible from ``seed``; every mutation kind appears."""
    rng = random.Random(seed)
    files = bases(fixtures, rng)
    jpegs = [name for name, data in files.items() if data[:2] == b"\xff\xd8"]
    out: list[tuple[str, bytes]] = []
    for make in CRAFTED:
        out.append((make.__name__, make(rng)))
    for mutate in JPEG_MUTATIONS:
        name = rng.choice(jpegs)
        out.append((f"{name}:{mutate.__name__}", mutate(files[name], rng)))
    while len(out) < count:
        roll = rng.random()
        if roll < 0.4:
            name = rng.choice(jpegs)
            mutate = rng.choice(JPEG_MUTATIONS)
        elif roll < 0.95:
            name = rng.choice(sorted(files))
            mutate = rng.choice(GENERIC_MUTATIONS)
        else:
            make = rng.choice(CRAFTED)
            out.append((make.__name__, make(rng)))
            continue
        out.append((f"{name}:{mutate.__name__}", mutate(files[name], rng)))
    return out[:count]
