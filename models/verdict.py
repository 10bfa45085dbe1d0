"""The verdict: from the detectors' outcomes for one image to one explained answer.

:class:`Verdict` owns everything that decides: the enabled detectors' feature schema, the fusion model, the
threshold and the uncertain range (the config's override, else the model's own: resolved here and nowhere
else) and whether hard provenance evidence decides on its own. The HTTP ingress, batch scoring, evaluation
and the benches build it once (``AppArgs.verdict()`` from a Serve config, or :meth:`Verdict.build`) and call
:meth:`Verdict.decide`.

:class:`VerdictBody` declares the answer's shape: it is the FastAPI response model (so ``/docs`` shows it)
and the batch Parquet schema is derived from it (``deployments.data.output_schema``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.base import CONTEXT_PREFIX, NO_PROVENANCE, FeatureSpec
from models.fusion import DetectorOutcome, FusionModel, Status, load_fusion
from models.image_input import WARNING_SENTENCES
from models.registry import feature_owner, feature_schema
from models.schema import entry_of

Label = Literal["AI", "NON-AI", "UNKNOWN"]
# "fusion": a trained, calibrated fusion model; "rule": the uncalibrated mean a config asked for explicitly.
DecidedBy = Literal["fusion", "rule", "hard_evidence", "provenance", "none"]
# What a detector can do to the verdict, derived from the fusion model's features: "fusion input" (the model reads
# its features), "hard evidence" (it does not, but the detector's provenance evidence settles a verdict alone) or
# "context" (reported and explained, it cannot move the verdict: e.g. production's heavier detectors until a
# fusion trained with them exists).
Role = Literal["fusion input", "hard evidence", "context"]
FUSION_INPUT: Role = "fusion input"
# 1 when the file's metadata names an AI generator without a signature (EXIF Software, XMP CreatorTool, ...).
UNSIGNED_AI_CLAIM = "metadata_ai_claim"
HARD_EVIDENCE: Role = "hard evidence"
CONTEXT: Role = "context"


def check_threshold_in_range(
    threshold: float, uncertain_range: tuple[float, float], threshold_from: str = "config", range_from: str = "config"
) -> None:
    """Refuse a threshold outside its uncertain range [low, high]: a fusion_prob on the far side of the threshold
    but outside the range would get a confident label that contradicts the range (threshold 0.97 with
    [0.2, 0.955): 0.96 is "NON-AI", ``uncertain: false``). ``*_from``: "config" or "model", named in the error."""
    low, high = uncertain_range
    if not low <= threshold <= high:
        named = {"config": "the config's fusion.{}", "model": "the fusion model's {}"}
        raise ValueError(
            f"threshold {threshold:g} ({named.get(threshold_from, '{}').format('threshold')}) lies outside the "
            f"uncertain range [{low:g}, {high:g}) ({named.get(range_from, '{}').format('uncertain_range')}): a "
            "fusion_prob between the two would get a confident label from the wrong side of the threshold; "
            "set them so that low <= threshold <= high"
        )


class Verdict:
    """Feature schema + fusion model + the policy that turns ``fusion_prob`` into a label."""

    def __init__(
        self,
        schema: dict[str, FeatureSpec],
        fusion: FusionModel,
        threshold: float | None = None,
        uncertain_range: tuple[float, float] | None = None,
        hard_evidence: bool = True,
        max_reasons: int = 6,
    ):
        self.schema = schema
        self.fusion = fusion
        # None means "the fusion model's own"; a configured value (0.0 included) wins.
        self.threshold_from = "model" if threshold is None else "config"
        self.threshold = float(fusion.threshold if threshold is None else threshold)
        low, high = fusion.uncertain_range if uncertain_range is None else uncertain_range
        self.uncertain_range = (float(low), float(high))
        check_threshold_in_range(
            self.threshold, self.uncertain_range, self.threshold_from, "model" if uncertain_range is None else "config"
        )
        self.hard_evidence = hard_evidence  # hard provenance evidence decides on its own (AI and NON-AI)
        self.max_reasons = max_reasons
        self.roles = detector_roles(schema, fusion.features, hard_evidence)
        self.unfamiliar: tuple[str, float] | None = getattr(fusion, "unfamiliar", None)

    @classmethod
    def build(
        cls,
        detectors: list[str],
        model: str | None = None,
        threshold: float | None = None,
        uncertain_range: tuple[float, float] | None = None,
        hard_evidence: bool = True,
    ) -> Verdict:
        """The verdict of these enabled detectors with the fusion artifact ``model`` (``"rule"``: the uncalibrated mean,
        asked for explicitly; None is refused: :class:`models.fusion.FusionNotConfigured`)."""
        schema = feature_schema(detectors)
        return cls(schema, load_fusion(model, schema), threshold, uncertain_range, hard_evidence)

    @property
    def features(self) -> list[str]:
        """Every feature the enabled detectors report (the fusion model reads a subset)."""
        return list(self.schema)

    def describe(self) -> dict[str, Any]:
        """How a verdict is read: for ``/v1/detectors``, ``/v1/config`` and evaluation reports."""
        return {
            "model": self.fusion.version,
            "kind": self.fusion.kind,  # "trained" or "rule"
            "calibrated": self.fusion.calibrated,
            "features": list(self.fusion.features),
            "detectors": dict(self.roles),  # detector -> "fusion input", "hard evidence" or "context"
            "threshold": self.threshold,
            "threshold_from": self.threshold_from,
            "uncertain_range": list(self.uncertain_range),
            "unfamiliar": None
            if self.unfamiliar is None
            else {"feature": self.unfamiliar[0], "from": self.unfamiliar[1]},
            "hard_evidence": self.hard_evidence,
        }

    def is_uncertain(self, fusion_prob: float) -> bool:
        return self.uncertain_range[0] <= fusion_prob < self.uncertain_range[1]

    def is_unfamiliar(self, features: dict[str, float]) -> bool:
        """The image is unlike the images the fusion's detectors were trained on: no confident verdict from them."""
        return self.unfamiliar is not None and features.get(self.unfamiliar[0], -1.0) >= self.unfamiliar[1]

    def is_contradicted(self, label: str, features: dict[str, float]) -> bool:
        """A NON-AI lean while the file's own (unsigned) metadata names an AI generator: the claim decides nothing
        alone, and neither does the pixel model against it, so the verdict is never a confident NON-AI."""
        return label == "NON-AI" and features.get(UNSIGNED_AI_CLAIM, 0.0) >= 1.0

    def decide(self, outcomes: list[DetectorOutcome], warnings: list[str] | None = None) -> dict[str, Any]:
        """The response body (without request id, image summary and timings) for one image; ``warnings``: the
        decoded image's (``DecodedImage.warnings``, e.g. "truncated_image"), carried and explained."""
        features: dict[str, float] = {}
        for outcome in outcomes:
            if outcome.status == "ok" and outcome.result is not None:
                features.update(outcome.result.features)
        fusion_prob = self.fusion.predict_proba(features)
        hard = [s for o in outcomes if o.status == "ok" and o.result for s in o.result.hard_evidence]
        # A trusted camera-capture manifest; the provenance detector already let any trusted AI evidence win.
        hard_real = [s for o in outcomes if o.status == "ok" and o.result for s in o.result.hard_evidence_real]

        contradicted = False  # a fusion NON-AI beside an unsigned AI claim (is_contradicted)
        if self.hard_evidence and hard:
            # "hard_evidence" is kept for the AI direction: evaluation reports and stored batch outputs count it.
            label, decided_by, uncertain = "AI", "hard_evidence", False
        elif self.hard_evidence and hard_real:
            label, decided_by, uncertain = "NON-AI", "provenance", False
        elif fusion_prob is None:
            label, decided_by, uncertain = "UNKNOWN", "none", True
        else:
            label = "AI" if fusion_prob >= self.threshold else "NON-AI"
            decided_by = "rule" if self.fusion.kind == "rule" else "fusion"
            contradicted = self.is_contradicted(label, features)
            uncertain = self.is_uncertain(fusion_prob) or self.is_unfamiliar(features) or contradicted

        provenance = next(
            (o.result.provenance for o in outcomes if o.status == "ok" and o.result and o.result.provenance),
            dict(NO_PROVENANCE),
        )
        warnings = list(warnings or [])
        plain = self._plain(outcomes, label, decided_by, uncertain, fusion_prob, provenance, hard, contradicted)
        technical = self._reasoning(outcomes, features, fusion_prob, hard or hard_real, decided_by)
        body: dict[str, Any] = {name: round(value, 6) for name, value in features.items()}
        body.update(
            {
                "fusion_prob": None if fusion_prob is None else round(fusion_prob, 6),
                "label": label,
                "threshold": self.threshold,
                "uncertain_range": list(self.uncertain_range),
                "uncertain": uncertain,
                "decided_by": decided_by,
                "reasoning": [plain, *(WARNING_SENTENCES.get(w, w) for w in warnings), *technical],
                "warnings": warnings,
                "provenance": provenance,
                "detectors": {o.name: {**o.report(), "role": self.roles.get(o.name, CONTEXT)} for o in outcomes},
                "missing": [o.name for o in outcomes if o.status != "ok"],
                "details": {
                    o.name: o.result.details for o in outcomes if o.status == "ok" and o.result and o.result.details
                },
                "fusion_model": self.fusion.version,
            }
        )
        return body

    def _plain(
        self,
        outcomes: list[DetectorOutcome],
        label: str,
        decided_by: str,
        uncertain: bool,
        fusion_prob: float | None,
        provenance: dict[str, Any],
        hard: list[str],
        contradicted: bool = False,
    ) -> str:
        """The verdict in one sentence a reader without the technical terms follows: what decided (provenance, the
        pixel models, nothing), how sure, and which detectors that matter did not answer."""
        if decided_by == "hard_evidence":
            return made_by_sentence(provenance, hard)
        if decided_by == "provenance":
            device, signer = provenance.get("device") or "a camera", provenance.get("signer") or "its signer"
            then = ", then edited without AI" if provenance.get("kind") == "edited" else ""
            return (
                f"Taken by a camera: the file carries a C2PA claim signed by {signer} (on the trust list) that "
                f"{device} captured it{then}."
            )
        absent = [o.name for o in outcomes if o.status != "ok" and self.roles.get(o.name) == FUSION_INPUT]
        unanswered = f" ({_names(absent)} did not answer)" if absent else ""
        if fusion_prob is None:
            return f"No verdict: none of the detectors the verdict reads answered{unanswered}."
        answered = [o.name for o in outcomes if o.status == "ok" and self.roles.get(o.name) == FUSION_INPUT]
        if decided_by == "rule":
            who, finds = "the detectors' plain average (not a calibrated model)", "finds"
        elif all(not entry_of(name).hard_evidence for name in answered):
            who, finds = ("the pixel model", "finds") if len(answered) == 1 else ("the pixel models", "find")
        else:
            who, finds = "the detectors", "find"
        claim = self._claim(outcomes, provenance)
        lean = f"{'a generator' if label == 'AI' else 'a camera'} (P(AI) {fusion_prob:.2f})"
        if uncertain and self.is_uncertain(fusion_prob):
            return (
                f"Uncertain: {who} leans towards {lean}{unanswered}, not far enough for a confident verdict, and "
                f"{claim}."
            )
        if uncertain and contradicted:
            return (
                f"Uncertain: {who} {finds} no generator traces (P(AI) {fusion_prob:.2f}){unanswered}, but the file's "
                f"own {SOURCE_WORDS.get(provenance.get('source') or '', 'metadata')} names an AI generator: an "
                "unsigned claim that proves nothing alone, and the pixels do not outweigh it."
            )
        if uncertain:
            return (
                f"Uncertain: the image is unlike the images {who} learnt from, so the lean towards {lean}"
                f"{unanswered} is no evidence, and {claim}."
            )
        if label == "AI":
            return f"Looks AI-generated: {who} {finds} generator traces{unanswered}, and {claim}."
        return f"Looks like a camera photo: {who} {finds} no generator traces{unanswered}, and {claim}."

    def _claim(self, outcomes: list[DetectorOutcome], provenance: dict[str, Any]) -> str:
        """What the file says about its origin, for the plain sentence (a verdict the pixels decided)."""
        readers = [o for o in outcomes if entry_of(o.name).hard_evidence]  # the detectors that read provenance
        if not readers:
            return "no enabled detector reads the file's own claims about its origin"
        unread = [o.name for o in readers if o.status != "ok"]
        if unread:
            which = "which reads" if len(unread) == 1 else "which read"
            return f"{_names(unread)}, {which} the file's own claims about its origin, did not answer"
        if provenance.get("kind", "none") == "none":
            return "the file makes no provenance claim"
        source = SOURCE_WORDS.get(provenance.get("source") or "", "metadata")
        return f"its {source} claim ('{provenance['kind']}') is not proof on its own"

    def _reasoning(
        self,
        outcomes: list[DetectorOutcome],
        features: dict[str, float],
        fusion_prob: float | None,
        hard: list[str],
        decided_by: str,
    ) -> list[str]:
        reasons = [f"Provenance: {sentence}" for sentence in hard] if self.hard_evidence else []
        contributions = self.fusion.contributions(features) or {}
        for name, push in sorted(contributions.items(), key=lambda kv: -abs(kv[1]))[:3]:
            if abs(push) < 1e-3:
                continue
            towards = "AI" if push > 0 else "a camera"
            meaning = self.schema[name].description.split(". ")[0].rstrip(".")
            reasons.append(f"{name} = {features[name]:.3g} points towards {towards} ({meaning}).")
        evidence = [s for o in outcomes if o.status == "ok" and o.result for s in o.result.evidence if s not in hard]
        # Context sentences (container facts such as a generator-typical size) come last: weak, never a first reason.
        reasons.extend(sorted(evidence, key=lambda sentence: sentence.startswith(CONTEXT_PREFIX)))
        reasons = reasons[: self.max_reasons]
        if decided_by == "rule":  # after the cut: how to read this verdict is never left out
            used = [name for name in self.fusion.features if name in features]
            reasons.append(
                f"fusion_prob {fusion_prob:.2f} is the plain mean of the probabilities present ({', '.join(used)}), "
                "not a trained, calibrated fusion model (fusion.model: rule): read it as an uncalibrated score; "
                f"the threshold {self.threshold:.2f} is a convention, not a measured error rate."
            )
        if fusion_prob is not None and self.is_uncertain(fusion_prob) and not (hard and self.hard_evidence):
            low, high = self.uncertain_range
            if fusion_prob >= self.threshold:
                reasons.append(
                    f"fusion_prob {fusion_prob:.2f} is at or above the label threshold {self.threshold:.2f} (AI), but "
                    f"an AI verdict is confident only from {high:.2f}: photos from collections unlike the training "
                    "data can score this high, so this is a lead, not a finding."
                )
            else:
                reasons.append(
                    f"fusion_prob {fusion_prob:.2f} is below the label threshold {self.threshold:.2f} (NON-AI), but a "
                    f"NON-AI verdict is confident only below {low:.2f}: images of generators unlike the training data "
                    "can score this low, so no evidence of AI was found, which does not prove a camera took it."
                )
        elif fusion_prob is not None and self.is_unfamiliar(features) and not (hard and self.hard_evidence):
            name, bound = self.unfamiliar
            reasons.append(
                f"{name} = {features[name]:.2f} (from {bound:.2f} on, uncertain): the image is unlike the images the "
                "detectors were trained on, so their probability is an extrapolation, not evidence."
            )
        for outcome in outcomes:
            if outcome.status != "ok":
                reasons.append(
                    f"{outcome.name} not used ({outcome.status}{': ' + outcome.error if outcome.error else ''})."
                )
        if fusion_prob is None and not hard:
            reasons.append("No detector produced a feature the fusion model reads: no verdict.")
        return reasons


# How the plain sentence names where a provenance claim was found (``Provenance.source``).
SOURCE_WORDS = {
    "c2pa": "C2PA",
    "xmp": "XMP metadata",
    "exif": "EXIF metadata",
    "png_text": "PNG text metadata",
    "iptc": "IPTC metadata",
    "comment": "JPEG comment",
    "watermark": "watermark",
}


def made_by_sentence(provenance: dict[str, Any], hard: list[str]) -> str:
    """The plain sentence of a verdict hard provenance evidence decided (AI)."""
    made = "Edited with a generator" if provenance.get("kind") == "ai_edited" else "Made by a generator"
    generator, signer = provenance.get("generator"), provenance.get("signer")
    did = "edited it" if provenance.get("kind") == "ai_edited" else "made it"
    if provenance.get("source") == "c2pa" and signer:
        listed = "" if provenance.get("trusted") else " (a signer not on the C2PA trust list)"
        what = f" that {generator} {did}" if generator else ""
        return f"{made}: the file carries a signed C2PA claim from {signer}{listed}{what}."
    if generator:
        where = SOURCE_WORDS.get(provenance.get("source") or "", "metadata")
        return f"{made}: the file's {where} says {generator} {did}."
    return f"{made}: the file says so itself ({hard[0]})."


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def detector_roles(schema: dict[str, FeatureSpec], fusion_features: list[str], hard_evidence: bool) -> dict[str, Role]:
    """Each enabled detector (in schema order): a "fusion input" when the fusion model reads one of its features;
    else "hard evidence" when its provenance evidence decides alone (and the config lets it); else "context":
    reported and explained, but it cannot move the verdict."""
    read = set(fusion_features)
    owners: dict[str, bool] = {}  # detector -> the fusion reads one of its features
    for name in schema:
        owner = feature_owner(name)
        owners[owner] = owners.get(owner, False) or name in read
    roles: dict[str, Role] = {}
    for owner, is_input in owners.items():
        if is_input:
            roles[owner] = FUSION_INPUT
        elif hard_evidence and entry_of(owner).hard_evidence:
            roles[owner] = HARD_EVIDENCE
        else:
            roles[owner] = CONTEXT
    return roles


# ---- the declared shape of the answer ---------------------------------------------------------------------
class DetectorReport(BaseModel):
    """How one detector's call went."""

    status: Status
    latency_ms: float | None = Field(None, description="as seen by the caller: queueing and batching included")
    version: str | None = Field(None, description="weights and code version; changes when the answer may change")
    error: str | None = Field(None, description="why the detector is missing (failed / timeout / skipped)")
    role: Role | None = Field(
        None,
        description="'fusion input': the fusion model reads its features; 'hard evidence': it does not, but the "
        "detector's provenance evidence decides a verdict alone; 'context': reported only, it cannot move the verdict "
        "(a heavier detector until a fusion trained with it exists)",
    )


class Provenance(BaseModel):
    """What the file declares about its own origin (C2PA, XMP, EXIF, PNG text, AIGC label, watermark)."""

    model_config = ConfigDict(extra="allow")  # detector-specific extras stay visible

    kind: Literal["generated", "ai_edited", "captured", "edited", "none"]
    trusted: bool = Field(description="a valid manifest signed by a certificate on the configured trust list")
    signer: str | None = None
    generator: str | None = None
    source: str | None = Field(None, description="c2pa | xmp | exif | png_text | watermark | ...")
    conflicts: list[str] = Field(default_factory=list)
    device: str | None = None


class VerdictBody(BaseModel):
    """One image's verdict. Besides these fields, every feature an enabled detector reported is a top-level
    number (``GET /v1/detectors`` lists them with their meaning); a missing detector's features are absent."""

    model_config = ConfigDict(extra="allow")

    fusion_prob: float | None = Field(
        description="calibrated P(AI) from the trained fusion model (decided_by 'rule': an uncalibrated mean); "
        "null: no usable feature"
    )
    label: Label
    threshold: float = Field(description="fusion_prob at or above it is labelled AI")
    uncertain_range: list[float] = Field(
        description="[low, high): a fusion_prob in it gets no confident verdict; with the threshold, what a stored "
        "verdict is re-checked against"
    )
    uncertain: bool = Field(
        description="no confident verdict: fusion_prob lies in the uncertain range, or the image is unlike the "
        "training images (the reasoning says which)"
    )
    decided_by: DecidedBy = Field(
        description="fusion (the trained, calibrated fusion model), rule (the uncalibrated mean of the detectors' "
        "calibrated probabilities, where the config asks for it: fusion.model rule), hard_evidence (provenance proves "
        "AI), provenance (a trusted camera capture proves NON-AI) or none"
    )
    reasoning: list[str] = Field(
        description="first one plain sentence (what decided, how sure, what did not answer), then the damage the "
        "file has (see warnings), then the technical reasons, strongest first; context sentences last"
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="damage the file has that did not stop it being scored, e.g. truncated_image (its data ends "
        "early; the decoder filled in at most 5% of the pixel rows); the reasoning explains each",
    )
    provenance: Provenance
    detectors: dict[str, DetectorReport]
    missing: list[str] = Field(description="detectors that did not answer; their features are not invented")
    details: dict[str, dict[str, Any]] = Field(description="per-detector details (regions, metadata found, ...)")
    fusion_model: str = Field(description="version of the fusion model")
