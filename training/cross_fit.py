"""Cross-fitting: out-of-fold features for the train rows of detectors that were themselves trained on train.

The fusion is fitted on the train split. A detector fitted on the same split (``clip_b16``'s head,
``effnet_artifact``) scores those rows in-sample: near-perfectly, so the fusion learns to trust it far more than
it deserves on new images (measured: the clip head's train AUC 0.996 in-sample against 0.923 out-of-fold, and its
fusion weight 2.5x too large). Cross-fitting removes that: the train items are split into ``folds`` by their
near-duplicate cluster (so no duplicate crosses folds); for each fold a copy of the detector is trained on the
other folds, calibrated on val like the shipped one, and scores the held-out fold. Val and test rows keep the
shipped detector's features: the shipped detector never saw them.

    imgverify train cross-fit clip-head MANIFEST --config CFG --out runs/cross_fit/clip_b16.parquet [--folds 5]
    imgverify train cross-fit effnet-artifact MANIFEST --config CFG --out runs/cross_fit/effnet_artifact.parquet
        [--folds 2] [-- extra training options]

The output is a table of ``key`` (the feature row key, ``training.features.row_key``), ``fold`` and the
detector's feature columns. ``imgverify train fusion --cross-fitted FILE`` puts those values in place of the
in-sample ones (``apply_cross_fitted``) and refuses a train row the file does not cover.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deployments.config import load_profile
from models.fusion import DetectorOutcome
from training.features import DEFAULT_CACHE

CROSS_FIT_DIR = Path("runs/cross_fit")


def fold_of(cluster: str, folds: int) -> int:
    """The fold of a near-duplicate cluster: a hash, so reproducible and the same for every detector."""
    return int.from_bytes(hashlib.sha256(f"cross-fit:{cluster}".encode()).digest()[:8], "big") % folds


# The features of each detector that a model fitted on the train split produces (the published CLIP probe and the
# hand-made features were never fitted here, so their train rows are not in-sample).
TRAINED_FEATURES = {"clip_b16": ["clip_b16_prob"], "effnet_artifact": ["effnet_artifact_prob"]}
FUSION_VARIANTS = ["reencode#0", "reencode#1"]  # what `features extract --variant reencode --copies 2` makes


def train_item_folds(manifest: pa.Table, folds: int) -> dict[str, int]:
    """Item key -> fold, for the train split's items."""
    train = manifest.filter(pc.equal(manifest["split"], "train"))
    return {k: fold_of(c, folds) for k, c in zip(train.column("key").to_pylist(), train.column("cluster").to_pylist())}


def out_of_fold_probs(
    X: np.ndarray, y: np.ndarray, fold: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, params: dict[str, Any]
) -> np.ndarray:
    """P(AI) of every row from an ``EmbeddingHead(**params)`` fitted on the other folds and calibrated on val."""
    from models.clip_b16 import EmbeddingHead

    probs = np.full(len(y), np.nan)
    for k in np.unique(fold):
        held_out = fold == k
        head = EmbeddingHead(**params).fit(X[~held_out], y[~held_out], X_val=X_val, y_val=y_val)
        probs[held_out] = head.predict_proba(X[held_out])[:, 1]
    return probs


# ---- clip_b16's head: refitted per fold on the cached embeddings (no backbone runs) -------------------------
def cross_fit_clip_head(
    manifest_path: Path,
    config: Path,
    folds: int = 5,
    variants: list[str] = FUSION_VARIANTS,
    cache_dir: Path = DEFAULT_CACHE,
) -> pa.Table:
    """Out-of-fold ``clip_b16_prob`` for the train rows, with the shipped head's settings (kind, model, C)."""
    import models
    from models.clip_b16 import EmbeddingHead
    from training.dataset import load_manifest
    from training.features import extract_features, outcome_column
    from training.train_clip_head import embedding_profile

    manifest = load_manifest(manifest_path)
    item_fold = train_item_folds(manifest, folds)
    items = manifest.filter(pc.is_in(manifest["split"], pa.array(["train", "val"])))
    table = extract_features(items, embedding_profile(config), variants, cache_dir, progress=False)
    settings = {**load_profile(config).detectors["clip_b16"].user_config.detector, "return_embedding": False}
    detector = models.create_detector("clip_b16", settings)
    shipped: EmbeddingHead = detector.head
    rows = {"train": ([], [], [], []), "val": ([], [], [], [])}  # keys, image embeds, cls, labels
    for key, split, label, text in zip(
        table.column("key").to_pylist(),
        table.column("split").to_pylist(),
        table.column("label").to_pylist(),
        table.column(outcome_column("clip_b16")).to_pylist(),
    ):
        outcome = DetectorOutcome.from_json(text) if text else None
        if outcome is None or outcome.status != "ok":
            continue  # the fusion sees this row's clip_b16 as missing either way
        keys, embeds, cls, labels = rows[split]
        keys.append(key)
        embeds.append(outcome.result.details["embedding"])
        cls.append(outcome.result.details["cls"])
        labels.append(1 if label == "ai" else 0)
    train_keys, train_embeds, train_cls, y = (np.asarray(v) for v in rows["train"])
    _, val_embeds, val_cls, y_val = (np.asarray(v) for v in rows["val"])
    kind_is_cls = shipped.embedding_kind == "cls"
    X, X_val = (train_cls, val_cls) if kind_is_cls else (train_embeds, val_embeds)
    fold = np.asarray([item_fold[item_key(k)] for k in train_keys])
    probs = out_of_fold_probs(X, y, fold, X_val, y_val, shipped.get_params())
    # Through the detector's own postprocess, so the feature is exactly what the detector would report.
    features = []
    for p, e, c in zip(probs, train_embeds, train_cls):
        output = {"embedding": e, "cls": c, "prob": float(p), "pub_prob": None}
        features.append(detector.postprocess(output, False).features)
    return _oof_table(list(train_keys), fold.tolist(), features, TRAINED_FEATURES["clip_b16"])


# ---- a detector with trained weights: one training run per fold, then the held-out fold scored -----------------
def cross_fit_detector(
    name: str,
    manifest_path: Path,
    config: Path,
    fold_weights: list[Path],
    variants: list[str] = FUSION_VARIANTS,
    cache_dir: Path = DEFAULT_CACHE,
) -> pa.Table:
    """Out-of-fold features of ``name`` for the train rows: fold k's items scored by the detector loaded with
    ``fold_weights[k]`` (trained without fold k), through the feature pipeline and its cache."""
    from training.dataset import load_manifest
    from training.features import extract_features, single_detector_profile

    manifest = load_manifest(manifest_path)
    item_fold = train_item_folds(manifest, len(fold_weights))
    keys, folds, features = [], [], []
    for k, weights in enumerate(fold_weights):
        held_out = manifest.filter(pc.is_in(manifest["key"], pa.array([i for i, f in item_fold.items() if f == k])))
        profile = single_detector_profile(config, name, {"weights": str(weights), "weights_sha256": None})
        table = extract_features(held_out, profile, variants, cache_dir, progress=False)
        for i, key in enumerate(table.column("key").to_pylist()):
            keys.append(key)
            folds.append(k)
            features.append({f: table.column(f)[i].as_py() for f in TRAINED_FEATURES[name]})
    return _oof_table(keys, folds, features, TRAINED_FEATURES[name])


def item_key(row_key: str) -> str:
    """The manifest item a feature row belongs to (``training.features.row_key`` appends ``|variant``)."""
    return row_key.split("|", 1)[0]


def _oof_table(keys: list[str], folds: list[int], features: list[dict[str, float]], names: list[str]) -> pa.Table:
    columns = {"key": pa.array(keys, pa.string()), "fold": pa.array(folds, pa.int32())}
    for name in names:
        columns[name] = pa.array([f.get(name) for f in features], pa.float64())
    return pa.table(columns)


# ---- the fusion's side --------------------------------------------------------------------------------------
def apply_cross_fitted(table: pa.Table, paths: list[Path]) -> tuple[pa.Table, list[dict[str, Any]]]:
    """``table`` (feature rows) with each file's out-of-fold values in place of the train rows' in-sample ones;
    and what was replaced. Refused: a train row the detector scored that a file does not cover, and a file row
    that is not a train row (val and test must keep the shipped detector's features)."""
    from models.weights import file_sha256

    record = []
    keys, splits = table.column("key").to_pylist(), table.column("split").to_pylist()
    split_of = dict(zip(keys, splits))
    for path in paths:
        oof = pq.read_table(path)
        oof_keys = oof.column("key").to_pylist()
        not_train = [k for k in oof_keys if split_of.get(k, "train") != "train"]
        if not_train:
            raise ValueError(f"{path}: {len(not_train)} rows are not train rows (first {not_train[0]!r})")
        names = [c for c in oof.column_names if c not in ("key", "fold")]
        for name in names:
            values = dict(zip(oof_keys, oof.column(name).to_pylist()))
            column = table.column(name).to_pylist()
            for i, (key, split) in enumerate(zip(keys, splits)):
                if split != "train":
                    continue
                if key not in values:
                    if column[i] is not None:
                        raise ValueError(f"{path}: no cross-fitted {name} for the train row {key!r}")
                    continue  # the detector did not score this row: it stays missing
                column[i] = values[key]
            table = table.set_column(table.column_names.index(name), name, pa.array(column, pa.float64()))
        replaced = sum(1 for k in oof_keys if k in split_of)
        record.append({"file": str(path), "sha256": file_sha256(path), "features": names, "train_rows": replaced})
    return table, record


# ---- command line -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgverify train cross-fit", description=__doc__.splitlines()[0])
    parser.add_argument("detector", choices=["clip-head", "effnet-artifact"])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--config", type=Path, required=True, help="the Serve config the fusion is trained for")
    parser.add_argument("--out", type=Path, required=True, help="out-of-fold features (.parquet)")
    parser.add_argument("--folds", type=int, default=None, help="default: 5 for clip-head, 2 for effnet-artifact")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args, extra = parser.parse_known_args(argv)
    started = time.perf_counter()
    if args.detector == "clip-head":
        table = cross_fit_clip_head(args.manifest, args.config, args.folds or 5, cache_dir=args.cache)
    else:
        folds = args.folds or 2
        weights = [args.out.parent / f"effnet_artifact_fold{k}of{folds}.safetensors" for k in range(folds)]
        for k, path in enumerate(weights):
            if not path.exists():  # one fine-tuning run per fold (~12 min each on 2 cores); kept, so a re-run reuses it
                from training import train_effnet_artifact

                fold_args = ["--manifest", str(args.manifest), "--out", str(path), "--folds", str(folds)]
                train_effnet_artifact.main([*fold_args, "--hold-out-fold", str(k), *extra])
        table = cross_fit_detector("effnet_artifact", args.manifest, args.config, weights, cache_dir=args.cache)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out)
    print(f"{table.num_rows} out-of-fold train rows -> {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
