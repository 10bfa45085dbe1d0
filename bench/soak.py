"""Soak: N requests at a fixed concurrency against a running local service, and the replicas' memory.

    python bench/soak.py [--url http://127.0.0.1:8000] [--requests 2000] [--concurrency 8]
                         [--max-seconds 1800] [--warmup 50] [--image F] [--api-key K]

Loopback only; bounded by ``--requests`` and ``--max-seconds``. Prints requests/s, p50/p99 latency, status
counts, and the RSS of the ingress and of each detector replica (every ``ray::ServeReplica:*`` process on
this machine, read from /proc) after the warm-up and at the end. Target (issue 13): zero 5xx other than
``overloaded``; RSS growth under 10% after warm-up (30 minutes at the concurrency the box sustains). RSS is also
sampled every ``--rss-every`` seconds: ``series`` per replica, and the growth over the run's second half, which
tells growth that levels off (allocator and caches warming up) from growth that keeps going (a leak).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overload import run_load, summarize, synthetic_image  # noqa: E402


def replica_rss_mb() -> dict[str, float]:
    """RSS in MB of each Serve replica process, by its process title (``ServeReplica:APP:DEPLOYMENT``)."""
    found: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if "ServeReplica:" not in title:
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        rss_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        # Ray retitles a busy replica "...:DEPLOYMENT.method_it_runs": keep APP:DEPLOYMENT only.
        name = title.split("ServeReplica:", 1)[1].strip().split(".", 1)[0]
        key = name if name not in found else f"{name}#{proc.name}"
        found[key] = round(rss_kb / 1024, 1)
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--warmup", type=int, default=50, help="requests before the first RSS reading")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--api-key")
    parser.add_argument("--rss-every", type=float, default=60.0, help="seconds between RSS samples during the run")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        parser.error("loopback only: --url must be http://127.0.0.1:PORT or localhost")
    data = args.image.read_bytes() if args.image else synthetic_image()
    warm = asyncio.run(run_load(args.url, data, args.concurrency, requests=args.warmup, api_key=args.api_key))
    rss_start = replica_rss_mb()
    started = time.perf_counter()
    samples, stop = [(0.0, rss_start)], threading.Event()

    def sample_rss() -> None:  # growth that levels off (allocator warm-up) vs. growth that keeps going (a leak)
        while not stop.wait(args.rss_every):
            samples.append((round(time.perf_counter() - started), replica_rss_mb()))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    records = asyncio.run(
        run_load(
            args.url, data, args.concurrency, seconds=args.max_seconds, requests=args.requests, api_key=args.api_key
        )
    )
    summary = summarize(records, time.perf_counter() - started)
    stop.set()
    rss_end = replica_rss_mb()
    middle = samples[len(samples) // 2][1]
    summary["concurrency"] = args.concurrency
    summary["warmup_statuses"] = sorted({str(r["status"]) for r in warm})
    summary["rss_mb"] = {
        name: {
            "start": rss_start.get(name),
            "end": end,
            "growth_pct": round(100 * (end / rss_start[name] - 1), 1) if rss_start.get(name) else None,
            "second_half_growth_pct": round(100 * (end / middle[name] - 1), 1) if middle.get(name) else None,
            "series": [sample.get(name) for _, sample in samples] + [end],
        }
        for name, end in rss_end.items()
    }
    summary["rss_sample_s"] = [t for t, _ in samples] + [round(time.perf_counter() - started)]
    print(json.dumps(summary, indent=2))
    bad = [
        r for r in records if isinstance(r["status"], str) or (r["status"] >= 500 and r.get("error") != "overloaded")
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
