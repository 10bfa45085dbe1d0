"""Step 4 of training: the fusion meta-model, calibrated, with its threshold and uncertain band.

    imgverify train fusion FEATURES.parquet --out models/weights/fusion_local.json
        [--model logistic|xgboost|mlp] [--calibration auto|isotonic|platt] [--target-fpr 0.05]
        [--confidence 0.8] [--confident-fpr 0.01] [--dropout 0.15] [--config serve_config.local.yaml]
        [--cross-fitted runs/cross_fit/clip_b16.parquet ...]

FEATURES comes from ``imgverify features extract`` (rows with a ``split`` column). The model is fitted on
``train``; probabilities are calibrated on ``val``, where the threshold is also chosen (the one that
flags at most ``target_fpr`` of the real images); ``test`` is only reported, never tuned on. Because the
probabilities are calibrated, "uncertain" is a range of them: a verdict is confident only where the
calibrated P(AI) is below ``1 - confidence`` or at least ``confidence`` (the threshold always inside), and an AI
verdict is confident only above the score that at most ``confident_fpr`` of the validation photos reach.

The missing-feature path is trained, not improvised: every feature gets a missing indicator, and the
training rows are repeated with whole detectors randomly dropped (``--dropout``), so a detector that is
down at serve time is a situation the model has seen. The artifact is JSON (plus XGBoost's own JSON
for ``xgboost``): the feature schema it was trained on, detector versions, the training-data hash and
the metrics. ``models.fusion.load_fusion`` refuses it if the live feature schema differs.

A detector fitted on the train split itself (clip_b16's head, effnet_artifact) scores the train rows in-sample;
``--cross-fitted`` replaces those values with out-of-fold ones (``training/cross_fit.py``), so the fusion learns
how much to trust it from scores it would give on images it never saw.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import models
from deployments.config import load_profile
from models.fusion import ARTIFACT_FORMAT, TrainedFusion, apply_calibration, design_matrix, probability_logit
from training.cross_fit import TRAINED_FEATURES, apply_cross_fitted
from training.dataset import check_two_classes, training_data_hash
from training.features import DEFAULT_CONFIG, feature_rows
from training.folds import variant_of
from training.metrics import binary_metrics, bound_for_miss, source_weights, threshold_for_fpr

MODEL_TYPES = ("logistic", "xgboost", "mlp")


@dataclass(frozen=True)
class FusionSettings:
    """How a fusion is fitted and tuned. Saved in the artifact (``training.settings``), so that
    ``imgverify evaluate --leave-out`` refits each leave-out fold exactly as the shipped artifact was trained."""

    kind: str = "logistic"
    # The features it reads; empty: every fusion-input feature of the detectors that varies on the train split.
    features: tuple[str, ...] = ()
    calibration: str = "auto"  # auto | isotonic | platt
    target_fpr: float = 0.05  # the threshold flags at most this share of the validation photos
    confidence: float = 0.8  # confident only below 1 - confidence or at / above confidence ...
    confident_fpr: float = 0.01  # ... and an AI verdict only above the score this share of validation photos reach ...
    confident_miss: float = 1.0  # ... and a NON-AI verdict only below the score this share of validation AI reach
    # "rows": every validation row weighs the same; "sources": every source (one generator family or photo
    # collection) weighs the same within its class, in calibration, threshold and bounds alike.
    weighting: str = "rows"
    # Calibrated probability features (``FeatureSpec.probability``) enter the model as logits: on the probability
    # scale, a logistic fusion of clip_b16_prob alone could never leave [0.03, 0.97], inside the confident bounds.
    probabilities_as_logits: bool = True
    dropout: float = 0.15  # per-detector drop rate in the training copies
    dropout_copies: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MODEL_TYPES:
            raise ValueError(f"unknown model {self.kind!r}; use one of {MODEL_TYPES}")
        if self.weighting not in ("rows", "sources"):
            raise ValueError(f"weighting must be 'rows' or 'sources', got {self.weighting!r}")


# ---- pieces, each testable on its own ------------------------------------------------------------
def detector_dropout(
    rows: list[dict[str, float]], groups: dict[str, list[str]], rate: float, copies: int, rng: np.random.Generator
) -> list[dict[str, float]]:
    """``copies`` extra copies of ``rows`` in which each detector's features vanish with probability ``rate``."""
    out = []
    for _ in range(copies):
        for row in rows:
            dropped = {f for feats in groups.values() if rng.random() < rate for f in feats}
            out.append({k: v for k, v in row.items() if k not in dropped})
    return out


def fit_calibration(raw: np.ndarray, y: np.ndarray, method: str, weights: np.ndarray | None = None) -> dict[str, Any]:
    """Map raw scores to probabilities on held-out data: isotonic (monotone steps) or Platt (a logistic
    curve on the score's logit, better when there are few held-out images); ``weights`` per row. Both are
    non-decreasing: a higher score never means a lower P(AI)."""
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y, sample_weight=weights)
        return {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        logit = np.log(np.clip(raw, 1e-9, 1 - 1e-9) / np.clip(1 - raw, 1e-9, 1)).reshape(-1, 1)
        platt = LogisticRegression(C=1e6).fit(logit, y, sample_weight=weights)
        a, b = float(platt.coef_[0, 0]), float(platt.intercept_[0])
        if a <= 0:
            # Higher scores are not more often AI on this data: a calibration must never turn the model round, so
            # every score gets the base rate (and the verdict is as uncertain as the data says it should be).
            share = float(np.average(y, weights=weights))
            a, b = 0.0, float(np.log(max(share, 1e-9) / max(1 - share, 1e-9)))
        return {"method": "platt", "a": a, "b": b}
    raise ValueError(f"unknown calibration {method!r}; use isotonic or platt")


def fit_model(kind: str, x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    """Fit one of the three model types; return its part of the artifact (plain arrays, no pickle)."""
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=0.5, max_iter=5000, class_weight="balanced").fit(x, y)
        return {"logistic": {"coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0])}}
    if kind == "mlp":
        from sklearn.neural_network import MLPClassifier

        model = MLPClassifier(
            hidden_layer_sizes=(32, 16), alpha=1e-3, max_iter=2000, early_stopping=True, random_state=seed
        )
        model.fit(x, y)
        layers = [{"W": w.tolist(), "b": b.tolist()} for w, b in zip(model.coefs_, model.intercepts_)]
        return {"mlp": {"layers": layers, "activation": "relu"}}
    if kind == "xgboost":
        import xgboost

        positive = max(1, int(y.sum()))
        model = xgboost.XGBClassifier(
            n_estimators=300,
            max_depth=3,
            learning_rate=0.05,
            subsample=0.8,
            colsample_bytree=0.8,
            scale_pos_weight=(len(y) - positive) / positive,
            random_state=seed,
            n_jobs=2,
        ).fit(x, y)
        return {"_booster": model.get_booster()}
    raise ValueError(f"unknown model {kind!r}; use one of {MODEL_TYPES}")


def uncertain_range(
    threshold: float, confidence: float, confident_ai_from: float = 0.0, confident_real_below: float = 1.0
) -> list[float]:
    """[low, high) of calibrated P(AI) reported as uncertain, always holding the threshold. ``confident_ai_from``
    raises the upper end further (an AI verdict is confident only where almost no validation photo scores);
    ``confident_real_below`` lowers the lower end (a NON-AI verdict is confident only where few AI images score)."""
    return [min(1.0 - confidence, threshold, confident_real_below), max(confidence, threshold, confident_ai_from)]


# ---- the whole step ------------------------------------------------------------------------------
def train_fusion(
    table: pa.Table,
    detectors: list[str],
    out: Path,
    settings: FusionSettings | None = None,
    command: str = "",
    cross_fitted: tuple[Path, ...] = (),
    **overrides: Any,
) -> dict[str, Any]:
    """Fit, calibrate, choose the threshold, measure, and write the artifact to ``out``. ``cross_fitted``: files
    of out-of-fold features (``training.cross_fit``), used in place of the in-sample ones. ``overrides`` replace
    fields of ``settings`` (``kind="xgboost"``, ``dropout=0.3``, ...)."""
    settings = replace_settings(settings or FusionSettings(), overrides)
    read = _fusion_schema(detectors, settings.features)
    trained_here = [name for d in detectors for name in TRAINED_FEATURES.get(d, []) if name in read]
    table, replaced = apply_cross_fitted(table, list(cross_fitted), required=trained_here)
    artifact = fit_fusion(table, detectors, settings, out, command)
    artifact["training"]["cross_fitted"] = replaced
    write_artifact(artifact, settings.kind, out)
    return artifact


def replace_settings(settings: FusionSettings, overrides: dict[str, Any]) -> FusionSettings:
    """``settings`` with some fields replaced; an unknown name is refused, naming the known ones."""
    known = {f.name for f in fields(FusionSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown fusion settings {unknown}; known: {sorted(known)}")
    return FusionSettings(**{**asdict(settings), **overrides})


def fit_fusion(
    table: pa.Table, detectors: list[str], settings: FusionSettings, out: Path, command: str = ""
) -> dict[str, Any]:
    """The calibrated artifact of ``settings`` fitted on ``table``'s train rows and tuned on its val rows (XGBoost's
    booster is written beside ``out``; nothing else is written)."""
    table, splits = _usable_splits(table)
    schema = _fusion_schema(detectors, settings.features)
    train_rows = feature_rows(splits["train"], list(schema))
    features, constant = _informative_features(train_rows, schema)
    logit = np.array([settings.probabilities_as_logits and schema[f].probability for f in features], dtype=bool)
    preprocessing = _preprocessing(train_rows, features, logit)
    x_train, y_train = _training_set(splits["train"], train_rows, detectors, features, preprocessing, settings)
    fitted = fit_model(settings.kind, x_train, y_train, settings.seed)
    booster = fitted.pop("_booster", None)
    training = _training_record(table, splits, settings, command)
    artifact = _untuned_artifact(schema, features, constant, detectors, table, preprocessing, fitted, training)
    if booster is not None:
        _save_booster(artifact, booster, out)
    _calibrate(artifact, splits["val"], out.parent, settings)
    model = TrainedFusion(artifact, out.parent)
    artifact["metrics"] = {
        split: _split_metrics(model, t, features, artifact["threshold"], settings.target_fpr)
        for split, t in splits.items()
        if t.num_rows
    }
    return artifact


def _fusion_schema(detectors: list[str], wanted: tuple[str, ...]) -> dict[str, Any]:
    """The features the fusion may read: the detectors' fusion inputs (container facts such as size, JPEG tables or
    EXIF presence are context only: ``FeatureSpec.fusion_input``), or those of ``wanted`` (refused if not one)."""
    schema = {name: spec for name, spec in models.feature_schema(detectors).items() if spec.fusion_input}
    if not wanted:
        return schema
    unknown = [name for name in wanted if name not in schema]
    if unknown:
        raise ValueError(f"fusion features {unknown} are not fusion inputs of {detectors}; choose from {list(schema)}")
    return {name: schema[name] for name in wanted}


def _usable_splits(table: pa.Table) -> tuple[pa.Table, dict[str, pa.Table]]:
    """The rows without an error, and them per split; train and val must hold both classes."""
    if "error" in table.column_names:
        table = table.filter(pa.compute.equal(pa.compute.fill_null(table["error"], ""), ""))
    splits = {s: table.filter(pa.compute.equal(table["split"], s)) for s in ("train", "val", "test")}
    check_two_classes(splits["train"], "the train split")
    check_two_classes(splits["val"], "the val split (calibration and threshold)")
    return table, splits


def _informative_features(train_rows: list[dict[str, float]], schema: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(features the model is fitted on, features left out as constant on the train split)."""
    # Features with at most one value where present carry nothing the model could learn but their absence, and
    # absence can be a container fact (watermark_detected is not computed below 256 px): left out, and named.
    constant = [f for f in schema if len({row[f] for row in train_rows if f in row}) <= 1]
    features = [f for f in schema if f not in constant]
    if not features:
        raise ValueError("every feature is constant on the train split: nothing to learn")
    return features, constant


Preprocessing = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray]


def _preprocessing(train_rows: list[dict[str, float]], features: list[str], logit: np.ndarray) -> Preprocessing:
    """(impute, mean, scale, (low, high), logit) of the features on the train rows, as ``design_matrix`` takes
    them: impute and range on the features' own scale, mean and scale after the logit of those flagged."""
    values = np.array([[row.get(f, np.nan) for f in features] for row in train_rows], dtype=np.float64)
    impute = np.nanmedian(values, axis=0)
    impute = np.where(np.isnan(impute), 0.0, impute)  # a feature never present on train: its indicator decides
    filled = np.where(np.isnan(values), impute, values)
    read = filled.copy()
    read[:, logit] = probability_logit(read[:, logit])
    mean, scale = read.mean(axis=0), read.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return impute, mean, scale, (filled.min(axis=0), filled.max(axis=0)), logit


def _training_set(
    train: pa.Table,
    train_rows: list[dict[str, float]],
    detectors: list[str],
    features: list[str],
    preprocessing: Preprocessing,
    settings: FusionSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Design matrix and labels of the train rows followed by their detector-dropout copies."""
    rng = np.random.default_rng(settings.seed)
    groups = {d: [name for name in models.feature_schema([d]) if name in features] for d in detectors}
    copies = settings.dropout_copies
    augmented = train_rows + detector_dropout(train_rows, groups, settings.dropout, copies, rng)
    y_augmented = np.concatenate([_labels(train)] * (1 + copies))
    return design_matrix(augmented, features, *preprocessing), y_augmented


def _training_record(
    table: pa.Table, splits: dict[str, pa.Table], settings: FusionSettings, command: str
) -> dict[str, Any]:
    """The artifact's ``training`` entry: what it was trained on, and how."""
    return {
        "data_sha256": training_data_hash(table),
        "rows": {s: t.num_rows for s, t in splits.items()},
        "variants": sorted({variant_of(k) for k in table.column("key").to_pylist() if "|" in k}),
        "settings": {**asdict(settings), "features": list(settings.features)},
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _untuned_artifact(
    schema: dict[str, Any],
    features: list[str],
    constant: list[str],
    detectors: list[str],
    table: pa.Table,
    preprocessing: Preprocessing,
    fitted: dict[str, Any],
    training: dict[str, Any],
) -> dict[str, Any]:
    """The artifact before calibration: identity calibration, threshold 0.5 (``_calibrate`` replaces them)."""
    impute, mean, scale, (low, high), logit = preprocessing
    specs = {f: {"low": schema[f].low, "high": schema[f].high, "direction": schema[f].direction} for f in features}
    return {
        "format": ARTIFACT_FORMAT,
        "version": "",
        "model_type": training["settings"]["kind"],
        "features": features,
        "dropped_constant_features": constant,
        "feature_specs": specs,
        "detectors": detectors,
        "detector_versions": _detector_versions(table, detectors),
        "impute": impute.tolist(),
        "scaler": {
            "mean": mean.tolist(),
            "scale": scale.tolist(),
            "low": low.tolist(),
            "high": high.tolist(),
            "logit": logit.tolist(),
        },
        **fitted,
        "calibration": {"method": "none"},
        "threshold": 0.5,
        "uncertain_range": uncertain_range(0.5, training["settings"]["confidence"]),
        "target_fpr": training["settings"]["target_fpr"],
        "training": training,
    }


def _save_booster(artifact: dict[str, Any], booster: Any, out: Path) -> None:
    """XGBoost's own JSON beside ``out``, named in the artifact."""
    model_file = out.with_suffix(".xgb.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(model_file))
    artifact["xgboost"] = {"model_file": model_file.name}


def _calibrate(artifact: dict[str, Any], val: pa.Table, folder: Path, settings: FusionSettings) -> None:
    """Calibration, threshold and uncertain range, set in ``artifact`` from the val split (with every detector
    present: the live situation). Under ``weighting="sources"`` every source weighs the same within its class."""
    model = TrainedFusion(artifact, folder)
    y_val = _labels(val)
    weights = None
    if settings.weighting == "sources":
        weights = source_weights(np.asarray(val.column("source").to_pylist()), y_val)
    raw_val = model.raw_scores(model.design_matrix(feature_rows(val, artifact["features"])))
    method = settings.calibration
    if method == "auto":
        method = "isotonic" if len(y_val) >= 500 else "platt"
    artifact["calibration"] = fit_calibration(raw_val, y_val, method, weights)
    p_val = apply_calibration(artifact["calibration"], raw_val)
    real, ai = y_val == 0, y_val == 1
    w_real, w_ai = (None, None) if weights is None else (weights[real], weights[ai])
    artifact["threshold"] = threshold_for_fpr(p_val[real], settings.target_fpr, w_real)
    # A confident AI verdict on a real photo is the worst failure: confident only above the score that at most
    # ``confident_fpr`` of the validation photos reach (with 1% of ~170 photos: above the highest one). A confident
    # NON-AI verdict on an AI image is the next worst: confident only below the score that at most
    # ``confident_miss`` of the validation AI images fall under.
    confident_ai_from = threshold_for_fpr(p_val[real], settings.confident_fpr, w_real)
    confident_real_below = (
        bound_for_miss(p_val[ai], settings.confident_miss, w_ai) if settings.confident_miss < 1 else 1
    )
    artifact["uncertain_range"] = uncertain_range(
        artifact["threshold"], settings.confidence, confident_ai_from, confident_real_below
    )
    artifact["confident_fpr"] = settings.confident_fpr


def write_artifact(artifact: dict[str, Any], kind: str, out: Path) -> None:
    """Version the artifact by the hash of its content and write it to ``out``."""
    digest = hashlib.sha256(json.dumps(artifact, sort_keys=True).encode()).hexdigest()[:12]
    artifact["version"] = f"fusion-{kind}-{digest}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(artifact, indent=1))


def _labels(table: pa.Table) -> np.ndarray:
    return np.array([1 if label == "ai" else 0 for label in table.column("label").to_pylist()], dtype=np.int64)


def _detector_versions(table: pa.Table, detectors: list[str]) -> dict[str, list[str]]:
    versions: dict[str, set[str]] = {d: set() for d in detectors}
    for d in detectors:
        column = f"outcome.{d}"
        if column in table.column_names:
            versions[d] = {json.loads(t)["version"] for t in table.column(column).to_pylist() if t}
    return {d: sorted(v) for d, v in versions.items()}


def _split_metrics(
    model: TrainedFusion, table: pa.Table, features: list[str], threshold: float, fpr: float
) -> dict[str, Any]:
    y = _labels(table)
    p = model.predict_proba_rows(feature_rows(table, features))
    overall = binary_metrics(y, p, threshold, fpr)
    low, high = model.uncertain_range
    confident = (p < low) | (p >= high)
    overall["uncertain_rate"] = float(1 - confident.mean())
    overall["confident_accuracy"] = float(((p >= threshold) == (y == 1))[confident].mean()) if confident.any() else None
    per_source = {}
    for source in sorted(set(table.column("source").to_pylist())):
        mask = np.array([s == source for s in table.column("source").to_pylist()])
        per_source[source] = binary_metrics(y[mask], p[mask], threshold, fpr)
    return {"overall": overall, "per_source": per_source}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgverify train fusion", description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path, nargs="+", help="features .parquet file(s) with train/val/test rows")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", choices=MODEL_TYPES, default="logistic")
    parser.add_argument(
        "--features", dest="fusion_features", nargs="+", default=[], help="only these fusion inputs (default: all)"
    )
    parser.add_argument("--calibration", choices=("auto", "isotonic", "platt"), default="auto")
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument("--confidence", type=float, default=0.8, help="confident only below 1-c or at/above c")
    parser.add_argument(
        "--confident-fpr",
        type=float,
        default=0.01,
        help="a confident AI verdict only above the score this share of val photos reach",
    )
    parser.add_argument(
        "--confident-miss",
        type=float,
        default=1.0,
        help="a confident NON-AI verdict only below the score this share of val AI images fall under (1: no bound)",
    )
    parser.add_argument(
        "--weighting",
        choices=("rows", "sources"),
        default="rows",
        help="calibration, threshold and bounds: every val row alike, or every source alike within its class",
    )
    parser.add_argument("--dropout", type=float, default=0.15, help="per-detector drop rate in training copies")
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="names the detectors whose features are used"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cross-fitted",
        type=Path,
        nargs="*",
        default=[],
        help="out-of-fold features from `imgverify train cross-fit` (for detectors trained on train)",
    )
    args = parser.parse_args(argv)
    settings = FusionSettings(
        kind=args.model,
        features=tuple(args.fusion_features),
        calibration=args.calibration,
        target_fpr=args.target_fpr,
        confidence=args.confidence,
        confident_fpr=args.confident_fpr,
        confident_miss=args.confident_miss,
        weighting=args.weighting,
        dropout=args.dropout,
        seed=args.seed,
    )
    table = pa.concat_tables([pq.read_table(p) for p in args.features], promote_options="default")
    detectors = load_profile(args.config, check_fusion=False).args.detector_names()
    command = "imgverify train fusion " + " ".join(sys.argv[3:] if argv is None else argv)
    artifact = train_fusion(table, detectors, args.out, settings, command, tuple(args.cross_fitted))
    for split, metrics in artifact["metrics"].items():
        print(
            split, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics["overall"].items()})
        )
    method = artifact["calibration"]["method"]
    print(f"{artifact['version']} -> {args.out} (threshold {artifact['threshold']:.4f}, {method})")
    return 0
