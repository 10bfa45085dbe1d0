"""Operations over HTTP on the session's real Serve (see conftest): API keys, rate limits, backpressure and a
redeploy under load. One small extra application, ``/guarded``, runs beside the session's apps while this
module runs: two debug detectors, keys required, at most 8 scoring requests at once, and a detector that takes
one request at a time (1.5 s each) with a queue of 2 at the ingress' handle.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from test_web import browser, tab, upload, wait_for_verdict  # noqa: F401 - the page's fixtures and helpers

from conftest import image_bytes
from serve_app.local import deploy_apps

pytestmark = pytest.mark.serve

LOAD_KEY = "imgverify-test-load-key-7f3a"  # no rate limit
SLOW_KEY = "imgverify-test-slow-key-91c2"  # 2 requests a minute, burst 1
WRONG_KEY = "imgverify-test-wrong-key-0000"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


GUARDED_APP = {
    "name": "guarded",
    "route_prefix": "/guarded",
    "import_path": "serve_app.app:build_app",
    "args": {
        "detectors": [{"name": "debug_mean"}, {"name": "debug_sleep", "timeout_s": 60}],
        "fusion": {"model": "rule"},
        "access": {
            "api_keys": [{"sha256": sha(LOAD_KEY), "name": "load"}, {"sha256": sha(SLOW_KEY), "requests_per_minute": 2}]
        },
        "admission": {"max_in_flight": 8, "retry_after_s": 2},
    },
    "deployments": [
        # No graceful_shutdown_timeout_s: build_app sets Serve's drain window + the slowest request (100 s here).
        {"name": "FusionIngress", "ray_actor_options": {"num_cpus": 0.05}, "graceful_shutdown_wait_loop_s": 1},
        {"name": "debug_mean", "ray_actor_options": {"num_cpus": 0.05}},
        {
            "name": "debug_sleep",
            "ray_actor_options": {"num_cpus": 0.05},
            "max_ongoing_requests": 1,
            "max_queued_requests": 2,
            "graceful_shutdown_timeout_s": 60,
            "user_config": {"max_batch_size": 1, "detector": {"sleep_s": 1.5}},
        },
    ],
}


@pytest.fixture(scope="module")
def guarded(serve_apps):
    """The session's applications plus /guarded; /guarded is removed again after this module."""
    applications = [*serve_apps["applications"], GUARDED_APP]
    deploy_apps(applications)
    with httpx.Client(base_url=serve_apps["url"] + "/guarded", timeout=120) as http:
        yield {"client": http, "applications": applications}
    deploy_apps(serve_apps["applications"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def detect(client: httpx.Client, key: str | None = LOAD_KEY, seed: int = 0) -> httpx.Response:
    headers = bearer(key) if key else {}
    return client.post("/v1/detect", files={"file": ("x.png", image_bytes(size=(32, 32), seed=seed))}, headers=headers)


def test_open_paths_and_config_say_a_key_is_needed(guarded):
    client = guarded["client"]
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
    config = client.get("/v1/config")
    assert config.status_code == 200 and config.json()["auth_required"] is True


def test_missing_and_wrong_keys_get_401_json(guarded):
    client = guarded["client"]
    for headers in ({}, bearer(WRONG_KEY), {"Authorization": LOAD_KEY}):  # none, unknown (or revoked), not Bearer
        image = {"file": ("x.png", image_bytes(size=(32, 32)))}
        listed = client.get("/v1/detectors", headers=headers)
        for response in (listed, client.post("/v1/detect", files=image, headers=headers)):
            assert response.status_code == 401, response.text
            assert response.json()["error"] == "unauthorized" and response.json()["request_id"]
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/v1/detectors", headers=bearer(LOAD_KEY)).status_code == 200
    response = detect(client)
    assert response.status_code == 200 and response.json()["missing"] == []


def test_a_key_over_its_rate_gets_429_with_retry_after(guarded):
    client = guarded["client"]
    assert detect(client, SLOW_KEY).status_code == 200
    limited = detect(client, SLOW_KEY)
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert detect(client, LOAD_KEY).status_code == 200  # other keys are not affected


def test_overload_is_answered_at_once_with_503_overloaded(guarded):
    """16 at once against 8 admitted and a detector that holds 1 + 2 queued: every answer is a 200 or a
    503 overloaded with Retry-After; the detector's full queue (BackPressureError) makes the whole request 503.
    (Which requests the ingress' own admission refuses depends on arrival times; its answer is tested without
    Ray in test_admission.py.)"""
    client = guarded["client"]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda seed: detect(client, seed=seed), range(16)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, [r.text for r in responses]
    assert 200 in statuses and 503 in statuses
    refused = [r for r in responses if r.status_code == 503]
    for response in refused:
        body = response.json()
        assert body["error"] == "overloaded" and body["request_id"] and response.headers["retry-after"] == "2"
    details = [r.json()["detail"] for r in refused]
    assert all("(limit 8)" in d or "max_queued_requests=2" in d for d in details), details
    assert any(d.startswith("detector debug_sleep:") and "max_queued_requests=2" in d for d in details), details
    for response in responses:
        if response.status_code == 200:
            assert response.json()["missing"] == []  # a full queue never turns into a missing detector
    assert client.get("/healthz").status_code == 200


def test_the_web_page_asks_for_the_key_and_then_scores(guarded, serve_url, tab):  # noqa: F811 - the fixture
    """The page reads the open /v1/config, shows the key field, and sends the key it is given."""
    tab.open(f"{serve_url}/guarded/")
    assert tab.page.is_visible("#key-form")
    upload(tab, [("before.png", image_bytes(size=(32, 32)))])  # no key yet: the API's 401, shown as an error
    tab.page.wait_for_selector("#error:not([hidden])")
    assert tab.page.text_content("#error-code") == "unauthorized"
    tab.page.fill("#key-input", LOAD_KEY)
    tab.page.click("#key-form button[type=submit]")
    upload(tab, [("after.png", image_bytes(size=(32, 32)))])
    wait_for_verdict(tab, "after.png")
    assert tab.page.text_content("#verdict-label") in ("AI", "NON-AI")
    assert LOAD_KEY not in tab.page.content()
    tab.assert_no_console_errors(allowed=r"status of 401")


def test_keys_never_reach_the_logs(guarded, ray_session):
    """No key, configured or presented, in any Ray or Serve log; no hash in the replicas' logs. (Serve's
    controller logs an application's args when it builds it, so the configured *hashes* are in its build log.)"""
    logs = Path(ray_session._private.worker._global_node.get_logs_dir_path())
    files = [p for p in logs.rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err")]
    texts = {p: p.read_text(errors="replace") for p in files}
    everything = "".join(texts.values())
    replicas = "".join(t for p, t in texts.items() if p.name.startswith("replica_guarded_"))
    assert "rate limited" in replicas and "key#" in replicas  # the 429 above was logged, naming the key by label
    for key in (LOAD_KEY, SLOW_KEY, WRONG_KEY):
        assert key not in everything
        assert sha(key) not in replicas
    assert sha(WRONG_KEY) not in everything


def with_deployment(applications: list[dict], name: str, **options) -> list[dict]:
    """A copy of ``applications`` whose last application's deployment ``name`` has ``options`` set."""
    changed = copy.deepcopy(applications)
    for deployment in changed[-1]["deployments"]:
        if deployment["name"] == name:
            deployment.update(options)
    return changed


def test_redeploy_under_load_fails_no_request(guarded, ray_session):
    """A new user_config for a detector and new args for the ingress (every replica of the application replaced,
    the old ingress drained by graceful shutdown) while two clients keep scoring: zero failures.

    debug_sleep first gets room for the calls of both ingress replicas at once (max_in_flight 8 each), as the
    shipped configs give every detector: at a full replica the old ingress' calls can lose every routing retry to
    the new one's and time out (docs/operations.md, "Graceful shutdown and rollout")."""
    client = guarded["client"]
    steady = with_deployment(guarded["applications"], "debug_sleep", max_ongoing_requests=16)
    deploy_apps(steady)
    results: list[tuple[int | str, str | None]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=120, headers=bearer(LOAD_KEY)) as http:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    response = http.post("/v1/detect", files={"file": ("x.png", image_bytes(size=(32, 32), seed=n))})
                    if not response.headers.get("content-type", "").startswith("application/json"):
                        results.append((f"{response.status_code} {response.headers} {response.text[:200]!r}", None))
                        continue
                    body = response.json()
                    ok = response.status_code == 200 and body["missing"] == []
                    results.append(
                        (
                            response.status_code if ok else f"{response.status_code} {body}",
                            body.get("detectors", {}).get("debug_mean", {}).get("version"),
                        )
                    )
                except Exception as err:  # noqa: BLE001 - a connection error is a failed request
                    results.append((f"{type(err).__name__}: {err}", None))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        while len(results) < 2:
            time.sleep(0.2)
        changed = with_deployment(steady, "debug_mean", user_config={"detector": {"busy_ms": 1.0}})
        changed[-1]["args"]["admission"]["retry_after_s"] = 3  # new args: the ingress replica is replaced
        deploy_apps(changed)
        deadline = time.time() + 180
        while not any(version and "busy_ms=1.0" in version for _, version in results[-4:]):
            assert time.time() < deadline, "the new user_config never answered"
            time.sleep(0.5)
        seen = len(results)
        while len(results) < seen + 2:  # a few more on the new version
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
        deploy_apps(guarded["applications"])
    failures = [status for status, _ in results if status != 200]
    assert failures == [], failures
    # The ingress replica really was replaced under load (each replica writes its own log file).
    serve_logs = Path(ray_session._private.worker._global_node.get_logs_dir_path()) / "serve"
    assert len(list(serve_logs.glob("replica_guarded_FusionIngress_*.log"))) >= 2
    versions = {version for _, version in results}
    assert versions == {"debug_mean-1 busy_ms=0.0", "debug_mean-1 busy_ms=1.0"}, versions
