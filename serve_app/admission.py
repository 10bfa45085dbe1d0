"""Admission control in the ingress: who gets in now, and who is told to come back later.

Three plain, Ray-free pieces, used by ``serve_app.app.FusionIngress`` (one set per ingress replica):

* :class:`InFlightLimit`: a non-blocking counter of the scoring requests this replica is working on. Over its
  limit a request is refused at once with :class:`Overloaded` (HTTP 503 ``overloaded`` + ``Retry-After``),
  instead of queueing for minutes behind the ones already admitted. Serve's own ``max_ongoing_requests`` and
  ``max_queued_requests`` stay as the outer bound; when *they* trip, Serve's proxy answers with a plain-text
  503, which is why the ingress does its own admission below them, with a JSON answer.
* :class:`PixelBudget`: the pixels of the images being decoded at once in this replica. Decoding holds
  roughly 7-8 bytes per pixel (the source image in Pillow plus the RGB array), so 32 concurrent 50-megapixel
  uploads would want ~12 GB. An image whose header says it does not fit **waits briefly** (``pixel_wait_s``,
  FIFO-fair, since decodes finish in well under a second) and is refused with 503 ``overloaded`` if the
  budget has not freed up by then. A single image larger than the whole budget is admitted alone (it is
  already under ``input.max_pixels``, which is checked on the same header).
* :class:`TokenBucket` / :class:`RateLimiter`: per-key request rate (requests per minute, with a burst);
  over it the caller gets 429 ``rate_limited`` with ``Retry-After`` (see ``serve_app.auth``).
* :class:`BodyLimit`: the bytes one request body may have. Checked on ``Content-Length`` before anything is read,
  and counted while the body is read (a chunked body has no length), so a body over it is cut with 413
  ``too_large`` as soon as it passes the limit, never held whole in memory first.

Nothing here blocks the event loop; every check is O(1) and single-threaded (the replica's asyncio loop).
"""

from __future__ import annotations

import asyncio
import collections
import io
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image


class Refusal(Exception):
    """A request turned away at the door: HTTP ``status`` with ``{"error": code, "detail": ...}`` and ``headers()``."""

    code = "refused"
    status = 400

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail

    def headers(self) -> dict[str, str]:
        return {}


class RetryLater(Refusal):
    """A refusal that says when to come back: ``Retry-After`` (whole seconds)."""

    def __init__(self, detail: str, retry_after_s: float = 1.0):
        super().__init__(detail)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"retry-after": retry_after_header(self.retry_after_s)}


class Overloaded(RetryLater):
    """The service is over one of its admission limits: HTTP 503 ``overloaded`` with ``Retry-After``."""

    code = "overloaded"
    status = 503


class RateLimited(RetryLater):
    """A key over its request rate: HTTP 429 ``rate_limited`` with ``Retry-After``."""

    code = "rate_limited"
    status = 429


class BodyTooLarge(Refusal):
    """A request body over its :class:`BodyLimit`: HTTP 413 ``too_large``."""

    code = "too_large"
    status = 413


Receive = Callable[[], Awaitable[dict]]
FRAMING_BYTES = 64 * 1024  # room for multipart boundaries and part headers around the image bytes


@dataclass(frozen=True)
class BodyLimit:
    """At most ``limit`` bytes of image data in one request body, plus :data:`FRAMING_BYTES` for framing."""

    limit: int

    @classmethod
    def for_request(cls, path: str, content_type: str, max_bytes: int, max_batch_files: int) -> BodyLimit:
        """The limit of one request: a batch carries up to ``max_batch_files`` images, base64 in JSON is 4/3 of
        the bytes it carries, every other body one image."""
        if path == "/v1/detect/batch":
            return cls(max_bytes * max_batch_files)
        if content_type.split(";")[0].strip().lower() == "application/json":
            return cls(max_bytes * 4 // 3 + 1024)
        return cls(max_bytes)

    @property
    def cut_at(self) -> int:
        return self.limit + FRAMING_BYTES

    def check_length(self, content_length: str | None) -> None:
        """Refuse a declared ``Content-Length`` over the limit before a byte of the body is read."""
        if content_length is not None and content_length.isdigit() and int(content_length) > self.cut_at:
            raise BodyTooLarge(f"request body is {content_length} bytes, the limit is {self.limit}")

    def bounded(self, receive: Receive) -> Receive:
        """``receive`` that counts body bytes and raises :class:`BodyTooLarge` once they pass the limit (a
        chunked body has no length to check up front)."""
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.cut_at:
                    raise BodyTooLarge(f"request body passed the limit of {self.limit} bytes (cut at {received})")
            return message

        return counted


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` takes whole seconds; never 0, so a polite client always backs off a little."""
    return str(max(1, math.ceil(seconds)))


class InFlightLimit:
    """At most ``limit`` requests at once (``None``: no limit); the next one is refused, never queued."""

    def __init__(self, limit: int | None, retry_after_s: float = 1.0):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.rejected = 0

    def acquire(self) -> None:
        if self.limit is not None and self.in_flight >= self.limit:
            self.rejected += 1
            raise Overloaded(
                f"this replica is already scoring {self.in_flight} requests (limit {self.limit}); retry later",
                self.retry_after_s,
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    @asynccontextmanager
    async def admit(self):
        self.acquire()
        try:
            yield
        finally:
            self.release()


def header_pixels(data: bytes) -> int:
    """Width x height from the image header without decoding it; 0 when Pillow cannot read the header (the
    decoder then refuses the bytes itself, without decoding anything)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - not an image / corrupt header: decode_image names the problem
        return 0
    return int(width) * int(height)


class PixelBudget:
    """At most ``budget`` pixels being decoded at once (``None``: no budget).

    ``reserve(pixels)`` waits up to ``wait_s`` for room, first come first served, then raises
    :class:`Overloaded`. A request for more than the whole budget is clamped to it (it runs alone).
    """

    def __init__(self, budget: int | None, wait_s: float = 0.5, retry_after_s: float = 1.0):
        self.budget = budget
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.in_use = 0
        self.rejected = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    def _fits(self, pixels: int) -> bool:
        return self.budget is None or self.in_use + pixels <= self.budget

    def try_reserve(self, pixels: int) -> bool:
        """Reserve at once if there is room and nobody is waiting ahead; the non-blocking half of ``reserve``."""
        pixels = self._clamp(pixels)
        if not self._waiters and self._fits(pixels):
            self.in_use += pixels
            return True
        return False

    def _clamp(self, pixels: int) -> int:
        return max(0, pixels if self.budget is None else min(pixels, self.budget))

    async def reserve(self, pixels: int) -> int:
        """Reserve ``pixels`` (clamped); return the amount to :meth:`release`."""
        pixels = self._clamp(pixels)
        if self.try_reserve(pixels):
            return pixels
        future = asyncio.get_running_loop().create_future()
        entry = (pixels, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.wait_s)
        except asyncio.TimeoutError:
            if future.done() and not future.cancelled():  # granted in the same instant: keep it
                return pixels
            self._remove(entry)
            self.rejected += 1
            raise Overloaded(
                f"{pixels} pixels to decode do not fit the decode budget ({self.in_use} of {self.budget} in use) "
                f"within {self.wait_s} s; retry later",
                self.retry_after_s,
            ) from None
        except BaseException:  # cancelled while waiting: give back what may have been granted
            if future.done() and not future.cancelled():
                self.release(pixels)
            else:
                self._remove(entry)
            raise
        return pixels

    def _remove(self, entry: tuple[int, asyncio.Future]) -> None:
        try:
            self._waiters.remove(entry)
        except ValueError:
            pass
        entry[1].cancel()
        self._grant()  # the head may have changed

    def release(self, pixels: int) -> None:
        self.in_use -= pixels
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            pixels, future = self._waiters.popleft()
            if future.done():
                continue
            self.in_use += pixels
            future.set_result(None)

    @asynccontextmanager
    async def hold(self, pixels: int):
        granted = await self.reserve(pixels)
        try:
            yield
        finally:
            self.release(granted)


class TokenBucket:
    """``rate_per_s`` tokens a second up to ``burst``; ``take()`` returns 0 when a token was taken, else the
    seconds until one will be there (nothing is taken then)."""

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic):
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate_per_s > 0 and burst >= 1")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()

    def take(self, n: float = 1.0) -> float:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class RateLimiter:
    """One :class:`TokenBucket` per key id. ``check(key_id, per_minute, burst)`` raises :class:`RateLimited`.

    ``per_minute=None`` means no limit for that key. Buckets are per ingress replica: with N replicas behind
    Serve's proxy a key gets up to N times the rate in the worst case (documented in README/Operations).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}
        self.limited = 0

    def check(self, key_id: str, per_minute: float | None, burst: float | None = None) -> None:
        if per_minute is None:
            return
        bucket = self.buckets.get(key_id)
        burst = burst if burst is not None else max(1.0, per_minute / 6)  # 10 s of traffic at the full rate
        if bucket is None or bucket.rate != per_minute / 60.0 or bucket.burst != burst:
            bucket = self.buckets[key_id] = TokenBucket(per_minute / 60.0, burst, self.clock)
        wait = bucket.take()
        if wait > 0:
            self.limited += 1
            raise RateLimited(f"over this key's limit of {per_minute:g} requests per minute", wait)

    def stats(self) -> dict[str, Any]:
        return {"keys": len(self.buckets), "limited": self.limited}
