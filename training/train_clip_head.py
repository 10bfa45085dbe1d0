"""Train the ``clip_b16`` detector's head: cached CLIP ViT-B/16 embeddings -> calibrated linear head.

    imgverify train clip-head MANIFEST --out models/weights/clip_b16_head.npz
        [--config serve_config.local.yaml] [--copies 2] [--launder-copies 2] [--thumbnail-copies 0]
        [--kinds image_embeds cls cls_layers]
        [--models logreg linear_svm] [--C 0.0005 0.001 0.002 0.005 0.01] [--cache cache/features]

The embeddings come through the feature-extraction pipeline (``training.features.extract_features``: Ray Data,
the detector's own preprocessing, a cache keyed by detector version), with ``clip_b16`` configured as in the
Serve config but with ``return_embedding`` on and no heads. Each train / val item is embedded as stored, as
``--copies`` re-encoded copies (``training.augment.FUSION_PROCESSING``: the same random crop, resize, generator
size, format and blur for both classes) and as ``--launder-copies`` laundered ones (``training.augment.Launder``:
a screenshot, a social network's re-encode, a thumbnail, a crop or letterbox), so a head cannot learn the container
or the pipeline. Test items are never embedded here: ``imgverify evaluate`` measures the head on them. Once the
head is saved, the features it gives for every embedded row go into the feature cache (``cache_head_features``), so
the fusion's feature extraction does not run the backbone a second time on the same copies.

Every combination of embedding kind (``image_embeds``: the projected 512-d embedding; ``cls``: the 768-d CLS
token of the last hidden state; ``cls_layers``: the CLS tokens of the configured encoder layers), linear model
and ``C`` is fitted on ``train`` and calibrated on ``val``. The one saved (plain arrays,
``models.clip_b16.EmbeddingHead``) is the one whose train rows score best when each source is scored by a head that
never saw it (``source_held_out_auc``): the product's job is the generator it has not met, and val stays for
calibration only (its AUC is reported, never used to choose).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deployments.config import Profile
from models.clip_b16 import DETAIL_OF_KIND, EmbeddingHead
from training.clip_embeddings import EmbeddingRows, clip_detector, embedding_profile, head_outcomes
from training.dataset import check_two_classes, load_manifest, training_data_hash
from training.features import (
    DEFAULT_CACHE,
    DEFAULT_CONFIG,
    extract_features,
    outcome_column,
    update_cache,
)
from training.folds import out_of_fold_probs

REFERENCE_ROWS = 1500  # ~190 KB in the head file (64 float16 per row)


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else None


def fit_candidates(
    tables: dict[str, EmbeddingRows],
    linear_models: list[str],
    Cs: list[float],
    backbone_id: str,
    layers: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Every (kind, model, C) fitted on train and calibrated on val, with two measures: ``source_auc``, the AUC of
    the train rows when each source's rows are scored by a head fitted without that source (what it does on a
    generator or pipeline it never saw: what chooses), and ``val_auc`` (reported only)."""
    candidates = []
    for kind, rows in tables.items():
        train, val = rows.where(rows.split == "train"), rows.where(rows.split == "val")
        for linear in linear_models:
            for C in Cs:
                params = {
                    "model": linear,
                    "C": C,
                    "backbone_id": backbone_id,
                    "embedding_kind": kind,
                    "layers": layers if kind == "cls_layers" else None,
                    # Training rows kept (projected) for the detector's clip_b16_novelty: how unlike them an image is.
                    "reference": REFERENCE_ROWS,
                }
                head = EmbeddingHead(**params).fit(train.X, train.y, X_val=val.X, y_val=val.y)
                candidates.append(
                    {
                        "kind": kind,
                        "model": linear,
                        "C": C,
                        "head": head,
                        "n_train": len(train.y),
                        "source_auc": source_held_out_auc(rows, params),
                        "val_auc": auc(val.y, head.predict_proba(val.X)[:, 1]),
                    }
                )
    return candidates


def source_held_out_auc(rows: EmbeddingRows, params: dict[str, Any]) -> float | None:
    """AUC over the train rows, each scored by a head fitted on the other sources' train rows and calibrated on the
    other sources' val rows: selection by sources never seen, without reading val's labels for anything but
    calibration."""
    sources = sorted(set(rows.source.tolist()))
    group = np.asarray([sources.index(s) for s in rows.source])
    role = np.where(rows.split == "train", "fit", "calibrate")
    train = rows.split == "train"
    probs = out_of_fold_probs(rows.X, rows.y, np.where(train, group, -1), role, params)
    return auc(rows.y[train], probs[train])


def per_source_val_auc(head: EmbeddingHead, val: EmbeddingRows) -> dict[str, float | None]:
    """The chosen head's val AUC per source that has both classes (modern-matched is the one that matters)."""
    out = {}
    for source in sorted(set(val.source.tolist())):
        rows = val.where(val.source == source)
        if len(set(rows.y.tolist())) == 2:
            out[source] = auc(rows.y, head.predict_proba(rows.X)[:, 1])
    return out


def train_clip_head(
    manifest_path: Path,
    out: Path,
    config: Path = DEFAULT_CONFIG,
    copies: int = 2,
    kinds: tuple[str, ...] | None = None,
    linear_models: tuple[str, ...] = ("logreg",),
    Cs: tuple[float, ...] = (0.0005, 0.001, 0.002, 0.005, 0.01),
    cache_dir: Path = DEFAULT_CACHE,
    command: str = "",
    launder_copies: int = 2,
    thumbnail_copies: int = 0,
) -> dict[str, Any]:
    """Embed train + val, fit the candidates, save the one best on held-out sources; return the report."""
    manifest = load_manifest(manifest_path)
    items = manifest.filter(pc.is_in(manifest["split"], pa.array(["train", "val"])))
    check_two_classes(items.filter(pc.equal(items["split"], "train")), "the train split")
    profile = embedding_profile(config)
    backbone_id, layers = _backbone(profile)
    kinds = kinds or ("image_embeds", "cls", *(("cls_layers",) if layers else ()))
    if "cls_layers" in kinds and not layers:  # before the (long) embedding run, not after it
        raise ValueError(f"{config}: clip_b16 sets no cls_layers, so there is no cls_layers embedding to train on")
    variants = [
        "clean",
        *(f"reencode#{i}" for i in range(copies)),
        *(f"launder#{i}" for i in range(launder_copies)),
        # The route a random laundered copy draws only one time in four, and the one the head scored worst on.
        *(f"launder-thumbnail#{i}" for i in range(thumbnail_copies)),
    ]
    table = extract_features(items, profile, variants, cache_dir)
    table = table.filter(pc.equal(pc.fill_null(table["error"], ""), ""))
    tables = {kind: EmbeddingRows.from_table(table, kind) for kind in kinds}
    candidates = fit_candidates(tables, list(linear_models), list(Cs), backbone_id, layers)
    best = max(candidates, key=lambda c: c["source_auc"] or 0.0)
    val = tables[best["kind"]].where(tables[best["kind"]].split == "val")
    measures = ("kind", "model", "C", "source_auc", "val_auc")
    report = {
        "manifest": str(manifest_path),
        "variants": variants,
        "training_data_sha256": training_data_hash(table),
        "rows": {split: table.filter(pc.equal(table["split"], split)).num_rows for split in ("train", "val")},
        "selected_by": "source_auc: train rows scored by heads that never saw their source",
        "chosen": {k: best[k] for k in (*measures, "n_train")},
        "val_auc_per_source": per_source_val_auc(best["head"], val),
        "candidates": [{k: c[k] for k in measures} for c in candidates],
        "command": command,
    }
    best["head"].save(out, metadata=report)
    report["cached_head_features"] = cache_head_features(table, config, out, cache_dir)
    return report


def cache_head_features(table: pa.Table, config: Path, head: Path, cache_dir: Path) -> int:
    """Put the features the Serve config's ``clip_b16`` gives with the new ``head`` into the feature cache, for
    every row embedded here, computed from the cached embeddings by the detector's own ``apply_heads``: the
    fusion's feature extraction (same items, same re-encoded variants) then skips the backbone for these rows.
    Returns the number of rows cached."""
    detector = clip_detector(config, head=str(head))
    outcomes = head_outcomes(table, detector)
    keys = [key for key, outcome in zip(table.column("key").to_pylist(), outcomes) if outcome is not None]
    if not keys:
        return 0
    column = [outcome for outcome in outcomes if outcome is not None]
    update_cache(pa.table({"key": keys, outcome_column("clip_b16"): column}), ["clip_b16"], cache_dir)
    return len(keys)


def _backbone(profile: Profile) -> tuple[str, list[int]]:
    """The backbone id the detector reports and its ``cls_layers``, so the saved head matches the detector that
    will load it."""
    import models

    detector = models.create_detector("clip_b16", profile.detectors["clip_b16"].user_config.detector)
    return detector.backbone_id, detector.cls_layers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgverify train clip-head", description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path, help="manifest with filepath, label, split, source")
    parser.add_argument("--out", type=Path, required=True, help="where to write the head (.npz)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Serve config naming clip_b16's backbone")
    parser.add_argument("--copies", type=int, default=2, help="re-encoded copies per item, besides the stored file")
    parser.add_argument(
        "--launder-copies", type=int, default=2, help="laundered copies per item (screenshot, social, thumbnail, crop)"
    )
    parser.add_argument(
        "--thumbnail-copies", type=int, default=0, help="thumbnail copies per item (long side 256-512), besides those"
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=list(DETAIL_OF_KIND),
        help="embeddings to try (default: all the configured detector gives; cls_layers needs cls_layers set)",
    )
    parser.add_argument("--models", nargs="+", default=["logreg"], choices=["logreg", "linear_svm"])
    parser.add_argument(
        "--C",
        nargs="+",
        type=float,
        default=[0.0005, 0.001, 0.002, 0.005, 0.01],
        help="regularisation values to try (smaller = stronger)",
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    command = "imgverify train clip-head " + " ".join(sys.argv[3:] if argv is None else argv)
    report = train_clip_head(
        args.manifest,
        args.out,
        args.config,
        args.copies,
        tuple(args.kinds) if args.kinds else None,
        tuple(args.models),
        tuple(args.C),
        args.cache,
        command,
        args.launder_copies,
        args.thumbnail_copies,
    )
    print(json.dumps({k: v for k, v in report.items() if k != "candidates"}, indent=1))
    for candidate in report["candidates"]:
        print(candidate)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
