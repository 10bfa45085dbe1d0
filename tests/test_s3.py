"""Batch scoring from and to an S3 bucket: real Ray Data and pyarrow's S3 client against moto's S3 server.

moto runs as a separate process (``python -m moto.server``), an endpoint like MinIO's or GCS's S3 API, with
its IAM checks on: a request without the test user's keys is refused. Ray is started before the AWS_*
variables are set, so its workers never see them: reads in Ray Data's tasks work only if the driver's
endpoint, region and keys travel with the filesystem (``serve_app.batch.filesystem_from_uri``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import FIXTURES
from serve_app.batch import filesystem_from_uri, list_inputs, run_batch
from serve_app.local import free_port

boto3 = pytest.importorskip("boto3", reason="moto[server] from the test extra brings boto3")

REGION = "eu-central-1"  # not the SDK's default, so a worker that lost it would show us-east-1
# Objects under s3://imgs/in: committed fixture images (three formats, one nested prefix) and one bad object.
OBJECTS = {
    "in/camera.jpg": FIXTURES / "camera-models" / "real" / "Canon_EOS_7D.jpg",
    "in/real_0001.jpg": FIXTURES / "modern-matched" / "real" / "real_0001.jpg",
    "in/nested/comfyui.png": FIXTURES / "generator-metadata" / "ai" / "ComfyUI__img2img_cropped.png",
    "in/nested/grid.webp": FIXTURES / "sd15-grids" / "ai" / "Akira-Kurosawa.webp",
    "in/modern_ai.jpg": FIXTURES / "modern-matched" / "ai" / "ai_0000.jpg",
}
BAD_OBJECT = ("in/notes.jpg", b"not an image, whatever its name says")
LATE_OBJECT = ("in/late.jpg", FIXTURES / "modern-matched" / "real" / "real_0004.jpg")
# Weight-free: the real provenance detector beside debug_mean, their plain mean as the fusion.
CONFIG = {
    "applications": [
        {
            "name": "s3",
            "import_path": "serve_app.app:build_app",
            "args": {"detectors": [{"name": "provenance"}, {"name": "debug_mean"}], "fusion": {"model": "rule"}},
            "deployments": [
                {"name": "provenance", "ray_actor_options": {"num_cpus": 0.1}, "user_config": {"max_batch_size": 4}},
                {"name": "debug_mean", "ray_actor_options": {"num_cpus": 0.1}, "user_config": {"max_batch_size": 4}},
            ],
        }
    ]
}


def wait_for_port(port: int, server: subprocess.Popen, log: Path) -> None:
    """Until the server accepts connections (a bare TCP connect: an HTTP probe would count as an action)."""
    for _ in range(600):
        if server.poll() is not None:
            raise RuntimeError(f"moto server exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not listen on {port}: {log.read_text()[-2000:]}")


def test_user_keys(endpoint: str) -> dict[str, str]:
    """An IAM user allowed s3:*, and its keys: the server's three unauthenticated actions, spent here."""
    iam = boto3.client(
        "iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )
    iam.create_user(UserName="batch")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="batch", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="batch")["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


test_user_keys.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def s3(ray_session, tmp_path_factory) -> Iterator:
    """moto's S3 server with buckets ``imgs`` (the objects above) and ``scores`` (empty), and this process's
    AWS_* environment pointing at it for the module. Ray is started first, without these variables."""
    folder = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = folder / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}  # then every request must be signed by a known key
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    try:
        wait_for_port(port, server, log)
        endpoint = f"http://127.0.0.1:{port}"
        with pytest.MonkeyPatch.context() as patch:
            for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
                patch.delenv(name, raising=False)
            settings = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}
            for name, value in {**settings, **test_user_keys(endpoint)}.items():
                patch.setenv(name, value)
            client = boto3.client("s3")  # from the environment just set, as the batch job's client
            for bucket in ("imgs", "scores"):
                client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
            for key, path in OBJECTS.items():
                client.upload_file(str(path), "imgs", key)
            client.put_object(Bucket="imgs", Key=BAD_OBJECT[0], Body=BAD_OBJECT[1])
            yield client
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("s3config") / "s3.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def scores(prefix: str) -> dict[str, dict]:
    """The rows under ``s3://PREFIX`` by path, read back with pyarrow's S3 client; one row per path."""
    filesystem, root = filesystem_from_uri(f"s3://{prefix}")
    rows = pq.read_table(root, filesystem=filesystem).to_pylist()
    by_path = {row["path"]: row for row in rows}
    assert len(by_path) == len(rows), "a path was scored twice"
    return by_path


def part_files(client, prefix: str) -> list[str]:
    listing = client.list_objects_v2(Bucket="scores", Prefix=prefix).get("Contents", [])
    return sorted(item["Key"] for item in listing)


def test_batch_reads_and_writes_a_bucket_and_resumes(s3, config):
    summary = run_batch("s3://imgs/in", "s3://scores/run", config, progress=False, actors=1)
    assert (summary.files, summary.scored, summary.failed, summary.skipped, summary.parts) == (6, 5, 1, 0, 1)
    parts = part_files(s3, "run/")
    assert len(parts) == 1 and parts[0].startswith("run/part-") and parts[0].endswith(".parquet")

    rows = scores("scores/run")
    assert sorted(rows) == sorted(f"imgs/{key}" for key in [*OBJECTS, BAD_OBJECT[0]])
    bad = rows[f"imgs/{BAD_OBJECT[0]}"]
    assert bad["error"].startswith("not_an_image") and bad["label"] is None
    assert bad["sha256"] == hashlib.sha256(BAD_OBJECT[1]).hexdigest()
    for key, path in OBJECTS.items():
        row = rows[f"imgs/{key}"]
        assert row["error"] is None and row["label"] in ("AI", "NON-AI"), row
        assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # the object's bytes, read whole
        assert json.loads(row["detectors"])["provenance"]["status"] == "ok"
    # The provenance detector read the generator's metadata out of the object: the verdict is AI.
    assert rows["imgs/in/nested/comfyui.png"]["label"] == "AI"

    # An object added to the bucket since: a rerun over the same OUT scores that one alone (the six done are
    # read, hashed and skipped), into a part of its own beside the first.
    s3.upload_file(str(LATE_OBJECT[1]), "imgs", LATE_OBJECT[0])
    again = run_batch("s3://imgs/in", "s3://scores/run", config, progress=False, actors=1)
    assert (again.files, again.scored, again.failed, again.skipped, again.parts) == (7, 1, 0, 6, 1)
    later = part_files(s3, "run/")
    assert len(later) == 2 and set(parts) < set(later)
    rows = scores("scores/run")  # each path exactly once
    assert len(rows) == 7 and rows[f"imgs/{LATE_OBJECT[0]}"]["error"] is None


def test_the_filesystem_ray_tasks_get_carries_endpoint_region_and_keys(s3):
    """What a Ray worker without any AWS_* variable does with the pickled filesystem of the input."""
    import ray

    paths, filesystem = list_inputs("s3://imgs/in")
    assert f"imgs/{BAD_OBJECT[0]}" in paths

    @ray.remote(num_cpus=0.1)
    def read_there(filesystem: pafs.FileSystem, path: str) -> tuple[bool, str, bytes]:
        with filesystem.open_input_stream(path) as stream:
            return "AWS_ACCESS_KEY_ID" in os.environ, filesystem.region, stream.read()

    worker_has_keys, region, data = ray.get(read_there.remote(filesystem, f"imgs/{BAD_OBJECT[0]}"))
    assert not worker_has_keys  # else this test would show nothing
    assert region == REGION and data == BAD_OBJECT[1]


def test_a_uri_with_its_own_options_is_taken_as_written(s3):
    filesystem, path = filesystem_from_uri(
        f"s3://imgs/in?region=us-west-2&endpoint_override={os.environ['AWS_ENDPOINT_URL']}"
    )
    assert path == "imgs/in" and filesystem.region == "us-west-2"
    local, where = filesystem_from_uri(Path.cwd().as_uri())
    assert isinstance(local, pafs.LocalFileSystem) and where == str(Path.cwd())
