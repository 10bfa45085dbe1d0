"""Declared provenance markers (issue 11, item 5): each spelling whose exact form is published or seen in a real file.

No real file carrying these markers may be committed here (none is in the shared data either, see
docs/provenance_markers.md), so each fixture is a tiny synthetic image that carries the marker byte for byte in the
published form; the comment next to each names where that form comes from. Every marker is checked end to end
through the provenance detector: what it reports (kind, source, generator), and whether it is hard evidence.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from models.image_input import ImageInputError, decode_image
from models.provenance_container import read_container
from models.provenance_metadata import source_type_code
from models.registry import create_detector

IPTC_NS = 'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
PS_NS = 'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"'
XMP_NS = 'xmlns:xmp="http://ns.adobe.com/xap/1.0/"'


@pytest.fixture(scope="module")
def detector():
    return create_detector("provenance")


# ---- carriers ------------------------------------------------------------------------------------------------
def xmp_packet(body: str = "", attributes: str = "") -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" {attributes}>{body}</rdf:Description></rdf:RDF></x:xmpmeta>'
    ).encode()


def pixels(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def jpeg(xmp: bytes | None = None, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    pixels(seed).save(buffer, "JPEG", quality=90, **({"xmp": xmp} if xmp else {}))
    return buffer.getvalue()


def webp(xmp: bytes, seed: int = 1) -> bytes:
    buffer = io.BytesIO()
    pixels(seed).save(buffer, "WEBP", xmp=xmp)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(chunks: list[bytes], seed: int = 2) -> bytes:
    buffer = io.BytesIO()
    pixels(seed).save(buffer, "PNG")
    data = buffer.getvalue()
    return data[:33] + b"".join(chunks) + data[33:]  # right after IHDR


def itxt_xmp(xmp: bytes) -> bytes:
    return png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)


def carry(carrier: str, xmp: bytes) -> bytes:
    return {"jpeg": lambda: jpeg(xmp), "png": lambda: png([itxt_xmp(xmp)]), "webp": lambda: webp(xmp)}[carrier]()


def iim_credit_jpeg(credit: str, seed: int = 3) -> bytes:
    """A JPEG whose APP13 Photoshop IRB holds an IPTC-IIM record 2:110 Credit."""
    value = credit.encode()
    iim = b"\x1c\x02\x6e" + struct.pack(">H", len(value)) + value
    irb = b"8BIM" + struct.pack(">HHI", 0x0404, 0, len(iim)) + iim + b"\x00" * (len(iim) % 2)
    payload = b"Photoshop 3.0\x00" + irb
    data = jpeg(seed=seed)
    return data[:2] + struct.pack(">BBH", 0xFF, 0xED, len(payload) + 2) + payload + data[2:]


def run(detector, data: bytes):
    result = detector.predict([decode_image(data)])[0]
    assert result.error is None, result.error
    return result


# ---- IPTC Digital Source Type, every published spelling ---------------------------------------------------------
IRI = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def spelled(spelling: str, code: str) -> bytes:
    """An XMP packet declaring ``code`` in one published spelling (sources in models/provenance_metadata.py)."""
    if spelling == "iri_element":  # the concept IRI, element form (cv.iptc.org concept ID)
        return xmp_packet(f"<Iptc4xmpExt:DigitalSourceType>{IRI}{code}</Iptc4xmpExt:DigitalSourceType>", IPTC_NS)
    if spelling == "https_iri_attribute":  # https, attribute form (IPTC's ExifTool guide; real Midjourney PNG)
        return xmp_packet(
            "", f'{IPTC_NS} Iptc4xmpExt:DigitalSourceType="https://cv.iptc.org/newscodes/digitalsourcetype/{code}"'
        )
    if spelling == "rdf_resource":  # a URI value in RDF/XML's resource form (W3C RDF 1.1 XML Syntax 2.4)
        return xmp_packet(f'<Iptc4xmpExt:DigitalSourceType rdf:resource="{IRI}{code}"/>', IPTC_NS)
    if spelling == "qcode":  # the vocabulary's "Concept ID (QCode)", scheme alias digsrctype
        return xmp_packet(f"<Iptc4xmpExt:DigitalSourceType>digsrctype:{code}</Iptc4xmpExt:DigitalSourceType>", IPTC_NS)
    if spelling == "bare_code":  # what ExifTool writes for -XMP-iptcExt:DigitalSourceType=<code>
        return xmp_packet(f"<Iptc4xmpExt:DigitalSourceType>{code}</Iptc4xmpExt:DigitalSourceType>", IPTC_NS)
    raise ValueError(spelling)


SPELLINGS = ["iri_element", "https_iri_attribute", "rdf_resource", "qcode", "bare_code"]


@pytest.mark.parametrize("carrier", ["jpeg", "png", "webp"])
@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize(
    "code, kind", [("trainedAlgorithmicMedia", "generated"), ("compositeWithTrainedAlgorithmicMedia", "ai_edited")]
)
def test_ai_source_type_in_every_spelling_and_carrier_is_hard_evidence(detector, carrier, spelling, code, kind):
    result = run(detector, carry(carrier, spelled(spelling, code)))
    details = result.details["provenance"]
    assert details["xmp"]["source_type_codes"] == [code]
    assert details["errors"] == []
    assert result.features["metadata_ai_claim"] == 1.0
    assert len(result.hard_evidence) == 1 and code in result.hard_evidence[0]
    assert (result.provenance["kind"], result.provenance["source"], result.provenance["trusted"]) == (
        kind,
        "xmp",
        False,
    )
    if kind == "ai_edited":
        assert "edited with generative AI" in result.hard_evidence[0]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_unsigned_capture_declaration_never_decides_non_ai(detector, spelling):
    result = run(detector, carry("jpeg", spelled(spelling, "digitalCapture")))
    assert result.details["provenance"]["xmp"]["source_type_codes"] == ["digitalCapture"]
    assert result.hard_evidence_real == [] and result.hard_evidence == []
    assert result.features["metadata_ai_claim"] == 0.0
    assert (result.provenance["kind"], result.provenance["source"], result.provenance["trusted"]) == (
        "captured",
        "xmp",
        False,
    )


@pytest.mark.parametrize(
    "code", ["humanEdits", "compositeCapture", "screenCapture", "digitalArt", "softwareImage", "minorHumanEdits"]
)
def test_non_ai_source_types_are_reported_without_a_claim(detector, code):
    """The rest of the vocabulary, retired codes included ("acceptable in legacy content", cv.iptc.org)."""
    result = run(detector, carry("png", spelled("qcode", code)))
    assert result.details["provenance"]["xmp"]["source_type_codes"] == [code]
    assert result.hard_evidence == [] and result.hard_evidence_real == []
    assert result.features["metadata_ai_claim"] == 0.0 and result.provenance["kind"] == "none"
    assert any(code in sentence and "no generative AI claimed" in sentence for sentence in result.evidence)


@pytest.mark.parametrize(
    "value",
    [
        "trainedAlgorithmicMediaX",
        "TrainedAlgorithmicMedia",
        "AI generated",
        "digsrctype:aiGenerated",
        "http://example.org/digitalsourcetype/trainedAlgorithmicMedia",
        "http://cv.iptc.org/newscodes/digitalsourcetype/ai",
        "urn:trainedAlgorithmicMedia",
    ],
)
def test_values_outside_the_vocabulary_are_no_declaration(detector, value):
    assert source_type_code(value) is None
    packet = xmp_packet(f"<Iptc4xmpExt:DigitalSourceType>{value}</Iptc4xmpExt:DigitalSourceType>", IPTC_NS)
    result = run(detector, carry("jpeg", packet))
    assert result.details["provenance"]["xmp"]["source_type_codes"] == []
    assert result.features["metadata_ai_claim"] == 0.0 and result.hard_evidence == []


def test_rdf_resource_form_is_read_by_the_pattern_fallback_too(detector):
    """XMP that is not well-formed XML is read by a bounded pattern; the rdf:resource form is part of it."""
    packet = spelled("rdf_resource", "trainedAlgorithmicMedia").replace(b"</rdf:RDF>", b"")
    result = run(detector, carry("jpeg", packet))
    assert "not well-formed XML" in result.details["provenance"]["errors"][0]
    assert result.details["provenance"]["xmp"]["source_type_codes"] == ["trainedAlgorithmicMedia"]
    assert result.provenance["kind"] == "generated"


def test_iim_has_no_digital_source_type_dataset(detector):
    """IPTC-IIM defines no Digital Source Type: an IRI typed into an IIM text field (here Credit) is not read as one."""
    result = run(detector, iim_credit_jpeg(IRI + "trainedAlgorithmicMedia"))
    assert result.details["provenance"]["xmp"]["source_type_codes"] == []
    assert result.features["metadata_ai_claim"] == 0.0 and result.provenance["kind"] == "none"


# ---- vendors ----------------------------------------------------------------------------------------------------
# Midjourney: the metadata of a real Midjourney PNG (downloaded 2024-06-20) as recorded in picteus/picteus
# @ 07b2a53b, extensions/instances/midjourney/src/main.test.ts; its reader (src/instructions.ts) takes DigImageGUID
# and DigitalSourceType as iptcExt: attributes of rdf:Description in the XML:com.adobe.xmp chunk.
MJ_JOB = "d95be554-d446-4c51-ad75-e00d9f9bbb35"
MJ_DESCRIPTION = (
    "https://s.mj.run/jhiJzyVBla8 Editorial fashion, photo by Tim Walker, Biomechatronic Chanel girl "
    "model within shimmering platinum fluid in code, made of fusion of antimatter, binary code, "
    "transistor, microphone, hard drive, static, fiber optics, in designer fashion style --chaos 16 "
    f"--ar 4:5 --sref 4169606994 --personalize yfbxsj7 Job ID: {MJ_JOB}"
)
MJ_XMP = xmp_packet(
    "",
    'xmlns:iptcExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    f'iptcExt:DigImageGUID="{MJ_JOB}" iptcExt:DigitalSourceType='
    '"https://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"',
)


def midjourney_png(with_description: bool = True, xmp: bytes = MJ_XMP) -> bytes:
    chunks = [
        png_chunk(b"tEXt", b"Creation Time\x00Thu, 20 Jun 2024 22:50:03 GMT"),
        png_chunk(b"tEXt", b"Author\x00Grand Daron"),
    ]
    if with_description:
        chunks.append(png_chunk(b"tEXt", b"Description\x00" + MJ_DESCRIPTION.encode()))
    return png(chunks + [itxt_xmp(xmp)])


def test_midjourney_png_in_its_real_form(detector):
    result = run(detector, midjourney_png())
    details = result.details["provenance"]
    (finding,) = details["generator_metadata"]
    assert (finding["tool"], finding["where"], finding["extra"]["job_id"]) == (
        "Midjourney",
        "PNG tEXt Description",
        MJ_JOB,
    )
    assert finding["extra"]["xmp_dig_image_guid"] == "matches the Job ID"
    assert finding["prompt"].startswith("https://s.mj.run/jhiJzyVBla8 Editorial fashion")
    assert details["xmp"]["source_type_codes"] == ["trainedAlgorithmicMedia"]
    assert details["xmp"]["dig_image_guids"] == [MJ_JOB]
    assert len(result.hard_evidence) == 2  # the Midjourney description and the IPTC declaration
    assert (result.provenance["kind"], result.provenance["source"], result.provenance["generator"]) == (
        "generated",
        "png_text",
        "Midjourney",
    )
    # The picteus reader also splits a "<job>_<index>" GUID; another job's GUID is no match.
    indexed = run(detector, midjourney_png(xmp=MJ_XMP.replace(MJ_JOB.encode() + b'"', MJ_JOB.encode() + b'_2"')))
    assert indexed.details["provenance"]["generator_metadata"][0]["extra"]["xmp_dig_image_guid"] == "matches the Job ID"
    other = run(detector, midjourney_png(xmp=MJ_XMP.replace(MJ_JOB.encode(), b"00000000-0000-4000-8000-000000000000")))
    assert "xmp_dig_image_guid" not in other.details["provenance"]["generator_metadata"][0]["extra"]
    # Stripped of its Description, the XMP declaration alone still decides.
    alone = run(detector, midjourney_png(with_description=False))
    assert alone.details["provenance"]["generator_metadata"] == []
    assert (alone.provenance["kind"], alone.provenance["source"]) == ("generated", "xmp")


def test_meta_ai_images_carry_the_iptc_declaration(detector):
    """Imagine with Meta AI: "the Digital Source Type field is set to trainedAlgorithmicMedia" (iptc.org/news/
    meta-announces-support-for-iptc-metadata-in-generative-ai-images/, Feb 2024). Meta publishes no other
    marker (no CreatorTool or credit of its own), so the file says AI-generated without naming Meta."""
    result = run(detector, carry("jpeg", spelled("iri_element", "trainedAlgorithmicMedia")))
    assert (result.provenance["kind"], result.provenance["source"], result.provenance["generator"]) == (
        "generated",
        "xmp",
        None,
    )


@pytest.mark.parametrize(
    "credit, carrier, kind, generator, source",
    [
        # Google Photos edits (Magic Editor / Magic Eraser): "Credit: Edited with Google AI" (blog.google, Oct 2024).
        ("Edited with Google AI", "iim", "ai_edited", "Google Photos (Magic Editor / Magic Eraser)", "iptc"),
        ("Edited with Google AI", "xmp", "ai_edited", "Google Photos (Magic Editor / Magic Eraser)", "xmp"),
        # Apple Photos Clean Up (iOS 18.1): "Apple Photos Clean Up" in the photo's Credit field.
        ("Apple Photos Clean Up", "xmp", "ai_edited", "Apple Photos Clean Up", "xmp"),
        ("Apple Photos Clean Up", "iim", "ai_edited", "Apple Photos Clean Up", "iptc"),
        # Google generative AI (the marker this detector read before).
        ("Made with Google AI", "iim", "generated", "Google generative AI", "iptc"),
    ],
)
def test_ai_credits(detector, credit, carrier, kind, generator, source):
    if carrier == "iim":
        data = iim_credit_jpeg(credit)
    else:
        data = jpeg(xmp_packet(f"<photoshop:Credit>{credit}</photoshop:Credit>", PS_NS))
    result = run(detector, data)
    assert result.details["provenance"]["xmp"]["credits"] == [credit]
    assert len(result.hard_evidence) == 1 and credit in result.hard_evidence[0]
    assert result.features["metadata_ai_claim"] == 1.0
    assert (result.provenance["kind"], result.provenance["generator"], result.provenance["source"]) == (
        kind,
        generator,
        source,
    )
    if kind == "ai_edited":
        assert "edited with AI" in result.hard_evidence[0]


@pytest.mark.parametrize(
    "credit", ["Google", "Apple", "Photo: Pixel 9 / Google Photos", "Clean Up crew", "Made with Google Pixel"]
)
def test_ordinary_credits_claim_nothing(detector, credit):
    result = run(detector, iim_credit_jpeg(credit))
    assert result.hard_evidence == [] and result.features["metadata_ai_claim"] == 0.0
    assert result.provenance["kind"] == "none"


def test_google_photos_edit_with_both_markers_and_a_capture_claim(detector):
    """Google Photos writes the credit and Digital Source Type together; an unsigned digitalCapture in another packet
    is outweighed by the AI claim and named as a conflict, never a NON-AI decision."""
    edit = xmp_packet(
        f"<photoshop:Credit>Edited with Google AI</photoshop:Credit><Iptc4xmpExt:DigitalSourceType>{IRI}"
        "compositeWithTrainedAlgorithmicMedia</Iptc4xmpExt:DigitalSourceType>",
        f"{PS_NS} {IPTC_NS}",
    )
    capture = spelled("iri_element", "digitalCapture")
    data = png([itxt_xmp(capture), itxt_xmp(edit)])
    assert len(read_container(data, "PNG").xmp) == 2
    result = run(detector, data)
    assert result.provenance["kind"] == "ai_edited" and result.hard_evidence_real == []
    assert len(result.hard_evidence) == 2
    assert any("declares a capture" in conflict for conflict in result.provenance["conflicts"])


# ---- software names: what real files carry ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, where, level",
    [
        # Seen in real files: the C2PA softwareAgent of c2pa/ai/ocsp.jpg (Adobe Firefly) and of
        # c2pa/ai/bing_creator_cloud_surfing_puppy.jpg (Image Creator from Designer); NovelAI's PNG Software chunk.
        ("Adobe Firefly", "creator_tool", 1.0),
        ("Image Creator from Designer", "creator_tool", 1.0),
        ("NovelAI", "exif_software", 1.0),
        # Photoshop names itself the same with or without generative fill (a real CreatorTool from the exif-samples
        # set): only C2PA's compositeWithTrainedAlgorithmicMedia action or an XMP Digital Source Type says a fill
        # was generative.
        ("Adobe Photoshop CS6 (Macintosh)", "creator_tool", 0.5),
    ],
)
def test_software_names(detector, value, where, level):
    if where == "creator_tool":
        data = jpeg(xmp_packet("", f'{XMP_NS} xmp:CreatorTool="{value}"'))
    else:
        image = pixels(4)
        exif = image.getexif()
        exif[0x0131] = value  # Software
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", exif=exif.tobytes())
        data = buffer.getvalue()
    result = run(detector, data)
    assert result.features["software_flag"] == level
    assert result.features["metadata_ai_claim"] == (1.0 if level == 1.0 else 0.0)
    assert (result.provenance["kind"] == "generated") == (level == 1.0)
    # A name in a Software / CreatorTool tag is an unsigned claim: strong evidence at most, never hard.
    assert result.hard_evidence == [] and result.provenance["trusted"] is False


# ---- real files: no new claim on any real photo -------------------------------------------------------------------
REAL_FOLDERS = [
    "camera-models/real",
    "exif-samples/real",
    "imagenet-real/real",
    "modern-web-samples/camera-phones/real",
    "c2pa/real",
]


def test_real_photos_with_xmp_or_iptc_stay_unclaimed(shared_data, detector):
    """Every real photo in the shared data that carries XMP or IPTC (Photoshop, Lightroom, Bridge, Fireworks, ARKive
    credits and creator tools) makes no AI claim and no unsigned capture decision."""
    paths = [
        path
        for folder in REAL_FOLDERS
        for path in sorted((shared_data / folder).rglob("*"))
        if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff")
    ]
    carrying = []
    for path in paths:
        data = path.read_bytes()
        meta = read_container(data, "")
        if meta.xmp or meta.iptc:
            carrying.append(data)
    assert len(carrying) >= 20
    for data in carrying:
        try:
            image = decode_image(data)
        except ImageInputError:  # a few exif-samples files are deliberately undecodable
            continue
        result = detector.predict([image])[0]
        assert result.error is None, result.error
        assert result.features["metadata_ai_claim"] == 0.0, result.details["provenance"]["xmp"]
        assert result.hard_evidence == [] and result.hard_evidence_real == []
        assert result.provenance["kind"] in ("none", "captured", "edited")  # the c2pa/real captures are read
