"""Trained detector copies that never saw one source, against the shipped copy that did, on that source.

    python -m training.train_effnet_artifact --manifest runs/manifest_local.parquet --hold-out-source SOURCE \\
        --out runs/leave_out_effnet/SOURCE.safetensors --epochs 3 --time-limit-min 14 --threads 2
    python bench/held_out_detector_auc.py SOURCE runs/leave_out_effnet/SOURCE.safetensors [MORE.safetensors ...] \
        [--config serve_config.yaml] [--manifest runs/manifest_local.parquet]

Scores the held-out source's items (as stored) and the other sources' test photos with every copy of
``effnet_artifact`` and prints each copy's AUC: how much of the shipped copy's score on that source was memory, and
whether a recipe change (for example training on ``training.upscaled_reals``' images) makes the held-out copy better.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import models
from deployments.config import load_profile
from models.image_input import decode_image
from training.dataset import DATASET_LIMITS, item_bytes, load_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("weights", type=Path, nargs="+", help="copies trained without SOURCE (named by file stem)")
    parser.add_argument("--config", type=Path, default=Path("serve_config.yaml"), help="names the shipped copy")
    parser.add_argument("--manifest", type=Path, default=Path("runs/manifest_local.parquet"))
    args = parser.parse_args()
    shipped_config = load_profile(args.config, check_fusion=False).detectors["effnet_artifact"].user_config.detector
    copies = {
        path.stem: models.create_detector(
            "effnet_artifact", {**shipped_config, "weights": str(path.resolve()), "weights_sha256": None}
        )
        for path in args.weights
    }
    copies["shipped"] = models.create_detector("effnet_artifact", shipped_config)
    rows = [
        r
        for r in load_manifest(args.manifest).to_pylist()
        if r["source"] == args.source or (r["split"] == "test" and r["label"] == "real")
    ]
    labels, scores = [], {name: [] for name in copies}
    for row in rows:
        image = decode_image(item_bytes(row["filepath"], row["crop"] or ""), DATASET_LIMITS)
        found = {name: d.predict([image])[0].features.get("effnet_artifact_prob") for name, d in copies.items()}
        if None in found.values():
            continue  # an image under one patch: the detector skips it
        labels.append(row["label"] == "ai")
        for name, value in found.items():
            scores[name].append(value)
    y = np.asarray(labels)
    print(f"{args.source}: {int(y.sum())} AI, {int((~y).sum())} photos")
    for name, values in scores.items():
        print(f"  {name:>40} copy AUC {roc_auc_score(y, values):.3f}")


if __name__ == "__main__":
    main()
