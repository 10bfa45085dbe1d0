"""bench/gpu_check.py: the comparison and report code, its CPU half on committed fixture images (what CI runs), and
its GPU half where torch sees CUDA (skipped otherwise). No timed assertions: speed is reported, never judged here."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from ray.serve.schema import ServeDeploySchema

from conftest import REPO
from deployments.config import load_profile

SCRIPT = REPO / "bench" / "gpu_check.py"
FIXTURE_IMAGES = [
    "camera-models/real/Canon_EOS_7D.jpg",
    "c2pa/ai/DALL-E_cloud_surfing_puppy.webp",
    "modern-matched/ai/ai_0000.jpg",
    "modern-matched/real/real_0001.jpg",
]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def items_folder(fixtures, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu_check_items")
    for name in FIXTURE_IMAGES:
        shutil.copy(fixtures / name, folder / Path(name).name)
    (folder / "notes.txt").write_text("not an image: not an item")
    return folder


def _verdict(label: str, prob: float | None, **features: float) -> dict:
    return {
        "label": label,
        "fusion_prob": prob,
        "uncertain": False,
        "decided_by": "fusion",
        "missing": [],
        **features,
    }


def test_compare_counts_agreement_and_deltas(gpu_check):
    reference = [_verdict("AI", 0.9, clip_b16_prob=0.8), _verdict("NON-AI", 0.1, clip_b16_prob=0.2)]
    reference += [_verdict("AI", 0.7, clip_b16_prob=0.6), None]
    other = [_verdict("AI", 0.91, clip_b16_prob=0.8), _verdict("AI", 0.6, clip_b16_prob=0.5)]
    other += [_verdict("AI", 0.7, clip_b16_prob=0.6), _verdict("AI", 0.5)]
    result = gpu_check.compare(reference, other, ["a", "b", "c", "d"], ["clip_b16_prob", "effnet_artifact_prob"])
    assert (result["compared"], result["unscored"]) == (3, 1)  # d did not decode on one side
    assert result["labels_agree"] == pytest.approx(2 / 3)
    assert result["label_differs"] == [{"item": "b", "reference": ["NON-AI", 0.1], "other": ["AI", 0.6]}]
    deltas = sorted([0.01, 0.5, 0.0])
    assert result["fusion_prob_delta"]["max"] == pytest.approx(0.5)
    assert result["fusion_prob_delta"]["p50"] == pytest.approx(deltas[1])
    assert result["fusion_prob_delta"]["p95"] == pytest.approx(0.01 + 0.9 * (0.5 - 0.01))  # numpy's linear rule
    assert result["feature_delta_p95"]["clip_b16_prob"] == pytest.approx(0.0 + 0.9 * 0.3)
    assert result["feature_delta_p95"]["effnet_artifact_prob"] is None  # present on neither side


def test_items_come_from_a_folder_or_a_manifests_test_split(gpu_check, items_folder, tmp_path):
    items = gpu_check.load_items(items_folder)
    assert [i.name for i in items] == sorted(Path(n).name for n in FIXTURE_IMAGES)  # notes.txt is no item
    paths = [str(items_folder / Path(n).name) for n in FIXTURE_IMAGES]
    manifest = pa.table(
        {
            "filepath": paths,
            "label": ["real", "ai", "ai", "real"],
            "split": ["test", "train", "test", "val"],
            "key": ["k0", "k1", "k2", "k3"],
            "crop": ["", "", "", ""],
        }
    )
    pq.write_table(manifest, tmp_path / "manifest.parquet")
    tested = gpu_check.load_items(tmp_path / "manifest.parquet")
    assert [i.name for i in tested] == ["k0", "k2"]
    assert tested[1].data == Path(paths[2]).read_bytes()
    assert len(gpu_check.load_items(items_folder, limit=2)) == 2


def test_the_gpu_application_keeps_what_can_decide_and_names_what_it_leaves_out(gpu_check):
    full = load_profile(REPO / "serve_config.yaml")
    kept, left_out = gpu_check.without_context(full)
    roles = full.args.verdict().roles
    assert list(kept.detectors) == [n for n in full.args.detector_names() if roles[n] != "context"]
    assert set(left_out) == {n for n, r in roles.items() if r == "context"} >= {"clip_h14", "fatformer", "mantranet"}
    assert kept.args.verdict().fusion.version == full.args.verdict().fusion.version
    app = gpu_check.gpu_application(REPO / "serve_config.yaml", list(kept.detectors))
    ServeDeploySchema.model_validate({"applications": [app]})
    assert {d["name"] for d in app["deployments"]} == {"FusionIngress", *kept.detectors}
    # as configured: GPU fractions for the detectors that have them
    by_name = {d["name"]: d for d in app["deployments"]}
    assert by_name["clip_b16"]["ray_actor_options"]["num_gpus"] > 0
    dry = gpu_check.gpu_application(REPO / "serve_config.yaml", list(kept.detectors), on_cpu=True)
    assert all("num_gpus" not in d["ray_actor_options"] and d["num_replicas"] == 1 for d in dry["deployments"])


def test_cpu_half_the_gpu_profile_answers_as_the_cpu_profile(items_folder, tmp_path):
    """What CI runs: both profiles in one process on the CPU, on committed images. The GPU profile's trained
    detectors and fusion are the local profile's, so every verdict must be the same; the report says so."""
    out = tmp_path / "gpu_check.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--items", str(items_folder), "--cpu-only", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    comparison = result["comparison"]
    assert (comparison["compared"], comparison["unscored"]) == (len(FIXTURE_IMAGES), 0)
    assert comparison["labels_agree"] == 1.0 and comparison["decided_by_agree"] == 1.0
    assert comparison["fusion_prob_delta"]["max"] == 0.0 and comparison["label_differs"] == []
    assert result["cpu_load_errors"] == result["other"]["load_errors"]  # the same product, the same failures
    # The DALL-E file's C2PA claim decides on both sides; the camera photo is scored by the fusion.
    verdicts = {name: (cpu_label, gpu_label) for name, cpu_label, _, gpu_label, _ in result["verdicts"]}
    assert verdicts["DALL-E_cloud_surfing_puppy.webp"] == ("AI", "AI")
    throughput = result["other"]["batch_throughput"]
    assert set(throughput) == set(load_profile(REPO / "serve_config.local.yaml").detectors) - set(
        result["cpu_load_errors"]
    )
    assert all(ips > 0 for by_size in throughput.values() for ips in by_size.values())
    assert "labels agree 1.000" in run.stdout and "|delta fusion_prob|: p50 0.000000, p95 0.000000" in run.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU half needs CUDA (bench/gpu_check.sh on a GPU box)")
def test_gpu_half_on_fixture_images(items_folder, tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--items", str(items_folder), "--requests", "64", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["comparison"]["compared"] == len(FIXTURE_IMAGES) and result["comparison"]["labels_agree"] == 1.0
    assert result["comparison"]["fusion_prob_delta"]["p95"] <= 0.02
    assert set(result["other"]["http"]) == {"c1", "c64"}
