"""Serving latency and throughput of the ingress against the same detectors in one process.

    python bench/serve_latency.py [--config serve_config.local.yaml] [--images 24] [--requests 96]

Measured in one run, on the same images and the same machine:

1. in-process (before Ray starts, so nothing competes): every detector of the config alone on decoded
   images (ms per image), and the seed's design: decode + every detector one after another + fusion;
2. the Serve application from the config (started here on a free port), over HTTP, at concurrency 1, 8
   and 32: p50 / p99 latency and images/s.

Targets (issue: serving graph): ingress p50 at concurrency 1 <= 1.2 x slowest detector alone + 10 ms;
images/s at concurrency 32 >= 2 x the sequential pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from models.fusion import DetectorOutcome  # noqa: E402
from models.image_input import decode_image  # noqa: E402
from serve_app.config import load_profile  # noqa: E402


def sample_images(data: Path, count: int) -> list[bytes]:
    """Photos and generated images of the sizes people upload (0.3-1.3 MP)."""
    folders = ["modern-matched/real", "modern-matched/ai", "camera-models/real", "early-generators-ai/ai/dal2"]
    files = [p for folder in folders for p in sorted((data / folder).glob("*"))[: count // len(folders) + 1]]
    return [p.read_bytes() for p in files[:count]]


def in_process(config: Path, images: list[bytes]) -> dict:
    profile = load_profile(config)
    detectors = {name: models.create_detector(name, d.user_config.detector) for name, d in profile.detectors.items()}
    verdict = profile.args.verdict()
    limits = profile.args.input.limits()
    decoded = [decode_image(data, limits) for data in images]
    for detector in detectors.values():  # warm-up: first calls pay for lazy initialisation
        detector.predict(decoded[:2])
    alone = {}
    for name, detector in detectors.items():
        times = []
        for image in decoded:
            started = time.perf_counter()
            detector.predict([image])
            times.append((time.perf_counter() - started) * 1000)
        alone[name] = statistics.median(times)
    sequential = []
    for data in images:
        started = time.perf_counter()
        image = decode_image(data, limits)
        outcomes = []
        for name, detector in detectors.items():
            t0 = time.perf_counter()
            (result,) = detector.predict([image])
            outcomes.append(DetectorOutcome.from_result(name, result, detector.version, (time.perf_counter() - t0) * 1000))
        verdict.decide(outcomes)
        sequential.append(time.perf_counter() - started)
    return {"alone_ms": alone, "sequential_p50_ms": statistics.median(sequential) * 1000,
            "sequential_ips": len(sequential) / sum(sequential)}


async def load(url: str, images: list[bytes], concurrency: int, requests: int) -> dict:
    import httpx

    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            data = images[i % len(images)]
            started = time.perf_counter()
            response = await client.post("/v1/detect", files={"file": ("image", data)})
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"p50_ms": float(np.percentile(latencies, 50)) * 1000, "p99_ms": float(np.percentile(latencies, 99)) * 1000,
            "ips": len(latencies) / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.local.yaml")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    images = sample_images(args.data, args.images)
    base = in_process(args.config, images)

    import ray

    from serve_app.local import config_applications, deploy_apps, start_serve

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    url = start_serve()
    deploy_apps(config_applications(args.config))
    asyncio.run(load(url, images, 4, 8))  # warm-up
    levels = {c: asyncio.run(load(url, images, c, args.requests if c > 1 else args.requests // 2)) for c in (1, 8, 32)}
    ray.shutdown()

    slowest = max(base["alone_ms"], key=base["alone_ms"].get)
    print(f"\n{len(images)} images, config {args.config.name}, {os.cpu_count()} CPUs\n")
    print("in-process, ms per image (median):")
    for name, ms in base["alone_ms"].items():
        print(f"  {name:<12} alone {ms:8.1f}")
    print(f"  sequential pipeline (decode + all detectors + fusion): p50 {base['sequential_p50_ms']:.1f} ms, "
          f"{base['sequential_ips']:.2f} images/s\n")
    print("| concurrency | p50 ms | p99 ms | images/s |\n|---|---|---|---|")
    for c, r in levels.items():
        print(f"| {c} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['ips']:.2f} |")
    bound = 1.2 * base["alone_ms"][slowest] + 10
    ratio = levels[32]["ips"] / base["sequential_ips"]
    print(f"\np50 at concurrency 1: {levels[1]['p50_ms']:.1f} ms vs 1.2 x slowest alone ({slowest}, "
          f"{base['alone_ms'][slowest]:.1f} ms) + 10 ms = {bound:.1f} ms -> {'met' if levels[1]['p50_ms'] <= bound else 'NOT met'}")
    print(f"images/s at concurrency 32 / sequential pipeline: {ratio:.2f}x (target >= 2) -> {'met' if ratio >= 2 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
