"""The provenance detector on real files: C2PA, generator metadata, EXIF, watermarks, and broken input."""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.image_input import decode_image
from models.provenance_container import TEXT_LIMIT, read_container
from models.provenance_watermark import KNOWN_WATERMARKS, block_bits, vote
from models.registry import create_detector

WATERMARK_PHOTO = "modern-matched/real/real_0014.jpg"  # a textured Unsplash photo (dwtDct needs texture)


@pytest.fixture(scope="module")
def detector():
    return create_detector("provenance")


def predict_paths(detector, paths: list[Path]):
    return detector.predict([decode_image(path.read_bytes()) for path in paths])


def provenance(result) -> dict:
    assert result.error is None, result.error
    return result.details["provenance"]


def by_name(shared_data: Path, folder: str, results) -> dict:
    paths = sorted((shared_data / folder).rglob("*.*"))
    return {path.name: result for path, result in zip(paths, results)}


def insert_jpeg_segment(data: bytes, marker: int, payload: bytes) -> bytes:
    """``data`` with one extra segment right after SOI."""
    return data[:2] + struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload + data[2:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def insert_png_chunk(data: bytes, chunk: bytes) -> bytes:
    """``data`` with ``chunk`` right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return data[:33] + chunk + data[33:]


def plain_jpeg(seed: int = 0, size=(96, 64)) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def top_level_segment(data: bytes, marker: int) -> int:
    """Offset of the first JPEG segment with ``marker`` before the scan (not one inside an APP payload)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos + 1] == marker:
            return pos
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    raise AssertionError(f"no 0xFF{marker:02X} segment")


# ---- C2PA ------------------------------------------------------------------------------------------------
def test_c2pa_ai_claims_are_found_with_their_generators(fixtures, detector, no_network):
    folder = fixtures / "c2pa" / "ai"
    names = ["ocsp.jpg", "DALL-E_cloud_surfing_puppy.webp", "bing_creator_cloud_surfing_puppy.jpg"]
    results = dict(zip(names, predict_paths(detector, [folder / n for n in names])))
    expected_generators = {
        "ocsp.jpg": ["Adobe Firefly"],
        "DALL-E_cloud_surfing_puppy.webp": ["DALL·E", "OpenAI-API c2pa-rs/0.28.4"],
        "bing_creator_cloud_surfing_puppy.jpg": ["Image Creator from Designer", "Microsoft_Responsible_AI/1.0"],
    }
    for name, result in results.items():
        c2pa = provenance(result)["c2pa"]
        assert result.features["c2pa_present"] == 1.0
        assert result.features["c2pa_valid"] == 1.0, (name, c2pa["integrity_failures"])
        assert result.features["c2pa_ai_claim"] == 1.0
        assert set(expected_generators[name]) <= set(c2pa["generators"]), (name, c2pa["generators"])
        assert provenance(result)["generator"] == expected_generators[name][0]
        assert c2pa["validation"] == "valid"  # none of these signers chains to the shipped official trust list
        assert "signingCredential.untrusted" in c2pa["signer_issues"]
        assert len(result.hard_evidence) == 1 and "C2PA" in result.hard_evidence[0]
    firefly = provenance(results["ocsp.jpg"])["c2pa"]["ai_claims"]
    assert {"digitalSourceType trainedAlgorithmicMedia", "digitalSourceType compositeWithTrainedAlgorithmicMedia"} <= {
        claim["reason"] for claim in firefly
    }
    dalle = provenance(results["DALL-E_cloud_surfing_puppy.webp"])["c2pa"]
    assert dalle["ai_claims"][0]["manifest"] == "ingredient (parentOf) manifest"
    assert dalle["signer"] == "Truepic Lens CLI in ChatGPT"
    # Bing's certificate lacks the EKU the C2PA profile requires: c2pa-rs calls the store Invalid, while the
    # claim signature and content hash verify, which is what c2pa_valid measures.
    bing = provenance(results["bing_creator_cloud_surfing_puppy.jpg"])["c2pa"]
    assert bing["c2pa_rs_state"] == "Invalid" and "signingCredential.invalid" in bing["signer_issues"]
    assert bing["ai_claims"][0]["reason"].startswith("c2pa.created described as 'AI Generated Image'")


def test_c2pa_camera_captures_are_not_flagged(data_set, detector, no_network):
    folder = data_set("c2pa") / "real"
    paths = sorted(folder.iterdir())
    for path, result in zip(paths, predict_paths(detector, paths)):
        details = provenance(result)
        assert result.features["c2pa_present"] == 1.0
        assert result.features["c2pa_ai_claim"] == 0.0
        assert result.features["metadata_ai_claim"] == 0.0
        assert result.features["watermark_detected"] == 0.0
        assert result.hard_evidence == []
        assert result.features["exif_score"] >= 0.85, (path.name, details["exif"]["score_parts"])
        if path.name.startswith("nikon"):
            assert result.features["c2pa_valid"] == 1.0
            assert details["c2pa"]["signer_issues"] == ["signingCredential.expired", "signingCredential.untrusted"]
        else:  # the Truepic files' pixels no longer match their signed hash
            assert result.features["c2pa_valid"] == 0.0
            assert details["c2pa"]["integrity_failures"] == ["assertion.dataHash.mismatch"]


@pytest.mark.parametrize(
    "name, failure",
    [
        ("ocsp.jpg", "assertion.dataHash.mismatch"),
        ("bing_creator_cloud_surfing_puppy.jpg", "assertion.boxesHash.mismatch"),
    ],
)
def test_tampered_c2pa_file_keeps_the_claim_but_not_as_hard_evidence(fixtures, detector, name, failure):
    data = bytearray((fixtures / "c2pa" / "ai" / name).read_bytes())
    data[top_level_segment(data, 0xDB) + 6] ^= 0x01  # one quantisation value: decodes, hash no longer matches
    result = detector.predict([decode_image(bytes(data))])[0]
    c2pa = provenance(result)["c2pa"]
    assert result.features["c2pa_present"] == 1.0
    assert result.features["c2pa_valid"] == 0.0
    assert result.features["c2pa_ai_claim"] == 1.0
    assert c2pa["integrity_failures"] == [failure] and c2pa["validation"] == "invalid"
    assert result.hard_evidence == []
    assert any("validation failed" in sentence and failure in sentence for sentence in result.evidence)
    assert {"kind": "c2pa", "strength": "weak", "points_to": "ai"}.items() <= provenance(result)["evidence"][-1].items()


def test_c2pa_trust_anchor_config_is_read_and_versioned(fixtures, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgverify test root")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "anchors.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    anchored = create_detector("provenance", {"c2pa_trust_anchors": str(pem)})
    official = create_detector("provenance").version
    assert "trust_anchors=none" not in official  # the shipped official C2PA trust list is on by default
    assert "trust_anchors=none" in create_detector("provenance", {"c2pa_official_trust_list": False}).version
    assert anchored.version != official
    image = decode_image((fixtures / "c2pa" / "ai" / "DALL-E_cloud_surfing_puppy.webp").read_bytes())
    c2pa = provenance(anchored.predict([image])[0])["c2pa"]
    assert c2pa["validation"] == "valid"  # an unrelated anchor does not make OpenAI's signer trusted
    with pytest.raises(ValueError, match="unknown config keys"):
        create_detector("provenance", {"c2pa_trust": str(pem)})


# ---- generator metadata ----------------------------------------------------------------------------------
GENERATOR_FILES = {
    "AUTOMATIC1111__automatic1111_cropped.jpg": dict(
        tool="AUTOMATIC1111",
        where="EXIF UserComment",
        model="realistic_realisticVisionV20_v20",
        seed=235284042,
        steps=15,
        sampler="UniPC",
        cfg=5.0,
        prompt="photo of a duck",
        negative_prompt="monochrome",
    ),
    "AUTOMATIC1111__automatic1111_cropped.png": dict(
        tool="AUTOMATIC1111",
        where="PNG tEXt parameters",
        model="realistic_realisticVisionV20_v20",
        seed=235284042,
        steps=15,
        sampler="UniPC",
        cfg=5.0,
        prompt="photo of a duck",
    ),
    "AUTOMATIC1111__automatic1111_stealth.png": dict(
        tool="AUTOMATIC1111",
        where="stealth pnginfo, alpha LSB (stealth_pngcomp)",
        model="realisticVisionV51_v51VAE",
        seed=2015833630,
        steps=20,
        sampler="Euler",
        cfg=7.0,
    ),
    "ComfyUI__img2img_cropped.png": dict(
        tool="ComfyUI",
        model="v1-5-pruned-emaonly.ckpt",
        seed=280823642470253,
        steps=20,
        cfg=8.0,
        sampler="sample_dpmpp_2m",
        prompt="photograph of victorian woman with wings, sky clouds, meadow grass",
    ),
    "ComfyUI__night_evening_day_morning_cropped.png": dict(
        tool="ComfyUI", seed=335608130539327, steps=13, cfg=8.5, sampler="dpmpp_sde"
    ),
    "ComfyUI__noisy_latents_3_subjects_cropped.png": dict(tool="ComfyUI", model="Anything-V3.0.ckpt"),
    "ComfyUI__unclip_2pass_cropped.png": dict(tool="ComfyUI", seed=1106257833005336, steps=26, sampler="uni_pc_bh2"),
    "Fooocus__fooocus1_cropped.png": dict(
        tool="Fooocus",
        model="juggernautXL_v8Rundiffusion",
        seed=6952411511246973023,
        steps=30,
        sampler="dpmpp_2m_sde_gpu",
        cfg=4.0,
        prompt="a smiling goldfish",
    ),
    "InvokeAI__invokeai_dream1.png": dict(
        tool="InvokeAI", where="PNG tEXt Dream", seed=2980747362, steps=50, sampler="k_lms", cfg=5.0
    ),
    "InvokeAI__invokeai_imeta1.png": dict(
        tool="InvokeAI",
        where="PNG tEXt invokeai_metadata",
        model="juggernautXL",
        seed=3293022630,
        steps=35,
        sampler="euler",
        cfg=8.0,
    ),
    "InvokeAI__invokeai_sdmeta1.png": dict(
        tool="InvokeAI",
        where="PNG tEXt sd-metadata",
        model="deliberateForInvoke_v08",
        seed=2980747362,
        steps=50,
        sampler="k_lms",
    ),
    "NovelAI__novelai1_cropped.png": dict(
        tool="NovelAI",
        model="Stable Diffusion 1D44365E",
        seed=2253955223,
        steps=50,
        sampler="k_euler_ancestral",
        cfg=10.0,
    ),
}


def test_generator_metadata_is_recognised_and_parsed(fixtures, detector):
    paths = sorted((fixtures / "generator-metadata" / "ai").iterdir())
    assert sorted(p.name for p in paths) == sorted(GENERATOR_FILES)
    for path, result in zip(paths, predict_paths(detector, paths)):
        details = provenance(result)
        finding = details["generator_metadata"][0]
        expected = GENERATOR_FILES[path.name]
        assert {k: finding.get(k) for k in expected} == expected, path.name
        assert result.features["metadata_ai_claim"] == 1.0
        assert details["generator"] == expected["tool"]
        assert any(expected["tool"] in sentence for sentence in result.hard_evidence)
    novelai = provenance(result)  # the last file: NovelAI also names itself in the Software chunk
    assert result.features["software_flag"] == 1.0
    assert novelai["software"] == [{"where": "PNG tEXt Software", "value": "NovelAI", "class": "generator"}]


def test_dalle2_exif_tags_found_on_14_of_15(data_set, detector):
    paths = sorted((data_set("early-generators-ai") / "ai" / "dal2").iterdir())
    results = predict_paths(detector, paths)
    found = {path.name: provenance(r)["generator_metadata"] for path, r in zip(paths, results)}
    tagged = [name for name, findings in found.items() if findings]
    assert len(paths) == 15 and len(tagged) == 14
    assert set(found) - set(tagged) == {"dal2__muppets-mad-max-fury-road-58009097__dal2-2.jpg"}
    for name in tagged:
        (finding,) = found[name]
        assert finding["tool"] == "OpenAI DALL-E 2"
        assert finding["extra"]["generation_id"].startswith("generation-")
        assert finding["extra"]["user_comment"] == "Made with OpenAI Labs"
    assert all(r.features["metadata_ai_claim"] == float(bool(found[p.name])) for p, r in zip(paths, results))


def test_comfyui_found_on_all_modern_generators_and_no_sd_watermark(data_set, detector):
    paths = sorted((data_set("modern-generators-ai") / "ai").iterdir())
    results = predict_paths(detector, paths)
    assert len(results) == 19
    for path, result in zip(paths, results):
        (finding,) = provenance(result)["generator_metadata"]
        assert finding["tool"] == "ComfyUI" and finding["where"] == "PNG tEXt prompt"
        assert isinstance(finding["seed"], int) and finding["steps"] >= 1
        assert finding["model"].endswith((".safetensors", ".ckpt")), path.name
        assert result.features["metadata_ai_claim"] == 1.0
        # Their MANIFEST: ComfyUI adds no invisible watermark. Nothing may be decoded by chance.
        assert result.features["watermark_detected"] == 0.0
    flux = provenance(results[[p.name for p in paths].index("flux__flux_dev_example.png")])["generator_metadata"][0]
    assert (flux["model"], flux["seed"], flux["steps"], flux["sampler"]) == (
        "flux1-dev.safetensors",
        219670278747233,
        20,
        "euler",
    )


def test_stealth_pnginfo_rgb_variant(detector):
    """The RGB flavour of stealth pnginfo (3 bits per pixel, column-major), written here as the extension does."""
    text = "a red fox\nSteps: 12, Sampler: DPM++ 2M, CFG scale: 6, Seed: 42, Model: testmodel"
    payload = np.unpackbits(np.frombuffer(text.encode(), np.uint8))
    bits = np.concatenate(
        [
            np.unpackbits(np.frombuffer(b"stealth_rgbinfo", np.uint8)),
            np.unpackbits(np.frombuffer(struct.pack(">I", payload.size), np.uint8)),
            payload,
        ]
    )
    rgb = np.random.default_rng(3).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    column_major = rgb.transpose(1, 0, 2).reshape(-1).copy()
    column_major[: bits.size] = (column_major[: bits.size] & 0xFE) | bits
    rgb = column_major.reshape(48, 64, 3).transpose(1, 0, 2)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, "PNG")
    result = detector.predict([decode_image(buffer.getvalue())])[0]
    (finding,) = provenance(result)["generator_metadata"]
    assert (finding["where"], finding["seed"], finding["steps"], finding["model"]) == (
        "stealth pnginfo, rgb LSB (stealth_rgbinfo)",
        42,
        12,
        "testmodel",
    )
    assert result.features["metadata_ai_claim"] == 1.0


def test_midjourney_google_utf16_and_jpeg_comment_markers(detector):
    png = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(png, "PNG")
    description = "example --ar 2:1 --stylize 80 --v 6 Job ID: a7421d2f-b262-44f9-977c-ac23e9c7d3e3"
    midjourney = insert_png_chunk(png.getvalue(), png_chunk(b"tEXt", b"Description\x00" + description.encode()))
    credit = b"Made with Google AI"
    iim = b"\x1c\x02\x6e" + struct.pack(">H", len(credit)) + credit  # IPTC IIM 2:110 Credit
    irb = b"8BIM" + struct.pack(">HHI", 0x0404, 0, len(iim)) + iim + b"\x00" * (len(iim) % 2)
    google = insert_jpeg_segment(plain_jpeg(), 0xED, b"Photoshop 3.0\x00" + irb)
    comment = "a cat\nSteps: 9, Sampler: Euler, CFG scale: 3, Seed: 7, Model: tiny".encode("utf-16-le")
    tiff = (
        b"II*\x00"
        + struct.pack("<IH", 8, 1)
        + struct.pack("<HHII", 0x9286, 7, 8 + len(comment), 26)
        + b"\x00\x00\x00\x00"
        + b"UNICODE\x00"
        + comment
    )
    utf16le = insert_jpeg_segment(plain_jpeg(1), 0xE1, b"Exif\x00\x00" + tiff)
    a1111_text = b"a dog\nSteps: 30, Sampler: Euler a, CFG scale: 7, Seed: 99"
    jpeg_comment = insert_jpeg_segment(plain_jpeg(2), 0xFE, a1111_text)
    results = detector.predict([decode_image(d) for d in (midjourney, google, utf16le, jpeg_comment)])
    (finding,) = provenance(results[0])["generator_metadata"]
    assert (finding["tool"], finding["model"], finding["prompt"], finding["extra"]["job_id"]) == (
        "Midjourney",
        "Midjourney v6",
        "example --ar 2:1 --stylize 80 --v 6",
        "a7421d2f-b262-44f9-977c-ac23e9c7d3e3",
    )
    assert provenance(results[1])["xmp"]["credits"] == ["Made with Google AI"]
    assert provenance(results[1])["generator"] == "Google generative AI"
    (finding,) = provenance(results[2])["generator_metadata"]
    assert (finding["tool"], finding["seed"], finding["steps"], finding["model"]) == ("AUTOMATIC1111", 7, 9, "tiny")
    (finding,) = provenance(results[3])["generator_metadata"]
    assert (finding["where"], finding["seed"], finding["sampler"], finding["prompt"]) == (
        "JPEG COM",
        99,
        "Euler a",
        "a dog",
    )
    assert [r.features["metadata_ai_claim"] for r in results] == [1.0, 1.0, 1.0, 1.0]
    assert all(len(r.hard_evidence) == 1 for r in results)


# ---- real photos: no claims, broken EXIF reported ---------------------------------------------------------
def test_camera_and_exif_samples_have_no_ai_claim_and_broken_exif_is_reported(data_set, detector):
    paths = sorted((data_set("camera-models") / "real").iterdir()) + sorted(
        p for p in (data_set("exif-samples") / "real").rglob("*.*")
    )
    assert len(paths) == 162
    results = predict_paths(detector, paths)  # one batch
    for path, result in zip(paths, results):
        details = provenance(result)
        assert result.features["metadata_ai_claim"] == 0.0, (path.name, details["generator_metadata"])
        assert result.features["c2pa_ai_claim"] == 0.0 and result.features["c2pa_present"] == 0.0
        assert result.features.get("watermark_detected", 0.0) == 0.0, path.name
        assert result.hard_evidence == [], path.name
        assert result.hard_evidence_real == [] and result.provenance["kind"] == "none", path.name
        json.dumps(result.details, allow_nan=False)
    checked = sum("watermark_detected" in r.features for r in results)
    assert checked >= 120  # dozens of real photos read for the SD watermarks, none flagged
    named = {path.name: result for path, result in zip(paths, results)}
    broken = sorted(name for name, r in named.items() if provenance(r)["exif"].get("broken"))
    assert broken == ["Sony_DCR-PC110.jpg", "Sony_DCR-PC110E_(1).jpg", "Sony_DCR-PC110E_(2).jpg"]
    assert "thumbnail" in provenance(named["Sony_DCR-PC110.jpg"])["exif"]["problems"][0]
    assert any("EXIF is malformed" in s for s in named["Sony_DCR-PC110.jpg"].evidence)
    assert provenance(named["Nikon_E885.jpg"])["exif"]["dates"]["problems"][0] == (
        "DateTimeOriginal '0000:00:00 00:00:00' is not a valid date"
    )
    assert provenance(named["DSCN0010.jpg"])["exif"]["gps"] == {"present": True, "position": "valid"}
    assert provenance(named["FLIR_Vue_Pro_640.jpg"])["exif"]["gps"] == {"present": True, "position": "zero"}
    assert provenance(named["Nikon_D5000.jpg"])["exif"]["gps"] == {"present": True, "position": "valid"}  # 0/0 s
    # A straight-from-camera file, a GIMP-processed one, and one without EXIF.
    assert named["Panasonic_DMC-LC70_(Lumix).jpg"].features["exif_score"] == pytest.approx(0.95)
    assert named["Panasonic_DMC-LC70_(Lumix).jpg"].features["software_flag"] == 0.0
    assert named["Canon_40D.jpg"].features["software_flag"] == 0.5
    assert named["Nikon_E950.jpg"].features["software_flag"] == 0.0  # "v981-79" is camera firmware
    assert named["olympus-d320l.jpg"].features["has_exif"] == 0.0
    assert named["olympus-d320l.jpg"].features["exif_score"] == 0.0
    has_exif = sum(r.features["has_exif"] for r in results)
    assert has_exif == 162 - 9  # 7 files of jpg/invalid and 2 exif-org stubs carry no EXIF block


# ---- watermarks -----------------------------------------------------------------------------------------
def _crop(fixtures: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(fixtures / WATERMARK_PHOTO).convert("RGB"))
    top, left = (rgb.shape[0] - 512) // 2, (rgb.shape[1] - 512) // 2
    return np.ascontiguousarray(rgb[top : top + 512, left : left + 512])


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "mark, order",
    [
        (KNOWN_WATERMARKS[0], "BGR"),
        (KNOWN_WATERMARKS[2], "BGR"),
        (KNOWN_WATERMARKS[3], "BGR"),
        (KNOWN_WATERMARKS[3], "RGB"),
    ],
    ids=["sd1", "sd2", "sdxl-generative-models", "sdxl-diffusers"],
)
def test_watermark_round_trip(fixtures, detector, mark, order):
    from imwatermark import WatermarkEncoder

    crop = _crop(fixtures)
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", list(mark.bits))
    # The reference scripts hand BGR to the encoder; diffusers' SDXL pipeline hands RGB unchanged.
    marked = (
        encoder.encode(crop[:, :, ::-1].copy(), "dwtDct")[:, :, ::-1]
        if order == "BGR"
        else encoder.encode(crop.copy(), "dwtDct")
    )
    result, clean = detector.predict([decode_image(_png(np.ascontiguousarray(marked))), decode_image(_png(crop))])
    watermark = provenance(result)["watermark"]
    assert result.features["watermark_detected"] == 1.0
    assert (watermark["detected"], watermark["generator"], watermark["channel_order"]) == (
        mark.name,
        mark.generator,
        order,
    )
    assert watermark["match"] >= 0.95
    assert any(mark.generator in sentence for sentence in result.hard_evidence)
    assert clean.features["watermark_detected"] == 0.0
    assert max(max(v.values()) for v in provenance(clean)["watermark"]["matches"].values()) < 0.8


def test_vectorised_decoder_equals_imwatermark(data_set):
    from imwatermark import WatermarkDecoder

    for name in ("Canon_PowerShot_S40_(2).jpg", "Sony_DSC-HX5V_(2).jpg"):
        rgb = np.asarray(Image.open(data_set("camera-models") / "real" / name).convert("RGB"))[:480, :640]
        for order, as_given in (("BGR", np.ascontiguousarray(rgb[:, :, ::-1])), ("RGB", rgb)):
            for length in (48, 136):
                reference = np.array(WatermarkDecoder("bits", length).decode(as_given, "dwtDct"), dtype=bool)
                np.testing.assert_array_equal(vote(block_bits(rgb, order), length), reference)


def test_watermark_not_checked_on_small_images(detector):
    result = detector.predict([decode_image(plain_jpeg(size=(200, 200)))])[0]
    assert "watermark_detected" not in result.features
    assert provenance(result)["watermark"]["checked"] is False


# ---- bad input ------------------------------------------------------------------------------------------
def test_malformed_exif_is_reported_not_raised(detector):
    # IFD0 with 3 entries: Make points past the end, Model has an unknown type, then an IFD1 offset that
    # loops back to IFD0; plus an Exif IFD pointer outside the block.
    entries = [
        struct.pack("<HHII", 0x010F, 2, 400, 5000),
        struct.pack("<HHII", 0x0110, 99, 4, 0),
        struct.pack("<HHII", 0x8769, 4, 1, 9999),
    ]
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 3) + b"".join(entries) + struct.pack("<I", 8)
    broken = insert_jpeg_segment(plain_jpeg(), 0xE1, b"Exif\x00\x00" + tiff)
    garbage = insert_jpeg_segment(plain_jpeg(1), 0xE1, b"Exif\x00\x00" + b"\x00garbage not tiff")
    short = insert_jpeg_segment(plain_jpeg(2), 0xE1, b"Exif\x00\x00" + b"MM\x00*\x00\x00\x00\x08\xff\xff")
    results = detector.predict([decode_image(broken), decode_image(garbage), decode_image(short)])
    problems = provenance(results[0])["exif"]["problems"]
    assert problems == [
        "IFD0 tag Make points past the end of the EXIF block",
        "IFD0 tag 0x0110 has unknown type 99",
        "Exif offset 9999 is outside the 50-byte EXIF block",
        "IFD1 at offset 8 was already read (IFD loop)",
    ]
    assert provenance(results[1])["exif"]["problems"] == ["not a TIFF header: b'\\x00gar'"]
    assert provenance(results[2])["exif"]["problems"] == ["IFD0 claims 65535 entries"]
    for result in results:
        assert result.features["has_exif"] == 1.0
        assert result.features["exif_score"] == 0.0
        assert provenance(result)["exif"]["broken"] is True
        assert any(s.startswith("EXIF is malformed") for s in result.evidence)
        assert result.hard_evidence == []


XMP_AI = (
    "<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
    "<rdf:Description xmlns:Iptc4xmpExt='http://iptc.org/std/Iptc4xmpExt/2008-02-29/' "
    "xmlns:xmp='http://ns.adobe.com/xap/1.0/' xmp:CreatorTool='Adobe Firefly'>"
    "<Iptc4xmpExt:DigitalSourceType>http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
    "</Iptc4xmpExt:DigitalSourceType></rdf:Description></rdf:RDF></x:xmpmeta>"
)
BILLION_LAUGHS = (
    "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'trainedAlgorithmicMedia'>"
    + "".join(
        f"<!ENTITY {c} '&{p};&{p};&{p};&{p};&{p};&{p};&{p};&{p};&{p};&{p};'>" for p, c in zip("abcdefgh", "bcdefghi")
    )
    + "]><x:xmpmeta xmlns:x='adobe:ns:meta/'><Iptc4xmpExt:DigitalSourceType>&i;"
    "</Iptc4xmpExt:DigitalSourceType></x:xmpmeta>"
)


def test_xmp_declarations_and_xmp_that_is_not_xml(detector):
    prefix = b"http://ns.adobe.com/xap/1.0/\x00"
    valid = insert_jpeg_segment(plain_jpeg(), 0xE1, prefix + XMP_AI.encode())
    not_xml = insert_jpeg_segment(plain_jpeg(1), 0xE1, prefix + XMP_AI.replace("</rdf:RDF>", "").encode())
    laughs = insert_jpeg_segment(plain_jpeg(2), 0xE1, prefix + BILLION_LAUGHS.encode())
    binary = insert_jpeg_segment(plain_jpeg(3), 0xE1, prefix + bytes(range(256)) * 40)
    results = detector.predict([decode_image(d) for d in (valid, not_xml, laughs, binary)])
    for result in results[:2]:  # parsed as XML, or read by the pattern fallback when it is not XML
        assert result.features["metadata_ai_claim"] == 1.0
        assert result.features["software_flag"] == 1.0  # CreatorTool "Adobe Firefly"
        assert provenance(result)["xmp"]["source_type_codes"] == ["trainedAlgorithmicMedia"]
        assert "XMP declares digital source type trainedAlgorithmicMedia" in result.hard_evidence
    assert provenance(results[0])["errors"] == []
    assert "not well-formed XML" in provenance(results[1])["errors"][0]
    # The DTD is refused before parsing: no entity is expanded, so no claim is read out of it.
    assert "declares a DTD" in provenance(results[2])["errors"][0]
    assert results[2].features["metadata_ai_claim"] == 0.0
    assert provenance(results[2])["xmp"]["source_type_codes"] == []
    assert results[3].error is None and results[3].features["metadata_ai_claim"] == 0.0


def test_huge_binary_png_text_chunk_is_bounded(detector):
    blob = np.random.default_rng(5).integers(0, 256, 5 * 1024 * 1024, dtype=np.uint8).tobytes()
    chunk = png_chunk(b"tEXt", b"parameters\x00" + blob)
    base = io.BytesIO()
    Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(base, "PNG")
    # A parameters text built to make a naive "Key: value" regex go quadratic, and XMP built the same way.
    hostile = png_chunk(b"tEXt", b"parameters\x00x\nSteps: " + b"a" * 200_000)
    hostile_xmp = png_chunk(
        b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00<x:xmpmeta " + b"x:DigitalSourceType='" * 9000
    )
    result, slow_text = detector.predict(
        [
            decode_image(insert_png_chunk(base.getvalue(), chunk)),
            decode_image(insert_png_chunk(base.getvalue(), hostile + hostile_xmp)),
        ]
    )
    assert slow_text.features["metadata_ai_claim"] == 0.0
    assert "not well-formed XML" in provenance(slow_text)["errors"][0]
    details = provenance(result)
    assert details["container"]["truncated"] == [f"PNG tEXt 'parameters' ({len(blob) + 11} bytes)"]
    assert details["container"]["text_chunks"] == ["parameters"]
    assert details["generator_metadata"] == []  # binary noise is not AUTOMATIC1111 parameters
    assert result.features["metadata_ai_claim"] == 0.0
    assert result.features["watermark_detected"] == 0.0


def test_compressed_text_bomb_is_inflated_only_to_the_limit():
    bomb = png_chunk(b"zTXt", b"parameters\x00\x00" + zlib.compress(b"A" * (20 * 1024 * 1024), 6))
    base = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(base, "PNG")
    meta = read_container(insert_png_chunk(base.getvalue(), bomb), "PNG")
    assert len(meta.text["parameters"]) == TEXT_LIMIT
    assert meta.truncated == [f"PNG zTXt 'parameters' ({len(bomb) - 12} bytes)"]


def test_truncated_chunks_and_segments_are_errors_not_crashes():
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, "PNG")
    lying = insert_png_chunk(png.getvalue(), struct.pack(">I", 10**9) + b"tEXt" + b"x" * 20)
    assert read_container(lying, "PNG").errors[0].startswith("PNG: chunk b'tEXt' at byte 33 claims 1000000000 bytes")
    jpeg = plain_jpeg()
    cut = jpeg[:2] + b"\xff\xe1\xff\xff" + b"Exif\x00\x00"
    assert read_container(cut, "JPEG").errors == ["JPEG: segment 0xFFE1 at byte 2 claims 65535 bytes past the end"]


# ---- batching -------------------------------------------------------------------------------------------
def test_batch_predict_equals_single_predict(fixtures, data_set, detector):
    paths = [
        fixtures / "c2pa" / "ai" / "ocsp.jpg",
        fixtures / "generator-metadata" / "ai" / "NovelAI__novelai1_cropped.png",
        data_set("camera-models") / "real" / "Sony_DCR-PC110.jpg",
        data_set("early-generators-ai") / "ai" / "dal2" / "dal2__time-travelers-99427836__dal2-3.jpg",
    ]
    images = [decode_image(p.read_bytes()) for p in paths]
    batch = detector.predict(images)
    for image, together in zip(images, batch):
        (alone,) = detector.predict([image])
        assert together.features == alone.features
        assert together.hard_evidence == alone.hard_evidence and together.evidence == alone.evidence
        assert json.dumps(together.details, sort_keys=True, allow_nan=False) == json.dumps(
            alone.details, sort_keys=True
        )
