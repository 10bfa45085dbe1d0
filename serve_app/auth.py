"""API keys, per-key rate limits and request admission at the ingress' door (an ASGI middleware).

Off by default. Keys come from the app args (``access.api_keys``: hex sha256 of each key, never the key)
and/or from the environment variable ``IMGVERIFY_API_KEYS`` (raw keys, comma-separated, set in the ingress
replicas' environment, e.g. the Serve config's ``runtime_env.env_vars`` or the pod spec). With at least one
key configured:

* every ``/v1/*`` call needs ``Authorization: Bearer <key>``, else ``401`` ``{"error": "unauthorized"}``
  with ``WWW-Authenticate: Bearer``;
* open without a key: ``/healthz``, ``/`` and ``/static/*`` (the web page), ``/docs`` and ``/openapi.json``,
  and ``GET /v1/config`` (it says ``"auth_required": true`` so that the web page knows to ask for a key; it
  tells nothing secret);
* each key has a token bucket (``access.requests_per_minute`` or the key's own ``requests_per_minute``);
  over it: ``429`` ``{"error": "rate_limited"}`` with ``Retry-After``.

Presented keys are hashed with sha256 and compared to every configured hash with ``hmac.compare_digest``
(no early exit). Neither the key nor its hash is ever logged: a key is named in logs by its configured
``name`` or ``key#<8 hex of its sha256>`` (environment keys: ``env#<n>``).

The same middleware does the ingress' admission (``serve_app.admission``): the scoring endpoints
(``POST /v1/detect``, ``POST /v1/detect/batch``) count against ``admission.max_in_flight`` and are refused
at once over it, before a byte of their body is read, and an :class:`~serve_app.admission.Overloaded` raised
inside an endpoint (pixel budget, a detector's Serve queue being full) becomes ``503`` ``{"error": "overloaded"}``
with ``Retry-After``. It also bounds every request body (:class:`~serve_app.admission.BodyLimit`, from
``input.max_bytes``): a ``Content-Length`` over the limit is refused before admission, and a body without one
(chunked) is counted while the endpoint reads it and cut with ``413`` ``{"error": "too_large"}`` once over.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.image_input import DecodedImage, InputLimits, decode_image
from serve_app.admission import (
    BodyLimit,
    BodyTooLarge,
    InFlightLimit,
    Overloaded,
    PixelBudget,
    RateLimited,
    RateLimiter,
    Refusal,
    header_pixels,
)
from serve_app.responses import current_request_id

log = logging.getLogger("ray.serve")

OPEN_PATHS = {"/healthz", "/", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
OPEN_PREFIXES = ("/static/",)
OPEN_V1 = {("GET", "/v1/config")}  # the page reads it to know whether to ask for a key
SCORING = {("POST", "/v1/detect"), ("POST", "/v1/detect/batch")}


class Unauthorized(Refusal):
    """No valid API key: HTTP 401 ``unauthorized`` with ``WWW-Authenticate: Bearer``."""

    code = "unauthorized"
    status = 401

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": 'Bearer realm="imgverify"'}


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Key:
    """An accepted key as the service knows it: its hash, a log-safe label and its rate."""

    sha256: str
    label: str
    requests_per_minute: float | None = None


class KeyRing:
    """The accepted keys. ``enabled`` is False when there are none (auth off)."""

    def __init__(self, keys: list[Key]):
        self.keys = keys

    @classmethod
    def from_args(cls, access: Any, environ: Mapping[str, str] | None = None) -> KeyRing:
        """From ``AccessArgs`` plus the raw keys in ``environ[access.keys_env]``."""
        environ = os.environ if environ is None else environ
        keys = [
            Key(k.sha256, k.name or f"key#{k.sha256[:8]}", k.requests_per_minute or access.requests_per_minute)
            for k in access.api_keys
        ]
        raw = [part.strip() for part in environ.get(access.keys_env, "").split(",") if part.strip()]
        keys += [Key(sha256_hex(key), f"env#{i}", access.requests_per_minute) for i, key in enumerate(raw)]
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, authorization: str | None) -> Key:
        """The key named by an ``Authorization`` header value, or :class:`Unauthorized`."""
        if not authorization:
            raise Unauthorized("this service needs an API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <key>'")
        presented = sha256_hex(token).encode("ascii")
        found = None
        for key in self.keys:  # every key is compared: the time taken says nothing about which one matched
            if hmac.compare_digest(presented, key.sha256.encode("ascii")):
                found = key
        if found is None:
            raise Unauthorized("the API key is not valid (unknown or revoked)")
        return found


class Gate:
    """Everything one ingress replica checks before and while it scores a request."""

    def __init__(self, args: Any, environ: Mapping[str, str] | None = None):
        access, admission = args.access, args.admission
        self.keys = KeyRing.from_args(access, environ)
        self.burst = access.burst
        self.rates = RateLimiter()
        self.in_flight = InFlightLimit(admission.max_in_flight, admission.retry_after_s)
        self.pixels = PixelBudget(admission.max_decode_pixels, admission.pixel_wait_s, admission.retry_after_s)
        self.retry_after_s = admission.retry_after_s
        self.input = args.input

    def body_limit(self, path: str, content_type: str) -> BodyLimit:
        """How many bytes the body of a request to ``path`` may have (``input.max_bytes`` per image)."""
        return BodyLimit.for_request(path, content_type, self.input.max_bytes, self.input.max_batch_files)

    def authorize(self, method: str, path: str, authorization: str | None) -> Key | None:
        """Raise :class:`Unauthorized` / :class:`RateLimited` for a call that may not go on; return its key."""
        if not self.keys.enabled or not needs_key(method, path):
            return None
        key = self.keys.check(authorization)
        try:
            self.rates.check(key.sha256, key.requests_per_minute, self.burst)
        except RateLimited:
            log.warning("rate limited: %s %s by %s", method, path, key.label)
            raise
        return key

    async def decode(self, data: bytes, limits: InputLimits) -> DecodedImage:
        """``decode_image`` in a thread, within the pixel budget (header pixels, checked before decoding)."""
        if self.pixels.budget is None:
            return await asyncio.to_thread(decode_image, data, limits)
        pixels = header_pixels(data)
        if pixels > limits.max_pixels:  # refused on its header, nothing decoded
            pixels = 0
        async with self.pixels.hold(pixels):
            return await asyncio.to_thread(decode_image, data, limits)

    def stats(self) -> dict[str, Any]:
        return {
            "auth_required": self.keys.enabled,
            "in_flight": self.in_flight.in_flight,
            "rejected_in_flight": self.in_flight.rejected,
            "decode_pixels_in_use": self.pixels.in_use,
            "rejected_pixels": self.pixels.rejected,
            **self.rates.stats(),
        }


def needs_key(method: str, path: str) -> bool:
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or (method, path) in OPEN_V1:
        return False
    return path.startswith("/v1/") or path == "/v1"


# ---- one gate per ingress replica (a replica is one process) -------------------------------------------
_GATE: Gate | None = None


def install_gate(args: Any, environ: Mapping[str, str] | None = None) -> Gate:
    """Build this replica's :class:`Gate` from ``AppArgs`` and make the middleware use it."""
    global _GATE
    _GATE = Gate(args, environ)
    if _GATE.keys.enabled:
        labels = ", ".join(k.label for k in _GATE.keys.keys)
        log.info("API keys required on /v1/*: %d keys (%s)", len(_GATE.keys.keys), labels)
    return _GATE


def current_gate() -> Gate | None:
    return _GATE


def _request_id(scope: dict) -> str:
    request_id = current_request_id()
    if request_id:
        return request_id
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            return value.decode("latin-1")
    return ""


def error_body(code: str, detail: str, request_id: str) -> bytes:
    return json.dumps({"error": code, "detail": detail, "request_id": request_id}).encode("utf-8")


def route_path(scope: dict) -> str:
    """The path below the application's route prefix (Serve sets ``root_path`` to it)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :] or "/"
    return path


class GateMiddleware:
    """Pure ASGI middleware: keys, rate limits and admission before the app; ``Overloaded`` from inside it
    becomes a 503 JSON answer. Does nothing until :func:`install_gate` ran in this process."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        gate = _GATE
        if scope["type"] != "http" or gate is None:
            return await self.app(scope, receive, send)
        method, path = scope.get("method", "GET"), route_path(scope)
        headers = {name: value for name, value in scope.get("headers", [])}
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        limit = gate.body_limit(path, headers.get(b"content-type", b"").decode("latin-1"))
        try:  # key, rate, then a declared length: none of them takes an admission slot or reads the body
            gate.authorize(method, path, authorization)
            limit.check_length(headers.get(b"content-length", b"").decode("latin-1") or None)
        except Refusal as err:
            return await _send_error(scope, send, err)
        await self._admitted(gate, scope, limit.bounded(receive), send)

    async def _admitted(self, gate: Gate, scope, receive, send) -> None:
        """The app, within admission for the scoring endpoints; ``Overloaded`` and ``BodyTooLarge`` raised inside
        it become their JSON answers while no response has started."""
        method, path = scope.get("method", "GET"), route_path(scope)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            if (method, path) in SCORING:
                async with gate.in_flight.admit():  # refused here, before a byte of the body is read
                    await self.app(scope, receive, tracking_send)
            else:
                await self.app(scope, receive, tracking_send)
        except (Overloaded, BodyTooLarge) as err:
            if started:
                raise
            log.warning("%s: %s %s: %s", err.code, method, path, err.detail)
            await _send_error(scope, send, err)


async def _send_error(scope, send, refusal: Refusal) -> None:
    body = error_body(refusal.code, refusal.detail, _request_id(scope))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers().items()]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
