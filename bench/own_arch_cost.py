"""CPU cost of the architectures we implement ourselves, beside one ViT-B/16 forward pass, in one run.

For each of ``fatformer``, ``ghostnet`` and ``mantranet`` (full configurations, ``random_init: True``, so
nothing is downloaded) this measures one image of ``--side`` x ``--side`` pixels (default 1024) through the
detector's whole ``predict`` path (preprocess, forward, postprocess; no artifacts), and, as the yardstick,
torchvision's ``vit_b_16(weights=None)`` on one 224x224 input (batch 1, forward only).

* Latency: median of ``--runs`` timed runs after ``--warmup`` untimed ones, on CPU, torch's default thread
  count (printed). Both wall-clock seconds and the process's CPU seconds (``time.process_time``, all
  threads) are reported: on a shared machine the wall time depends on what else runs, the CPU time much
  less, so the CPU-time ratios are the ones to compare across runs.
* Peak memory: every model runs in its own fresh Python subprocess, and the peak resident set size of
  that process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is reported, so one model's allocations
  never count against another. The peak includes the interpreter, torch and the model weights; the resident
  size right after building the model ("after load") is printed too, so the forward pass's own share is
  the difference.
* Ratios are against the ViT-B/16 numbers measured in the same run. Detectors not registered yet are
  skipped with a printed line.

Usage: ``python bench/own_arch_cost.py [--side 1024] [--runs 3] [--warmup 1] [--only mantranet ...]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OWN_ARCHITECTURES = ("fatformer", "ghostnet", "mantranet")
BASELINE = "vit_b_16"


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _noise_image(side: int):
    """A deterministic side x side RGB image, decoded the project's one way (content does not change cost)."""
    import numpy as np
    from PIL import Image

    from models.image_input import decode_image

    rng = np.random.default_rng(0)
    # Smooth gradients plus noise: an image-like signal rather than pure noise.
    ramp = np.linspace(0, 200, side, dtype=np.float32)
    base = (ramp[None, :, None] * 0.5 + ramp[:, None, None] * 0.5) + rng.normal(0, 20, (side, side, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return decode_image(buffer.getvalue())


def _measure(run_once, runs: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU seconds of each timed run."""
    for _ in range(warmup):
        run_once()
    wall, cpu = [], []
    for _ in range(runs):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        run_once()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def child(name: str, side: int, runs: int, warmup: int) -> dict:
    """Runs in a fresh process: build one model, time it, report its peak memory."""
    import torch

    if name == BASELINE:
        from torchvision.models import vit_b_16

        model = vit_b_16(weights=None).eval()
        x = torch.randn(1, 3, 224, 224)
        loaded_rss = _peak_rss_gib()

        def run_once() -> None:
            with torch.inference_mode():
                model(x)

        version, input_desc = "torchvision vit_b_16(weights=None)", "1x3x224x224 tensor, forward only"
    else:
        from models import create_detector

        detector = create_detector(name, {"random_init": True})
        image = _noise_image(side)
        loaded_rss = _peak_rss_gib()

        def run_once() -> None:
            result = detector.predict([image])[0]
            if not result.ok:
                raise RuntimeError(f"{name} failed on the benchmark image: {result.error or result.skipped}")

        version, input_desc = detector.version, f"{side}x{side} image, predict() without artifacts"
    wall, cpu = _measure(run_once, runs, warmup)
    return {
        "name": name,
        "version": version,
        "input": input_desc,
        "timings_s": wall,
        "median_s": statistics.median(wall),
        "cpu_s": cpu,
        "median_cpu_s": statistics.median(cpu),
        "rss_after_load_gib": loaded_rss,
        "peak_rss_gib": _peak_rss_gib(),
        "threads": torch.get_num_threads(),
    }


def _run_child(name: str, args: argparse.Namespace) -> dict | None:
    command = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--side",
        str(args.side),
        "--runs",
        str(args.runs),
        "--warmup",
        str(args.warmup),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        tail = "\n    ".join(done.stderr.strip().splitlines()[-6:])
        print(f"  {name}: FAILED (exit {done.returncode})\n    {tail}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=list(OWN_ARCHITECTURES), help="subset of detectors")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.side, args.runs, args.warmup)))
        return

    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from models import list_detectors

    registered = set(list_detectors())
    print(
        f"own-architecture CPU cost: {args.side}x{args.side}, median of {args.runs} runs after {args.warmup} "
        f"warm-up, each model in a fresh subprocess; load average at start {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    results: dict[str, dict] = {}
    for name in [BASELINE, *args.only]:
        if name != BASELINE and name not in registered:
            print(f"  {name}: skipped, not registered (models.list_detectors() has {sorted(registered)})")
            continue
        print(f"  measuring {name} ...", flush=True)
        measured = _run_child(name, args)
        if measured:
            results[name] = measured
    if BASELINE not in results:
        print("baseline failed; no ratios")
        return
    base = results[BASELINE]
    print(f"\nthreads: {base['threads']}; load average at end {os.getloadavg()[0]:.1f}")
    header = (
        f"{'model':<11} {'input':<44} {'wall s':>8} {'cpu s':>8} {'runs wall s':>20} {'after load GiB':>14} "
        f"{'peak GiB':>9} {'x ViT wall':>10} {'x ViT cpu':>10} {'x ViT peak':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        runs = ",".join(f"{t:.2f}" for t in r["timings_s"])
        print(
            f"{name:<11} {r['input']:<44} {r['median_s']:>8.2f} {r['median_cpu_s']:>8.2f} {runs:>20} "
            f"{r['rss_after_load_gib']:>14.2f} {r['peak_rss_gib']:>9.2f} {r['median_s'] / base['median_s']:>10.1f} "
            f"{r['median_cpu_s'] / base['median_cpu_s']:>10.1f} {r['peak_rss_gib'] / base['peak_rss_gib']:>10.2f}"
        )
    for name, r in results.items():
        print(f"  {name}: {r['version']}")


if __name__ == "__main__":
    main()
