"""Train the ``clip_b16`` detector's head: cached CLIP ViT-B/16 embeddings -> calibrated linear head.

    imgverify train clip-head MANIFEST --out models/weights/clip_b16_head.npz
        [--config serve_config.local.yaml] [--copies 2] [--kinds image_embeds cls cls_layers]
        [--models logreg linear_svm] [--C 0.001 0.002 0.005 0.02] [--cache cache/features]

The embeddings come through the feature-extraction pipeline (``training.features.extract_features``: Ray Data,
the detector's own preprocessing, a cache keyed by detector version), with ``clip_b16`` configured as in the
Serve config but with ``return_embedding`` on and no heads. Each train / val item is embedded as stored and as
``--copies`` re-encoded copies (``training.augment.FUSION_PROCESSING``: the same random crop, resize, generator
size, format and blur for both classes), so a head cannot learn the container. Test items are never embedded
here: ``imgverify evaluate`` measures the head on them. Once the head is saved, the features it gives for
every embedded row go into the feature cache (``cache_head_features``), so the fusion's feature extraction
does not run the backbone a second time on the same re-encoded copies.

Every combination of embedding kind (``image_embeds``: the projected 512-d embedding; ``cls``: the 768-d CLS
token of the last hidden state; ``cls_layers``: the CLS tokens of the configured encoder layers), linear model
and ``C`` is fitted on ``train`` and calibrated on ``val``; the one with the best val AUC is saved (plain
arrays, ``models.clip_b16.EmbeddingHead``) with every candidate's val AUC.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deployments.config import Profile, load_profile
from models.clip_b16 import DETAIL_OF_KIND, EmbeddingHead
from models.fusion import DetectorOutcome
from training.dataset import check_two_classes, load_manifest, training_data_hash
from training.features import (
    DEFAULT_CACHE,
    DEFAULT_CONFIG,
    extract_features,
    outcome_column,
    single_detector_profile,
    update_cache,
)
from training.folds import variant_of


def embedding_profile(config: Path) -> Profile:
    """A one-detector profile: ``clip_b16`` as the Serve config has it, returning embeddings instead of heads."""
    settings = {"return_embedding": True, "head": None, "head_sha256": None, "published_head": None}
    return single_detector_profile(config, "clip_b16", settings)


@dataclass
class EmbeddingRows:
    """The feature rows whose clip_b16 outcome is ok: their key, split, source, label (1 = AI) and embedding."""

    key: np.ndarray
    split: np.ndarray
    source: np.ndarray
    y: np.ndarray
    X: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table, kind: str) -> EmbeddingRows:
        detail = DETAIL_OF_KIND[kind]
        rows: dict[str, list] = {name: [] for name in ("key", "split", "source", "y", "X")}
        columns = [table.column(c).to_pylist() for c in ("key", "split", "source", "label", outcome_column("clip_b16"))]
        for key, split, source, label, text in zip(*columns):
            outcome = json.loads(text) if text else None
            if outcome and outcome["status"] == "ok":  # otherwise the fusion sees clip_b16 as missing on this row
                for name, value in zip(
                    rows, (key, split, source, int(label == "ai"), outcome["result"]["details"][detail])
                ):
                    rows[name].append(value)
        X = np.asarray(rows.pop("X"), dtype=np.float64).reshape(len(rows["key"]), -1)
        return cls(**{name: np.asarray(values) for name, values in rows.items()}, X=X)

    def where(self, mask: np.ndarray) -> EmbeddingRows:
        return EmbeddingRows(self.key[mask], self.split[mask], self.source[mask], self.y[mask], self.X[mask])

    @property
    def variant(self) -> np.ndarray:
        return np.asarray([variant_of(k) for k in self.key])


def embeddings(table: pa.Table, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of the rows whose clip_b16 outcome is ok; labels 1 = AI."""
    rows = EmbeddingRows.from_table(table, kind)
    return rows.X, rows.y


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else None


def fit_candidates(
    train: pa.Table,
    val: pa.Table,
    kinds: list[str],
    linear_models: list[str],
    Cs: list[float],
    backbone_id: str,
    layers: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Fit every (kind, model, C) on train, calibrate on val; each candidate with its head and val AUC."""
    candidates = []
    for kind in kinds:
        X_train, y_train = embeddings(train, kind)
        X_val, y_val = embeddings(val, kind)
        for linear in linear_models:
            for C in Cs:
                head = EmbeddingHead(
                    model=linear,
                    C=C,
                    backbone_id=backbone_id,
                    embedding_kind=kind,
                    layers=layers if kind == "cls_layers" else None,
                )
                head.fit(X_train, y_train, X_val=X_val, y_val=y_val)
                candidates.append(
                    {
                        "kind": kind,
                        "model": linear,
                        "C": C,
                        "head": head,
                        "n_train": len(y_train),
                        "val_auc": auc(y_val, head.predict_proba(X_val)[:, 1]),
                    }
                )
    return candidates


def per_source_val_auc(head: EmbeddingHead, val: pa.Table) -> dict[str, float | None]:
    """The chosen head's val AUC per source that has both classes (modern-matched is the one that matters)."""
    out = {}
    for source in sorted(set(val.column("source").to_pylist())):
        rows = val.filter(pc.equal(val["source"], source))
        X, y = embeddings(rows, head.embedding_kind)
        if len(set(y.tolist())) == 2:
            out[source] = auc(y, head.predict_proba(X)[:, 1])
    return out


def train_clip_head(
    manifest_path: Path,
    out: Path,
    config: Path = DEFAULT_CONFIG,
    copies: int = 2,
    kinds: tuple[str, ...] | None = None,
    linear_models: tuple[str, ...] = ("logreg", "linear_svm"),
    Cs: tuple[float, ...] = (0.001, 0.002, 0.005, 0.02),
    cache_dir: Path = DEFAULT_CACHE,
    command: str = "",
) -> dict[str, Any]:
    """Embed train + val, fit the candidates, save the best; return the report."""
    manifest = load_manifest(manifest_path)
    items = manifest.filter(pc.is_in(manifest["split"], pa.array(["train", "val"])))
    check_two_classes(items.filter(pc.equal(items["split"], "train")), "the train split")
    profile = embedding_profile(config)
    backbone_id, layers = _backbone(profile)
    kinds = kinds or ("image_embeds", "cls", *(("cls_layers",) if layers else ()))
    if "cls_layers" in kinds and not layers:  # before the (long) embedding run, not after it
        raise ValueError(f"{config}: clip_b16 sets no cls_layers, so there is no cls_layers embedding to train on")
    variants = ["clean", *(f"reencode#{i}" for i in range(copies))]
    table = extract_features(items, profile, variants, cache_dir)
    table = table.filter(pc.equal(pc.fill_null(table["error"], ""), ""))
    train = table.filter(pc.equal(table["split"], "train"))
    val = table.filter(pc.equal(table["split"], "val"))
    candidates = fit_candidates(train, val, list(kinds), list(linear_models), list(Cs), backbone_id, layers)
    best = max(candidates, key=lambda c: c["val_auc"] or 0.0)
    report = {
        "manifest": str(manifest_path),
        "variants": variants,
        "training_data_sha256": training_data_hash(table),
        "rows": {"train": train.num_rows, "val": val.num_rows},
        "chosen": {k: best[k] for k in ("kind", "model", "C", "n_train", "val_auc")},
        "val_auc_per_source": per_source_val_auc(best["head"], val),
        "candidates": [{k: c[k] for k in ("kind", "model", "C", "val_auc")} for c in candidates],
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
    import models

    settings = {
        **load_profile(config).detectors["clip_b16"].user_config.detector,
        "head": str(head),
        "head_sha256": None,
        "return_embedding": False,
    }
    detector = models.create_detector("clip_b16", settings)
    keys, embedded = [], []
    for key, text in zip(table.column("key").to_pylist(), table.column(outcome_column("clip_b16")).to_pylist()):
        outcome = DetectorOutcome.from_json(text) if text else None
        if outcome is not None and outcome.status == "ok":
            keys.append(key)
            embedded.append(outcome)
    if not embedded:
        return 0
    # One detector version made every row, so the first row says which embeddings they all carry.
    embeddings = {
        kind: np.asarray([o.result.details[detail] for o in embedded], dtype=np.float32)
        for kind, detail in DETAIL_OF_KIND.items()
        if detail in embedded[0].result.details
    }
    outcomes = [
        DetectorOutcome.from_result("clip_b16", detector.postprocess(output, False), detector.version, o.latency_ms)
        for output, o in zip(detector.apply_heads(embeddings), embedded)
    ]
    update_cache(
        pa.table({"key": keys, outcome_column("clip_b16"): [o.to_json() for o in outcomes]}), ["clip_b16"], cache_dir
    )
    return len(outcomes)


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
        "--kinds",
        nargs="+",
        choices=list(DETAIL_OF_KIND),
        help="embeddings to try (default: all the configured detector gives; cls_layers needs cls_layers set)",
    )
    parser.add_argument("--models", nargs="+", default=["logreg", "linear_svm"], choices=["logreg", "linear_svm"])
    parser.add_argument(
        "--C",
        nargs="+",
        type=float,
        default=[0.001, 0.002, 0.005, 0.02],
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
    )
    print(json.dumps({k: v for k, v in report.items() if k != "candidates"}, indent=1))
    for candidate in report["candidates"]:
        print(candidate)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
