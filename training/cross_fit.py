"""Cross-fitting: out-of-fold features for the train rows of detectors that were themselves trained on train.

The fusion is fitted on the train split. A detector fitted on the same split (``clip_b16``'s head,
``effnet_artifact``) scores those rows in-sample: near-perfectly, so the fusion learns to trust it far more than
it deserves on new images (measured: the clip head's train AUC 0.996 in-sample against 0.923 out-of-fold, and its
fusion weight 2.5x too large). Cross-fitting removes that: the train items are split into ``folds`` by their
near-duplicate cluster (so no duplicate crosses folds); for each fold a copy of the detector is trained on the
other folds the way the shipped one was (same settings, same variants, calibrated on val), and scores the
held-out fold. Val and test rows keep the shipped detector's features: it was never trained on them (val did
choose its settings and fit its calibration, as for every copy).

    imgverify train cross-fit clip-head MANIFEST --config CFG --out runs/cross_fit/clip_b16.parquet [--folds 5]
    imgverify train cross-fit effnet-artifact MANIFEST --config CFG --out runs/cross_fit/effnet_artifact.parquet
        [--folds 5] [training options of train_effnet_artifact, e.g. --epochs 3 --pool-cache DIR]

With K folds each copy is trained on (K-1)/K of the train split, so its scores are a little weaker than the
shipped detector's: the fusion then trusts the detector slightly less than it could, the safe direction.

The output is a table of ``key`` (the feature row key, ``training.features.row_key``), ``fold`` and the
detector's trained features, with the detector and its shipped version in the Parquet metadata.
``imgverify train fusion --cross-fitted FILE`` puts those values in place of the in-sample ones
(``apply_cross_fitted``); it refuses a train row a file does not cover, a file made for another version of the
detector than the one that made the features, and, once any file is given, a trained feature no file covers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deployments.config import load_profile
from training.clip_embeddings import EmbeddingRows, embedding_profile
from training.features import DEFAULT_CACHE, outcome_column
from training.folds import item_key, out_of_fold_probs, train_item_folds

# The features this module can cross-fit: those of the detectors fitted here on the train split. The published
# CLIP probe and the hand-made features were never fitted here. ghostnet_score is (training/train_ghostnet.py, same
# splits) but has no cross-fit: a fusion reading it has in-sample train rows for it (the local profile no longer
# runs ghostnet; effnet_artifact replaced it).
TRAINED_FEATURES = {"clip_b16": ["clip_b16_prob"], "effnet_artifact": ["effnet_artifact_prob"]}
# What `features extract --variant reencode#0` and `--variant launder#0` make: the fusion's rows.
FUSION_VARIANTS = ["reencode#0", "launder#0"]


def fold_groups(rows: EmbeddingRows, by: str, item_fold: dict[str, int]) -> np.ndarray:
    """Each row's held-out group: its item's cluster fold (train rows; val rows -1), or its source's index."""
    if by == "cluster":
        return np.asarray([item_fold[item_key(k)] if s == "train" else -1 for k, s in zip(rows.key, rows.split)])
    if by == "source":
        sources = sorted(set(rows.source.tolist()))
        return np.asarray([sources.index(s) for s in rows.source])
    raise ValueError(f"cross-fit by {by!r}: use 'cluster' or 'source'")


# ---- clip_b16's head: refitted per fold on the cached embeddings (no backbone runs) -------------------------
def cross_fit_clip_head(
    manifest_path: Path,
    config: Path,
    folds: int = 5,
    variants: list[str] = FUSION_VARIANTS,
    cache_dir: Path = DEFAULT_CACHE,
    by: str = "cluster",
) -> pa.Table:
    """Out-of-fold ``clip_b16_prob`` for the rows of ``variants``: the train rows (``by="cluster"``: ``folds`` folds of
    near-duplicate clusters) or the train and val rows (``by="source"``: one fold per source). Each fold head has the
    shipped head's settings (kind, model, C, layers) and is fitted and calibrated on the same variants of train / val
    as it was (``train_clip_head``'s report in the head file), so both give probabilities on one scale."""
    import models
    from training.dataset import load_manifest
    from training.features import extract_features

    settings = {
        **load_profile(config, check_fusion=False).detectors["clip_b16"].user_config.detector,
        "return_embedding": False,
    }
    detector = models.create_detector("clip_b16", settings)
    shipped = detector.head
    if shipped is None:
        raise ValueError(f"{config}: clip_b16 has no head to cross-fit")
    trained_on = list(shipped.metadata_.get("variants") or ["clean", *variants])
    manifest = load_manifest(manifest_path)
    items = manifest.filter(pc.is_in(manifest["split"], pa.array(["train", "val"])))
    table = extract_features(items, embedding_profile(config), sorted({*trained_on, *variants}), cache_dir, False)
    rows = EmbeddingRows.from_table(table, shipped.embedding_kind)
    group = fold_groups(rows, by, train_item_folds(manifest, folds))
    role = np.where(np.isin(rows.variant, trained_on), np.where(rows.split == "train", "fit", "calibrate"), "")
    probs = out_of_fold_probs(rows.X, rows.y, group, role, shipped.get_params())
    wanted = np.isin(rows.variant, variants) & (group >= 0)
    # Through the detector's own postprocess, so the feature is exactly what the detector would report.
    features = [
        detector.postprocess({"embeddings": {}, "prob": float(p), "pub_prob": None}, False).features
        for p in probs[wanted]
    ]
    return _oof_table("clip_b16", detector.version, list(rows.key[wanted]), group[wanted].tolist(), features, by)


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
    import models
    from training.dataset import load_manifest
    from training.features import extract_features, single_detector_profile

    shipped = models.create_detector(
        name, load_profile(config, check_fusion=False).detectors[name].user_config.detector
    )
    manifest = load_manifest(manifest_path)
    item_fold = train_item_folds(manifest, len(fold_weights))
    keys, folds, features = [], [], []
    for k, weights in enumerate(fold_weights):
        held_out = manifest.filter(pc.is_in(manifest["key"], pa.array([i for i, f in item_fold.items() if f == k])))
        profile = single_detector_profile(config, name, {"weights": str(weights.resolve()), "weights_sha256": None})
        table = extract_features(held_out, profile, variants, cache_dir, progress=False)
        for i, key in enumerate(table.column("key").to_pylist()):
            keys.append(key)
            folds.append(k)
            features.append({f: table.column(f)[i].as_py() for f in TRAINED_FEATURES[name]})
    return _oof_table(name, shipped.version, keys, folds, features)


def check_fold_weights(path: Path, manifest: Path, folds: int, held_out: int) -> None:
    """Refuse fold weights trained for another fold layout or another manifest (a rebuilt manifest can move
    items between folds, and weights that saw an item must not score it); the card beside the weights says."""
    from models.weights import file_sha256

    card = json.loads(path.with_suffix(".json").read_text())
    data = card.get("data", {})
    if data.get("cross_fit") != {"folds": folds, "held_out": held_out}:
        raise ValueError(f"{path}: trained as {data.get('cross_fit')}, not fold {held_out} of {folds}; delete it")
    if data.get("manifest_sha256") != file_sha256(manifest):
        raise ValueError(f"{path}: trained on another manifest than {manifest}; delete it to retrain")


def _oof_table(
    detector: str,
    shipped_version: str,
    keys: list[str],
    folds: list[int],
    features: list[dict[str, float]],
    by: str = "cluster",
) -> pa.Table:
    columns = {"key": pa.array(keys, pa.string()), "fold": pa.array(folds, pa.int32())}
    for name in TRAINED_FEATURES[detector]:
        columns[name] = pa.array([f.get(name) for f in features], pa.float64())
    metadata = {"detector": detector, "shipped_version": shipped_version, "by": by}
    return pa.table(columns).replace_schema_metadata({"imgverify_cross_fit": json.dumps(metadata)})


# ---- the fusion's side --------------------------------------------------------------------------------------
def apply_cross_fitted(
    table: pa.Table, paths: list[Path], required: list[str] = ()
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """``table`` (feature rows) with each file's out-of-fold values in place of the shipped detector's; and what was
    replaced. A file made by cluster folds covers the train rows (val and test keep the shipped detector's features);
    one made by source folds covers the train and val rows (so the fusion's calibration sees unseen-source scores
    too). Refused: a row of those splits the detector scored that the file does not cover; a file row of another
    split; a file made for another version of the detector than the one in the table's outcomes; two files for one
    feature; and, once any file is given, a ``required`` feature (trained on train, used by the fusion) that no file
    covers."""
    from models.weights import file_sha256

    record, covered = [], set()
    split_of = dict(zip(table.column("key").to_pylist(), table.column("split").to_pylist()))
    for path in paths:
        oof = pq.read_table(path)
        meta = json.loads((oof.schema.metadata or {}).get(b"imgverify_cross_fit", b"{}"))
        _check_version(table, meta, path)
        splits = ("train", "val") if meta.get("by") == "source" else ("train",)
        oof_keys = oof.column("key").to_pylist()
        elsewhere = [k for k in oof_keys if split_of.get(k, "train") not in splits]
        if elsewhere:
            raise ValueError(
                f"{path}: {len(elsewhere)} rows are not {' or '.join(splits)} rows (first {elsewhere[0]!r})"
            )
        names = [c for c in oof.column_names if c not in ("key", "fold")]
        for name in names:
            if name in covered:
                raise ValueError(f"{path}: {name} is cross-fitted by an earlier file too")
            if name not in table.column_names:
                raise ValueError(f"{path}: the features table has no column {name!r}")
            covered.add(name)
            table = _replace_values(table, name, dict(zip(oof_keys, oof.column(name).to_pylist())), splits, path)
        record.append(
            {
                "file": str(path),
                "sha256": file_sha256(path),
                **meta,
                "features": sorted(names),  # this file's, not those of the files before it
                "rows": {split: sum(1 for k in oof_keys if split_of.get(k) == split) for split in splits},
            }
        )
    uncovered = [name for name in required if name not in covered and name in table.column_names]
    if paths and uncovered:
        raise ValueError(f"trained on the train split but not cross-fitted: {uncovered}; add their files")
    if uncovered:
        warnings.warn(f"the fusion is fitted on in-sample train rows of {uncovered} (no --cross-fitted)", stacklevel=2)
    return table, record


def _replace_values(
    table: pa.Table, name: str, values: dict[str, float | None], splits: tuple[str, ...], path: Path
) -> pa.Table:
    """Column ``name`` with ``values`` in place of the rows of ``splits``; every such row the detector scored must
    have one (a row it did not score stays missing)."""
    column = table.column(name).to_pylist()
    for i, (key, split) in enumerate(zip(table.column("key").to_pylist(), table.column("split").to_pylist())):
        if split not in splits:
            continue
        if key not in values:
            if column[i] is not None:
                raise ValueError(f"{path}: no cross-fitted {name} for the {split} row {key!r}")
            continue
        column[i] = values[key]
    return table.set_column(table.column_names.index(name), name, pa.array(column, pa.float64()))


def _check_version(table: pa.Table, meta: dict[str, str], path: Path) -> None:
    """The table's train-row outcomes of the file's detector must come from the version the file was made for (an
    fp32 clip_b16 on either runtime counts as one: cross-fit on a CPU box, features on a GPU box)."""
    from models.clip_b16 import ClipB16Detector

    column = outcome_column(meta.get("detector", ""))
    if not meta or column not in table.column_names:
        return
    train = table.filter(pc.equal(table["split"], "train"))
    versions = {json.loads(t)["version"] for t in train.column(column).to_pylist() if t}
    same = ClipB16Detector.runtime_neutral
    if {same(v) for v in versions} - {same(meta["shipped_version"])}:
        raise ValueError(
            f"{path}: made for {meta['detector']} {meta['shipped_version']!r}, but the features come from "
            f"{sorted(versions)}; run `imgverify train cross-fit` again"
        )


# ---- command line -------------------------------------------------------------------------------------------
RESERVED = ("--manifest", "--out", "--folds", "--hold-out-fold")  # set here per fold; not passed through


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgverify train cross-fit", description=__doc__.splitlines()[0])
    parser.add_argument("detector", choices=["clip-head", "effnet-artifact"])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--config", type=Path, required=True, help="the Serve config the fusion is trained for")
    parser.add_argument("--out", type=Path, required=True, help="out-of-fold features (.parquet)")
    parser.add_argument("--folds", type=int, default=5, help="cluster folds (not used with --by source)")
    parser.add_argument(
        "--by",
        choices=["cluster", "source"],
        default="cluster",
        help="clip-head: hold out near-duplicate clusters (train rows), or whole sources (train and val rows)",
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args, extra = parser.parse_known_args(argv)
    if args.detector == "clip-head" and extra:
        parser.error(f"clip-head takes no training options: {extra}")
    if args.detector == "effnet-artifact" and args.by != "cluster":
        parser.error("effnet-artifact is cross-fitted by cluster folds only (one fine-tuning per fold)")
    if any(e.split("=")[0] in RESERVED for e in extra):
        parser.error(f"{RESERVED} are set by cross-fit itself: {extra}")
    started = time.perf_counter()
    if args.detector == "clip-head":
        table = cross_fit_clip_head(args.manifest, args.config, args.folds, cache_dir=args.cache, by=args.by)
    else:
        weights = [args.out.parent / f"effnet_artifact_fold{k}of{args.folds}.safetensors" for k in range(args.folds)]
        for k, path in enumerate(weights):
            if not path.exists():  # one fine-tuning per fold (~7 min each here with 5 folds), kept for a re-run
                from training import train_effnet_artifact

                fold_args = ["--manifest", str(args.manifest), "--out", str(path), "--folds", str(args.folds)]
                train_effnet_artifact.main([*fold_args, "--hold-out-fold", str(k), *extra])
            check_fold_weights(path, args.manifest, args.folds, k)
        table = cross_fit_detector("effnet_artifact", args.manifest, args.config, weights, cache_dir=args.cache)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out)
    print(f"{table.num_rows} out-of-fold rows -> {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
