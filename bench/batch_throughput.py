"""Batch scoring throughput: the Ray Data job against a plain single-process loop, at 1 and 2 CPUs.

    python bench/batch_throughput.py [--config serve_config.local.yaml] [--images 200]

Each measurement runs in its own process pinned to the first N cores (``taskset``; Ray's workers
inherit the pinning), on the same files, with the same detectors and fusion:

* loop: read, decode, every detector, ``decide`` -- one image after another (torch and OpenCV at N threads);
* ray: ``serve_app.batch.run_batch`` with ``ray.init(num_cpus=N)``.

Both report steady-state images/s: between the 10th and 90th percentile of completion times (models
loaded, Ray up); the Ray job's wall time including start-up is printed beside it. Target (issue: batch scoring):
ray >= 0.9 x loop at 1 CPU, and rising with CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_bucket(data: Path, count: int, folder: Path) -> None:
    sources = [
        "modern-matched/real",
        "modern-matched/ai",
        "imagenet-real/real",
        "early-generators-ai/ai",
        "camera-models/real",
    ]
    files = [p for s in sources for p in sorted((data / s).rglob("*")) if p.is_file()]
    for i, path in enumerate(files[:: max(1, len(files) // count)][:count]):
        shutil.copy(path, folder / f"{i:05d}{path.suffix}")


def run_loop(config: Path, bucket: Path, cpus: int) -> dict:
    import cv2
    import torch

    import models
    from deployments.config import load_profile
    from models.fusion import DetectorOutcome
    from models.image_input import ImageInputError, decode_image

    torch.set_num_threads(cpus)
    cv2.setNumThreads(cpus)
    profile = load_profile(config)
    detectors = {n: models.create_detector(n, d.user_config.detector) for n, d in profile.detectors.items()}
    verdict = profile.args.verdict()
    files = sorted(bucket.iterdir())
    done_at = []
    for path in files:
        try:
            image = decode_image(path.read_bytes(), profile.args.input.limits())
        except ImageInputError:
            done_at.append(time.perf_counter())
            continue
        outcomes = []
        for name, detector in detectors.items():
            (result,) = detector.predict([image])
            outcomes.append(DetectorOutcome.from_result(name, result, detector.version, 0.0))
        verdict.decide(outcomes)
        done_at.append(time.perf_counter())
    return {"images": len(files), "steady_ips": steady_rate(done_at)}


def run_ray(config: Path, bucket: Path, cpus: int) -> dict:
    import ray

    from serve_app import batch

    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    out = Path(tempfile.mkdtemp()) / "out"
    seen: list[float] = []
    original_add = batch.PartWriter.add

    def timed_add(self, table):  # when each batch of rows reaches the driver
        seen.extend([time.perf_counter()] * table.num_rows)
        return original_add(self, table)

    batch.PartWriter.add = timed_add
    summary = batch.run_batch(str(bucket), str(out), config, progress=False)
    wall = time.perf_counter() - started
    ray.shutdown()
    return {"images": summary.files, "steady_ips": steady_rate(seen), "wall_s": wall, "wall_ips": summary.files / wall}


def steady_rate(done_at: list[float]) -> float:
    """Images per second between the 10th and the 90th percentile of completion times: start-up and
    the last stragglers are left out the same way for both contenders."""
    times = sorted(done_at)
    first, last = times[len(times) // 10], times[(9 * len(times)) // 10]
    return (9 * len(times) // 10 - len(times) // 10) / (last - first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.local.yaml")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--child", choices=["loop", "ray"])
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--bucket", type=Path)
    args = parser.parse_args()
    if args.child:
        result = (run_loop if args.child == "loop" else run_ray)(args.config, args.bucket, args.cpus)
        print("RESULT " + json.dumps(result))
        return 0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    bucket = Path(tempfile.mkdtemp()) / "bucket"
    bucket.mkdir()
    make_bucket(args.data, args.images, bucket)
    results = {}
    for cpus in (1, 2):
        for kind in ("loop", "ray"):
            command = [
                "taskset",
                "-c",
                f"0-{cpus - 1}",
                sys.executable,
                __file__,
                "--child",
                kind,
                "--cpus",
                str(cpus),
                "--bucket",
                str(bucket),
                "--config",
                str(args.config),
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[(kind, cpus)] = json.loads(
                next(line for line in output.splitlines() if line.startswith("RESULT "))[7:]
            )
    print(f"\n{args.images} images, config {args.config.name}\n")
    print(
        "| CPUs | loop images/s | Ray Data images/s (steady) | ratio | Ray Data wall incl. start-up |\n"
        "|---|---|---|---|---|"
    )
    for cpus in (1, 2):
        loop, rd = results[("loop", cpus)], results[("ray", cpus)]
        print(
            f"| {cpus} | {loop['steady_ips']:.2f} | {rd['steady_ips']:.2f} | "
            f"{rd['steady_ips'] / loop['steady_ips']:.2f}x | "
            f"{rd['wall_s']:.1f} s ({rd['wall_ips']:.2f} images/s) |"
        )
    ratio1 = results[("ray", 1)]["steady_ips"] / results[("loop", 1)]["steady_ips"]
    rising = results[("ray", 2)]["steady_ips"] > results[("ray", 1)]["steady_ips"]
    print(
        f"\nRay Data at 1 CPU = {ratio1:.2f} x loop (target >= 0.9): {'met' if ratio1 >= 0.9 else 'NOT met'}; "
        f"rising with CPUs: {'yes' if rising else 'NO'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
