"""`imgverify evaluate`: metric definitions on hand-made scores, then one real evaluation (Ray Data feature
extraction with the provenance and forensics detectors, a hand-written logistic fusion artifact) on a tiny
manifest of real files, checked number by number against an independent recomputation."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score

import models
from training.augment import ROBUSTNESS
from training.dataset import build_manifest, write_manifest
from training.evaluate import EvaluationRefused, evaluate, fmt, group_metrics, main
from training.metrics import binary_metrics, expected_calibration_error, oriented_auc, reliability_bins

# ---- metric definitions on hand-made numbers ------------------------------------------------------------------


def test_perfect_separation_gives_auc_one_and_full_tpr():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    m = binary_metrics(y, p, threshold=0.5)
    assert (m["auc"], m["ap"], m["tpr_at_5pct_fpr"], m["acc_real"], m["acc_ai"], m["accuracy"]) == (1, 1, 1, 1, 1, 1)
    reversed_ = binary_metrics(y, 1 - p, threshold=0.5)
    assert reversed_["auc"] == 0.0 and reversed_["tpr_at_5pct_fpr"] == 0.0
    assert reversed_["acc_real"] == 0.0 and reversed_["acc_ai"] == 0.0


def test_known_ece_and_reliability_bins():
    # One item per bin: |0-0.15|, |0-0.35|, |1-0.65|, |1-0.85| averaged -> (0.15+0.35+0.35+0.15)/4 = 0.25
    y, p = np.array([0, 0, 1, 1]), np.array([0.15, 0.35, 0.65, 0.85])
    assert expected_calibration_error(y, p) == pytest.approx(0.25)
    bins = reliability_bins(y, p)
    assert [(round(b["low"], 6), b["count"], b["mean_p"], b["observed_ai_rate"]) for b in bins] == [
        (0.1, 1, 0.15, 0.0),
        (0.3, 1, 0.35, 0.0),
        (0.6, 1, 0.65, 1.0),
        (0.8, 1, 0.85, 1.0),
    ]
    # The diagram and the ECE are the same bins: count-weighted |observed - mean p| is the ECE.
    y2 = np.array([0, 1, 1, 0, 1, 0, 0])
    p2 = np.array([0.05, 0.07, 0.55, 0.58, 0.52, 0.95, 0.99])
    bins2 = reliability_bins(y2, p2)
    weighted = sum(b["count"] / y2.size * abs(b["observed_ai_rate"] - b["mean_p"]) for b in bins2)
    assert weighted == pytest.approx(expected_calibration_error(y2, p2))
    assert [b["count"] for b in bins2] == [2, 3, 2]


def test_oriented_auc_follows_the_declared_direction():
    y = np.array([0, 0, 1, 1])
    camera_noise = np.array([5.0, 4.0, 1.0, 2.0])  # high on real images
    assert oriented_auc(y, camera_noise, "real_high") == 1.0
    assert oriented_auc(y, camera_noise, "ai_high") == 0.0
    assert oriented_auc(y, camera_noise, "neutral") == 0.0  # as is: below 0.5 says higher = real
    assert oriented_auc(np.array([1, 1]), np.array([0.2, 0.3]), "ai_high") is None


def test_group_metrics_count_unknown_as_wrong_and_leave_one_class_auc_out():
    y = np.array([0, 0, 1, 1, 1])
    prob = np.array([0.1, 0.55, 0.9, 0.45, np.nan])  # the last has no fusion probability
    verdict = np.array(["NON-AI", "AI", "AI", "NON-AI", "UNKNOWN"], dtype=object)
    decided_by = np.array(["fusion"] * 4 + ["none"], dtype=object)
    uncertain = np.array([False, True, False, True, True])
    m = group_metrics(y, prob, verdict, decided_by, uncertain, threshold=0.5)
    assert (m["n"], m["n_no_prob"], m["n_real"], m["n_ai"]) == (5, 1, 2, 2)
    assert m["auc"] == 0.75  # pairs (real, AI): 0.9 beats both, 0.45 beats 0.1 only
    assert m["verdict_accuracy"] == pytest.approx(2 / 5)
    assert m["uncertain_rate"] == pytest.approx(3 / 5)
    assert m["confident_accuracy"] == 1.0  # both confident verdicts are right
    ai_only = group_metrics(y[2:4], prob[2:4], verdict[2:4], decided_by[2:4], uncertain[2:4], threshold=0.5)
    assert ai_only["auc"] is None and ai_only["ap"] is None and ai_only["tpr_at_5pct_fpr"] is None
    assert ai_only["acc_ai"] == 0.5 and ai_only["acc_real"] is None


# ---- one real evaluation on a tiny manifest -----------------------------------------------------------------------
MODEL_FEATURES = ["noise_log_variance", "spectrum_upsampling_peak", "ela_mean"]
MEAN, SCALE = [2.0, 0.5, 3.0], [1.0, 0.5, 2.0]
COEF = [-1.5, 0.8, 0.3, 0.0, 0.0, 0.4]  # values, then missing indicators
INTERCEPT = 0.2
THRESHOLD, BAND = 0.5, 0.1
N_READABLE = 11  # test-split items of the tiny manifest that decode


def _labels_csv(folder: Path, rows: list[tuple[str, str, str]]) -> None:
    """A labels.csv whose file column holds absolute paths (the shared files are read in place)."""
    folder.mkdir(parents=True)
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "generator_or_camera", "layout"])
        writer.writerows(rows)


def _first(folder: Path, pattern: str, n: int) -> list[Path]:
    return sorted(folder.glob(pattern))[:n]


@pytest.fixture(scope="module")
def tiny_manifest(data_set, tmp_path_factory) -> Path:
    """3 ImageNet photos + an unreadable file (real), 2 + 2 modern-matched, 1 SD 1.5 grid (4 AI quadrants),
    1 AUTOMATIC1111 metadata file (AI, 1x1 px); everything in split test except one photo in train."""
    root = tmp_path_factory.mktemp("data")
    broken = root / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    imagenet = _first(data_set("imagenet-real") / "real", "*.JPEG", 3)
    _labels_csv(root / "imagenet-real", [(str(p), "real", "", "") for p in imagenet] + [(str(broken), "real", "", "")])
    matched = _first(data_set("modern-matched") / "real", "*.jpg", 2) + _first(
        data_set("modern-matched") / "ai", "*", 2
    )
    _labels_csv(
        root / "modern-matched",
        [(str(p), p.parent.name, "Gemini 3 Pro Image" if p.parent.name == "ai" else "", "") for p in matched],
    )
    _labels_csv(
        root / "sd15-grids",
        [(str(_first(data_set("sd15-grids") / "ai", "*.webp", 1)[0]), "ai", "Deliberate 2.0", "grid_2x2")],
    )
    a1111 = data_set("generator-metadata") / "ai" / "AUTOMATIC1111__automatic1111_cropped.png"
    _labels_csv(root / "generator-metadata", [(str(a1111), "ai", "AUTOMATIC1111", "")])

    table = build_manifest(
        [root / "imagenet-real", root / "modern-matched", root / "sd15-grids", root / "generator-metadata"]
    )
    train_photo = str(imagenet[0])
    splits = ["train" if path == train_photo else "test" for path in table.column("filepath").to_pylist()]
    table = table.set_column(table.column_names.index("split"), "split", pa.array(splits, pa.string()))
    write_manifest(table, root / "manifest.parquet")
    return root / "manifest.parquet"


@pytest.fixture(scope="module")
def fast_config(tmp_path_factory) -> Path:
    """A serve config with the two fast detectors and a hand-written logistic fusion artifact."""
    folder = tmp_path_factory.mktemp("config")
    schema = models.feature_schema(["provenance", "forensics"])
    artifact = {
        "format": "imgverify-fusion/1",
        "version": "test-logistic/1",
        "model_type": "logistic",
        "features": MODEL_FEATURES,
        "impute": MEAN,
        "scaler": {"mean": MEAN, "scale": SCALE},
        "logistic": {"coef": COEF, "intercept": INTERCEPT},
        "calibration": {"method": "none"},
        "threshold": THRESHOLD,
        "uncertain_range": [THRESHOLD - BAND, THRESHOLD + BAND],
        "feature_specs": {name: dataclasses.asdict(schema[name]) for name in MODEL_FEATURES},
    }
    (folder / "fusion.json").write_text(json.dumps(artifact))
    detector = {"ray_actor_options": {"num_cpus": 0.2}, "user_config": {"max_batch_size": 4}}
    config = {
        "applications": [
            {
                "name": "imgverify",
                "import_path": "serve_app.app:build_app",
                "args": {
                    "detectors": [{"name": "provenance"}, {"name": "forensics"}],
                    "fusion": {"model": str(folder / "fusion.json"), "hard_evidence": True},
                },
                "deployments": [{"name": "provenance", **detector}, {"name": "forensics", **detector}],
            }
        ]
    }
    (folder / "serve_config.yaml").write_text(yaml.safe_dump(config))
    return folder / "serve_config.yaml"


@pytest.fixture(scope="module")
def report(ray_session, tiny_manifest, fast_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    cache = tmp_path_factory.mktemp("cache")
    argv = [str(tiny_manifest), "--config", str(fast_config), "--robustness", "--out", str(out), "--cache", str(cache)]
    assert main(argv) == 0
    return out


def _by_hand(row: dict) -> float | None:
    """The logistic artifact evaluated by hand on one prediction row (independent of models/fusion.py)."""
    values = [row[name] for name in MODEL_FEATURES]
    if all(v is None for v in values):
        return None
    z = INTERCEPT
    for i, v in enumerate(values):
        z += COEF[i] * (0.0 if v is None else (v - MEAN[i]) / SCALE[i]) + COEF[len(values) + i] * (v is None)
    return 1 / (1 + np.exp(-z))


def _table_rows(markdown: str, section: str) -> dict[str, list[str]]:
    """The rows (header included) of the first table under ``## section``, keyed by their first cell."""
    body = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in body.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_report_numbers_match_an_independent_recomputation(report):
    metrics = json.loads((report / "metrics.json").read_text())
    predictions = pq.read_table(report / "predictions.parquet").to_pylist()
    clean = [r for r in predictions if r["variant"] == "clean" and not r["error"]]
    # 3 photos + broken in imagenet-real, one photo in train; 4 modern-matched; 4 quadrants; 1 A1111 file
    assert metrics["evaluated"]["n_items"] == 12 and len(clean) == N_READABLE
    assert (metrics["evaluated"]["n_real_items"], metrics["evaluated"]["n_ai_items"]) == (5, 7)
    assert metrics["evaluated"]["model_version"] == "test-logistic/1"
    assert set(metrics["evaluated"]["detectors"]) == {"provenance", "forensics"}
    assert all(len(d["versions"]) == 1 for d in metrics["evaluated"]["detectors"].values())

    # fusion_prob equals the artifact computed by hand; the 1x1 file has none of the model's features
    for row in clean:
        expected = _by_hand(row)
        assert (row["fusion_prob"] is None) == (expected is None)
        if expected is not None:
            assert row["fusion_prob"] == pytest.approx(expected, abs=1e-9)
    a1111 = next(r for r in clean if r["source"] == "generator-metadata")
    assert a1111["fusion_prob"] is None and a1111["decided_by"] == "hard_evidence" and a1111["verdict"] == "AI"

    y = np.array([r["label"] == "ai" for r in clean if r["fusion_prob"] is not None], dtype=int)
    p = np.array([r["fusion_prob"] for r in clean if r["fusion_prob"] is not None])
    overall = metrics["variants"]["clean"]["overall"]
    assert overall["auc"] == pytest.approx(roc_auc_score(y, p))
    assert overall["acc_ai"] == pytest.approx(float((p[y == 1] >= THRESHOLD).mean()))
    assert overall["ece"] == pytest.approx(expected_calibration_error(y, p))
    assert (overall["n"], overall["n_no_prob"], overall["n_hard_evidence"]) == (N_READABLE, 1, 1)
    right = sum(r["verdict"] == ("AI" if r["label"] == "ai" else "NON-AI") for r in clean)
    assert overall["verdict_accuracy"] == pytest.approx(right / N_READABLE)
    assert overall["uncertain_rate"] == pytest.approx(
        sum(THRESHOLD - BAND <= q < THRESHOLD + BAND for q in p) / N_READABLE
    )

    # single-feature AUC of a real_high feature: the negated raw value, recomputed
    noise = [(r["label"] == "ai", r["noise_log_variance"]) for r in clean if r["noise_log_variance"] is not None]
    entry = next(e for e in metrics["single_feature_auc"] if e["feature"] == "noise_log_variance")
    assert entry["detector"] == "forensics" and entry["direction"] == "real_high" and entry["n"] == len(noise)
    assert entry["auc"] == pytest.approx(roc_auc_score([a for a, _ in noise], [-v for _, v in noise]))
    c2pa = next(e for e in metrics["single_feature_auc"] if e["feature"] == "c2pa_present")
    assert c2pa["detector"] == "provenance" and c2pa["coverage"] == 1.0


def test_one_class_groups_get_only_their_class_metrics(report):
    per_source = json.loads((report / "metrics.json").read_text())["variants"]["clean"]["per_source"]
    assert set(per_source) == {"imagenet-real", "modern-matched", "sd15-grids", "generator-metadata"}
    photos = per_source["imagenet-real"]
    assert photos["n"] == 2 and photos["auc"] is None and photos["tpr_at_5pct_fpr"] is None and photos["acc_ai"] is None
    assert photos["acc_real"] is not None and 0.0 <= photos["acc_real"] <= 1.0
    grids = per_source["sd15-grids"]
    assert grids["n"] == 4 and grids["auc"] is None and grids["acc_real"] is None and grids["acc_ai"] is not None
    assert per_source["modern-matched"]["auc"] is not None
    # the A1111 file: no fusion probability at all, right by hard evidence alone
    metadata = per_source["generator-metadata"]
    assert (metadata["n_no_prob"], metadata["acc_ai"], metadata["verdict_accuracy"]) == (1, None, 1.0)
    generators = json.loads((report / "metrics.json").read_text())["variants"]["clean"]["per_generator"]
    assert generators["camera"]["auc"] is None and generators["Deliberate 2.0"]["n"] == 4


def test_robustness_variants_and_unreadable_item(report):
    metrics = json.loads((report / "metrics.json").read_text())
    assert list(metrics["variants"]) == ["clean", *ROBUSTNESS]
    for variant, m in metrics["variants"].items():
        assert m["overall"]["n"] == N_READABLE and m["n_unreadable"] == 1, variant
        assert m["overall"]["auc"] is not None
    # perturbations strip the A1111 metadata: no hard evidence, no probability, so UNKNOWN (counted wrong)
    assert metrics["variants"]["jpeg75"]["per_source"]["generator-metadata"]["verdict_accuracy"] == 0.0
    assert metrics["variants"]["jpeg75"]["overall"]["n_hard_evidence"] == 0
    assert metrics["variants"]["jpeg75"]["overall"] != metrics["variants"]["clean"]["overall"]
    [broken] = metrics["unreadable"]
    assert broken["filepath"].endswith("broken.jpg") and broken["label"] == "real"
    assert broken["variants"] == ["clean", *ROBUSTNESS]


def test_report_sections_tables_and_plots(report):
    text = (report / "report.md").read_text()
    metrics = json.loads((report / "metrics.json").read_text())
    for section in (
        "What was evaluated",
        "Overall (clean)",
        "Per source (clean)",
        "Per generator (clean)",
        "Robustness",
        "Calibration (clean)",
        "Single-feature AUC (clean)",
        "Unreadable items",
    ):
        assert f"\n## {section}\n" in text
    assert metrics["evaluated"]["manifest_sha256"] in text and "test-logistic/1" in text
    assert metrics["evaluated"]["command"].startswith("imgverify evaluate ") and "--robustness" in text

    # the tables show the numbers of metrics.json
    header = [
        "n",
        "real",
        "AI",
        "no prob",
        "AUC",
        "AP",
        "acc_real",
        "acc_ai",
        "TPR@5%FPR",
        "ECE",
        "Brier",
        "verdict acc",
        "uncertain",
        "confident acc",
        "hard evidence",
    ]
    keys = [
        "n",
        "n_real",
        "n_ai",
        "n_no_prob",
        "auc",
        "ap",
        "acc_real",
        "acc_ai",
        "tpr_at_5pct_fpr",
        "ece",
        "brier",
        "verdict_accuracy",
        "uncertain_rate",
        "confident_accuracy",
        "n_hard_evidence",
    ]
    per_source = _table_rows(text, "Per source (clean)")
    assert per_source["source"] == header
    for source, m in metrics["variants"]["clean"]["per_source"].items():
        assert per_source[source] == [fmt(m[k]) for k in keys], source
    assert per_source["imagenet-real"][header.index("AUC")] == "n/a"
    assert _table_rows(text, "Overall (clean)")["all"] == [
        fmt(metrics["variants"]["clean"]["overall"][k]) for k in keys
    ]
    grid = _table_rows(text, "Robustness")
    assert list(grid) == ["variant", "clean", *ROBUSTNESS]
    for variant, m in metrics["variants"].items():
        assert grid[variant][1] == fmt(m["overall"]["auc"]) and grid[variant][-1] == "1"
    features = _table_rows(text, "Single-feature AUC (clean)")
    for entry in metrics["single_feature_auc"]:
        assert features[entry["feature"]][4] == fmt(entry["auc"])
    assert re.search(r"\| `[^`]*broken\.jpg` \| real \| imagenet-real \| clean, jpeg95", text)

    for name in ("roc.png", "reliability.png", "per_source_accuracy.png"):
        assert f"]({name})" in text
        with Image.open(report / name) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 200


def test_single_class_or_empty_split_is_refused(tiny_manifest, fast_config, tmp_path, capsys):
    # Refused before any feature is extracted, so no Ray is needed here.
    with pytest.raises(EvaluationRefused, match=r"split 'train' .* has labels \['real'\]; it needs both"):
        evaluate(tiny_manifest, tmp_path / "out", fast_config, split="train")
    assert (
        main([str(tiny_manifest), "--config", str(fast_config), "--split", "val", "--out", str(tmp_path / "out")]) == 2
    )
    err = capsys.readouterr().err
    assert "split 'val'" in err and "has labels none" in err
    assert not (tmp_path / "out").exists()
