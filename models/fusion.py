"""Detector outcomes and the fusion models that turn their features into one probability.

Two fusion models share one interface (``predict_proba`` on a dict of the features that exist):

* :class:`TrainedFusion`, an artifact written by ``training/train_fusion.py``: a logistic regression,
  MLP or XGBoost model on the imputed features plus one missing-indicator per feature (the model was
  trained with random detector dropout, so "this detector is down" is an input it has seen), then a
  probability calibration, a threshold chosen for a target false-positive rate, and an uncertain range of probabilities.
* :class:`RuleFusion`, only where a config asks for it by name (``fusion: {model: rule}``): the plain mean of the
  calibrated probabilities (``FeatureSpec.probability``) that are present, with a fixed 0.5 threshold. It is not
  trained nor calibrated as a whole, so the verdict says so (``decided_by: rule``). A config that names no fusion
  model is refused (:class:`FusionNotConfigured`): nothing uncalibrated decides by default.

:class:`models.verdict.Verdict` turns the per-detector outcomes into the explained response body.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from models.base import DetectorResult, FeatureSpec

Status = Literal["ok", "failed", "timeout", "skipped"]
ARTIFACT_FORMAT = "imgverify-fusion/1"
RULE = "rule"  # fusion.model that asks for RuleFusion explicitly
FusionKind = Literal["trained", "rule"]
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

    @classmethod
    def timed_out(cls, name: str, timeout_s: float) -> DetectorOutcome:
        """No answer within the detector's ``timeout_s``: the same outcome over HTTP and in batch scoring."""
        return cls(name, "timeout", timeout_s * 1000, error=f"no answer within {timeout_s} s")

    @classmethod
    def raised(cls, name: str, err: BaseException, latency_ms: float) -> DetectorOutcome:
        """The call itself raised (not one image failing inside ``predict``): reported as failed, never invented."""
        return cls(name, "failed", latency_ms, error=f"{type(err).__name__}: {err}"[:500])

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
    kind: FusionKind
    features: list[str]
    threshold: float
    uncertain_range: tuple[float, float]  # [low, high): fusion_prob in here is "uncertain"

    @property
    def calibrated(self) -> bool: ...

    def predict_proba(self, features: dict[str, float]) -> float | None: ...

    def contributions(self, features: dict[str, float]) -> dict[str, float] | None: ...


class RuleFusion:
    """Mean of the calibrated probabilities present; ``None`` when there is none. Explicit only
    (``fusion: {model: rule}``): the mean itself was never calibrated, and 0.5 is a convention, not a measured rate."""

    version = "rule-mean-probability/1"
    kind: FusionKind = "rule"
    calibrated = False
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


class FusionNotConfigured(ValueError):
    """A config that names no fusion model: the uncalibrated rule is never a silent default."""


NO_FUSION_MESSAGE = (
    "fusion.model is not set. Name a trained fusion artifact (a path, or a file in models/weights, written by "
    "`imgverify train fusion`), e.g. `fusion: {model: fusion_local.json}`; or ask for the uncalibrated mean of the "
    f"detectors' calibrated probabilities explicitly with `fusion: {{model: {RULE}}}` (verdicts then say "
    f"decided_by: {RULE})."
)


class TrainedFusion:
    """A fusion artifact (JSON, no pickle): design row -> model -> calibration."""

    kind: FusionKind = "trained"

    def __init__(self, artifact: dict[str, Any], base_dir: Path):
        if artifact.get("format") != ARTIFACT_FORMAT:
            raise SchemaMismatch(f"fusion artifact format {artifact.get('format')!r}, expected {ARTIFACT_FORMAT!r}")
        self.artifact = artifact
        self.version: str = artifact["version"]
        self.features: list[str] = list(artifact["features"])
        self.threshold: float = float(artifact["threshold"])
        low, high = artifact["uncertain_range"]
        self.uncertain_range: tuple[float, float] = (float(low), float(high))
        # A context feature saying how unlike the training images an image is, and the value from which the verdict
        # is never confident (written by `imgverify train leave-out-policy`); None: no such rule.
        unfamiliar = artifact.get("unfamiliar")
        self.unfamiliar: tuple[str, float] | None = (
            None if unfamiliar is None else (str(unfamiliar["feature"]), float(unfamiliar["from"]))
        )
        self.impute = np.asarray(artifact["impute"], dtype=np.float64)
        self.mean = np.asarray(artifact["scaler"]["mean"], dtype=np.float64)
        self.scale = np.asarray(artifact["scaler"]["scale"], dtype=np.float64)
        # The training range of each feature: values outside it are clipped, so a value the model never saw
        # (a feature that was nearly constant in training) cannot be extrapolated into a confident verdict.
        self.low = np.asarray(artifact["scaler"].get("low", [-np.inf] * len(self.features)), dtype=np.float64)
        self.high = np.asarray(artifact["scaler"].get("high", [np.inf] * len(self.features)), dtype=np.float64)
        # Calibrated probabilities read on their logit scale (artifacts before this key read every feature as is).
        self.logit = np.asarray(artifact["scaler"].get("logit", [False] * len(self.features)), dtype=bool)
        self.model_type: str = artifact["model_type"]
        if self.model_type == "xgboost":
            import xgboost

            self.booster = xgboost.Booster()
            self.booster.load_model(str(base_dir / artifact["xgboost"]["model_file"]))

    @property
    def calibrated(self) -> bool:
        """Whether held-out data calibrated its probabilities (what ``imgverify train fusion`` always does)."""
        return self.artifact["calibration"]["method"] != "none"

    # The same transform is used by training (training/train_fusion.py imports it): one definition.
    def design_matrix(self, rows: list[dict[str, float]]) -> np.ndarray:
        return design_matrix(rows, self.features, self.impute, self.mean, self.scale, (self.low, self.high), self.logit)

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
    logit: np.ndarray | None = None,
) -> np.ndarray:
    """[standardised values, missing indicators]: a missing value is imputed AND flagged, so the model
    sees that it is missing rather than a made-up observation. Values are clipped to ``value_range``
    (the training range) first; the features flagged in ``logit`` (calibrated probabilities) are then read on their
    logit scale, so that a linear model of them can reach a confident probability (on the probability scale a
    logistic fusion's output stays inside a narrow band, whatever its inputs say)."""
    values = np.array([[row.get(name, np.nan) for name in features] for row in rows], dtype=np.float64)
    values = values.reshape(len(rows), len(features))
    missing = np.isnan(values)
    values = np.where(missing, impute[None, :], values)
    if value_range is not None:
        values = np.clip(values, value_range[0][None, :], value_range[1][None, :])
    if logit is not None and logit.any():
        values[:, logit] = probability_logit(values[:, logit])
    return np.hstack([(values - mean) / scale, missing.astype(np.float64)])


def probability_logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), with p kept within [1e-6, 1 - 1e-6] (a head's float32 output can be exactly 0 or 1)."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


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


def artifact_features(location: str) -> list[str]:
    """The features a fusion artifact reads, without building its model (``load_profile`` checks them)."""
    path = resolve_fusion_path(location)
    try:
        return list(json.loads(path.read_text())["features"])
    except FileNotFoundError:
        raise FileNotFoundError(f"fusion.model {location!r}: no such file ({path})") from None


def unrun_detectors(features: list[str], detectors: list[str]) -> dict[str, list[str]]:
    """``{detector: [its features]}`` for the features that come from a detector not in ``detectors``."""
    from models.registry import feature_owner

    missing: dict[str, list[str]] = {}
    for name in features:
        try:
            owner = feature_owner(name)
        except KeyError:
            owner = "(no registered detector)"
        if owner not in detectors:
            missing.setdefault(owner, []).append(name)
    return missing


def load_fusion(location: str | None, schema: dict[str, FeatureSpec]) -> FusionModel:
    """The fusion model for ``location``: an artifact path (or a file name in ``models/weights``), or ``"rule"``.
    Refuses ``None`` (no silent rule) and an artifact whose features are not the enabled detectors' own."""
    if location is None:
        raise FusionNotConfigured(NO_FUSION_MESSAGE)
    if location == RULE:
        return RuleFusion(schema)
    path = resolve_fusion_path(location)
    artifact = json.loads(path.read_text())
    model = TrainedFusion(artifact, path.parent)
    problems = []
    for name in model.features:
        spec = schema.get(name)
        saved = artifact.get("feature_specs", {}).get(name, {})
        if spec is None:
            owner = next(iter(unrun_detectors([name], [])))
            problems.append(f"{name} (from detector {owner}, which is not enabled)")
        elif not spec.fusion_input:
            problems.append(f"{name} (a container fact, context only: it must never decide a verdict)")
        elif saved and (saved.get("low"), saved.get("high"), saved.get("direction")) != (
            spec.low,
            spec.high,
            spec.direction,
        ):
            problems.append(
                f"{name} (trained with {saved}, declared now as [{spec.low}, {spec.high}] {spec.direction})"
            )
    if problems:
        raise SchemaMismatch(
            f"fusion model {path} does not match the enabled detectors' feature schema: " + "; ".join(problems)
        )
    return model


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
