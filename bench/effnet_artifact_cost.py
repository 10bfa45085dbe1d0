"""CPU cost of ``effnet_artifact`` beside ``ghostnet`` and ``forensics``, on the same 1280x720 images, in one run.

    python bench/effnet_artifact_cost.py [--images 8] [--rounds 3] [--threads 2] [--max-patches 4 6] [--random-init]

Each detector is built with ``models.create_detector`` (its default configuration; ``effnet_artifact`` with the
shipped weights, or seeded random weights with ``--random-init``: the cost is the same, the weights are not read by
the timing) and scores ``--images`` 1280x720 JPEGs of ``../shared/data/modern-matched`` (half real, half AI) through
``predict`` (preprocess, forward, postprocess):

* batch 1: each image in its own ``predict`` call; batch 8: the images in calls of 8;
* ms per image: the median over ``--rounds`` rounds after one warm-up; the rounds are interleaved across the
  detectors, so load from other processes on a shared machine hits all of them alike. Process CPU seconds (all
  threads) are printed beside wall-clock: on a shared machine they move less. The 1-minute load average is printed
  before and after: above the core count, wall-clock times are inflated by other processes.

Target (issue 10, item 4): effnet_artifact <= 150 ms per 1280x720 image at batch 8 on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector_timing import time_per_image  # noqa: E402 - bench/ is on sys.path when run as a script

DATA = Path(os.environ.get("IMGVERIFY_DATA", REPO.parent / "shared" / "data"))
TARGET_MS = 150.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the target machine has 2)")
    parser.add_argument(
        "--max-patches",
        type=int,
        nargs="+",
        default=[4],
        help="effnet_artifact tilings to time (the first is the default configuration)",
    )
    parser.add_argument("--random-init", action="store_true", help="effnet_artifact with seeded random weights")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from models import create_detector
    from models.image_input import decode_image

    half = args.images // 2
    files = sorted((DATA / "modern-matched" / "real").glob("*.jpg"))[:half]
    files += sorted((DATA / "modern-matched" / "ai").glob("*.jpg"))[: args.images - half]
    images = [decode_image(p.read_bytes()) for p in files]
    images = [im for im in images if (im.width, im.height) == (1280, 720)]
    if len(images) < args.images:
        print(f"note: {args.images - len(images)} of the chosen files are not 1280x720 and were left out")
    print(
        f"{len(images)} images of 1280x720 from {DATA / 'modern-matched'}; torch threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}"
    )

    detectors = {}
    for count in args.max_patches:
        config = {"max_patches": count, **({"random_init": True} if args.random_init else {})}
        detectors[f"effnet_artifact ({count} x 224)"] = create_detector("effnet_artifact", config)
    detectors["ghostnet"] = create_detector("ghostnet")
    detectors["forensics"] = create_detector("forensics")
    for name, detector in detectors.items():
        print(f"  {name}: {detector.version}")

    ms, cpu_ms = time_per_image(detectors, images, args.rounds)
    print(
        f"\nms per 1280x720 image, median of {args.rounds} interleaved rounds (process CPU ms in brackets); "
        f"load average now {os.getloadavg()[0]:.2f}"
    )
    print(f"{'detector':28s} {'batch 1':>18s} {'batch 8':>18s}")
    for name in detectors:
        print(f"{name:28s} {ms[name, 1]:9.1f} [{cpu_ms[name, 1]:6.1f}] {ms[name, 8]:9.1f} [{cpu_ms[name, 8]:6.1f}]")
    print("\nratios (wall clock)")
    effnets = [n for n in detectors if n.startswith("effnet_artifact")]
    for name in effnets:
        for other in ("ghostnet", "forensics"):
            print(
                f"  {name} / {other}: batch 1 {ms[name, 1] / ms[other, 1]:.2f}x, "
                f"batch 8 {ms[name, 8] / ms[other, 8]:.2f}x"
            )
    for name in effnets:
        value = ms[name, 8]
        print(
            f"target {name} <= {TARGET_MS:.0f} ms/image at batch 8: {value:.1f} ms -> "
            f"{'met' if value <= TARGET_MS else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
