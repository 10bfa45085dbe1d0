"""From detector outcomes to one explained verdict; shared by the HTTP service and batch scoring.

Two fusion models share one interface (``predict_proba`` on a dict of the features that exist):

* :class:`RuleFusion`, the documented rule used when no trained model is configured: the mean of the
  calibrated probabilities (``FeatureSpec.probability``) that are present. Missing ones are left out,
  not filled in.
* :class:`TrainedFusion`, an artifact written by ``training/train_fusion.py``: a logistic regression,
  MLP or XGBoost model on the imputed features plus one missing-indicator per feature (the model was
  trained with random detector dropout, so "this detector is down" is an input it has seen), then a
  probability calibration, a threshold chosen for a target false-positive rate, and an uncertain range of probabilities.

:func:`decide` turns the per-detector outcomes into the response body: features, ``fusion_prob``,
``label``, ``threshold``, ``uncertain``, ``reasoning``, ``detectors`` and ``missing``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from models.base import CONTEXT_PREFIX, NO_PROVENANCE, DetectorResult, FeatureSpec

Status = Literal["ok", "failed", "timeout", "skipped"]
ARTIFACT_FORMAT = "imgverify-fusion/1"
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"


@dataclass
class DetectorOutcome:
    """What happened when one detector was asked about one image."""

    name: str
    status: Status
    latency_ms: float | None = None
    version: str | None = None
    result: DetectorResult | None = None
    error: str | None = None

    @classmethod
    def from_result(cls, name: str, result: DetectorResult, version: str, latency_ms: float) -> DetectorOutcome:
        if result.error is not None:
            return cls(name, "failed", latency_ms, version, result, result.error)
        if result.skipped is not None:
            return cls(name, "skipped", latency_ms, version, result, result.skipped)
        return cls(name, "ok", latency_ms, version, result)

    def to_json(self) -> str:
        """A JSON record (artifacts dropped): how batch scoring carries outcomes between stages and caches them."""
        result = self.result
        return json.dumps(
            {
                "name": self.name,
                "status": self.status,
                "latency_ms": self.latency_ms,
                "version": self.version,
                "error": self.error,
                "result": None
                if result is None
                else {
                    "features": result.features,
                    "details": result.details,
                    "evidence": result.evidence,
                    "hard_evidence": result.hard_evidence,
                    "hard_evidence_real": result.hard_evidence_real,
                    "provenance": result.provenance,
                    "error": result.error,
                    "skipped": result.skipped,
                },
            },
            default=_json_default,
        )

    @classmethod
    def from_json(cls, text: str) -> DetectorOutcome:
        record = json.loads(text)
        result = record.pop("result")
        return cls(**record, result=None if result is None else DetectorResult(**result))

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "status": self.status,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
            "version": self.version,
        }
        if self.error:
            report["error"] = self.error
        return report


# ---- fusion models ---------------------------------------------------------------------------------
class FusionModel(Protocol):
    version: str
    features: list[str]
    threshold: float
    uncertain_range: tuple[float, float]  # [low, high): fusion_prob in here is "uncertain"

    def predict_proba(self, features: dict[str, float]) -> float | None: ...

    def contributions(self, features: dict[str, float]) -> dict[str, float] | None: ...


class RuleFusion:
    """Mean of the calibrated probabilities present; ``None`` when there is none."""

    version = "rule-mean-probability/1"
    threshold = 0.5
    uncertain_range = (0.35, 0.65)

    def __init__(self, schema: dict[str, FeatureSpec]):
        self.features = [name for name, spec in schema.items() if spec.probability]

    def predict_proba(self, features: dict[str, float]) -> float | None:
        present = [features[name] for name in self.features if name in features]
        return float(np.mean(present)) if present else None

    def contributions(self, features: dict[str, float]) -> dict[str, float] | None:
        present = {name: features[name] for name in self.features if name in features}
        return {name: value - 0.5 for name, value in present.items()} or None


class SchemaMismatch(ValueError):
    """A fusion artifact whose features do not match the detectors' declared features."""


class TrainedFusion:
    """A fusion artifact (JSON, no pickle): design row -> model -> calibration."""

    def __init__(self, artifact: dict[str, Any], base_dir: Path):
        if artifact.get("format") != ARTIFACT_FORMAT:
            raise SchemaMismatch(f"fusion artifact format {artifact.get('format')!r}, expected {ARTIFACT_FORMAT!r}")
        self.artifact = artifact
        self.version: str = artifact["version"]
        self.features: list[str] = list(artifact["features"])
        self.threshold: float = float(artifact["threshold"])
        low, high = artifact["uncertain_range"]
        self.uncertain_range: tuple[float, float] = (float(low), float(high))
        self.impute = np.asarray(artifact["impute"], dtype=np.float64)
        self.mean = np.asarray(artifact["scaler"]["mean"], dtype=np.float64)
        self.scale = np.asarray(artifact["scaler"]["scale"], dtype=np.float64)
        # The training range of each feature: values outside it are clipped, so a value the model never saw
        # (a feature that was nearly constant in training) cannot be extrapolated into a confident verdict.
        self.low = np.asarray(artifact["scaler"].get("low", [-np.inf] * len(self.features)), dtype=np.float64)
        self.high = np.asarray(artifact["scaler"].get("high", [np.inf] * len(self.features)), dtype=np.float64)
        self.model_type: str = artifact["model_type"]
        if self.model_type == "xgboost":
            import xgboost

            self.booster = xgboost.Booster()
            self.booster.load_model(str(base_dir / artifact["xgboost"]["model_file"]))

    # The same transform is used by training (training/train_fusion.py imports it): one definition.
    def design_matrix(self, rows: list[dict[str, float]]) -> np.ndarray:
        return design_matrix(rows, self.features, self.impute, self.mean, self.scale, (self.low, self.high))

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated P(AI) for each design row."""
        if self.model_type == "logistic":
            coef = np.asarray(self.artifact["logistic"]["coef"], dtype=np.float64)
            return _sigmoid(x @ coef + float(self.artifact["logistic"]["intercept"]))
        if self.model_type == "mlp":
            h = x
            layers = self.artifact["mlp"]["layers"]
            for i, layer in enumerate(layers):
                h = h @ np.asarray(layer["W"], dtype=np.float64) + np.asarray(layer["b"], dtype=np.float64)
                if i < len(layers) - 1:
                    h = np.maximum(h, 0.0)
            return _sigmoid(h[:, 0])
        if self.model_type == "xgboost":
            import xgboost

            return self.booster.predict(xgboost.DMatrix(x))
        raise SchemaMismatch(f"unknown fusion model_type {self.model_type!r}")

    def calibrate(self, p: np.ndarray) -> np.ndarray:
        return apply_calibration(self.artifact["calibration"], p)

    def predict_proba_rows(self, rows: list[dict[str, float]]) -> np.ndarray:
        return self.calibrate(self.raw_scores(self.design_matrix(rows)))

    def predict_proba(self, features: dict[str, float]) -> float | None:
        if not any(name in features for name in self.features):
            return None  # nothing this model reads is present: there is no honest probability to give
        return float(self.predict_proba_rows([features])[0])

    def contributions(self, features: dict[str, float]) -> dict[str, float] | None:
        """Per-feature push towards AI (+) or real (-): exact for logistic, none for the others."""
        if self.model_type != "logistic":
            return None
        coef = np.asarray(self.artifact["logistic"]["coef"], dtype=np.float64)
        x = self.design_matrix([features])[0]
        return {name: float(coef[i] * x[i]) for i, name in enumerate(self.features) if name in features}


def design_matrix(
    rows: list[dict[str, float]],
    features: list[str],
    impute: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    value_range: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """[standardised values, missing indicators]: a missing value is imputed AND flagged, so the model
    sees that it is missing rather than a made-up observation. Values are clipped to ``value_range``
    (the training range) first."""
    values = np.array([[row.get(name, np.nan) for name in features] for row in rows], dtype=np.float64)
    values = values.reshape(len(rows), len(features))
    missing = np.isnan(values)
    values = np.where(missing, impute[None, :], values)
    if value_range is not None:
        values = np.clip(values, value_range[0][None, :], value_range[1][None, :])
    return np.hstack([(values - mean) / scale, missing.astype(np.float64)])


def apply_calibration(calibration: dict[str, Any], p: np.ndarray) -> np.ndarray:
    method = calibration["method"]
    if method == "isotonic":
        return np.interp(p, np.asarray(calibration["x"]), np.asarray(calibration["y"]))
    if method == "platt":
        logit = np.log(np.clip(p, 1e-9, 1 - 1e-9) / np.clip(1 - p, 1e-9, 1))
        return _sigmoid(calibration["a"] * logit + calibration["b"])
    if method == "none":
        return p
    raise SchemaMismatch(f"unknown calibration method {method!r}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def resolve_fusion_path(location: str) -> Path:
    """A fusion artifact's file: ``location`` itself, or a file of that name in ``models/weights``."""
    path = Path(location)
    if not path.is_absolute() and not path.exists():
        path = PACKAGED_WEIGHTS / location
    return path


def load_fusion(location: str | None, schema: dict[str, FeatureSpec]) -> FusionModel:
    """The fusion model for ``location`` (an artifact path, or a file name in ``models/weights``), or the
    rule when ``location`` is None. Refuses an artifact whose features are not the enabled detectors' own."""
    if location is None:
        return RuleFusion(schema)
    path = resolve_fusion_path(location)
    artifact = json.loads(path.read_text())
    model = TrainedFusion(artifact, path.parent)
    problems = []
    for name in model.features:
        spec = schema.get(name)
        saved = artifact.get("feature_specs", {}).get(name, {})
        if spec is None:
            problems.append(f"{name} (no enabled detector produces it)")
        elif not spec.fusion_input:
            problems.append(f"{name} (a container fact, context only: it must never decide a verdict)")
        elif saved and (saved.get("low"), saved.get("high"), saved.get("direction")) != (spec.low, spec.high, spec.direction):
            problems.append(f"{name} (trained with {saved}, declared now as [{spec.low}, {spec.high}] {spec.direction})")
    if problems:
        raise SchemaMismatch(
            f"fusion model {path} does not match the enabled detectors' feature schema: " + "; ".join(problems)
        )
    return model


# ---- the verdict -------------------------------------------------------------------------------------------
@dataclass
class VerdictPolicy:
    threshold: float | None = None  # None: the fusion model's own
    uncertain_range: tuple[float, float] | None = None
    hard_evidence: bool = True  # hard provenance evidence decides the verdict on its own (AI and NON-AI)
    max_reasons: int = 6


def decide(
    outcomes: list[DetectorOutcome],
    fusion: FusionModel,
    schema: dict[str, FeatureSpec],
    policy: VerdictPolicy = VerdictPolicy(),
) -> dict[str, Any]:
    """The response body (without request id and timings) for one image."""
    features: dict[str, float] = {}
    for outcome in outcomes:
        if outcome.status == "ok" and outcome.result is not None:
            features.update(outcome.result.features)
    threshold = fusion.threshold if policy.threshold is None else policy.threshold
    uncertain_range = fusion.uncertain_range if policy.uncertain_range is None else tuple(policy.uncertain_range)
    fusion_prob = fusion.predict_proba(features)
    hard = [s for o in outcomes if o.status == "ok" and o.result for s in o.result.hard_evidence]
    # A trusted camera-capture manifest; the provenance detector already let any trusted AI evidence win over it.
    hard_real = [s for o in outcomes if o.status == "ok" and o.result for s in o.result.hard_evidence_real]

    if policy.hard_evidence and hard:
        # "hard_evidence" is kept for the AI direction: evaluation reports and stored batch outputs count it.
        label, decided_by, uncertain = "AI", "hard_evidence", False
    elif policy.hard_evidence and hard_real:
        label, decided_by, uncertain = "NON-AI", "provenance", False
    elif fusion_prob is None:
        label, decided_by, uncertain = "UNKNOWN", "none", True
    else:
        label = "AI" if fusion_prob >= threshold else "NON-AI"
        decided_by, uncertain = "fusion", uncertain_range[0] <= fusion_prob < uncertain_range[1]

    missing = [o.name for o in outcomes if o.status != "ok"]
    body: dict[str, Any] = {name: round(value, 6) for name, value in features.items()}
    body.update(
        {
            "fusion_prob": None if fusion_prob is None else round(fusion_prob, 6),
            "label": label,
            "threshold": threshold,
            "uncertain": uncertain,
            "decided_by": decided_by,
            "reasoning": _reasoning(outcomes, features, fusion, schema, fusion_prob, threshold, uncertain_range,
                                    hard or hard_real, policy),
            "provenance": next((o.result.provenance for o in outcomes
                                if o.status == "ok" and o.result and o.result.provenance), dict(NO_PROVENANCE)),
            "detectors": {o.name: o.report() for o in outcomes},
            "missing": missing,
            "details": {o.name: o.result.details for o in outcomes if o.status == "ok" and o.result and o.result.details},
            "fusion_model": fusion.version,
        }
    )
    return body


def _reasoning(
    outcomes: list[DetectorOutcome],
    features: dict[str, float],
    fusion: FusionModel,
    schema: dict[str, FeatureSpec],
    fusion_prob: float | None,
    threshold: float,
    uncertain_range: tuple[float, float],
    hard: list[str],
    policy: VerdictPolicy,
) -> list[str]:
    reasons = [f"Provenance: {sentence}" for sentence in hard] if policy.hard_evidence else []
    contributions = fusion.contributions(features) or {}
    for name, push in sorted(contributions.items(), key=lambda kv: -abs(kv[1]))[:3]:
        if abs(push) < 1e-3:
            continue
        spec = schema[name]
        towards = "AI" if push > 0 else "a camera"
        meaning = spec.description.split(". ")[0].rstrip(".")
        reasons.append(f"{name} = {features[name]:.3g} points towards {towards} ({meaning}).")
    evidence = [s for o in outcomes if o.status == "ok" and o.result for s in o.result.evidence if s not in hard]
    # Context sentences (container facts such as a generator-typical size) come last: weak, never a first reason.
    reasons.extend(sorted(evidence, key=lambda sentence: sentence.startswith(CONTEXT_PREFIX)))
    reasons = reasons[: policy.max_reasons]
    if fusion_prob is not None and uncertain_range[0] <= fusion_prob < uncertain_range[1] and not (hard and policy.hard_evidence):
        reasons.append(
            f"fusion_prob {fusion_prob:.2f} lies in the uncertain range [{uncertain_range[0]:.2f}, {uncertain_range[1]:.2f}): "
            f"the evidence is not strong either way (label threshold {threshold:.2f})."
        )
    for outcome in outcomes:
        if outcome.status != "ok":
            reasons.append(f"{outcome.name} not used ({outcome.status}{': ' + outcome.error if outcome.error else ''}).")
    if fusion_prob is None and not hard:
        reasons.append("No detector produced a feature the fusion model reads: no verdict.")
    return reasons


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_safe(value: Any) -> Any:
    """Replace non-finite floats (which JSON cannot carry) with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
