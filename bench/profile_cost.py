"""CPU cost of every detector of a Serve config, as configured there, on the same 1280x720 images, in one run.

    python bench/profile_cost.py [--config serve_config.local.yaml] [--images 8] [--rounds 3] [--record FILE]

Each detector is built with ``models.create_detector`` and the settings the config gives it (so ``clip_b16`` with
the profile's ``crops`` and head, ``effnet_artifact`` with the shipped weights) and scores ``--images`` 1280x720
JPEGs of ``../shared/data/modern-matched`` (half real, half AI) through ``predict``: batch 1 (one image per call)
and batch 8. ms per image is the median over ``--rounds`` rounds after a warm-up, interleaved across the detectors
(``bench/detector_timing.py``); process CPU ms in brackets. Run it on a quiet machine: the 1-minute load average
is printed before and after. ``--record reports/bench/profile_cost.json`` also writes the figures as JSON, from which
the README's row is generated (``python -m training.readme_figures``).

Targets (issue 10): clip_b16 <= 150 ms per image at batch 8, the artifact CNN (effnet_artifact) <= 150 ms per
1280x720 image, on this 2-core CPU. The sum over detectors is what one image costs the local profile in CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector_timing import time_per_image  # noqa: E402 - bench/ is on sys.path when run as a script

DATA = Path(os.environ.get("IMGVERIFY_DATA", REPO.parent / "shared" / "data"))
TARGETS_MS = {"clip_b16": 150.0, "effnet_artifact": 150.0}
PROFILE_TARGET_MS = 250.0  # issue 23: every detector of the local profile, one after another, per image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.local.yaml")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--record", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    from deployments.config import load_profile
    from models import create_detector
    from models.image_input import decode_image

    half = args.images // 2
    files = sorted((DATA / "modern-matched" / "real").glob("*.jpg"))[:half]
    files += sorted((DATA / "modern-matched" / "ai").glob("*.jpg"))[: args.images - half]
    images = [decode_image(p.read_bytes()) for p in files]
    print(
        f"{len(images)} images ({', '.join(sorted({f'{i.width}x{i.height}' for i in images}))}); cpus {os.cpu_count()}"
    )
    profile = load_profile(args.config)
    detectors = {
        name: create_detector(name, profile.detectors[name].user_config.detector)
        for name in profile.args.detector_names()
    }
    for name, detector in detectors.items():
        print(f"  {name}: {detector.version}")

    load_before = os.getloadavg()[0]
    ms, cpu_ms = time_per_image(detectors, images, args.rounds)
    print(
        f"\nms per image, median of {args.rounds} interleaved rounds (process CPU ms in brackets); {args.config.name}"
    )
    print(f"{'detector':20s} {'batch 1':>18s} {'batch 8':>18s}")
    for name in detectors:
        print(f"{name:20s} {ms[name, 1]:9.1f} [{cpu_ms[name, 1]:6.1f}] {ms[name, 8]:9.1f} [{cpu_ms[name, 8]:6.1f}]")
    total = sum(ms[name, 8] for name in detectors)
    slowest = max(detectors, key=lambda name: ms[name, 8])
    print(f"{'all, one after another':20s} {sum(ms[n, 1] for n in detectors):9.1f} {'':8s} {total:9.1f}")
    print(f"\nat batch 8, against the slowest ({slowest}):")
    for name in detectors:
        print(f"  {name}: {ms[name, 8] / ms[slowest, 8]:.2f}x")
    for name, target in TARGETS_MS.items():
        if name in detectors:
            got = ms[name, 8]
            verdict = "met" if got <= target else "MISSED"
            print(f"target {name} <= {target:.0f} ms/image at batch 8: {got:.1f} ms -> {verdict}")
    load_after = os.getloadavg()[0]
    print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after")
    if args.record:
        record = {
            "command": "python bench/profile_cost.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
            "date": time.strftime("%Y-%m-%d"),
            "config": args.config.name,
            "ms_per_image": {name: {"1": ms[name, 1], "8": ms[name, 8]} for name in detectors},
            "all_batch8_ms": total,
            "targets_ms": TARGETS_MS,
            "profile_target_ms": PROFILE_TARGET_MS,
            "load_before": load_before,
            "load_after": load_after,
            "cpus": os.cpu_count(),
        }
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
