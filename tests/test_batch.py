"""Batch scoring with real Ray Data: error rows, resume after a kill, equality with the HTTP service."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, image_bytes
from deployments.config import load_profile
from deployments.data import verdict_column
from models.verdict import VerdictBody
from serve_app.batch import actors_per_detector, list_inputs, run_batch
from serve_app.responses import ServiceVerdict

DEBUG_CONFIG = {
    "applications": [
        {
            "name": "debug",
            "import_path": "serve_app.app:build_app",
            "args": {"detectors": [{"name": "debug_mean"}, {"name": "debug_sleep"}], "fusion": {"model": "rule"}},
            "deployments": [
                {"name": "debug_mean", "ray_actor_options": {"num_cpus": 0.05}, "user_config": {"max_batch_size": 2}},
                {
                    "name": "debug_sleep",
                    "ray_actor_options": {"num_cpus": 0.05},
                    "user_config": {"max_batch_size": 1, "detector": {"sleep_s": 0.5}},
                },
            ],
        }
    ]
}


@pytest.fixture
def bucket(tmp_path, fixtures, data_set) -> Path:
    """Good images of several formats, a corrupt JPEG, a non-image and a zero-byte file."""
    folder = tmp_path / "bucket"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(fixtures / "camera-models" / "real" / "Canon_EOS_7D.jpg", folder / "camera.jpg")
    shutil.copy(next((data_set("early-generators-ai") / "ai").rglob("*.png")), folder / "nested" / "generated.png")
    (folder / "random.webp").write_bytes(image_bytes("WEBP", size=(80, 60)))
    (folder / "corrupt.jpg").write_bytes((folder / "camera.jpg").read_bytes()[:3000])
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def debug_config(tmp_path: Path) -> Path:
    path = tmp_path / "debug.yaml"
    path.write_text(yaml.safe_dump(DEBUG_CONFIG))
    return path


def read_rows(out: Path) -> list[dict]:
    return pq.read_table(out).to_pylist()


def test_every_file_gets_exactly_one_row_errors_included(ray_session, bucket, tmp_path):
    out = tmp_path / "out"
    summary = run_batch(str(bucket), str(out), debug_config(tmp_path), rows_per_file=4, progress=False)
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    assert sorted(rows) == sorted(
        ["camera.jpg", "generated.png", "random.webp", "corrupt.jpg", "notes.txt", "empty.jpg"]
    )
    assert (summary.scored, summary.failed, summary.skipped) == (3, 3, 0)
    assert rows["notes.txt"]["error"].startswith("not_an_image")
    assert rows["empty.jpg"]["error"].startswith("empty_input")
    assert rows["corrupt.jpg"]["error"].split(":")[0] in ("truncated_image", "corrupt_image")
    for name in ("camera.jpg", "generated.png", "random.webp"):
        row = rows[name]
        assert row["error"] is None and row["label"] in ("AI", "NON-AI")
        assert row["fusion_prob"] == pytest.approx((row["debug_prob"] + row["debug_sleep_prob"]) / 2, abs=1e-5)
        assert json.loads(row["missing"]) == [] and json.loads(row["detectors"])["debug_mean"]["status"] == "ok"
    assert len(list(out.glob("part-*.parquet"))) == 2  # 6 rows at 4 per file
    # A second run over the same OUT finds everything done and writes nothing; given as URIs, both go
    # through the pyarrow filesystem path that s3:// takes, and name the same files.
    again = run_batch(bucket.as_uri(), out.as_uri(), debug_config(tmp_path), rows_per_file=4, progress=False)
    assert (again.scored, again.failed, again.skipped, again.parts) == (0, 0, 6, 0)
    assert len(read_rows(out)) == 6


def test_a_run_killed_midway_resumes_with_every_file_exactly_once(ray_session, data_set, tmp_path):
    bucket = tmp_path / "many"
    bucket.mkdir()
    for path in sorted((data_set("imagenet-real") / "real").glob("*.JPEG"))[:20]:
        shutil.copy(path, bucket / path.name)
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "serve_app.cli",
        "batch",
        str(bucket),
        "--out",
        str(out),
        "--config",
        str(debug_config(tmp_path)),
        "--rows-per-file",
        "1",
        "--files-per-block",
        "2",
        "--no-progress",
    ]
    log = tmp_path / "job.log"
    with open(log, "wb") as sink:
        job = subprocess.Popen(
            command, cwd=REPO, env=env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.time() + 300
        while len(list(out.glob("part-*.parquet"))) < 2:
            assert job.poll() is None, f"the batch job ended before it could be interrupted: {log.read_text()[-2000:]}"
            assert time.time() < deadline, "no part written in 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the driver and its local Ray, mid-run
        job.wait()
    written_before = len(read_rows(out))
    assert 2 <= written_before < 20
    summary = run_batch(str(bucket), str(out), debug_config(tmp_path), rows_per_file=5, progress=False)
    paths = [r["path"] for r in read_rows(out)]
    assert sorted(paths) == sorted(str(p.resolve()) for p in bucket.iterdir())  # every file exactly once
    assert summary.skipped == written_before and summary.scored == 20 - written_before


def test_a_manifest_needs_only_a_filepath_column(tmp_path, fixtures):
    photo = fixtures / "camera-models" / "real" / "Canon_EOS_7D.jpg"
    (tmp_path / "files.csv").write_text(f"filepath\n{photo}\n")
    assert list_inputs(str(tmp_path / "files.csv")) == ([str(photo.resolve())], None)
    (tmp_path / "gone.csv").write_text(f"filepath\n{tmp_path / 'gone.jpg'}\n")
    with pytest.raises(FileNotFoundError, match="names 1 files that do not exist"):
        list_inputs(str(tmp_path / "gone.csv"))


def assert_close(value, expected, where: str) -> None:
    """Equal, numbers within 1e-6 (a detector may batch differently in the service and in Ray Data)."""
    if isinstance(expected, dict):
        assert isinstance(value, dict) and value.keys() == expected.keys(), where
        for key in expected:
            assert_close(value[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(value, list) and len(value) == len(expected), where
        for i, (v, e) in enumerate(zip(value, expected)):
            assert_close(v, e, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert value == pytest.approx(expected, abs=1e-6), where
    else:
        assert value == expected, where


def test_batch_rows_equal_the_service_answers(serve_url, fixtures, tmp_path):
    bucket = tmp_path / "same"
    bucket.mkdir()
    sources = [
        fixtures / "camera-models" / "real" / "Canon_EOS_7D.jpg",
        fixtures / "c2pa" / "ai" / "DALL-E_cloud_surfing_puppy.webp",
        next((fixtures / "modern-matched" / "ai").glob("*.jpg")),
        next((fixtures / "sd15-grids" / "ai").glob("*.webp")),
    ]
    for path in sources:
        shutil.copy(path, bucket / path.name)
    out = tmp_path / "out"
    run_batch(str(bucket), str(out), REPO / "serve_config.local.yaml", progress=False)
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    with httpx.Client(base_url=serve_url, timeout=120) as client:
        for path in sources:
            answer = client.post("/v1/detect", files={"file": (path.name, path.read_bytes())}).json()
            ServiceVerdict.model_validate(answer)  # the HTTP body has the declared shape
            row = rows[path.name]
            assert row["sha256"] == answer["image"]["sha256"]
            # Field by field, every field of the declared verdict (JSON columns decoded) and every feature.
            for field, info in VerdictBody.model_fields.items():
                json_encoded = verdict_column(info.annotation)[1] is not None
                value, expected = json.loads(row[field]) if json_encoded else row[field], answer[field]
                if field == "detectors":  # latency is the one thing that differs between two runs
                    value, expected = ({k: {**v, "latency_ms": None} for k, v in d.items()} for d in (value, expected))
                assert_close(value, expected, field)
            features = [name for name in answer if name not in ServiceVerdict.model_fields]
            assert features and all(row[f] == pytest.approx(answer[f], abs=1e-6) for f in features)
            assert json.loads(row["missing"]) == answer["missing"] == []


def test_detector_pools_fit_in_the_free_resources_or_are_refused_clearly():
    """Fixed pools larger than what is free hang Ray Data silently (beside a running Serve app)."""
    profile = load_profile(REPO / "serve_config.local.yaml")
    need = sum(d.num_cpus for d in profile.detectors.values())
    stages = 4 * 0.1
    assert actors_per_detector(profile, 0.1, {"CPU": 2 * need + stages}) == 2
    assert actors_per_detector(profile, 0.1, {"CPU": 2 * need + stages - 0.05}) == 1
    with pytest.raises(RuntimeError, match="only 0.5 CPU"):
        actors_per_detector(profile, 0.1, {"CPU": 0.5})
