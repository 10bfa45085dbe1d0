"""Unsigned words never decide alone (issue 25): a generator's name matched in EXIF ``Software`` / XMP
``CreatorTool`` is free text that any app, editor or person writes. It is strong evidence (``software_flag``,
``metadata_ai_claim``, a reasoning sentence that says it is an unsigned claim), never ``hard_evidence``: a camera photo
whose Software tag names an assistant app is not labelled AI by that alone. Hard evidence stays for signed C2PA
claims, the AIGC Label 1, IPTC Digital Source Types and structured generator metadata.

The local fusion reads ``clip_b16_prob`` alone, so there such a claim is context: it is explained in the reasoning
and moves neither ``fusion_prob`` nor the label.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import zlib
from pathlib import Path

import piexif
import pytest
from PIL import Image

import models
from conftest import FIXTURES, LOCAL_CONFIG
from deployments.config import load_profile
from models.fusion import DetectorOutcome
from models.image_input import decode_image
from models.registry import create_detector

CAMERA_JPEG = FIXTURES / "camera-models" / "real" / "Canon_EOS_7D.jpg"  # Software: "Adobe Photoshop Lightroom"
ASSISTANT_APPS = ["Gemini app 1.2", "OpenAI ChatGPT", "Grok 3", "Google Imagen"]


def with_software(path: Path, software: str) -> bytes:
    """The file with its EXIF Software tag rewritten (piexif), every other byte of its metadata kept."""
    data = path.read_bytes()
    exif = piexif.load(data)
    exif["0th"][piexif.ImageIFD.Software] = software.encode()
    out = io.BytesIO()
    piexif.insert(piexif.dump(exif), data, out)
    return out.getvalue()


@pytest.fixture(scope="module")
def provenance_detector():
    return create_detector("provenance")


@pytest.fixture(scope="module")
def local():
    """The shipped local profile's verdict and its real detectors (provenance, forensics, clip_b16)."""
    profile = load_profile(LOCAL_CONFIG)
    detectors = {
        name: models.create_detector(name, profile.detectors[name].user_config.detector)
        for name in profile.args.detector_names()
    }
    return profile.args.verdict(), detectors


def decide(local, data: bytes) -> dict:
    verdict, detectors = local
    image = decode_image(data)
    outcomes = [
        DetectorOutcome.from_result(name, detector.predict([image])[0], detector.version, 0.0)
        for name, detector in detectors.items()
    ]
    return verdict.decide(outcomes)


@pytest.mark.parametrize("software", ASSISTANT_APPS)
def test_a_generator_named_in_software_is_strong_unsigned_evidence_not_hard(provenance_detector, software):
    (result,) = provenance_detector.predict([decode_image(with_software(CAMERA_JPEG, software))])
    assert result.hard_evidence == [] and result.hard_evidence_real == []
    details = result.details["provenance"]
    claim = next(e for e in details["evidence"] if e["kind"] == "software" and e["points_to"] == "ai")
    assert (claim["strength"], claim["where"]) == ("strong", "EXIF Software")
    # Strong evidence: the features a fusion may read say so, and it is the first reason of the detector.
    assert result.features["software_flag"] == 1.0 and result.features["metadata_ai_claim"] == 1.0
    assert result.evidence[0] == claim["what"]
    assert "unsigned claim" in claim["what"] and repr(software) in claim["what"]
    # What the file says, unsigned: the summary shows the claim with trusted false.
    assert {k: result.provenance[k] for k in ("kind", "trusted", "source", "generator")} == {
        "kind": "generated",
        "trusted": False,
        "source": "exif",
        "generator": software,
    }


def test_a_camera_photo_whose_software_names_an_assistant_app_is_not_labelled_ai_by_that_alone(local):
    """Through the real local detectors and the Verdict: the claim changes neither fusion_prob nor the label, and
    the reasoning names it as an unsigned claim. Before: "AI", decided_by hard_evidence, uncertain false. The
    photo's confident NON-AI becomes uncertain beside the claim (neither outweighs the other: is_contradicted)."""
    before = decide(local, CAMERA_JPEG.read_bytes())
    assert before["label"] == "NON-AI" and before["decided_by"] == "fusion"
    assert before["uncertain"] is False  # the pixels alone are sure: the claim below is what makes it uncertain
    verdict, _ = local
    # The local fusion does not read the provenance features: the claim is context there.
    assert not {"software_flag", "metadata_ai_claim"} & set(verdict.fusion.features)
    for software in ("Gemini app 1.2", "OpenAI ChatGPT"):
        body = decide(local, with_software(CAMERA_JPEG, software))
        assert (body["label"], body["decided_by"]) == ("NON-AI", "fusion"), body["reasoning"]
        assert body["fusion_prob"] == before["fusion_prob"] and body["uncertain"] is True
        assert body["reasoning"][0].startswith("Uncertain: ") and "unsigned claim" in body["reasoning"][0]
        assert body["software_flag"] == 1.0
        assert not any(reason.startswith("Provenance: ") for reason in body["reasoning"])  # no hard evidence
        (sentence,) = [r for r in body["reasoning"] if "EXIF Software names an AI generator" in r]
        assert "unsigned claim" in sentence and "not proof on its own" in sentence
        assert (body["provenance"]["kind"], body["provenance"]["trusted"]) == ("generated", False)


@pytest.mark.serve
def test_over_http_a_software_claim_alone_does_not_make_a_camera_photo_ai(serve_url):
    import httpx

    data = with_software(CAMERA_JPEG, "Gemini app 1.2")
    with httpx.Client(base_url=serve_url, timeout=120) as client:
        body = client.post("/v1/detect", files={"file": ("photo.jpg", data)}).json()
    assert (body["label"], body["decided_by"]) == ("NON-AI", "fusion"), body
    assert any("unsigned claim" in reason for reason in body["reasoning"])
    assert body["provenance"]["kind"] == "generated" and body["provenance"]["trusted"] is False


def test_a_creator_tool_claim_is_strong_and_next_to_an_unsigned_capture_neither_decides(provenance_detector):
    """XMP CreatorTool alike; next to an unsigned capture declaration, neither decides (both are named)."""
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        b'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" xmp:CreatorTool="Gemini">'
        b"<Iptc4xmpExt:DigitalSourceType>http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"
        b"</Iptc4xmpExt:DigitalSourceType></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(buffer, "JPEG", xmp=xmp)
    (result,) = provenance_detector.predict([decode_image(buffer.getvalue())])
    assert result.hard_evidence == [] and result.hard_evidence_real == []
    assert result.features["software_flag"] == 1.0
    assert any("XMP CreatorTool names an AI generator ('Gemini'): an unsigned claim" in s for s in result.evidence)
    assert result.provenance["conflicts"] == [
        "XMP Iptc4xmpExt:DigitalSourceType declares a capture, but XMP CreatorTool names an AI generator; "
        "neither is signed, so neither decides"
    ]


def _png_with_text(chunks: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = buffer.getvalue()
    extra = b""
    for key, value in chunks.items():
        body = key.encode() + b"\x00" + value.encode()
        extra += struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return data[:33] + extra + data[33:]  # after IHDR


def test_structured_generator_metadata_stays_hard_and_a_bare_software_name_does_not(provenance_detector):
    """NovelAI's generation metadata is its Comment JSON next to Software = NovelAI: hard. The Software chunk
    alone is a name, strong evidence only. The real NovelAI file keeps its hard evidence."""
    settings = json.dumps({"steps": 28, "sampler": "k_euler", "seed": 1, "scale": 11})
    structured, bare = provenance_detector.predict(
        [
            decode_image(_png_with_text({"Software": "NovelAI", "Comment": settings})),
            decode_image(_png_with_text({"Software": "NovelAI"})),
        ]
    )
    assert any("NovelAI generation metadata" in s for s in structured.hard_evidence)
    assert bare.hard_evidence == [] and bare.details["provenance"]["generator_metadata"] == []
    assert any("PNG tEXt Software names an AI generator ('NovelAI'): an unsigned claim" in s for s in bare.evidence)
    (real,) = provenance_detector.predict(
        [decode_image((FIXTURES / "generator-metadata" / "ai" / "NovelAI__novelai1_cropped.png").read_bytes())]
    )
    assert any("NovelAI generation metadata" in s for s in real.hard_evidence)


def test_an_unsigned_ai_claim_never_sits_beside_a_confident_non_ai(local):
    """The claim decides nothing alone, and a pixel model's NON-AI does not outweigh it: where the same photo
    without the claim gets a confident NON-AI, with it the verdict keeps the label and says uncertain, and why."""
    verdict, detectors = local
    confident = copy.copy(verdict)  # the shipped verdict with no uncertain range: every fusion verdict confident
    confident.uncertain_range, confident.unfamiliar = (verdict.threshold, verdict.threshold), None
    plain = decide((confident, detectors), CAMERA_JPEG.read_bytes())
    assert (plain["label"], plain["uncertain"]) == ("NON-AI", False)
    assert plain["reasoning"][0].startswith("Looks like a camera photo")
    claimed = decide((confident, detectors), with_software(CAMERA_JPEG, "Gemini app 1.2"))
    assert (claimed["label"], claimed["uncertain"], claimed["fusion_prob"]) == ("NON-AI", True, plain["fusion_prob"])
    assert claimed["reasoning"][0].startswith("Uncertain: the pixel model finds no generator traces")
    assert "EXIF metadata names an AI generator: an unsigned claim" in claimed["reasoning"][0]
