"""Why detectors batch with ``deployments.batching.DynamicBatcher`` and not ``@serve.batch``, measured in one run.

    python bench/detector_batching.py [--requests 256] [--concurrency 32] [--batch-ms 60]

A "model on a GPU" (waits ``--batch-ms`` per batch without using the CPU, max batch 16) served two ways, side by
side in the same Ray session, called through deployment handles by ``--concurrency`` clients:

1. ``@serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)``, Ray Serve's decorator;
2. :class:`DynamicBatcher` (what ``deployments/detector.py`` uses), same limits.

It prints images/s and the batch sizes the model saw, and the ratio. Then a second effect that shapes the Serve
configs: a replica at its ``max_ongoing_requests`` makes Serve's router hold further calls and retry them with
backoff (up to 0.5 s), so the same model behind ``max_ongoing_requests`` = concurrency / 2 serves far fewer calls per
second than behind a limit above the concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployments.batching import DynamicBatcher  # noqa: E402


def build_deployments(batch_s: float):
    from ray import serve

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.1})
    class WithServeBatch:
        def __init__(self):
            self.sizes: list[int] = []

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
        async def run(self, items: list[int]) -> list[int]:
            self.sizes.append(len(items))
            await asyncio.sleep(batch_s)
            return items

        async def __call__(self, item: int) -> int:
            return await self.run(item)

        def batch_sizes(self) -> list[int]:
            return self.sizes

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.1})
    class WithDynamicBatcher:
        def __init__(self):
            self.sizes: list[int] = []
            self.batcher = DynamicBatcher(self.run, max_batch_size=16, wait_timeout_s=0.005)

        async def run(self, items: list[int]) -> list[int]:
            self.sizes.append(len(items))
            await asyncio.sleep(batch_s)
            return items

        async def __call__(self, item: int) -> int:
            return await self.batcher.submit(item)

        def batch_sizes(self) -> list[int]:
            return self.sizes

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Unbatched:
        """One call = one ``batch_s`` wait; many at once, up to max_ongoing_requests (set per run)."""

        async def __call__(self, item: int) -> int:
            await asyncio.sleep(batch_s)
            return item

    return WithServeBatch, WithDynamicBatcher, Unbatched


async def drive(handle, requests: int, concurrency: int) -> float:
    """``requests`` calls from ``concurrency`` clients; images/s."""
    counter = iter(range(requests))

    async def client() -> None:
        for item in counter:
            await handle.remote(item)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch-ms", type=float, default=60.0)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray
    from ray import serve

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        with_serve_batch, with_batcher, unbatched = build_deployments(args.batch_ms / 1000)
        print(
            f"a model of {args.batch_ms:.0f} ms per batch (max 16), {args.concurrency} clients, {args.requests} calls"
        )
        print(f"ceiling: min(concurrency, 16) per batch -> {min(args.concurrency, 16) * 1000 / args.batch_ms:.0f}/s\n")
        results = {}
        for name, deployment in (("@serve.batch", with_serve_batch), ("DynamicBatcher", with_batcher)):
            handle = serve.run(deployment.bind(), name=name.strip("@"), route_prefix=None)
            asyncio.run(drive(handle, 32, 8))  # warm-up
            ips = asyncio.run(drive(handle, args.requests, args.concurrency))
            sizes = handle.batch_sizes.remote().result()[-100:]
            results[name] = ips
            print(
                f"{name:15s} {ips:7.1f} calls/s   batch size mean {statistics.mean(sizes):5.2f}, "
                f"median {statistics.median(sizes):4.1f}, max {max(sizes)}"
            )
            serve.delete(name.strip("@"))
        print(f"DynamicBatcher / @serve.batch: {results['DynamicBatcher'] / results['@serve.batch']:.2f}x\n")

        print("Serve's router and a full replica (no batching; each call waits the model time):")
        limits = {"at capacity": max(1, args.concurrency // 2), "above capacity": args.concurrency * 2}
        router = {}
        for label, limit in limits.items():
            app = unbatched.options(max_ongoing_requests=limit).bind()
            handle = serve.run(app, name=f"unbatched{limit}", route_prefix=None)
            asyncio.run(drive(handle, 32, 8))
            router[label] = asyncio.run(drive(handle, args.requests, args.concurrency))
            ceiling = min(limit, args.concurrency) * 1000 / args.batch_ms
            print(
                f"  max_ongoing_requests {limit:4d} ({label}): {router[label]:7.1f} calls/s (ceiling {ceiling:.0f}/s)"
            )
            serve.delete(f"unbatched{limit}")
        print(f"  above / at capacity: {router['above capacity'] / router['at capacity']:.2f}x")
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
