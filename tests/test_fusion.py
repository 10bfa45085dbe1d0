"""Fusion models, calibration, thresholds and the verdict, on synthetic data with known answers."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

import models
from models.base import DetectorResult
from models.fusion import (
    DetectorOutcome,
    FusionNotConfigured,
    RuleFusion,
    SchemaMismatch,
    apply_calibration,
    load_fusion,
)
from models.verdict import Verdict, VerdictBody
from training.metrics import binary_metrics, expected_calibration_error, threshold_for_fpr
from training.train_fusion import fit_calibration, train_fusion, uncertain_range

SCHEMA = models.feature_schema(["debug_mean", "debug_sleep", "debug_fail"])
RULE = Verdict(SCHEMA, RuleFusion(SCHEMA))  # the rule fusion with its own threshold and uncertain range


def outcome(name: str, **features: float) -> DetectorOutcome:
    return DetectorOutcome.from_result(name, DetectorResult(features=features), f"{name}-1", 1.0)


def test_rule_fusion_averages_only_what_is_present():
    rule = RuleFusion(SCHEMA)
    assert rule.predict_proba({"debug_prob": 0.9, "debug_sleep_prob": 0.5}) == pytest.approx(0.7)
    assert rule.predict_proba({"debug_prob": 0.9}) == pytest.approx(0.9)
    assert rule.predict_proba({}) is None


def test_decide_lists_missing_detectors_and_invents_nothing():
    outcomes = [
        outcome("debug_mean", debug_prob=0.8),
        DetectorOutcome("debug_sleep", "timeout", 500.0, error="no answer within 0.5 s"),
        DetectorOutcome("debug_fail", "failed", 3.0, "debug_fail-1", error="boom"),
    ]
    body = RULE.decide(outcomes)
    assert body["missing"] == ["debug_sleep", "debug_fail"]
    assert body["fusion_prob"] == pytest.approx(0.8) and body["label"] == "AI" and body["decided_by"] == "rule"
    assert "debug_sleep_prob" not in body and "debug_fail_prob" not in body
    assert body["detectors"]["debug_sleep"] == {
        "status": "timeout",
        "latency_ms": 500.0,
        "version": None,
        "error": "no answer within 0.5 s",
        "role": "fusion input",
    }
    assert any("debug_sleep not used (timeout" in r for r in body["reasoning"])


def test_uncertain_range_and_threshold_override():
    body = RULE.decide([outcome("debug_mean", debug_prob=0.55)])
    assert body["label"] == "AI" and body["uncertain"] is True  # 0.55 in [0.35, 0.65)
    assert RULE.decide([outcome("debug_mean", debug_prob=0.65)])["uncertain"] is False
    configured = Verdict(SCHEMA, RuleFusion(SCHEMA), threshold=0.6, uncertain_range=(0.56, 0.62))
    body = configured.decide([outcome("debug_mean", debug_prob=0.55)])
    assert body["label"] == "NON-AI" and body["uncertain"] is False and body["threshold"] == 0.6
    assert configured.describe()["threshold_from"] == "config"


def test_a_configured_threshold_of_zero_is_the_one_used_and_shown():
    """0.0 is a threshold, not "unset": decide() and describe() (what /v1/detectors shows) agree on it."""
    zero = Verdict(SCHEMA, RuleFusion(SCHEMA), threshold=0.0, uncertain_range=(0.0, 0.0))
    body = zero.decide([outcome("debug_mean", debug_prob=0.01)])
    assert (body["label"], body["threshold"], body["uncertain"]) == ("AI", 0.0, False)
    assert (zero.describe()["threshold"], zero.describe()["uncertain_range"]) == (0.0, [0.0, 0.0])


def test_hard_evidence_decides_unless_switched_off():
    hard = DetectorOutcome.from_result(
        "debug_mean",
        DetectorResult(features={"debug_prob": 0.1}, hard_evidence=["valid C2PA claim: trainedAlgorithmicMedia"]),
        "v",
        1.0,
    )
    body = RULE.decide([hard])
    assert (body["label"], body["decided_by"], body["uncertain"]) == ("AI", "hard_evidence", False)
    assert body["reasoning"][:2] == [
        "Made by a generator: the file says so itself (valid C2PA claim: trainedAlgorithmicMedia).",
        "Provenance: valid C2PA claim: trainedAlgorithmicMedia",
    ]
    body = Verdict(SCHEMA, RuleFusion(SCHEMA), hard_evidence=False).decide([hard])
    assert (body["label"], body["decided_by"]) == ("NON-AI", "rule")


def test_the_rule_is_explicit_and_its_verdicts_say_so():
    """Unset is refused (no silent average); "rule" is the uncalibrated mean, and every verdict it decides says
    so: decided_by "rule", a reason that names the mean and its inputs, describe() kind "rule", not calibrated."""
    with pytest.raises(FusionNotConfigured, match="fusion.model is not set.*model: rule"):
        load_fusion(None, SCHEMA)
    with pytest.raises(FusionNotConfigured):
        Verdict.build(["debug_mean"], model=None)
    rule = Verdict.build(["debug_mean", "debug_sleep"], model="rule")
    body = rule.decide([outcome("debug_mean", debug_prob=0.9), outcome("debug_sleep", debug_sleep_prob=0.3)])
    VerdictBody.model_validate(body)
    assert (body["fusion_prob"], body["label"], body["decided_by"]) == (pytest.approx(0.6), "AI", "rule")
    line = next(r for r in body["reasoning"] if "plain mean" in r)
    assert "0.60 is the plain mean of the probabilities present (debug_prob, debug_sleep_prob)" in line
    assert "not a trained, calibrated fusion model" in line
    described = rule.describe()
    assert (described["kind"], described["calibrated"], described["threshold"]) == ("rule", False, 0.5)
    # No probability present: no verdict, and no sentence about a mean that was not taken.
    assert all("plain mean" not in r for r in RULE.decide([outcome("debug_fail")])["reasoning"])


def test_roles_say_which_detectors_the_fusion_reads(tmp_path):
    """A detector whose features the fusion model does not read is context; provenance, whose hard evidence
    decides alone, is "hard evidence" unless the config switches that off."""
    out = tmp_path / "fusion.json"
    train_fusion(synthetic_features(), ["forensics"], out)
    detectors = ["provenance", "forensics", "fatformer", "mantranet"]
    verdict = Verdict.build(detectors, model=str(out))
    expected = {"provenance": "hard evidence", "forensics": "fusion input", "fatformer": "context"}
    assert verdict.roles == {**expected, "mantranet": "context"}
    assert verdict.describe()["detectors"] == verdict.roles and verdict.describe()["kind"] == "trained"
    assert verdict.describe()["calibrated"] is True
    assert Verdict.build(detectors, model=str(out), hard_evidence=False).roles["provenance"] == "context"
    pixels = outcome("forensics", image_entropy=7.5, noise_log_variance=0.0)
    body = verdict.decide([pixels, outcome("fatformer", fatformer_prob=1.0)])
    assert {name: report["role"] for name, report in body["detectors"].items()} == {
        "forensics": "fusion input",
        "fatformer": "context",
    }
    # A context detector cannot move fusion_prob: fatformer at 0 or 1 gives the same verdict.
    other = verdict.decide([pixels, outcome("fatformer", fatformer_prob=0.0)])
    assert other["fusion_prob"] == body["fusion_prob"] and body["decided_by"] == "fusion"
    assert all("plain mean" not in r for r in body["reasoning"])


def test_no_usable_feature_means_no_verdict():
    body = RULE.decide([DetectorOutcome("debug_fail", "failed", 1.0, error="x")])
    assert body["fusion_prob"] is None and body["label"] == "UNKNOWN" and body["uncertain"] is True


def test_outcome_json_round_trip():
    original = DetectorOutcome.from_result(
        "debug_mean", DetectorResult(features={"debug_prob": 0.25}, details={"a": [1]}, evidence=["e"]), "v1", 2.5
    )
    assert DetectorOutcome.from_json(original.to_json()) == original


# ---- thresholds and calibration --------------------------------------------------------------------
def test_threshold_for_fpr_flags_exactly_the_allowed_share_of_reals():
    reals = np.arange(100) / 100.0
    threshold = threshold_for_fpr(reals, 0.05)
    assert (reals >= threshold).sum() == 5 and threshold == pytest.approx(0.95)
    assert (reals >= threshold_for_fpr(reals, 0.0)).sum() == 0


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_recovers_a_known_distortion(method):
    # Raw scores s; the true P(AI | s) is sigmoid(2 logit(s) - 1): s is overconfident in the middle and biased.
    rng = np.random.default_rng(0)
    s = rng.uniform(0.02, 0.98, 40_000)
    truth = 1 / (1 + np.exp(-(2 * np.log(s / (1 - s)) - 1)))
    y = (rng.uniform(size=s.size) < truth).astype(int)
    calibration = fit_calibration(s[:20_000], y[:20_000], method)
    calibrated = apply_calibration(calibration, s[20_000:])
    assert np.abs(calibrated - truth[20_000:]).mean() < 0.02
    assert (
        expected_calibration_error(y[20_000:], calibrated) < 0.02 < expected_calibration_error(y[20_000:], s[20_000:])
    )
    if method == "platt":
        assert calibration["a"] == pytest.approx(2.0, abs=0.1) and calibration["b"] == pytest.approx(-1.0, abs=0.1)


def test_binary_metrics_on_known_scores():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    m = binary_metrics(y, p, threshold=0.5)
    assert m["auc"] == pytest.approx(15 / 16) and m["acc_real"] == 0.75 and m["acc_ai"] == 0.75
    assert binary_metrics(np.array([1, 1]), np.array([0.9, 0.2]), 0.5)["auc"] is None


# ---- training a fusion model end to end on synthetic features ------------------------------------------
def synthetic_features(n: int = 600, seed: int = 1) -> pa.Table:
    """Two forensics-like features: one informative, one noise; ``split`` and ``source`` as the pipeline writes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    rows = {
        "key": [f"k{i}" for i in range(n)],
        "label": ["ai" if v else "real" for v in y],
        "split": rng.choice(["train", "val", "test"], n, p=[0.6, 0.2, 0.2]).tolist(),
        "source": ["synthetic"] * n,
        "image_entropy": np.clip(6 + 1.2 * y + rng.normal(0, 0.6, n), 0, 8).tolist(),
        "noise_log_variance": rng.normal(0, 1, n).tolist(),
    }
    return pa.table(rows)


@pytest.mark.parametrize("kind", ["logistic", "mlp", "xgboost"])
def test_train_fusion_writes_a_calibrated_artifact_that_loads_and_handles_missing_features(tmp_path, kind):
    out = tmp_path / f"fusion_{kind}.json"
    artifact = train_fusion(synthetic_features(), ["forensics"], out, kind=kind, dropout=0.3, confidence=0.9)
    saved = json.loads(out.read_text())
    assert saved["version"].startswith(f"fusion-{kind}-") and saved["features"] == [
        "image_entropy",
        "noise_log_variance",
    ]
    fusion_inputs = {name for name, spec in models.feature_schema(["forensics"]).items() if spec.fusion_input}
    assert set(saved["dropped_constant_features"]) == fusion_inputs - set(saved["features"])
    assert saved["training"]["data_sha256"] and saved["calibration"]["method"] == "platt"
    low, high = saved["uncertain_range"]
    assert low == pytest.approx(min(0.1, saved["threshold"])) and high >= max(0.9, saved["threshold"])
    assert saved["confident_fpr"] == 0.01
    assert artifact["metrics"]["test"]["overall"]["auc"] > 0.8  # the signal is real and learnt
    # The threshold flags at most 5% of the val reals, as asked.
    model = load_fusion(str(out), models.feature_schema(["forensics"]))
    full = model.predict_proba({"image_entropy": 7.5, "noise_log_variance": 0.0})
    low = model.predict_proba({"image_entropy": 5.0, "noise_log_variance": 0.0})
    assert full > model.threshold > low
    # A missing feature takes the trained missing path: a probability, not a crash, not the full answer.
    partial = model.predict_proba({"noise_log_variance": 0.0})
    assert partial is not None and 0 < partial < 1 and partial != full
    assert model.predict_proba({}) is None


def test_loading_refuses_a_schema_mismatch(tmp_path):
    out = tmp_path / "fusion.json"
    train_fusion(synthetic_features(), ["forensics"], out)
    with pytest.raises(SchemaMismatch, match="image_entropy \\(from detector forensics, which is not enabled\\)"):
        load_fusion(str(out), models.feature_schema(["provenance"]))
    artifact = json.loads(out.read_text())
    artifact["feature_specs"]["image_entropy"]["high"] = 16.0
    out.write_text(json.dumps(artifact))
    with pytest.raises(SchemaMismatch, match="image_entropy"):
        load_fusion(str(out), models.feature_schema(["forensics"]))


def test_single_class_training_split_is_refused(tmp_path):
    table = synthetic_features()
    only_ai = table.filter(pa.compute.equal(table["label"], "ai"))
    with pytest.raises(ValueError, match="needs both"):
        train_fusion(only_ai, ["forensics"], tmp_path / "x.json")


def test_a_confident_ai_verdict_needs_a_score_almost_no_validation_photo_reaches():
    assert uncertain_range(0.6, 0.8) == [pytest.approx(0.2), 0.8]
    assert uncertain_range(0.85, 0.8) == [pytest.approx(0.2), 0.85]  # the threshold is always inside
    assert uncertain_range(0.6, 0.8, confident_ai_from=0.93) == [pytest.approx(0.2), 0.93]


def test_an_image_unlike_the_training_images_gets_no_confident_verdict(tmp_path):
    """The artifact's ``unfamiliar`` rule: from the bound on, clip_b16_novelty makes any fusion verdict uncertain and
    says why; below it the probability's own range decides. It never changes the probability or the label."""
    table = synthetic_features()
    train_fusion(table, ["forensics"], tmp_path / "fusion.json", dropout=0.0)
    artifact = json.loads((tmp_path / "fusion.json").read_text())
    artifact["unfamiliar"] = {"feature": "clip_b16_novelty", "from": 0.95}
    (tmp_path / "fusion.json").write_text(json.dumps(artifact))
    schema = models.feature_schema(["forensics", "clip_b16"])
    verdict = Verdict(schema, load_fusion(str(tmp_path / "fusion.json"), schema))
    high = max(verdict.uncertain_range[1], verdict.threshold)
    features = {"image_entropy": 8.0, "noise_log_variance": 0.0}
    assert verdict.fusion.predict_proba(features) >= high  # a confident AI on the forensics alone
    familiar = verdict.decide([outcome("forensics", **features), outcome("clip_b16", clip_b16_novelty=0.5)])
    unlike = verdict.decide([outcome("forensics", **features), outcome("clip_b16", clip_b16_novelty=0.97)])
    assert (familiar["label"], familiar["uncertain"]) == ("AI", False)
    assert (unlike["label"], unlike["uncertain"], unlike["fusion_prob"]) == ("AI", True, familiar["fusion_prob"])
    assert any("unlike the images the detectors were trained on" in r for r in unlike["reasoning"])
    assert verdict.describe()["unfamiliar"] == {"feature": "clip_b16_novelty", "from": 0.95}


def test_a_fusion_of_one_calibrated_probability_can_reach_a_confident_verdict(tmp_path):
    """clip_b16_prob alone, as the local profile's fusion reads it. On the probability scale a logistic fusion's
    output is a bounded function of a bounded input and stayed within [0.03, 0.97], inside every confident bound: no
    pixel verdict could be confident. Read as a logit (the default), the extremes of the head reach the extremes."""
    rng = np.random.default_rng(3)
    n = 800
    y = rng.integers(0, 2, n)
    logit = np.where(y == 1, 3.0, -3.0) + rng.normal(0, 2.0, n)  # a head that is right, and sure, most of the time
    table = pa.table(
        {
            "key": [f"k{i}" for i in range(n)],
            "label": ["ai" if v else "real" for v in y],
            "split": rng.choice(["train", "val", "test"], n, p=[0.6, 0.2, 0.2]).tolist(),
            "source": ["synthetic"] * n,
            "clip_b16_prob": (1 / (1 + np.exp(-logit))).tolist(),
        }
    )
    schema = models.feature_schema(["clip_b16"])
    ranges = {}
    for as_logits in (True, False):
        out = tmp_path / f"fusion_{as_logits}.json"
        train_fusion(table, ["clip_b16"], out, features=("clip_b16_prob",), probabilities_as_logits=as_logits)
        assert json.loads(out.read_text())["scaler"]["logit"] == [as_logits]
        model = load_fusion(str(out), schema)
        ranges[as_logits] = [model.predict_proba({"clip_b16_prob": p}) for p in (1e-5, 0.5, 1 - 1e-5)]
    low, middle, high = ranges[True]
    assert low < 0.01 and 0.2 < middle < 0.8 and high > 0.99
    low, _, high = ranges[False]
    assert low > 0.01 and high < 0.99  # the old reading: sure inputs, an unsure fusion
