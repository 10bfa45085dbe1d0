"""Provenance that proves both ways: trust lists, trusted captures, AI-edited vs generated, China's AIGC label.

Content Credentials are signed here with a throwaway CA made with ``cryptography`` and c2pa-python's Builder,
so "trusted" is tested for real: the same manifest is untrusted by default and trusted once the test CA is
configured as a claim-signer anchor. No network.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from models.base import DetectorResult
from models.fusion import DetectorOutcome, RuleFusion
from models.image_input import decode_image
from models.provenance_aigc import TC260_NS
from models.provenance_trust import CLAIM_LIST, TRUST_DIR, TSA_LIST, load_trust, update
from models.registry import create_detector, feature_schema
from models.verdict import Verdict

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
HUNYUAN = "modern-web-samples/hunyuan-image-3/ai/image2.png"


# ---- a throwaway PKI and a signer -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A root CA and a claim-signing leaf (ES256, emailProtection EKU as the C2PA profile allows)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Camera Co"),
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            ]
        )

    def usage(sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=sign,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=not sign,
            crl_sign=not sign,
            encipher_only=False,
            decipher_only=False,
        )

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("Test Root CA"))
        .issuer_name(name("Test Root CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("Test Camera Signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    folder = tmp_path_factory.mktemp("pki")
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    return {
        "ca_pem": folder / "ca.pem",
        "chain": leaf.public_bytes(pem) + ca.public_bytes(pem),
        "key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    }


def jpeg(seed: int = 0, xmp: bytes | None = None, size=(320, 240)) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90, **({"xmp": xmp} if xmp else {}))
    return buffer.getvalue()


def sign(pki: dict, data: bytes, actions: list[dict], fmt: str = "image/jpeg") -> bytes:
    """``data`` with a C2PA manifest holding ``actions``, signed by the test leaf."""
    import c2pa

    manifest = {
        "claim_generator_info": [{"name": "TestCam", "version": "1.0"}],
        "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": actions}}],
    }
    signer = c2pa.Signer.from_info(
        c2pa.C2paSignerInfo(alg=b"es256", sign_cert=pki["chain"], private_key=pki["key"], ta_url=None)
    )
    out = io.BytesIO()
    with c2pa.Builder(manifest) as builder:
        builder.sign(signer, fmt, io.BytesIO(data), out)
    return out.getvalue()


CAPTURE = {
    "action": "c2pa.created",
    "digitalSourceType": IPTC + "digitalCapture",
    "softwareAgent": {"name": "TestCam firmware 1.0"},
}


@pytest.fixture(scope="module")
def capture_jpeg(pki) -> bytes:
    return sign(pki, jpeg(1), [CAPTURE])


@pytest.fixture(scope="module")
def default_detector():
    return create_detector("provenance")


@pytest.fixture(scope="module")
def trusting_detector(pki):
    """The shipped official lists plus the test CA as a claim-signer anchor."""
    return create_detector("provenance", {"c2pa_trust_anchors": str(pki["ca_pem"])})


def run(detector, data: bytes) -> DetectorResult:
    result = detector.predict([decode_image(data)])[0]
    assert result.error is None, result.error
    return result


SCHEMA = feature_schema(["provenance"])


def verdict(result: DetectorResult, hard_evidence: bool = True) -> dict:
    outcome = DetectorOutcome.from_result("provenance", result, "v", 1.0)
    return Verdict(SCHEMA, RuleFusion(SCHEMA), hard_evidence=hard_evidence).decide([outcome])


# ---- the shipped trust lists ------------------------------------------------------------------------------
def test_shipped_trust_lists_load_as_two_separate_kinds():
    trust = load_trust(True, None)
    assert (trust.claim_count, trust.tsa_count) == (30, 22)
    assert "Google C2PA Root CA G3" in trust.claim_pem and trust.tsa_pem.startswith((TRUST_DIR / TSA_LIST).read_text())
    assert (TRUST_DIR / "MANIFEST.md").read_text().count("CC BY 4.0") >= 1
    assert load_trust(False, None).trust_id == "none"


def test_shared_c2pa_files_with_the_official_lists(shared_data, default_detector, no_network):
    """None of the shared files chains to the official list (they predate it); AI claims still decide AI."""
    expected = {  # file: (kind, label, signer organisation)
        "ai/ocsp.jpg": ("ai_edited", "AI", "Adobe Inc."),
        "ai/DALL-E_cloud_surfing_puppy.webp": ("generated", "AI", "OpenAI"),
        "ai/bing_creator_cloud_surfing_puppy.jpg": ("generated", "AI", "Microsoft Corporation"),
        "real/nikon-20221019-building.jpeg": ("none", None, "NIKON CORPORATION"),
        "real/truepic-20230212-camera.jpg": ("none", None, "Truepic"),
    }
    for name, (kind, label, signer) in expected.items():
        result = run(default_detector, (shared_data / "c2pa" / name).read_bytes())
        body = verdict(result)
        c2pa = result.details["provenance"]["c2pa"]
        assert c2pa["trusted"] is False and result.features["c2pa_trusted"] == 0.0, name
        assert body["provenance"] == {
            "kind": kind,
            "trusted": False,
            "signer": signer,
            "source": "c2pa",
            "generator": body["provenance"]["generator"],
            "conflicts": [],
        }, name
        assert result.hard_evidence_real == [] and body["decided_by"] != "provenance", name
        if label:
            assert (body["label"], body["decided_by"]) == ("AI", "hard_evidence"), name
    ocsp = run(default_detector, (shared_data / "c2pa" / "ai" / "ocsp.jpg").read_bytes())
    assert ocsp.details["provenance"]["c2pa"]["timestamped"] is True
    assert ocsp.details["provenance"]["c2pa"]["signed_at"] == "2025-08-13T16:30:55+00:00"
    assert "declare editing with AI by Adobe Firefly" in ocsp.hard_evidence[0]
    assert verdict(ocsp)["provenance"]["generator"] == "Adobe Firefly"


# ---- the NON-AI direction ---------------------------------------------------------------------------------
def test_self_signed_capture_is_not_trusted_and_does_not_decide(capture_jpeg, default_detector, no_network):
    result = run(default_detector, capture_jpeg)
    c2pa = result.details["provenance"]["c2pa"]
    assert c2pa["valid"] is True and c2pa["trusted"] is False and c2pa["kind"] == "captured"
    assert result.features["c2pa_capture_claim"] == 0.5 and result.features["c2pa_trusted"] == 0.0
    assert result.hard_evidence_real == [] and result.hard_evidence == []
    assert any("anyone can sign" in sentence for sentence in result.evidence)
    body = verdict(result)
    assert body["decided_by"] not in ("provenance", "hard_evidence")
    assert body["provenance"] == {
        "kind": "captured",
        "trusted": False,
        "signer": "Test Camera Co",
        "generator": None,
        "source": "c2pa",
        "conflicts": [],
        "device": "TestCam firmware 1.0",
    }


def test_capture_signed_by_a_configured_anchor_decides_non_ai(capture_jpeg, trusting_detector, no_network):
    result = run(trusting_detector, capture_jpeg)
    assert result.features["c2pa_trusted"] == 1.0 and result.features["c2pa_capture_claim"] == 1.0
    assert len(result.hard_evidence_real) == 1 and result.hard_evidence == []
    body = verdict(result)
    assert (body["label"], body["decided_by"], body["uncertain"]) == ("NON-AI", "provenance", False)
    assert body["reasoning"][0] == (  # the plain sentence first, then the technical reasons
        "Taken by a camera: the file carries a C2PA claim signed by Test Camera Co (on the trust list) that TestCam "
        "firmware 1.0 captured it."
    )
    assert body["reasoning"][1] == (
        "Provenance: C2PA Content Credentials signed by trusted signer Test Camera Co (Test Camera Signer) declare a "
        "camera capture (digitalCapture) by TestCam firmware 1.0; signature and content hash verified, no AI action "
        "or ingredient in its history"
    )
    assert body["provenance"]["kind"] == "captured" and body["provenance"]["trusted"] is True
    # The policy switch governs both directions.
    assert verdict(result, hard_evidence=False)["decided_by"] == "none"  # no pixel detector here


def test_why_the_tsa_list_is_not_handed_to_c2pa_rs(capture_jpeg, pki):
    """c2pa-rs trusts a claim signer that chains to a "tsa" anchor: the TSA list must stay out of its settings."""
    import c2pa

    from models.provenance_c2pa import c2pa_settings

    settings = c2pa_settings(None)
    settings["trust"] = {"anchors": [{"trust_anchors": pki["ca_pem"].read_text(), "trust_kind": "tsa"}]}
    with c2pa.Reader(None, io.BytesIO(capture_jpeg), context=c2pa.Context.from_dict(settings)) as reader:
        assert json.loads(reader.json())["validation_state"] == "Trusted"  # if this changes, TSA anchors could go in
    assert "trust" not in c2pa_settings(None)
    official = c2pa_settings(load_trust(True, None).claim_pem)["trust"]["anchors"]
    assert [a["trust_kind"] for a in official] == ["manifest"]
    assert official[0]["trust_anchors"] == (TRUST_DIR / CLAIM_LIST).read_text()


def test_tampered_trusted_capture_does_not_decide(capture_jpeg, trusting_detector):
    data = bytearray(capture_jpeg)
    pos = 2
    while data[pos + 1] != 0xDB:  # the first quantisation table: still decodes, the signed hash no longer matches
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    data[pos + 6] ^= 0x01
    result = run(trusting_detector, bytes(data))
    c2pa = result.details["provenance"]["c2pa"]
    assert c2pa["valid"] is False and c2pa["trusted"] is False
    assert "assertion.dataHash.mismatch" in c2pa["integrity_failures"]
    assert result.hard_evidence_real == [] and result.features["c2pa_capture_claim"] == 0.0
    assert verdict(result)["decided_by"] not in ("provenance", "hard_evidence")


def test_trusted_capture_then_plain_edit_is_edited_and_still_non_ai(pki, trusting_detector):
    data = sign(pki, jpeg(2), [CAPTURE, {"action": "c2pa.cropped"}])
    result = run(trusting_detector, data)
    body = verdict(result)
    assert body["provenance"]["kind"] == "edited" and body["decided_by"] == "provenance"
    assert "then c2pa.cropped without AI" in body["reasoning"][1]


# ---- generated vs AI-edited -------------------------------------------------------------------------------
def test_trusted_generated_manifest_decides_ai_with_trusted_true(pki, trusting_detector):
    data = sign(
        pki,
        jpeg(3),
        [
            {
                "action": "c2pa.created",
                "digitalSourceType": IPTC + "trainedAlgorithmicMedia",
                "softwareAgent": {"name": "TestDiffusion 2"},
            }
        ],
    )
    result = run(trusting_detector, data)
    body = verdict(result)
    assert (body["label"], body["decided_by"]) == ("AI", "hard_evidence")
    assert body["provenance"] == {
        "kind": "generated",
        "trusted": True,
        "signer": "Test Camera Co",
        "generator": "TestDiffusion 2",
        "source": "c2pa",
        "conflicts": [],
    }
    assert "trusted signer Test Camera Co" in body["reasoning"][1]


def test_capture_with_generative_fill_is_ai_edited(pki, trusting_detector):
    fill = {
        "action": "c2pa.edited",
        "digitalSourceType": IPTC + "compositeWithTrainedAlgorithmicMedia",
        "softwareAgent": {"name": "Adobe Firefly"},
    }
    result = run(trusting_detector, sign(pki, jpeg(4), [CAPTURE, fill]))
    body = verdict(result)
    assert body["label"] == "AI" and body["provenance"]["kind"] == "ai_edited"
    assert body["provenance"]["trusted"] is True and result.hard_evidence_real == []
    assert "editing with AI by Adobe Firefly" in body["reasoning"][1]


# ---- conflicts --------------------------------------------------------------------------------------------
def xmp_packet(body: str, ns: str = "") -> bytes:
    return (
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" {ns}>{body}</rdf:Description></rdf:RDF></x:xmpmeta>'
    ).encode()


AI_XMP = xmp_packet(
    f"<Iptc4xmpExt:DigitalSourceType>{IPTC}trainedAlgorithmicMedia</Iptc4xmpExt:DigitalSourceType>",
    'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"',
)


def test_trusted_capture_outweighs_unsigned_xmp_ai_claim(pki, trusting_detector, default_detector):
    data = sign(pki, jpeg(5, xmp=AI_XMP), [CAPTURE])
    result = run(trusting_detector, data)
    body = verdict(result)
    assert (body["label"], body["decided_by"]) == ("NON-AI", "provenance")
    assert body["provenance"]["kind"] == "captured" and len(body["provenance"]["conflicts"]) == 1
    assert "trusted C2PA capture manifest says camera capture" in body["provenance"]["conflicts"][0]
    assert any(
        s.startswith("Conflict: XMP declares digital source type trainedAlgorithmicMedia") for s in result.evidence
    )
    # Without the anchor the capture is only claimed: the AI declaration decides, and the conflict is named.
    untrusted = run(default_detector, data)
    body = verdict(untrusted)
    assert (body["label"], body["decided_by"]) == ("AI", "hard_evidence")
    assert body["provenance"]["kind"] == "generated" and body["provenance"]["source"] == "xmp"
    assert "the capture claim is not from a trusted signer" in body["provenance"]["conflicts"][0]


# ---- China's implicit AIGC label (GB 45438-2025) ----------------------------------------------------------
def aigc_json(label: str = "1", producer: str = "001191110108MA01KP2T5U00000") -> str:
    return json.dumps(
        {
            "Label": label,
            "ContentProducer": producer,
            "ProduceID": "abc123",
            "ReservedCode1": "",
            "ContentPropagator": "001191440300708461136T1WFUO",
            "PropagateID": "p-9",
            "ReservedCode2": "",
        }
    )


def aigc_xmp(label: str, attribute: bool = False, prefix: str = "TC260") -> bytes:
    value = aigc_json(label).replace("&", "&amp;").replace('"', "&quot;")
    ns = f'xmlns:{prefix}="{TC260_NS}"'
    if attribute:
        return xmp_packet("", f'{ns} {prefix}:AIGC="{value}"')
    return xmp_packet(f"<{prefix}:AIGC>{value}</{prefix}:AIGC>", ns)


def png_with(chunks: list[bytes]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    return data[:33] + b"".join(chunks) + data[33:]


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def webp_with_xmp(xmp: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
        buffer, "WEBP", xmp=xmp
    )
    return buffer.getvalue()


def itxt_xmp(xmp: bytes) -> bytes:
    return chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)


@pytest.mark.parametrize(
    "carrier", ["jpeg_xmp_element", "png_itxt_xmp_attribute", "webp_xmp", "png_text", "exif_user_comment"]
)
def test_aigc_label_1_in_every_carrier_decides_ai(carrier, default_detector):
    if carrier == "jpeg_xmp_element":
        data, source = jpeg(9, xmp=aigc_xmp("1")), "xmp"
    elif carrier == "png_itxt_xmp_attribute":
        data, source = png_with([itxt_xmp(aigc_xmp("1", attribute=True, prefix="aigc"))]), "xmp"
    elif carrier == "webp_xmp":
        data, source = webp_with_xmp(aigc_xmp("1")), "xmp"
    elif carrier == "png_text":
        data, source = png_with([chunk(b"tEXt", b"AIGC\x00" + aigc_json("1").encode())]), "png_text"
    else:
        exif = Image.Exif()
        exif[0x8769] = {0x9286: b"ASCII\x00\x00\x00" + json.dumps({"AIGC": json.loads(aigc_json("1"))}).encode()}
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(buffer, "JPEG", exif=exif)
        data, source = buffer.getvalue(), "exif"
    result = run(default_detector, data)
    assert result.features["aigc_label"] == 1.0 and result.features["metadata_ai_claim"] == 1.0
    assert len(result.hard_evidence) == 1 and "GB 45438-2025" in result.hard_evidence[0]
    assert "propagated by '001191440300708461136T1WFUO'" in result.hard_evidence[0]
    body = verdict(result)
    assert (body["label"], body["decided_by"]) == ("AI", "hard_evidence")
    assert body["provenance"] == {
        "kind": "generated",
        "trusted": False,
        "signer": None,
        "generator": "001191110108MA01KP2T5U00000",
        "source": source,
        "conflicts": [],
    }
    label = result.details["provenance"]["aigc"][0]
    assert (label["label"], label["produce_id"], label["propagate_id"]) == ("1", "abc123", "p-9")


@pytest.mark.parametrize("value", ["2", "3"])
def test_aigc_label_2_and_3_are_weak(value, default_detector):
    result = run(default_detector, jpeg(10, xmp=aigc_xmp(value)))
    assert result.features["aigc_label"] == 0.5 and result.features["metadata_ai_claim"] == 0.0
    assert result.hard_evidence == [] and any("not decisive" in s for s in result.evidence)
    assert verdict(result)["decided_by"] not in ("provenance", "hard_evidence")


def test_hunyuan_png_carries_a_label_1_aigc_chunk(shared_data, default_detector):
    result = run(default_detector, (shared_data / HUNYUAN).read_bytes())
    label = result.details["provenance"]["aigc"]
    assert [(x["where"], x["label"], x["producer"]) for x in label] == [
        ("PNG tEXt AIGC", "1", "00119144030071526726XG1ZX0G")
    ]
    assert verdict(result)["provenance"]["source"] == "png_text"


def test_malformed_duplicated_and_conflicting_labels_are_reported(default_detector):
    broken = png_with([chunk(b"tEXt", b'AIGC\x00{"Label": "1", "ContentProducer": ')])
    result = run(default_detector, broken)
    assert result.hard_evidence == [] and "aigc_label" not in result.features or result.features["aigc_label"] == 0.0
    assert any("unreadable" in s for s in result.evidence)
    huge = png_with([chunk(b"tEXt", b"AIGC\x00{" + b'"x":' * 200_000 + b"1}")])
    assert run(default_detector, huge).hard_evidence == []
    both = png_with([chunk(b"tEXt", b"AIGC\x00" + aigc_json("3").encode()), itxt_xmp(aigc_xmp("1"))])
    result = run(default_detector, both)
    body = verdict(result)
    assert body["label"] == "AI" and result.features["aigc_label"] == 1.0
    assert body["provenance"]["conflicts"] == ["AIGC labels disagree (Label values 1, 3); the strongest claim is used"]


def test_camera_photos_stay_unclaimed(shared_data, default_detector):
    paths = sorted((shared_data / "modern-web-samples" / "camera-phones").rglob("*.jpg"))
    paths += sorted((shared_data / "c2pa" / "real").iterdir())
    assert len(paths) >= 18
    for path in paths:
        result = run(default_detector, path.read_bytes())
        assert result.hard_evidence == [] and result.hard_evidence_real == [], path.name
        assert result.provenance["kind"] == "none" and result.features["aigc_label"] == 0.0, path.name


# ---- plumbing ---------------------------------------------------------------------------------------------
def test_outcome_json_and_batch_table_carry_the_provenance_object(capture_jpeg, trusting_detector):
    from deployments.data import output_table

    outcome = DetectorOutcome.from_result("provenance", run(trusting_detector, capture_jpeg), "v", 1.0)
    again = DetectorOutcome.from_json(outcome.to_json())
    assert again.result.provenance == outcome.result.provenance
    assert again.result.hard_evidence_real == outcome.result.hard_evidence_real
    body = Verdict(SCHEMA, RuleFusion(SCHEMA)).decide([again])
    table = output_table([{"path": "x.jpg", "sha256": "0", **body}], list(SCHEMA))
    assert json.loads(table.column("provenance")[0].as_py())["kind"] == "captured"
    assert table.column("decided_by")[0].as_py() == "provenance"
    # Without the provenance detector the object is still there, empty.
    empty = Verdict(SCHEMA, RuleFusion(SCHEMA)).decide([DetectorOutcome("provenance", "failed", 1.0, error="x")])
    assert empty["provenance"]["kind"] == "none" and empty["provenance"]["source"] is None


def test_trust_update_writes_only_complete_downloads(tmp_path, monkeypatch):
    import urllib.request

    pem = (TRUST_DIR / CLAIM_LIST).read_bytes()

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    calls = []

    def fake(url, timeout):
        calls.append(url)
        if "TSA" in url and len(calls) == 2 and not (tmp_path / "ok").exists():
            raise OSError("offline")
        return Response(pem)

    monkeypatch.setattr(urllib.request, "urlopen", fake)
    assert update(["--dir", str(tmp_path)]) == 1 and not (tmp_path / CLAIM_LIST).exists()
    (tmp_path / "ok").touch()
    assert update(["--dir", str(tmp_path)]) == 0
    assert (tmp_path / CLAIM_LIST).read_bytes() == pem and (tmp_path / TSA_LIST).exists()
    source = json.loads((tmp_path / "SOURCE.json").read_text())
    assert source["files"][CLAIM_LIST]["certificates"] == 30
    assert source["files"][CLAIM_LIST]["url"].endswith("trust-list/C2PA-TRUST-LIST.pem")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(b"<html>moved</html>"))
    assert update(["--dir", str(tmp_path)]) == 1 and (tmp_path / CLAIM_LIST).read_bytes() == pem
