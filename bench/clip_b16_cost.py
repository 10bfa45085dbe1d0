"""CPU cost of ``clip_b16`` beside ``forensics`` and ``ghostnet``, on the same images, in one run.

    python bench/clip_b16_cost.py [--images 8] [--rounds 3] [--backbone PATH_OR_LOCATION] [--no-torch]

Each detector is built with ``models.create_detector`` (its default configuration; ``clip_b16`` with the offline
INT8 ONNX build, ``OFFLINE_CONFIG``: at precision fp32 in onnxruntime (the product's default on CPU: the file's
fp32 export), at precision int8 (the graph as built) and, unless ``--no-torch``, fp32 rebuilt in torch) and scores
``--images`` 1280x720 JPEGs of ``../shared/data/modern-matched`` (half real, half AI) through ``predict``
(preprocess, forward, postprocess):

* batch 1: each image in its own ``predict`` call; batch 8: the images in calls of 8;
* ms per image: the median over ``--rounds`` rounds after one warm-up; the rounds are interleaved across the
  detectors, so load from other processes on a shared machine hits all of them alike. Process CPU seconds (all
  threads) are printed beside wall-clock: on a shared machine they move less.

Target (issue: clip_b16): clip_b16 <= 150 ms per image at batch 8 on the 2-core CPU, checked for the default
(onnxruntime fp32). Ratios are against ``forensics`` and ``ghostnet`` measured in the same run.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backbone", help="clip_b16 ONNX location (default: OFFLINE_CONFIG's pypi: location)")
    parser.add_argument("--no-torch", action="store_true", help="skip clip_b16's torch fp32 rebuild (slow on CPU)")
    args = parser.parse_args(argv)

    import torch

    from models import create_detector
    from models.clip_b16 import OFFLINE_CONFIG
    from models.image_input import decode_image

    half = args.images // 2
    files = sorted((DATA / "modern-matched" / "real").glob("*.jpg"))[:half]
    files += sorted((DATA / "modern-matched" / "ai").glob("*.jpg"))[: args.images - half]
    images = [decode_image(p.read_bytes()) for p in files]
    sizes = sorted({f"{im.width}x{im.height}" for im in images})
    print(
        f"{len(images)} images ({', '.join(sizes)}) from {DATA / 'modern-matched'}; "
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}"
    )

    clip = dict(OFFLINE_CONFIG)
    if args.backbone:
        clip = {"backbone": args.backbone}
    detectors = {
        "clip_b16 (onnxruntime fp32)": create_detector("clip_b16", {**clip, "runtime": "onnxruntime"}),
        "clip_b16 (onnxruntime int8)": create_detector("clip_b16", {**clip, "precision": "int8"}),
        "forensics": create_detector("forensics"),
        "ghostnet": create_detector("ghostnet"),
    }
    if not args.no_torch:
        detectors["clip_b16 (torch fp32)"] = create_detector("clip_b16", {**clip, "runtime": "torch"})
    for name, detector in detectors.items():
        print(f"  {name}: {detector.version}")

    ms, cpu_ms = time_per_image(detectors, images, args.rounds)
    print(f"\nms per image, median of {args.rounds} interleaved rounds (process CPU ms in brackets)")
    print(f"{'detector':30s} {'batch 1':>18s} {'batch 8':>18s}")
    for name in detectors:
        print(f"{name:30s} {ms[name, 1]:9.1f} [{cpu_ms[name, 1]:6.1f}] {ms[name, 8]:9.1f} [{cpu_ms[name, 8]:6.1f}]")
    print("\nratios (wall clock)")
    for name in [n for n in detectors if n.startswith("clip_b16")]:
        for other in ("forensics", "ghostnet"):
            print(
                f"  {name} / {other}: batch 1 {ms[name, 1] / ms[other, 1]:.2f}x, "
                f"batch 8 {ms[name, 8] / ms[other, 8]:.2f}x"
            )
    print("\ntarget clip_b16 <= 150 ms/image at batch 8 (the default: onnxruntime fp32):")
    for name in [n for n in detectors if n.startswith("clip_b16")]:
        print(f"  {name}: {ms[name, 8]:.1f} ms -> {'met' if ms[name, 8] <= 150 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
