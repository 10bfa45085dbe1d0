"""Overload: many more concurrent clients than the service admits, against a running service (loopback).

    python bench/overload.py [--url http://127.0.0.1:8000 | --serve-config serve_config.local.yaml]
                             [--concurrency 64] [--seconds 30] [--image F] [--api-key K] [--honour-retry-after]

``--serve-config`` starts that config as the quickstart does (``serve run`` in its own process, a fresh local Ray,
HAProxy in front of the ingress), on a free port and free HAProxy side ports, waits for ``/healthz``, runs the load
and stops the service again; the summary then carries the 1-minute load average before and after the load.

Each of ``--concurrency`` clients posts one image to ``/v1/detect`` again and again for ``--seconds``; by
default a refused client asks again at once (the worst case), with ``--honour-retry-after`` it waits
``Retry-After``. Targets: issue 13, at 4x the concurrency the service sustains, every request is answered with
200 or 503 ``overloaded`` (+ ``Retry-After``), the 503s' p99 under 1 s, ``/healthz`` 200 afterwards; issue 25, 128
clients for 20 s on the 2-CPU box: 503 p99 <= 0.5 s, accepted p99 <= 10 s. The local profile admits 8 scoring
requests per ingress replica (``admission.max_in_flight``). On a shared box, report the load average it prints.

Prints a JSON summary; exits 1 when an answer was anything else (a 5xx other than ``overloaded``, a
connection error, a 503 without ``Retry-After``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def synthetic_image(side: int = 512, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def multipart_request(data: bytes) -> tuple[bytes, dict[str, str]]:
    """``data`` as the multipart field ``file``, encoded once: body and headers."""
    request = httpx.Request("POST", "http://bench/v1/detect", files={"file": ("bench.jpg", data)})
    return request.read(), {"content-type": request.headers["content-type"]}


async def run_load(
    url: str,
    data: bytes,
    concurrency: int,
    seconds: float | None = None,
    requests: int | None = None,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    honour_retry_after: bool = False,
    loop_lags_ms: list[float] | None = None,
) -> list[dict]:
    """``concurrency`` clients posting ``data`` until ``seconds`` pass or ``requests`` were sent, whichever is
    first. One record per request: status (or the exception's name), error code, latency_ms, retry_after.
    ``loop_lags_ms``: filled with how late this client's event loop woke a 10 ms timer, every 10 ms while the load
    runs: an answer that arrived is only seen, and its latency only stopped, when the loop gets to it.

    Each client has its own keep-alive connection, all made before the clock starts, and the body is encoded
    once: with one shared pool of 128 connections, httpx spent most of a request's time choosing a connection
    (it checks every pooled connection for each request), so the latencies measured the client (issue 25: p50
    1.6 s between asking and sending)."""
    body, headers = multipart_request(data)
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    tls = ssl.create_default_context()  # shared: each client would load the CA bundle again (~80 ms of CPU)
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [
        httpx.AsyncClient(base_url=url, timeout=timeout_s, headers=headers, limits=one, verify=tls)
        for _ in range(concurrency)
    ]
    deadline = time.perf_counter() + seconds if seconds else float("inf")
    budget = [requests if requests is not None else float("inf")]
    records: list[dict] = []

    async def worker(client: httpx.AsyncClient) -> None:
        async with client:
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                record = await post_once(client, body)
                records.append(record)
                if honour_retry_after and record.get("retry_after"):
                    await asyncio.sleep(min(30.0, float(record["retry_after"])))

    async def ticker(lags: list[float]) -> None:
        while time.perf_counter() < deadline and budget[0] > 0:
            asked = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append((time.perf_counter() - asked - 0.01) * 1000)

    ticking = [ticker(loop_lags_ms)] if loop_lags_ms is not None else []
    await asyncio.gather(*(worker(client) for client in clients), *ticking)
    return records


async def post_once(client: httpx.AsyncClient, body: bytes) -> dict:
    """One POST /v1/detect: status (or the exception's name), error code, missing detectors, latency_ms."""
    started = time.perf_counter()
    record: dict = {}
    try:
        response = await client.post("/v1/detect", content=body)
        record["status"] = response.status_code
        record["retry_after"] = response.headers.get("retry-after")
        try:
            answer = response.json()
            record["error"] = answer.get("error")
            record["missing"] = len(answer.get("missing", []) or [])
        except ValueError:
            record["error"] = f"not_json: {response.text[:80]!r}"  # e.g. a proxy's plain-text page
    except httpx.HTTPError as err:
        record["status"] = type(err).__name__
        record["error"] = str(err)[:200]
    record["latency_ms"] = (time.perf_counter() - started) * 1000
    return record


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


@contextmanager
def served(config: Path, ready_timeout_s: float = 600.0) -> Iterator[str]:
    """``serve run CONFIG`` (as ``scripts/quickstart.sh`` runs it) on a free port, in a process group of its own;
    yields the base URL once ``/healthz`` is 200, and stops it afterwards as the quickstart does."""
    import yaml

    from serve_app.local import free_port, isolate_haproxy_ports

    spec = yaml.safe_load(config.read_text())
    port = free_port()
    spec["http_options"] = {**spec.get("http_options", {}), "port": port}
    isolate_haproxy_ports()  # free metrics / stats / fallback ports (into os.environ): others may hold the defaults
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / config.name
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115 - closed below
        serve = subprocess.Popen(
            [str(Path(sys.executable).with_name("serve")), "run", str(path)],
            env=env,
            cwd=REPO,  # serve run imports serve_app from its working directory
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, serve, ready_timeout_s, Path(tmp) / "serve.log")
            yield url
        finally:
            # SIGTERM to `serve run` alone (the quickstart's `kill -TERM`): it shuts Serve down, HAProxy included,
            # then its Ray. A SIGTERM to the whole group reached the proxy actor at once, which then left its
            # HAProxy running and listening on the service's port (4 of 10 runs here).
            serve.terminate()
            try:
                serve.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
            log.close()


def wait_ready(url: str, serve: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"serve run exited with {serve.returncode} before it was ready:\n{tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url}/healthz not 200 after {timeout_s} s")


def measure(url: str, data: bytes, args: argparse.Namespace) -> dict:
    """The load against ``url``, summarized, with ``/healthz`` afterwards and the load average around it."""
    load_before = os.getloadavg()[0]
    cpu_before = time.process_time()
    started = time.perf_counter()
    lags: list[float] = []
    records = asyncio.run(
        run_load(
            url,
            data,
            args.concurrency,
            seconds=args.seconds,
            api_key=args.api_key,
            honour_retry_after=args.honour_retry_after,
            loop_lags_ms=lags,
        )
    )
    summary = summarize(records, time.perf_counter() - started)
    summary["client_cpu_s"] = round(time.process_time() - cpu_before, 1)  # this process, on the same CPUs
    # The client's share of every latency above: how late its one event loop got to a ready answer.
    summary["client_loop_lag_ms"] = {"p50": percentile(lags, 50), "p99": percentile(lags, 99)}
    summary["healthz_after"] = httpx.get(f"{url}/healthz", timeout=60).status_code
    summary["concurrency"] = args.concurrency
    summary["loadavg_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    summary["bad_answers"] = sum(
        1 for r in records if not (r["status"] == 200 or (r["status"] == 503 and r.get("error") == "overloaded"))
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--serve-config", type=Path, help="start this Serve config (serve run, HAProxy, free ports) and load it"
    )
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
    if args.serve_config:
        with served(args.serve_config) as url:
            summary = measure(url, data, args)
    else:
        summary = measure(args.url, data, args)
    print(json.dumps(summary, indent=2))
    refused_badly = summary["overloaded_without_retry_after"] or summary["bad_answers"]
    return 1 if refused_badly or summary["healthz_after"] != 200 else 0


if __name__ == "__main__":
    sys.exit(main())
