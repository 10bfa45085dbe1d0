"""The ``provenance`` detector: what the file itself says about where it came from.

It reads the ORIGINAL BYTES of the upload (``DecodedImage.data``), not the pixels, except for two pixel
traces that generators leave on purpose: the Stable Diffusion invisible watermark and the AUTOMATIC1111
"stealth pnginfo" bits. No model weights are downloaded. Sources, in the order they are read:

1. the container walk (:mod:`models.provenance_container`): EXIF, XMP, IPTC, PNG text chunks, C2PA boxes;
2. EXIF fields and how camera-like they are (:mod:`models.provenance_exif`);
3. generator metadata and XMP/IPTC declarations (:mod:`models.provenance_metadata`);
4. China's implicit AIGC label, GB 45438-2025 (:mod:`models.provenance_aigc`);
5. C2PA Content Credentials, offline, trusted against the shipped C2PA trust lists (:mod:`models.provenance_c2pa`,
   :mod:`models.provenance_trust`);
6. the SD 1.x / 2.x / XL invisible watermarks (:mod:`models.provenance_watermark`).

Each step is isolated: a step that fails is listed in ``details["provenance"]["errors"]`` and its features
are omitted; the other steps still report. Malformed metadata is never a crash: it is evidence or an error.

Evidence has three strengths. "hard": the sentences that alone decide "AI" (``hard_evidence``: a valid C2PA AI
claim, structured generator metadata such as AUTOMATIC1111 parameters or a ComfyUI graph, an IPTC Digital Source
Type or AI credit, the AIGC Label 1, a decoded generator watermark). "strong": an unsigned free-text claim, a
generator's name matched in EXIF ``Software`` / XMP ``CreatorTool`` ("Gemini app 1.2", "ChatGPT"): any app, editor
or person writes those tags, so it feeds ``software_flag`` / ``metadata_ai_claim`` and the reasoning, first among
the ``evidence`` sentences, but never decides alone. "weak": the rest (a C2PA AI claim whose validation failed,
missing or camera-like EXIF, editing software). A sentence is in one list only.
``hard_evidence_real`` holds the one kind of evidence that alone decides "NON-AI": a valid C2PA manifest from a
trusted signer whose capture action says digitalCapture / computationalCapture and whose history holds no AI.
Anyone can self-sign a manifest, so an untrusted, expired or tampered one never decides; it is weak evidence.

When sources disagree (a trusted capture manifest next to XMP that declares AI, two AIGC labels with different
values) the stronger, trusted source wins, the other is demoted to weak evidence, and ``conflicts`` says so.
:func:`summarise` gives the verdict's top-level ``provenance`` object: kind (generated / ai_edited / captured /
edited / none), trusted, signer, generator, source.
"""

from __future__ import annotations

from typing import Any

from models.base import CONTEXT_PREFIX, NO_PROVENANCE, Detector, DetectorResult
from models.image_input import DecodedImage
from models.provenance_aigc import find_labels
from models.provenance_c2pa import c2pa_settings, read_c2pa
from models.provenance_container import read_container
from models.provenance_exif import ExifData, camera_evidence, decode_user_comment, parse_exif
from models.provenance_metadata import (
    AI_SOURCE_TYPES,
    IPTC_SOURCE_CODES,
    GeneratorFinding,
    ai_credit,
    find_generator_metadata,
    iptc_credits,
    parse_a1111,
    parse_xmp,
    read_stealth_pnginfo,
    software_class,
    source_type_code,
)
from models.provenance_trust import load_trust
from models.provenance_watermark import check_watermarks
from models.registry import register_detector
from models.schema import features_of

CODE_VERSION = "provenance-3"  # 3: a generator named in Software / CreatorTool is strong evidence, not hard
SOFTWARE_LEVELS = {"firmware": 0.0, "editor": 0.5, "other": 0.5, "generator": 1.0}
CAPTURE_SOURCE_TYPES = {"digitalCapture", "computationalCapture", "negativeFilm", "positiveFilm", "print"}
CAMERA_LIKE_EXIF = 0.6  # exif_score from which the EXIF is called camera-like in the evidence text


@register_detector
class ProvenanceDetector(Detector):
    """C2PA, EXIF, XMP/IPTC, generator metadata and invisible watermarks of one file."""

    name = "provenance"
    features = features_of(name)
    default_config: dict[str, Any] = {
        # The official C2PA trust lists shipped in models/trust (claim signers + time-stamping authorities).
        # False replaces them with the anchors below only.
        "c2pa_official_trust_list": True,
        # Extra claim-signer trust anchors: a PEM file path or a list of them, added to (or replacing) the lists.
        "c2pa_trust_anchors": None,
        # The watermark is read on a stripe of whole rows from the top with at most this many pixels.
        "watermark_max_pixels": 2_000_000,
    }

    def load(self) -> None:
        self._trust = load_trust(bool(self.config["c2pa_official_trust_list"]), self.config["c2pa_trust_anchors"])
        self._trust_id = self._trust.trust_id
        self._c2pa_settings = c2pa_settings(self._trust.claim_pem or None)
        try:
            import c2pa

            self._c2pa_version = f"c2pa-python {c2pa.__version__} / c2pa-rs {c2pa.sdk_version()}"
        except ImportError:
            self._c2pa_version = "c2pa unavailable"

    @property
    def version(self) -> str:
        return (
            f"{CODE_VERSION} {self._c2pa_version} trust_anchors={self._trust_id} "
            f"watermark_max_pixels={int(self.config['watermark_max_pixels'])}"
        )

    # All the work is parsing one file; there is no model to batch, so it happens per image here.
    def preprocess(self, image: DecodedImage) -> dict[str, Any]:
        return self.inspect(image)

    def _forward(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return inputs

    def postprocess(self, output: dict[str, Any], artifacts: bool) -> DetectorResult:
        return build_result(output)

    # ---- the steps --------------------------------------------------------------------------------------
    def inspect(self, image: DecodedImage) -> dict[str, Any]:
        """Run every step on one image; a failing step is recorded in ``errors`` and the others go on."""
        report: dict[str, Any] = {"errors": []}

        def step(name: str, fn, *args):
            try:
                return fn(*args)
            except Exception as err:  # noqa: BLE001 - one broken source must not hide the others
                report["errors"].append(f"{name}: {type(err).__name__}: {err}")
                return None

        container = step("container", read_container, image.data, image.format)
        if container is None:
            return report
        report["container"] = {
            "format": container.container,
            "text_chunks": sorted(container.text),
            "truncated": container.truncated,
        }
        report["errors"] += [f"container: {e}" for e in container.errors]
        exif = step("exif", _exif_report, container) if container.exif else None
        report["exif"] = exif["report"] if exif else {"present": bool(container.exif)}
        exif_data: ExifData | None = exif["data"] if exif else None
        xmp_packets = list(container.xmp)
        packet = exif_data.get("XMLPacket") if exif_data is not None else None  # TIFF keeps XMP in tag 700
        if isinstance(packet, (bytes, str)):
            xmp_packets.append(("TIFF tag 700", packet.encode("utf-8") if isinstance(packet, str) else packet))
        # A step that failed leaves None (and clears metadata_complete): the features it feeds are then
        # omitted, never filled with a default. What the other steps found is still reported.
        errors_before = len(report["errors"])
        report["xmp"] = step("xmp", _xmp_report, xmp_packets, container.iptc)
        findings = step("generator metadata", find_generator_metadata, container, exif_data) or []
        if container.container == "PNG":
            stealth = step("stealth pnginfo", _stealth_finding, image, container.has_alpha)
            findings += [stealth] if stealth else []
        _link_midjourney_guid(findings, report["xmp"] or {})
        report["generator_metadata"] = [f.to_dict() for f in findings]
        report["software"] = step("software", _software_report, container, exif_data, report["xmp"] or {})
        comment = decode_user_comment(exif_data.get("UserComment")) if exif_data is not None else None
        report["aigc"] = step("aigc label", find_labels, xmp_packets, container.text, container.text_where, comment)
        report["metadata_complete"] = len(report["errors"]) == errors_before
        if container.c2pa_box or container.container not in ("JPEG", "PNG", "WEBP"):
            report["c2pa"] = step("c2pa", read_c2pa, image.data, self._c2pa_settings)
        else:
            report["c2pa"] = {"present": False}  # the container walk saw no JUMBF / C2PA box
        report["watermark"] = step("watermark", check_watermarks, image.rgb, int(self.config["watermark_max_pixels"]))
        return report


def _exif_report(container) -> dict[str, Any]:
    where, block = container.exif[0]
    data = parse_exif(block)
    camera = camera_evidence(data)
    report = {
        "present": True,
        "where": where,
        "tags": data.tag_count,
        "broken": bool(data.problems),
        "problems": data.problems,
        **camera,
    }
    return {"report": report, "data": data}


def _xmp_report(packets: list[tuple[str, bytes]], iptc_blocks: list[tuple[str, bytes]]) -> dict[str, Any]:
    info = parse_xmp(packets)
    codes = [code for code in (source_type_code(v) for v in info.digital_source_types) if code]
    iim_credits = iptc_credits(iptc_blocks)
    return {
        "packets": len(packets),
        "digital_source_types": info.digital_source_types,
        "source_type_codes": codes,
        "creator_tools": info.creator_tools,
        "credits": info.credits + iim_credits,
        # Where each credit was read, in the same order ("XMP photoshop:Credit" or "IPTC-IIM 2:110 Credit").
        "credit_sources": ["XMP photoshop:Credit"] * len(info.credits) + ["IPTC-IIM 2:110 Credit"] * len(iim_credits),
        "history_agents": info.history_agents,
        "dig_image_guids": info.dig_image_guids,
        "errors": info.errors,
    }


def _link_midjourney_guid(findings: list[GeneratorFinding], xmp: dict[str, Any]) -> None:
    """Midjourney writes its Job ID both in the Description and as XMP Iptc4xmpExt:DigImageGUID (the Job ID, or
    ``<job id>_<image index>``, which the picteus reader splits); say when they agree."""
    for finding in findings:
        job = finding.extra.get("job_id") if finding.tool == "Midjourney" else None
        if job and any(guid.split("_")[0] == job for guid in xmp.get("dig_image_guids", [])):
            finding.extra["xmp_dig_image_guid"] = "matches the Job ID"


def _stealth_finding(image: DecodedImage, has_alpha: bool) -> GeneratorFinding | None:
    found = read_stealth_pnginfo(image.data, has_alpha, image.rgb)
    if found is None:
        return None
    where, text = found
    parsed = parse_a1111(text, where)
    return parsed or GeneratorFinding(tool="AUTOMATIC1111", where=where, extra={"text": text[:500]})


def _software_report(container, exif: ExifData | None, xmp: dict[str, Any]) -> list[dict[str, str]]:
    make = exif.text("Make") if exif else None
    model = exif.text("Model") if exif else None
    candidates = []
    if exif is not None:
        candidates += [(f"EXIF {tag}", exif.text(tag)) for tag in ("Software", "ProcessingSoftware")]
    candidates += [("XMP CreatorTool", tool) for tool in xmp.get("creator_tools", [])]
    candidates += [("XMP history softwareAgent", agent) for agent in xmp.get("history_agents", [])]
    candidates += [
        (f"{container.text_where[key]} {key}", container.text[key]) for key in ("Software",) if key in container.text
    ]
    return [
        {"where": where, "value": value[:200], "class": software_class(value, make, model)}
        for where, value in candidates
        if value
    ]


# ---- from the report to features and evidence ------------------------------------------------------------
def build_result(report: dict[str, Any]) -> DetectorResult:
    """Features, evidence sentences and the structured ``details["provenance"]`` object of one report."""
    evidence: list[dict[str, str]] = []

    def add(kind: str, where: str, what: str, strength: str, points_to: str, ai_kind: str | None = None) -> None:
        item = {"kind": kind, "where": where, "what": what, "strength": strength, "points_to": points_to}
        if ai_kind:  # "ai_edited" for a declaration of editing with AI (the default for an AI claim is generated)
            item["ai_kind"] = ai_kind
        evidence.append(item)

    features: dict[str, float] = {}
    if "container" not in report:
        return DetectorResult(error="; ".join(report["errors"]) or "container could not be read")
    _exif_features(report["exif"], features, add)
    findings, xmp, software = report["generator_metadata"], report["xmp"], report["software"]
    metadata_claim = _metadata_evidence(findings, xmp or {}, software or [], add)
    labels = report.get("aigc")
    label_claim = _aigc_evidence(labels or [], add)
    if labels is not None and (label_claim is not None or report["metadata_complete"]):
        features["aigc_label"] = label_claim or 0.0
    metadata_claim = metadata_claim or label_claim == 1.0  # a Label 1 is a declared AI claim like IPTC's
    if metadata_claim or (report["metadata_complete"] and labels is not None):
        features["metadata_ai_claim"] = 1.0 if metadata_claim else 0.0
    if software is not None:
        features["software_flag"] = max((SOFTWARE_LEVELS[s["class"]] for s in software), default=0.0)
    xmp = xmp or {}
    c2pa = report.get("c2pa")
    if c2pa is not None:
        _c2pa_features(c2pa, features, add, report["exif"])
    watermark = report.get("watermark")
    if watermark is not None and watermark.get("checked"):
        features["watermark_detected"] = 1.0 if watermark.get("detected") else 0.0
        if watermark.get("detected"):
            add(
                "watermark",
                "pixels (dwtDct, U channel)",
                f"Invisible {watermark['generator']} watermark decoded ({watermark['match']:.0%} of its bits, "
                f"{watermark['channel_order']} order)",
                "hard",
                "ai",
            )
    conflicts = _resolve_conflicts(evidence, labels or [])
    generator, model = _headline(report, findings, xmp, software or [])
    summary = summarise(evidence, c2pa or {}, labels or [], generator, report["exif"], conflicts)
    provenance = {
        "generator": generator,
        "model": model,
        "summary": summary,
        "evidence": evidence,
        "conflicts": conflicts,
        "c2pa": c2pa,
        "aigc": labels,
        "exif": report["exif"],
        "xmp": xmp,
        "software": software,
        "generator_metadata": findings,
        "watermark": watermark,
        "container": report["container"],
        "errors": report["errors"] + [f"xmp: {e}" for e in xmp.get("errors", [])],
    }
    return DetectorResult(
        features=features,
        details={"provenance": provenance},
        # Strong (unsigned free-text claims) before weak: both are reasons, neither decides alone.
        evidence=[e["what"] for strength in ("strong", "weak") for e in evidence if e["strength"] == strength],
        hard_evidence=[e["what"] for e in evidence if e["strength"] == "hard" and e["points_to"] == "ai"],
        hard_evidence_real=[e["what"] for e in evidence if e["strength"] == "hard" and e["points_to"] == "real"],
        provenance=summary,
    )


def _aigc_evidence(labels: list[dict[str, Any]], add) -> float | None:
    """Evidence of the GB 45438 labels; the strongest claim: 1.0 (Label 1), 0.5 (Label 2 / 3) or None."""
    claim = None
    for label in labels:
        if label.get("error"):
            add(
                "aigc",
                label["where"],
                f"AIGC label in {label['where']} is unreadable: {label['error']}",
                "weak",
                "neutral",
            )
            continue
        parties = f"producer {label['producer']!r}" if label.get("producer") else "no producer named"
        if label.get("propagator"):
            parties += f", propagated by {label['propagator']!r}"
        if label["label"] == "1":
            add(
                "aigc",
                label["where"],
                f"China's implicit AIGC label (GB 45438-2025) in {label['where']} declares "
                f"the image AI-generated (Label 1; {parties})",
                "hard",
                "ai",
            )
            claim = 1.0
        elif label["label"] in ("2", "3"):
            add(
                "aigc",
                label["where"],
                f"AIGC label (GB 45438-2025) in {label['where']} says {label['meaning']} "
                f"(Label {label['label']}; {parties}): the producer's own doubt, not decisive",
                "weak",
                "ai",
            )
            claim = max(claim or 0.0, 0.5)
        else:
            add(
                "aigc",
                label["where"],
                f"AIGC label in {label['where']} has an unknown Label value {label['label']!r} ({parties})",
                "weak",
                "neutral",
            )
    return claim


def _resolve_conflicts(evidence: list[dict[str, str]], labels: list[dict[str, Any]]) -> list[str]:
    """Say what disagrees; when a trusted capture meets AI claims, the trusted manifest wins.

    Only a trusted C2PA manifest produces hard "real" evidence, and it has no AI anywhere in its history, so
    hard AI evidence next to it comes from weaker, unsigned sources (XMP, EXIF, text chunks, a watermark
    decode): those are kept, demoted to weak evidence, and named in the conflict.
    """
    conflicts: list[str] = []
    hard_ai = [e for e in evidence if e["strength"] == "hard" and e["points_to"] == "ai"]
    strong_ai = [e for e in evidence if e["strength"] == "strong" and e["points_to"] == "ai"]
    hard_real = [e for e in evidence if e["strength"] == "hard" and e["points_to"] == "real"]
    weak_real = [
        e for e in evidence if e["strength"] == "weak" and e["points_to"] == "real" and e["kind"] in ("c2pa", "xmp")
    ]  # declared captures; camera-like EXIF is no declaration
    if hard_real and (hard_ai or strong_ai):
        for item in hard_ai + strong_ai:
            conflicts.append(
                f"{item['where']} claims AI, but a trusted C2PA capture manifest says camera capture; "
                "the trusted manifest wins"
            )
            item["strength"] = "weak"
            item["what"] = f"Conflict: {item['what']} (outweighed by the trusted C2PA capture manifest)"
    elif hard_ai and weak_real:
        for item in weak_real:
            conflicts.append(
                f"{item['where']} declares a capture, but {hard_ai[0]['where']} claims AI; "
                "the AI claim decides (the capture claim is not from a trusted signer)"
            )
    elif strong_ai and weak_real:
        for item in weak_real:
            conflicts.append(
                f"{item['where']} declares a capture, but {strong_ai[0]['where']} names an AI generator; "
                "neither is signed, so neither decides"
            )
    values = sorted({label["label"] for label in labels if label.get("label")})
    if len(values) > 1:
        conflicts.append(f"AIGC labels disagree (Label values {', '.join(values)}); the strongest claim is used")
    return conflicts


SOURCES = (
    ("c2pa", "c2pa"),
    ("stealth", "watermark"),
    ("pixels", "watermark"),
    ("xmp", "xmp"),
    ("exif", "exif"),
    ("tiff", "exif"),
    ("png", "png_text"),
    ("iptc", "iptc"),
    ("jpeg com", "comment"),
    ("description", "exif"),
)


def _source(where: str) -> str | None:
    """The ``source`` of the provenance object for an evidence location ("PNG tEXt AIGC" -> "png_text")."""
    return next((source for key, source in SOURCES if key in where.lower()), None)


def summarise(
    evidence: list[dict[str, str]],
    c2pa: dict[str, Any],
    labels: list[dict[str, Any]],
    generator: str | None,
    exif: dict[str, Any],
    conflicts: list[str],
) -> dict[str, Any]:
    """The verdict's top-level ``provenance`` object, from the strongest evidence that says anything.

    Order: a hard AI claim (trusted C2PA first), a trusted camera capture, then what a readable but
    non-decisive C2PA manifest says, then a generator named in a Software / CreatorTool tag (``generated``,
    ``trusted: false``: an unsigned claim), then an untrusted declared capture; ``none`` when nothing claims a source.
    """
    summary: dict[str, Any] = {**NO_PROVENANCE, "conflicts": conflicts}
    signer = c2pa.get("signer_org") or c2pa.get("signer")
    hard_ai = [e for e in evidence if e["strength"] == "hard" and e["points_to"] == "ai"]
    hard_ai.sort(key=lambda e: e["kind"] != "c2pa")  # the C2PA claim names the kind (generated / ai_edited)
    hard_real = [e for e in evidence if e["strength"] == "hard" and e["points_to"] == "real"]
    strong_ai = [e for e in evidence if e["strength"] == "strong" and e["points_to"] == "ai"]
    if hard_ai:
        first = hard_ai[0]
        kind = "generated"
        if first["kind"] == "c2pa":
            kind = c2pa.get("kind") if c2pa.get("kind") in ("generated", "ai_edited") else "generated"
        elif first.get("ai_kind") == "ai_edited":
            kind = "ai_edited"
        summary.update(kind=kind, source=_source(first["where"]), generator=generator)
        if first["kind"] == "c2pa":
            summary.update(trusted=bool(c2pa.get("trusted")), signer=signer)
        elif first["kind"] == "aigc":
            producer = next((label.get("producer") for label in labels if label.get("label") == "1"), None)
            summary.update(generator=generator or producer)
    elif hard_real or (c2pa.get("readable") and c2pa.get("kind") not in (None, "none")):
        summary.update(
            kind=c2pa["kind"],
            trusted=bool(c2pa.get("trusted")),
            signer=signer,
            source="c2pa",
            generator=", ".join(c2pa.get("generators", [])[:1]) or None,
        )
        if c2pa["kind"] in ("captured", "edited") and c2pa.get("capture"):
            summary["device"] = _device(c2pa["capture"], exif)
    elif strong_ai:  # what the file's tags say, unsigned: trusted stays False
        summary.update(kind="generated", source=_source(strong_ai[0]["where"]), generator=generator)
    elif any(e["kind"] == "xmp" and e["points_to"] == "real" for e in evidence):
        summary.update(kind="captured", source="xmp")
    elif c2pa.get("readable"):
        summary.update(signer=signer, source="c2pa")  # a manifest that says nothing about the source
    return summary


def _device(capture: dict[str, Any], exif: dict[str, Any]) -> str | None:
    """The capturing device: EXIF make and model when present, else the capture's software agent."""
    make, model = exif.get("make"), exif.get("model")
    if model:
        return model if make and model.lower().startswith(make.split()[0].lower()) else f"{make or ''} {model}".strip()
    return capture.get("software_agent") or capture.get("claim_generator")


def _exif_features(exif: dict[str, Any], features: dict[str, float], add) -> None:
    features["has_exif"] = 1.0 if exif.get("present") else 0.0
    if not exif.get("present"):
        features["exif_score"] = 0.0  # defined: no EXIF scores 0
        add(
            "exif",
            "file",
            f"{CONTEXT_PREFIX}no EXIF metadata (usual for generated images, and just as usual for "
            "screenshots and photos re-saved by web platforms); not used by the verdict",
            "weak",
            "neutral",
        )
        return
    if exif.get("broken"):
        add(
            "exif",
            exif.get("where", "EXIF"),
            f"EXIF is malformed: {'; '.join(exif['problems'][:3])}",
            "weak",
            "neutral",
        )
    if "exif_score" not in exif:  # present but the step failed: the error is listed, the score omitted
        return
    features["exif_score"] = float(exif["exif_score"])
    dates = exif.get("dates", {}).get("problems", [])
    if dates:
        add("exif", "EXIF dates", f"EXIF dates are inconsistent or invalid: {'; '.join(dates[:2])}", "weak", "neutral")
    if exif["exif_score"] >= CAMERA_LIKE_EXIF:
        add(
            "exif",
            exif["where"],
            f"Camera EXIF from {exif.get('make')} {exif.get('model')} with "
            f"{len(exif.get('exposure_fields', []))} of 4 exposure fields (exif_score {exif['exif_score']:.2f})",
            "weak",
            "real",
        )


def _metadata_evidence(findings: list[dict], xmp: dict[str, Any], software: list[dict], add) -> bool:
    """Add the evidence of non-C2PA metadata; return whether it claims AI generation."""
    claim = False
    for finding in findings:
        params = ", ".join(f"{k} {finding[k]}" for k in ("model", "seed", "steps", "sampler", "cfg") if k in finding)
        add(
            "generator_metadata",
            finding["where"],
            f"{finding['tool']} generation metadata in {finding['where']}" + (f" ({params})" if params else ""),
            "hard",
            "ai",
        )
        claim = True
    where = "XMP Iptc4xmpExt:DigitalSourceType"
    for code in xmp.get("source_type_codes", []):
        if code == "compositeWithTrainedAlgorithmicMedia":
            add(
                "xmp",
                where,
                f"XMP declares digital source type {code} (edited with generative AI)",
                "hard",
                "ai",
                ai_kind="ai_edited",
            )
            claim = True
        elif code in AI_SOURCE_TYPES:
            add("xmp", where, f"XMP declares digital source type {code}", "hard", "ai")
            claim = True
        elif code == "algorithmicMedia":
            add("xmp", where, "XMP declares algorithmicMedia (made by an algorithm, not a trained model)", "weak", "ai")
        elif code in CAPTURE_SOURCE_TYPES:
            add("xmp", where, f"XMP declares digital source type {code}", "weak", "real")
        elif code in IPTC_SOURCE_CODES:  # humanEdits, compositeCapture, screenCapture, ...: no AI claim, reported
            add("xmp", where, f"XMP declares digital source type {code} (no generative AI claimed)", "weak", "neutral")
    sources = xmp.get("credit_sources") or ["IPTC Credit"] * len(xmp.get("credits", []))
    for credit, credit_where in zip(xmp.get("credits", []), sources):
        declared = ai_credit(credit)
        if declared:
            ai_kind, who = declared
            made = "edited with AI" if ai_kind == "ai_edited" else "AI-generated"
            add(
                "iptc",
                credit_where,
                f"IPTC credit ({credit_where}) says {credit!r} ({who}, {made})",
                "hard",
                "ai",
                ai_kind=ai_kind,
            )
            claim = True
    for item in software:
        if item["class"] == "generator":
            # Free text that any app, editor or person writes (a photo saved from the Gemini app, a "ChatGPT" typed
            # into a tag): strong evidence, an unsigned claim that never decides alone.
            add(
                "software",
                item["where"],
                f"{item['where']} names an AI generator ({item['value']!r}): an unsigned claim, free text that any app "
                "or person can write, so strong evidence but not proof on its own",
                "strong",
                "ai",
            )
            claim = True
        elif item["class"] in ("editor", "other"):
            add("software", item["where"], f"Processed with {item['value']!r} ({item['where']})", "weak", "neutral")
    return claim


def _c2pa_features(c2pa: dict[str, Any], features: dict[str, float], add, exif: dict[str, Any]) -> None:
    features["c2pa_present"] = 1.0 if c2pa.get("present") else 0.0
    features["c2pa_valid"] = 1.0 if c2pa.get("present") and c2pa.get("valid") else 0.0
    features["c2pa_trusted"] = 1.0 if c2pa.get("present") and c2pa.get("trusted") else 0.0
    if not c2pa.get("present"):
        features["c2pa_ai_claim"] = 0.0
        features["c2pa_capture_claim"] = 0.0
        return
    if not c2pa.get("readable"):
        add("c2pa", "C2PA manifest", f"C2PA manifest present but unreadable: {c2pa.get('error')}", "weak", "neutral")
        return
    features["c2pa_ai_claim"] = 1.0 if c2pa["ai_claim"] else 0.0
    capture = c2pa.get("capture") if c2pa["valid"] else None
    features["c2pa_capture_claim"] = (1.0 if c2pa["trusted"] else 0.5) if capture else 0.0
    signer = _signer_text(c2pa)
    if c2pa["ai_claim"]:
        generators = ", ".join(c2pa["generators"][:3]) or "an unnamed tool"
        reason = c2pa["ai_claims"][0]["reason"]
        made = "editing with AI" if c2pa.get("kind") == "ai_edited" else "AI generation"
        if c2pa["valid"]:
            trust = f"trusted signer {signer}" if c2pa["trusted"] else f"signer {signer} not on the trust list"
            add(
                "c2pa",
                "C2PA manifest",
                f"C2PA Content Credentials declare {made} by {generators} "
                f"({reason}; signature and content hash verified, {trust})",
                "hard",
                "ai",
            )
        else:
            failed = ", ".join(c2pa["integrity_failures"] or ["signature or content binding not verified"])
            add(
                "c2pa",
                "C2PA manifest",
                f"C2PA manifest declares {made} by {generators}, but its validation failed ({failed}): not decisive",
                "weak",
                "ai",
            )
    elif capture and c2pa["trusted"]:
        device = _device(capture, exif) or "an unnamed device"
        edits = f", then {', '.join(c2pa['edits'])} without AI" if c2pa.get("edits") else ""
        add(
            "c2pa",
            "C2PA manifest",
            f"C2PA Content Credentials signed by trusted signer {signer} declare a camera "
            f"capture ({capture['source_type']}) by {device}{edits}; signature and content hash verified, no AI "
            "action or ingredient in its history",
            "hard",
            "real",
        )
    elif capture:
        issues = ", ".join(c2pa.get("signer_issues") or ["signer not on the trust list"])
        add(
            "c2pa",
            "C2PA manifest",
            f"C2PA manifest declares a camera capture ({capture['source_type']}), signed by "
            f"{signer} ({issues}): anyone can sign such a manifest, so it is not decisive",
            "weak",
            "real",
        )
    elif c2pa["valid"]:
        add(
            "c2pa",
            "C2PA manifest",
            f"C2PA manifest by {c2pa.get('claim_generator')} (signed by {signer}) verifies and makes no AI claim",
            "weak",
            "neutral",
        )
    else:
        failed = ", ".join(c2pa["integrity_failures"] or ["signature or content binding not verified"])
        add(
            "c2pa",
            "C2PA manifest",
            f"C2PA manifest by {c2pa.get('claim_generator')} failed validation ({failed}); it makes no AI claim",
            "weak",
            "neutral",
        )


def _signer_text(c2pa: dict[str, Any]) -> str:
    """ "Google LLC (Pixel Camera)" from the certificate's organisation and common name."""
    org, name = c2pa.get("signer_org"), c2pa.get("signer")
    if org and name and org != name:
        return f"{org} ({name})"
    return org or name or "an unknown signer"


def _headline(report: dict, findings: list[dict], xmp: dict, software: list[dict]) -> tuple[str | None, str | None]:
    """The single generator (and model) to name, from the strongest source that names one."""
    c2pa = report.get("c2pa") or {}
    watermark = report.get("watermark") or {}
    model = next((f["model"] for f in findings if f.get("model")), None)
    if c2pa.get("ai_claim") and c2pa.get("valid") and c2pa.get("generators"):
        return c2pa["generators"][0], model
    if findings:
        return findings[0]["tool"], model
    if watermark.get("detected"):
        return watermark["generator"], model
    named = [s["value"] for s in software if s["class"] == "generator"]
    if named:
        return named[0], model
    credited = [declared[1] for declared in map(ai_credit, xmp.get("credits", [])) if declared]
    if credited:
        return credited[0], model
    if c2pa.get("ai_claim") and c2pa.get("generators"):
        return c2pa["generators"][0], model
    return None, model
