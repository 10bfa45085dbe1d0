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

from conftest import FAULTY_APP, REPO, image_bytes
from deployments.config import load_profile
from deployments.data import output_table, verdict_column
from models.fusion import DetectorOutcome
from models.verdict import Verdict, VerdictBody
from serve_app.batch import actors_per_detector, list_inputs, run_batch
from serve_app.responses import BatchItem, ServiceVerdict

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
            assert_row_is_the_answer(rows[path.name], answer)
            assert json.loads(rows[path.name]["missing"]) == answer["missing"] == []


def row_values(row: dict) -> dict:
    """A batch row's verdict fields as the HTTP body has them (JSON columns decoded)."""
    return {
        field: json.loads(row[field]) if verdict_column(info.annotation)[1] is not None else row[field]
        for field, info in VerdictBody.model_fields.items()
    }


def assert_row_is_the_answer(row: dict, answer: dict) -> None:
    """Field by field, every field of the declared verdict and every feature; latency aside."""
    ServiceVerdict.model_validate(answer)  # the HTTP body has the declared shape
    assert row["sha256"] == answer["image"]["sha256"] and row["error"] is None
    for field, value in row_values(row).items():
        expected = answer[field]
        if field == "detectors":  # latency is the one thing that differs between two runs
            value, expected = ({k: {**v, "latency_ms": None} for k, v in d.items()} for d in (value, expected))
        assert_close(value, expected, field)
    features = [name for name in answer if name not in BatchItem.model_fields]  # (a /v1/detect/batch item's too)
    assert features and all(row[f] == pytest.approx(answer[f], abs=1e-6) for f in features)


def test_batch_rows_equal_the_service_answers_when_detectors_fail_or_time_out(serve_url, fixtures, tmp_path):
    """The session's /faulty app (debug_sleep: 3 s behind a 0.5 s timeout; debug_fail raises) over HTTP, and
    ``imgverify batch`` with the same application as its config: the same verdict, missing detectors, statuses and
    reasons; a JPEG 33 bytes short is scored with its warning both ways, one cut to half refused both ways."""
    config = tmp_path / "faulty.yaml"
    config.write_text(yaml.safe_dump({"applications": [FAULTY_APP]}))
    photo = (fixtures / "camera-models" / "real" / "Canon_EOS_7D.jpg").read_bytes()
    files = {"photo.jpg": photo, "short.jpg": photo[:-33], "half.jpg": photo[: len(photo) // 2]}
    bucket = tmp_path / "faulty"
    bucket.mkdir()
    for name, data in files.items():
        (bucket / name).write_bytes(data)
    run_batch(str(bucket), str(tmp_path / "out"), config, progress=False)
    rows = {Path(r["path"]).name: r for r in read_rows(tmp_path / "out")}
    with httpx.Client(base_url=serve_url + "/faulty", timeout=120) as client:
        answers = {name: client.post("/v1/detect", files={"file": (name, data)}) for name, data in files.items()}
        listed = client.post("/v1/detect/batch", files=[("files", (name, data)) for name, data in files.items()])
    assert answers["half.jpg"].status_code == 400 and answers["half.jpg"].json()["error"] == "truncated_image"
    assert rows["half.jpg"]["error"].startswith("truncated_image: ") and rows["half.jpg"]["label"] is None
    items = {item["filename"]: item for item in listed.json()["results"]}
    assert items["half.jpg"]["error"] == "truncated_image"
    for name in ("photo.jpg", "short.jpg"):
        answer = answers[name].json()
        assert answers[name].status_code == 200
        assert_row_is_the_answer(rows[name], answer)
        assert_row_is_the_answer(rows[name], items[name])
        assert answer["missing"] == ["debug_sleep", "debug_fail"]
        assert {n: d["status"] for n, d in answer["detectors"].items()} == {
            "debug_mean": "ok",
            "debug_sleep": "timeout",
            "debug_fail": "failed",
        }
        assert answer["detectors"]["debug_sleep"]["error"] == "no answer within 0.5 s"
        assert answer["detectors"]["debug_fail"]["error"] == "forward: RuntimeError: debug_fail always fails"
        assert answer["fusion_prob"] == pytest.approx(answer["debug_prob"], abs=1e-6)  # the mean of what answered
        assert answer["reasoning"][0].endswith(
            "(debug_sleep and debug_fail did not answer), and no enabled detector reads the file's own claims about "
            "its origin."
        )
        assert answer["uncertain_range"] == [0.35, 0.65] and answer["threshold"] == 0.5
    assert answers["photo.jpg"].json()["warnings"] == [] and json.loads(rows["photo.jpg"]["warnings"]) == []
    short = answers["short.jpg"].json()
    assert short["warnings"] == ["truncated_image"]
    assert short["reasoning"][1].startswith("The file is damaged: its data ends early (truncated_image).")


def test_an_unknown_verdict_has_the_same_shape_as_a_row():
    """No detector the fusion reads answered: the verdict body (what /v1/detect answers with 503 and
    /v1/detect/batch lists) and its batch row carry the same fields, fusion_prob null and label UNKNOWN."""
    verdict = Verdict.build(["debug_sleep", "debug_fail"], "rule")
    body = verdict.decide(
        [DetectorOutcome.timed_out("debug_sleep", 0.5), DetectorOutcome("debug_fail", "failed", 1.0, error="boom")]
    )
    ServiceVerdict.model_validate({**body, "request_id": "", "image": IMAGE_SUMMARY, "timings": TIMINGS})
    row = output_table([{"path": "x.png", "sha256": "0" * 64, "error": None, **body}], verdict.features).to_pylist()[0]
    assert row_values(row) == {field: body[field] for field in VerdictBody.model_fields}
    assert (row["label"], row["fusion_prob"], row["decided_by"], row["error"]) == ("UNKNOWN", None, "none", None)
    assert json.loads(row["missing"]) == ["debug_sleep", "debug_fail"]
    assert json.loads(row["uncertain_range"]) == [0.35, 0.65]


IMAGE_SUMMARY = {"width": 1, "height": 1, "format": "PNG", "mode": "RGB", "frames": 1, "bytes": 1, "sha256": "0"}
TIMINGS = {"decode_ms": 0, "detectors_ms": 0, "fusion_ms": 0, "artifacts_ms": 0, "total_ms": 0}


def test_detector_pools_fit_in_the_free_resources_or_are_refused_clearly():
    """Fixed pools larger than what is free hang Ray Data silently (beside a running Serve app)."""
    profile = load_profile(REPO / "serve_config.local.yaml")
    need = sum(d.num_cpus for d in profile.detectors.values())
    stages = 4 * 0.1
    assert actors_per_detector(profile, 0.1, {"CPU": 2 * need + stages}) == 2
    assert actors_per_detector(profile, 0.1, {"CPU": 2 * need + stages - 0.05}) == 1
    with pytest.raises(RuntimeError, match="only 0.5 CPU"):
        actors_per_detector(profile, 0.1, {"CPU": 0.5})
