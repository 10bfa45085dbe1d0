"""Shared test fixtures: committed real files, the image sets, offline mode, a network guard, image bytes."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_app.local import config_applications, deploy_apps, isolate_haproxy_ports, start_serve
from training import data_sources

# Tests never reach a model hub: everything they load is built by the tests themselves.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The shipped ingress (quickstart, Dockerfile, KubeRay): HAProxy in front of the ingress replicas. Read by Ray's
# processes at start, so it is set before the session's ray.init; RAY_SERVE_ENABLE_HA_PROXY=0 tests Serve's proxy.
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
isolate_haproxy_ports()  # a local service on the default ports does not collide with the session's
# A Ray Data job that stops moving fails the test in minutes, not after the default half hour.
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"  # small licensed real files, committed (see its README.md)


def data_missing(reason: str) -> None:
    """Skip a test whose image set is not here, or fail it where every set must be (``IMGVERIFY_REQUIRE_DATA=1``)."""
    if os.environ.get(data_sources.REQUIRE_ENV, "0") not in ("0", ""):
        pytest.fail(f"{reason} ({data_sources.REQUIRE_ENV} is set: data skips are failures here)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """``tests/fixtures``: the committed real files (camera JPEG, C2PA, generator metadata, a few photos and AI)."""
    return FIXTURES


@pytest.fixture(scope="session")
def data_set():
    """``data_set(NAME)``: the folder of image set NAME (``training.data_sources.locate``); the test is skipped
    with the command that fetches it when it is not here."""

    def find(name: str) -> Path:
        path = data_sources.locate(name)
        if path is None:
            data_missing(data_sources.missing_reason(name))
        return path

    return find


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder holding every image set (``$IMGVERIFY_DATA``, ``../shared/data`` or the fetch cache), for tests
    that name files across many sets; skipped unless one folder holds them all."""
    root = data_sources.data_root()
    missing = [name for name in data_sources.SETS if root is None or not (root / name).is_dir()]
    if missing:
        where = root or ", ".join(map(str, data_sources.search_roots()))
        data_missing(
            f"these tests read files across all image sets; {where} lacks {', '.join(missing)}: "
            f"run `{data_sources.fetch_command()}` (and copy the unfetchable ones) "
            f"or set ${data_sources.DATA_ENV}"
        )
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Fail any socket connection that is not to this machine (hub downloads, URL fetches)."""
    real_connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and sock.family != socket.AF_UNIX:
            raise AssertionError(f"test attempted a network connection to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), mode: str = "RGB", seed: int = 0, **save) -> bytes:
    """A random image of the given Pillow mode, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    image = rgb.convert(mode) if mode != "RGB" else rgb
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.fixture
def make_image():
    """Factory fixture around :func:`image_bytes`."""
    return image_bytes


# ---- one real Ray (and Serve) per test session ------------------------------------------------------
LOCAL_CONFIG = REPO / "serve_config.local.yaml"

# A second application beside the local profile: one detector that answers, one that is too slow for its
# timeout, one that raises. URL input is on here, so its refusals can be tested.
FAULTY_APP = {
    "name": "faulty",
    "route_prefix": "/faulty",
    "import_path": "serve_app.app:build_app",
    "args": {
        "detectors": [{"name": "debug_mean"}, {"name": "debug_sleep", "timeout_s": 0.5}, {"name": "debug_fail"}],
        "input": {"allow_url": True, "url_timeout_s": 2.0, "max_batch_files": 4},
        "fusion": {"model": "rule"},  # debug detectors: the uncalibrated mean, asked for by name
    },
    "deployments": [
        {"name": "FusionIngress", "ray_actor_options": {"num_cpus": 0.05}},
        {"name": "debug_mean", "ray_actor_options": {"num_cpus": 0.05}},
        {"name": "debug_sleep", "ray_actor_options": {"num_cpus": 0.05}, "user_config": {"detector": {"sleep_s": 3.0}}},
        {"name": "debug_fail", "ray_actor_options": {"num_cpus": 0.05}},
    ],
}


@pytest.fixture(scope="session")
def ray_session():
    """Ray, started once for the whole session and shut down at its end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_apps(ray_session) -> dict:
    """A real local Ray Serve on 127.0.0.1 and a free port, running the local offline profile from
    ``serve_config.local.yaml`` at ``/`` and the faulty test app at ``/faulty``."""
    from ray import serve

    url = start_serve()
    applications = [*config_applications(LOCAL_CONFIG), FAULTY_APP]
    deploy_apps(applications)
    yield {"url": url, "applications": applications}
    serve.shutdown()


@pytest.fixture(scope="session")
def ray_cluster():
    """A Ray cluster on this machine, a head (0 CPUs) and two workers of 2 CPUs each with Serve's proxy on the head,
    in a process of its own beside the session's one-node Ray (``tests/ray_cluster.py``); tests drive it with
    ``ray_cluster.call(...)`` and reach its HTTP at ``ray_cluster.started["url"]``."""
    from ray_cluster import ClusterProcess

    cluster = ClusterProcess(workers=2, worker_cpus=2)
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def serve_url(serve_apps) -> str:
    return serve_apps["url"]
