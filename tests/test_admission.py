"""Admission, API keys and rate limits as plain classes and one ASGI app, without Ray (serve_app/admission.py,
serve_app/auth.py), plus the polite retries of ``imgverify score``."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import hashlib
import json
import logging

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from conftest import image_bytes
from deployments.config import AccessArgs, AppArgs
from models.image_input import InputLimits
from serve_app import auth
from serve_app.admission import (
    FRAMING_BYTES,
    BodyLimit,
    BodyTooLarge,
    InFlightLimit,
    Overloaded,
    PixelBudget,
    RateLimited,
    RateLimiter,
    TokenBucket,
    header_pixels,
    retry_after_header,
)
from serve_app.auth import Gate, KeyRing, Unauthorized, needs_key, route_path
from serve_app.cli import post_politely, retry_after_s

KEY = "s3cret-key-one"
OTHER = "s3cret-key-two"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- token bucket and rate limiter -------------------------------------------------------------------
def test_token_bucket_allows_a_burst_then_refills_at_its_rate():
    clock = Clock()
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token is 1/2 s away
    clock.now += 0.5
    assert bucket.take() == 0.0 and bucket.take() == pytest.approx(0.5)
    clock.now += 100  # never more than the burst
    assert [bucket.take() for _ in range(4)][-1] > 0


def test_token_bucket_refuses_nonsense():
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0.5)


def test_rate_limiter_is_per_key_and_says_when_to_come_back():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.check("a", per_minute=60, burst=2)
    limiter.check("a", per_minute=60, burst=2)
    with pytest.raises(RateLimited) as err:
        limiter.check("a", per_minute=60, burst=2)
    assert err.value.status == 429 and err.value.code == "rate_limited"
    assert err.value.retry_after_s == pytest.approx(1.0) and retry_after_header(err.value.retry_after_s) == "1"
    limiter.check("b", per_minute=60, burst=2)  # another key has its own bucket
    clock.now += 1.0
    limiter.check("a", per_minute=60, burst=2)
    for _ in range(1000):
        limiter.check("unlimited", per_minute=None)
    assert limiter.stats() == {"keys": 2, "limited": 1}


def test_default_burst_is_ten_seconds_of_the_rate():
    limiter = RateLimiter(Clock())
    for _ in range(10):
        limiter.check("k", per_minute=60)
    with pytest.raises(RateLimited):
        limiter.check("k", per_minute=60)


# ---- in-flight admission -----------------------------------------------------------------------------
def test_in_flight_limit_refuses_at_once_and_frees_on_release():
    limit = InFlightLimit(2, retry_after_s=3)
    limit.acquire()
    limit.acquire()
    with pytest.raises(Overloaded) as err:
        limit.acquire()
    assert err.value.status == 503 and err.value.code == "overloaded" and err.value.retry_after_s == 3
    assert limit.in_flight == 2 and limit.rejected == 1
    limit.release()
    limit.acquire()
    unlimited = InFlightLimit(None)
    for _ in range(10_000):
        unlimited.acquire()


def test_in_flight_limit_releases_when_the_request_fails():
    limit = InFlightLimit(1)

    async def failing():
        async with limit.admit():
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        asyncio.run(failing())
    assert limit.in_flight == 0


# ---- pixel budget --------------------------------------------------------------------------------------
def test_pixel_budget_waits_for_room_first_come_first_served():
    async def scenario():
        budget = PixelBudget(100, wait_s=5)
        first = await budget.reserve(80)
        order = []

        async def wait_for(name, pixels):
            granted = await budget.reserve(pixels)
            order.append(name)
            return granted

        big = asyncio.create_task(wait_for("big", 60))
        await asyncio.sleep(0)
        small = asyncio.create_task(wait_for("small", 10))  # fits now, but queues behind "big"
        await asyncio.sleep(0)
        assert order == [] and budget.in_use == 80
        budget.release(first)
        assert await big == 60 and await small == 10
        assert order == ["big", "small"] and budget.in_use == 70
        budget.release(60)
        budget.release(10)
        assert budget.in_use == 0 and not budget._waiters

    asyncio.run(scenario())


def test_pixel_budget_refuses_with_overloaded_after_its_wait():
    async def scenario():
        budget = PixelBudget(100, wait_s=0.01, retry_after_s=2)
        await budget.reserve(100)
        with pytest.raises(Overloaded) as err:
            await budget.reserve(1)
        assert err.value.retry_after_s == 2 and "decode budget" in err.value.detail
        assert budget.rejected == 1 and budget.in_use == 100 and not budget._waiters
        budget.release(100)
        assert await budget.reserve(1) == 1

    asyncio.run(scenario())


def test_an_image_larger_than_the_budget_runs_alone():
    async def scenario():
        budget = PixelBudget(100, wait_s=0.01)
        assert await budget.reserve(10_000) == 100  # clamped to the whole budget
        with pytest.raises(Overloaded):
            await budget.reserve(1)

    asyncio.run(scenario())


def test_header_pixels_reads_the_header_only():
    assert header_pixels(image_bytes("PNG", size=(64, 48))) == 64 * 48
    assert header_pixels(b"not an image") == 0


def test_gate_decodes_within_the_pixel_budget():
    args = AppArgs.model_validate(
        {"detectors": [{"name": "debug_mean"}], "admission": {"max_decode_pixels": 5000, "pixel_wait_s": 0.01}}
    )
    gate = Gate(args, environ={})

    async def scenario():
        image = await gate.decode(image_bytes("PNG", size=(64, 48)), InputLimits())
        assert image.rgb.shape == (48, 64, 3) and gate.pixels.in_use == 0
        await gate.pixels.reserve(5000)  # the budget is full: the next decode waits, then gives up
        with pytest.raises(Overloaded):
            await gate.decode(image_bytes("PNG", size=(64, 48)), InputLimits())

    asyncio.run(scenario())


# ---- keys ----------------------------------------------------------------------------------------------
def test_no_keys_means_auth_is_off():
    ring = KeyRing.from_args(AccessArgs(), environ={})
    assert not ring.enabled


def test_keys_from_hashes_and_from_the_environment():
    access = AccessArgs(api_keys=[sha(KEY)], requests_per_minute=30)
    ring = KeyRing.from_args(access, environ={"IMGVERIFY_API_KEYS": f" {OTHER} ,, "})
    assert ring.enabled and len(ring.keys) == 2
    assert ring.check(f"Bearer {KEY}").label == f"key#{sha(KEY)[:8]}"
    assert ring.check(f"bearer   {OTHER}").label == "env#0"
    assert all(k.requests_per_minute == 30 for k in ring.keys)
    for header in (None, "", KEY, f"Basic {KEY}", "Bearer ", f"Bearer {KEY}x", "Bearer revoked-or-unknown"):
        with pytest.raises(Unauthorized):
            ring.check(header)


def test_a_key_may_have_its_own_rate_and_name():
    access = AccessArgs(api_keys=[{"sha256": sha(KEY).upper(), "name": "batch-team", "requests_per_minute": 600}])
    key = KeyRing.from_args(access, environ={}).check(f"Bearer {KEY}")
    assert key.label == "batch-team" and key.requests_per_minute == 600


def test_a_raw_key_in_place_of_its_hash_is_refused():
    with pytest.raises(ValueError):
        AccessArgs(api_keys=[KEY])


def test_keys_are_compared_with_compare_digest_against_every_key(monkeypatch):
    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    ring = KeyRing.from_args(AccessArgs(api_keys=[sha(KEY), sha(OTHER)]), environ={})
    ring.check(f"Bearer {KEY}")  # matches the first, still compares the second
    assert len(calls) == 2


def test_which_paths_need_a_key():
    for method, path in [
        ("GET", "/healthz"),
        ("GET", "/"),
        ("GET", "/static/app.js"),
        ("GET", "/v1/config"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
    ]:
        assert not needs_key(method, path), path
    for method, path in [
        ("POST", "/v1/detect"),
        ("POST", "/v1/detect/batch"),
        ("GET", "/v1/detectors"),
        ("POST", "/v1/config"),
        ("GET", "/v1/anything"),
    ]:
        assert needs_key(method, path), path
    assert route_path({"path": "/faulty/v1/detect", "root_path": "/faulty"}) == "/v1/detect"
    assert route_path({"path": "/v1/detect", "root_path": "/faulty"}) == "/v1/detect"
    assert route_path({"path": "/faultyx/v1", "root_path": "/faulty"}) == "/faultyx/v1"


# ---- the middleware on a small FastAPI app --------------------------------------------------------------
def make_app(gate_args: dict, monkeypatch) -> tuple[FastAPI, Gate]:
    app = FastAPI()
    app.add_middleware(auth.GateMiddleware)

    @app.post("/v1/detect")
    async def detect(request: Request):
        if request.headers.get("x-overload"):
            raise Overloaded("detector x: queue full", 2)
        await request.body()  # read, as the ingress reads an image body
        return JSONResponse({"label": "NON-AI"})

    @app.get("/v1/config")
    async def config():
        return JSONResponse({"auth_required": gate.keys.enabled})

    @app.get("/healthz")
    async def healthz():
        return JSONResponse({"status": "ready"})

    monkeypatch.setattr(auth, "_GATE", None)
    gate = auth.install_gate(AppArgs.model_validate({"detectors": [{"name": "debug_mean"}], **gate_args}), environ={})
    return app, gate


def call(app: FastAPI, method: str, path: str, key: str | None = None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kwargs.pop("headers", {}))

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(run())


def test_middleware_without_keys_changes_nothing(monkeypatch):
    app, _ = make_app({}, monkeypatch)
    assert call(app, "POST", "/v1/detect").json() == {"label": "NON-AI"}
    assert call(app, "GET", "/v1/config").json() == {"auth_required": False}


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


def test_middleware_answers_401_429_as_json_and_keeps_keys_out_of_logs(monkeypatch):
    import ray.serve  # noqa: F401 - its import resets the "ray.serve" logger's handlers: first, then ours

    serve_log = logging.getLogger("ray.serve")
    handler = ListHandler()
    serve_log.addHandler(handler)
    access = {"api_keys": [sha(KEY)], "requests_per_minute": 60, "burst": 2}
    app, _ = make_app({"access": access}, monkeypatch)
    assert call(app, "GET", "/healthz").status_code == 200
    assert call(app, "GET", "/v1/config").json() == {"auth_required": True}
    for key in (None, "wrong-key"):
        response = call(app, "POST", "/v1/detect", key=key, headers={"x-request-id": "rid-1"})
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"] == "unauthorized" and response.json()["request_id"] == "rid-1"
    assert [call(app, "POST", "/v1/detect", key=KEY).status_code for _ in range(2)] == [200, 200]
    limited = call(app, "POST", "/v1/detect", key=KEY)
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    serve_log.removeHandler(handler)
    text = "\n".join(handler.lines)
    assert "rate limited" in text and "key#" in text
    assert KEY not in text and sha(KEY) not in text and "wrong-key" not in text


def test_middleware_turns_overload_into_503_with_retry_after(monkeypatch):
    app, gate = make_app({"admission": {"max_in_flight": 1, "retry_after_s": 4}}, monkeypatch)
    raised = call(app, "POST", "/v1/detect", headers={"x-overload": "1"})
    assert raised.status_code == 503 and raised.headers["retry-after"] == "2"
    assert raised.json()["error"] == "overloaded" and "queue full" in raised.json()["detail"]
    assert gate.in_flight.in_flight == 0  # released after the failed request
    gate.in_flight.in_flight = 1  # another request is being scored
    refused = call(app, "POST", "/v1/detect")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "4"
    assert refused.json()["error"] == "overloaded" and set(refused.json()) == {"error", "detail", "request_id"}
    assert call(app, "GET", "/v1/config").status_code == 200  # only scoring counts against admission
    gate.in_flight.in_flight = 0
    assert call(app, "POST", "/v1/detect").status_code == 200


# ---- bodies: bounded while read, and not read at all when admission refuses -------------------------------
def test_body_limit_per_kind_of_request():
    mib = 1024 * 1024
    assert BodyLimit.for_request("/v1/detect", "image/png", 32 * mib, 16).limit == 32 * mib
    assert BodyLimit.for_request("/v1/detect", "multipart/form-data; boundary=x", 32 * mib, 16).limit == 32 * mib
    assert BodyLimit.for_request("/v1/detect", "Application/JSON; charset=utf-8", 3 * mib, 16).limit == 4 * mib + 1024
    assert BodyLimit.for_request("/v1/detect/batch", "multipart/form-data", 32 * mib, 16).limit == 512 * mib
    limit = BodyLimit(1000)
    limit.check_length(str(1000 + FRAMING_BYTES))  # framing room
    for length in (None, "", "abc"):
        limit.check_length(length)  # no usable length: counted while read instead
    with pytest.raises(BodyTooLarge) as err:
        limit.check_length(str(1001 + FRAMING_BYTES))
    assert (err.value.status, err.value.code) == (413, "too_large") and "the limit is 1000" in err.value.detail


class AsgiCall:
    """One request straight into an ASGI app: a body in chunks (no Content-Length unless given), the receive
    calls counted, the answer collected."""

    def __init__(self, chunks: list[bytes], headers: dict[str, str] | None = None):
        self.chunks = list(chunks)
        self.headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.receives = 0
        self.messages: list[dict] = []

    async def receive(self) -> dict:
        self.receives += 1
        if not self.chunks:
            return {"type": "http.disconnect"}
        body = self.chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(self.chunks)}

    async def send(self, message: dict) -> None:
        self.messages.append(message)

    def run(self, app, path: str = "/v1/detect") -> tuple[int, dict, dict]:
        scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": self.headers}
        scope.update({"query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("t", 80)})
        asyncio.run(app(scope, self.receive, self.send))
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")
        return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


def test_a_chunked_body_is_cut_at_the_limit_while_it_is_read(monkeypatch):
    app, _ = make_app({"input": {"max_bytes": 1000}}, monkeypatch)
    chunk = b"\0" * 16 * 1024  # 16 KiB; the limit is 1000 bytes + 64 KiB of framing room
    under = AsgiCall([chunk] * 4, {"content-type": "image/png"})
    assert under.run(app)[0] == 200
    over = AsgiCall([chunk] * 100, {"content-type": "image/png", "x-request-id": "rid-9"})
    status, headers, body = over.run(app)
    assert status == 413 and headers["content-type"] == "application/json"
    assert body["error"] == "too_large" and body["request_id"] == "rid-9" and "1000" in body["detail"]
    assert over.receives == 5 and len(over.chunks) == 95  # cut on the chunk that passed the limit, the rest unread
    declared = AsgiCall([chunk] * 100, {"content-type": "image/png", "content-length": str(100 * len(chunk))})
    assert declared.run(app)[0] == 413 and declared.receives == 0  # refused on its Content-Length alone


def test_admission_refuses_before_the_body_is_read(monkeypatch):
    app, gate = make_app({"admission": {"max_in_flight": 1, "retry_after_s": 2}}, monkeypatch)
    gate.in_flight.in_flight = 1  # another request is being scored
    refused = AsgiCall([b"\0" * 1024] * 8, {"content-type": "image/png"})
    status, headers, body = refused.run(app)
    assert status == 503 and headers["retry-after"] == "2" and body["error"] == "overloaded"
    assert refused.receives == 0 and len(refused.chunks) == 8  # not one body byte was read
    gate.in_flight.in_flight = 0
    admitted = AsgiCall([b"\0" * 1024] * 8, {"content-type": "image/png"})
    assert admitted.run(app)[0] == 200 and admitted.receives == 8


# ---- imgverify score retries politely -------------------------------------------------------------------
def test_score_retries_on_503_and_429_honouring_retry_after():
    answers = [
        httpx.Response(503, headers={"retry-after": "2"}, json={"error": "overloaded"}),
        httpx.Response(429, headers={"retry-after": "5"}, json={"error": "rate_limited"}),
        httpx.Response(200, json={"label": "AI"}),
    ]
    seen, slept = [], []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return answers[len(seen) - 1]

    transport = httpx.MockTransport(handler)
    with httpx.Client(transport=transport, base_url="http://x", headers={"Authorization": "Bearer k"}) as client:
        response = post_politely(client, "/v1/detect", retries=3, sleep=slept.append, content=b"x")
    assert response.status_code == 200 and len(seen) == 3 and seen[0] == "Bearer k"
    assert 2 <= slept[0] <= 2.2 and 5 <= slept[1] <= 5.5


def test_score_gives_up_after_its_retries_and_never_retries_a_final_answer():
    overloaded = httpx.Response(503, headers={"retry-after": "1"}, json={"error": "overloaded"})
    count = []

    def handler(request):
        count.append(1)
        return overloaded

    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://x") as client:
        assert post_politely(client, "/v1/detect", retries=2, sleep=lambda s: None).status_code == 503
    assert len(count) == 3
    assert retry_after_s(httpx.Response(503, json={"label": "UNKNOWN"})) is None  # every detector missing: final
    assert retry_after_s(httpx.Response(401, json={"error": "unauthorized"})) is None
    assert retry_after_s(httpx.Response(503, headers={"retry-after": "3600"})) == 30.0
    in_20_s = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=20)
    soon = email.utils.format_datetime(in_20_s, usegmt=True)
    assert 15 <= retry_after_s(httpx.Response(429, headers={"retry-after": soon})) <= 20  # an HTTP date
    assert retry_after_s(httpx.Response(429, headers={"retry-after": "soon"})) == 1.0  # unreadable: a short back-off
