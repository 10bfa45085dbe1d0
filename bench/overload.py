"""Overload: many more concurrent clients than the service admits, against a running service (loopback).

    python bench/overload.py [--url http://127.0.0.1:8000] [--concurrency 64] [--seconds 30] [--image F]
                             [--api-key K] [--honour-retry-after]

Each of ``--concurrency`` clients posts one image to ``/v1/detect`` again and again for ``--seconds``; by
default a refused client asks again at once (the worst case), with ``--honour-retry-after`` it waits
``Retry-After``. Target (issue 13), at 4x the concurrency the service sustains: every request is answered, with
200 or 503 ``overloaded`` (+ ``Retry-After``); the 503s are fast (p99 under 1 s); ``/healthz`` is 200 afterwards.
The local profile admits 8 scoring requests per ingress replica (``admission.max_in_flight``).

Prints a JSON summary; exits 1 when an answer was anything else (a 5xx other than ``overloaded``, a
connection error, a 503 without ``Retry-After``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def synthetic_image(side: int = 512, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


async def run_load(
    url: str,
    data: bytes,
    concurrency: int,
    seconds: float | None = None,
    requests: int | None = None,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    honour_retry_after: bool = False,
) -> list[dict]:
    """``concurrency`` clients posting ``data`` until ``seconds`` pass or ``requests`` were sent, whichever is
    first. One record per request: status (or the exception's name), error code, latency_ms, retry_after."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.perf_counter() + seconds if seconds else float("inf")
    budget = [requests if requests is not None else float("inf")]
    records: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, headers=headers, limits=limits) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                started = time.perf_counter()
                record: dict = {}
                try:
                    response = await client.post("/v1/detect", files={"file": ("bench.jpg", data)})
                    record["status"] = response.status_code
                    record["retry_after"] = response.headers.get("retry-after")
                    try:
                        body = response.json()
                        record["error"] = body.get("error")
                        record["missing"] = len(body.get("missing", []) or [])
                    except ValueError:
                        record["error"] = "not_json"
                except httpx.HTTPError as err:
                    record["status"] = type(err).__name__
                    record["error"] = str(err)[:200]
                record["latency_ms"] = (time.perf_counter() - started) * 1000
                records.append(record)
                if honour_retry_after and record.get("retry_after"):
                    await asyncio.sleep(min(30.0, float(record["retry_after"])))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


def summarize(records: list[dict], wall_s: float) -> dict:
    statuses = collections.Counter(str(r["status"]) for r in records)
    errors = collections.Counter(f"{r['status']} {r.get('error')}" for r in records if r["status"] != 200)
    ok = [r["latency_ms"] for r in records if r["status"] == 200]
    refused = [r["latency_ms"] for r in records if r["status"] == 503 and r.get("error") == "overloaded"]
    return {
        "requests": len(records),
        "wall_s": round(wall_s, 1),
        "requests_per_s": round(len(records) / wall_s, 2) if wall_s else None,
        "answered_200_per_s": round(len(ok) / wall_s, 2) if wall_s else None,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "with_missing_detectors": sum(1 for r in records if r["status"] == 200 and r.get("missing")),
        "ok_ms": {"p50": percentile(ok, 50), "p99": percentile(ok, 99)},
        "overloaded_ms": {
            "p50": percentile(refused, 50),
            "p99": percentile(refused, 99),
            "max": percentile(refused, 100),
        },
        "overloaded_without_retry_after": sum(
            1 for r in records if r.get("error") == "overloaded" and not r.get("retry_after")
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--image", type=Path, help="the image to send (default: a 512x512 random JPEG)")
    parser.add_argument("--api-key")
    parser.add_argument(
        "--honour-retry-after",
        action="store_true",
        help="wait Retry-After before the next request (default: the "
        "worst case, every client sends its next request at once)",
    )
    args = parser.parse_args(argv)
    data = args.image.read_bytes() if args.image else synthetic_image()
    started = time.perf_counter()
    records = asyncio.run(
        run_load(
            args.url,
            data,
            args.concurrency,
            seconds=args.seconds,
            api_key=args.api_key,
            honour_retry_after=args.honour_retry_after,
        )
    )
    summary = summarize(records, time.perf_counter() - started)
    health = httpx.get(f"{args.url}/healthz", timeout=60)
    summary["healthz_after"] = health.status_code
    summary["concurrency"] = args.concurrency
    print(json.dumps(summary, indent=2))
    bad = sum(1 for r in records if not (r["status"] == 200 or (r["status"] == 503 and r.get("error") == "overloaded")))
    return 1 if bad or summary["overloaded_without_retry_after"] or health.status_code != 200 else 0


if __name__ == "__main__":
    sys.exit(main())
