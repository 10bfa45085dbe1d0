"""Training the production fusion, end to end on tiny models: a production-like config (a CPU product's fusion plus
heavier detectors reported as context) -> ``imgverify features extract`` -> ``imgverify train fusion`` -> a calibrated
artifact that this config's Verdict loads and that reads a heavy detector's feature (docs/operations.md, "Training
the production fusion"). FatFormer and ManTra-Net are the tiny random models their own tests build; the images are
synthetic (camera-like JPEGs vs upsampled PNGs), so nothing here needs a data set or a hub."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from test_fatformer import TINY as TINY_FATFORMER
from test_fatformer import TINY_RESIZE, build_tiny
from test_mantranet import TINY as TINY_MANTRANET

import models
from deployments.config import load_profile
from models.fusion import DetectorOutcome, SchemaMismatch
from serve_app import cli
from training.dataset import build_manifest, write_manifest

# What the CPU product's fusion reads in this miniature: two forensics features (a hand-written logistic artifact).
PRODUCT_FEATURES = ["noise_log_variance", "spectrum_upsampling_peak"]
HEAVY = ("fatformer", "mantranet")
SPLITS = ["train"] * 8 + ["val"] * 6 + ["test"] * 2  # per class: 16 images each


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _images(root: Path, n: int = 16) -> None:
    """``real/``: sensor-like noise on smooth scenes, JPEG; ``ai/``: smooth scenes drawn at half size and upsampled,
    PNG. Different enough that the features separate them; not a claim about real generators."""
    rng = np.random.default_rng(0)
    for label in ("real", "ai"):
        (root / label).mkdir(parents=True)
    y, x = np.mgrid[0:128, 0:128] / 128.0
    for i in range(n):
        scene = np.stack([np.sin(3 * x + i) + y, np.cos(2 * y + i / 3) + x, x * y + i / n], axis=-1)
        scene = (scene - scene.min()) / (np.ptp(scene) + 1e-9) * 200 + 20
        noisy = np.clip(scene + rng.normal(0, 6, scene.shape), 0, 255).astype(np.uint8)
        (root / "real" / f"r{i:02d}.jpg").write_bytes(_jpeg(noisy))
        small = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8)).resize((64, 64), Image.Resampling.BICUBIC)
        upsampled = small.resize((128, 128), Image.Resampling.BILINEAR)
        (root / "ai" / f"a{i:02d}.png").write_bytes(_png(np.asarray(upsampled)))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    _images(root / "synthetic")
    table = build_manifest([root / "synthetic"])
    splits = [SPLITS[int(Path(p).stem[1:])] for p in table.column("filepath").to_pylist()]
    table = table.set_column(table.column_names.index("split"), "split", pa.array(splits, pa.string()))
    write_manifest(table, root / "manifest.parquet")
    return root / "manifest.parquet"


def _product_fusion(folder: Path) -> Path:
    """The CPU product's fusion in miniature: a calibrated logistic artifact on two forensics features."""
    schema = models.feature_schema(["forensics"])
    artifact = {
        "format": "imgverify-fusion/1",
        "version": "test-product-logistic/1",
        "model_type": "logistic",
        "features": PRODUCT_FEATURES,
        "impute": [2.0, 0.0],
        "scaler": {"mean": [2.0, 0.0], "scale": [1.0, 1.0]},
        "logistic": {"coef": [-1.0, 1.0, 0.0, 0.0], "intercept": 0.0},
        "calibration": {"method": "platt", "a": 1.0, "b": 0.0},
        "threshold": 0.5,
        "uncertain_range": [0.3, 0.7],
        "feature_specs": {name: dataclasses.asdict(schema[name]) for name in PRODUCT_FEATURES},
    }
    path = folder / "fusion_product.json"
    path.write_text(json.dumps(artifact))
    return path


def _config(folder: Path, fusion: Path, detectors: tuple[str, ...], weights: dict[str, dict]) -> Path:
    """A production-like Serve config: the product's detectors plus heavier ones, each with its settings."""
    deployments = [
        {"name": name, "ray_actor_options": {"num_cpus": 0.2}, "user_config": {"max_batch_size": 4, **weights[name]}}
        for name in detectors
    ]
    app = {
        "name": "imgverify",
        "import_path": "serve_app.app:build_app",
        "args": {"detectors": [{"name": n} for n in detectors], "fusion": {"model": str(fusion)}},
        "deployments": deployments,
    }
    path = folder / f"serve_config.{fusion.stem}.yaml"
    path.write_text(yaml.safe_dump({"applications": [app]}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("tiny_weights")
    checkpoint = folder / "fatformer_tiny.pth"
    torch.save({"model": build_tiny().state_dict(), "args": argparse.Namespace(num_vit_adapter=2)}, checkpoint)
    fatformer = {"weights": str(checkpoint), "architecture": TINY_FATFORMER, "resize_size": TINY_RESIZE}
    return {
        "provenance": {},
        "forensics": {},
        "fatformer": {"detector": fatformer},
        "mantranet": {"detector": dict(TINY_MANTRANET)},
    }


@pytest.fixture(scope="module")
def trained(ray_session, manifest, settings, tmp_path_factory) -> dict:
    """The documented path, through the `imgverify` command: features extract, then train fusion."""
    folder = tmp_path_factory.mktemp("production_fusion")
    detectors = ("provenance", "forensics", *HEAVY)
    before = _config(folder, _product_fusion(folder), detectors, settings)
    features, artifact = folder / "features.parquet", folder / "fusion_full.json"
    extract = ["features", "extract", str(manifest), "--config", str(before), "--out", str(features)]
    assert cli.main([*extract, "--cache", str(folder / "cache")]) == 0
    assert cli.main(["train", "fusion", str(features), "--config", str(before), "--out", str(artifact)]) == 0
    after = _config(folder, artifact, detectors, settings)
    return {"before": before, "after": after, "features": features, "artifact": artifact, "settings": settings}


def test_before_training_the_heavy_detectors_are_context(trained):
    roles = load_profile(trained["before"]).args.verdict().roles
    assert {name: roles[name] for name in HEAVY} == {"fatformer": "context", "mantranet": "context"}
    assert roles["forensics"] == "fusion input"


def test_every_detector_scored_every_image(trained):
    table = pq.read_table(trained["features"])
    assert table.num_rows == 32 and not any(table.column("error").to_pylist())
    for name in ("fatformer_prob", "mantra_anomaly", "noise_log_variance"):
        values = table.column(name).to_pylist()
        assert None not in values and len(set(values)) > 1, name


def test_the_new_fusion_reads_the_heavy_detectors_and_is_calibrated_like_the_local_one(trained):
    artifact = json.loads(trained["artifact"].read_text())
    assert {"fatformer_prob", "mantra_anomaly"} <= set(artifact["features"])
    assert set(artifact["detectors"]) == {"provenance", "forensics", *HEAVY}
    assert artifact["detector_versions"]["fatformer"] and artifact["detector_versions"]["mantranet"]
    # The same recipe as the shipped local fusion: calibrated on val, threshold for a target FPR, uncertain range.
    assert artifact["calibration"]["method"] == "platt" and artifact["target_fpr"] == 0.05
    low, high = artifact["uncertain_range"]
    assert 0 <= low <= artifact["threshold"] <= high <= 1
    assert artifact["training"]["rows"] == {"train": 16, "val": 12, "test": 4}


def test_the_artifact_loads_in_the_configs_verdict_and_a_heavy_feature_moves_it(trained):
    verdict = load_profile(trained["after"]).args.verdict()
    assert verdict.fusion.kind == "trained" and verdict.fusion.calibrated
    assert verdict.roles["fatformer"] == verdict.roles["mantranet"] == "fusion input"
    table = pq.read_table(trained["features"])
    row = 0
    outcomes = [DetectorOutcome.from_json(table.column(f"outcome.{n}")[row].as_py()) for n in verdict.roles]
    body = verdict.decide(outcomes)
    assert body["decided_by"] == "fusion" and 0 <= body["fusion_prob"] <= 1
    assert body["detectors"]["fatformer"]["role"] == "fusion input"
    features = {name: body[name] for name in verdict.fusion.features if name in body}
    moved = [verdict.fusion.predict_proba({**features, "fatformer_prob": value}) for value in (0.0, 1.0)]
    assert moved[0] != pytest.approx(moved[1], abs=1e-6), "the trained fusion must read fatformer_prob"


def test_a_config_that_drops_a_heavy_detector_the_fusion_reads_is_refused(trained, tmp_path):
    config = _config(tmp_path, trained["artifact"], ("provenance", "forensics", "mantranet"), trained["settings"])
    with pytest.raises(SchemaMismatch, match=r"does not run: fatformer \(fatformer_prob\)"):
        load_profile(config)
