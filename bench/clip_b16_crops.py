"""clip_b16 with native-resolution crops and intermediate layers: what they buy on modern-matched and what they
cost, side by side.

For each ``crops`` setting the same modern-matched train images are embedded (the resized view plus N native 224
crops, averaged) and a logistic probe is cross-validated on them (5 folds) for each embedding: the last layer's CLS
token, the projected image embedding, and the CLS tokens of encoder layers 3, 5, 7, 9 and 11 (``cls_layers``,
read out of the same forward pass). The time per image is measured in the same run. Train-split images only:
nothing here touches the test split.

    python bench/clip_b16_crops.py [--manifest runs/manifest_local.parquet] [--images 160] [--crops 1 2 3 4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

import models
from models.clip_b16 import OFFLINE_CONFIG
from models.image_input import decode_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="runs/manifest_local.parquet")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--crops", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--C", type=float, nargs="+", default=[0.002, 0.01, 0.1, 0.5])
    args = parser.parse_args()
    rows = [
        r for r in pq.read_table(args.manifest).to_pylist() if r["source"] == "modern-matched" and r["split"] == "train"
    ]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[: args.images]]
    images = [decode_image(open(r["filepath"], "rb").read()) for r in rows]
    y = np.array([r["label"] == "ai" for r in rows])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    print("| crops | ms/image | best CV AUC: CLS | image_embeds | cls_layers 3,5,7,9,11 |\n|---|---|---|---|---|")
    for crops in args.crops:
        config = {
            **OFFLINE_CONFIG,
            "return_embedding": True,
            "published_head": None,
            "crops": crops,
            "cls_layers": [3, 5, 7, 9, 11],
        }
        detector = models.create_detector("clip_b16", config)
        start = time.perf_counter()
        results = detector.predict(images)
        ms = 1000 * (time.perf_counter() - start) / len(images)
        best = {}
        for kind in ("cls", "embedding", "cls_layers"):
            X = np.array([r.details[kind] for r in results])
            X = (X - X.mean(0)) / X.std(0)
            best[kind] = max(
                cross_val_score(LogisticRegression(C=C, max_iter=5000), X, y, cv=folds, scoring="roc_auc").mean()
                for C in args.C
            )
        print(f"| {crops} | {ms:.0f} | {best['cls']:.3f} | {best['embedding']:.3f} | {best['cls_layers']:.3f} |")


if __name__ == "__main__":
    main()
