"""Train the ``dino`` detector's head: DINOv2 embeddings of a manifest's images -> calibrated linear SVM.

Reads a manifest (CSV or Parquet; columns ``filepath``, ``label`` (real|ai), ``split`` (train|val|test), and
optionally ``crop`` as written by ``training/dataset.py``), embeds the train and val images with the ``dino``
detector itself (``return_embedding``), so training and serving share one preprocessing path, fits
:class:`models.dino.DinoSvmHead` on ``split == "train"``, reports val accuracy and ROC AUC, and saves the head
(``.npz``, no pickle) with its schema.

By default every image, of either class, first goes through the same random crop / resize / JPEG re-encode
(``training.augment.Reencode``, seeded): the shared data's classes differ in format and compression, and a head
trained on untouched files learns the container instead of the image.

    python -m training.train_dino_svm MANIFEST --out heads/dino_svm.npz [--model-id facebook/dinov2-base]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from models.dino import DinoDetector, DinoSvmHead
from models.image_input import ImageInputError, decode_image
from training.augment import Reencode
from training.dataset import DATASET_LIMITS, check_two_classes, item_bytes, load_manifest

log = logging.getLogger(__name__)

LABEL_VALUES = {"real": 0, "ai": 1}


def train_dino_svm(
    manifest: str | Path,
    out_path: str | Path,
    detector_config: dict[str, Any] | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 16,
    C: float = 1.0,
    cv: int = 5,
    reencode: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit and save the head; return the report (counts, failures, val accuracy / AUC, head path)."""
    table = load_manifest(Path(manifest))
    if "split" not in table.column_names:
        raise ValueError(f"manifest {manifest} has no 'split' column (train|val|test)")
    unknown = set(table.column("label").to_pylist()) - set(LABEL_VALUES)
    if unknown:
        raise ValueError(f"manifest {manifest} has labels {sorted(unknown)}; only 'real' and 'ai' are allowed")
    train_rows = table.filter(pc.equal(table["split"], "train"))
    check_two_classes(train_rows, f"the train split of {manifest}")  # refused before any model is loaded
    val_rows = table.filter(pc.equal(table["split"], "val"))

    config = {**(detector_config or {}), "return_embedding": True, "head": None, "head_sha256": None}
    detector = DinoDetector(config, device=device)
    rng = np.random.default_rng(seed)
    augment = Reencode() if reencode else None
    X_train, y_train, failed_train = embed_rows(detector, train_rows.to_pylist(), batch_size, augment, rng)
    X_val, y_val, failed_val = embed_rows(detector, val_rows.to_pylist(), batch_size, augment, rng)
    if len(set(y_train)) < 2:
        raise ValueError("after dropping images that failed, the train split has a single class")

    head = DinoSvmHead(
        C=C, cv=cv, random_state=seed, backbone_id=detector.config["model_id"], pooling=detector.config["pooling"]
    ).fit(X_train, y_train)
    report: dict[str, Any] = {
        "manifest": str(manifest),
        "detector_version": detector.version,
        "n_train": int(len(y_train)),
        "n_train_ai": int(np.sum(y_train)),
        "n_val": int(len(y_val)),
        "failed": failed_train + failed_val,
        "reencode": reencode,
        "train_accuracy": float(np.mean(head.predict(X_train) == y_train)),
        **validation_metrics(head, X_val, y_val),
    }
    report["head"] = str(head.save(out_path, metadata=report))
    return report


def embed_rows(
    detector: DinoDetector,
    rows: list[dict[str, Any]],
    batch_size: int,
    augment: Reencode | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Embeddings and 0/1 labels of ``rows``; images that cannot be read or embedded are listed, not guessed."""
    embeddings: list[list[float]] = []
    labels: list[int] = []
    failed: list[dict[str, str]] = []
    for start in range(0, len(rows), batch_size):
        batch, batch_rows = [], []
        for row in rows[start : start + batch_size]:
            try:
                image = decode_image(item_bytes(row["filepath"], row.get("crop") or ""), DATASET_LIMITS)
                if augment is not None:
                    image = decode_image(augment(image, rng), DATASET_LIMITS)
            except (OSError, ImageInputError) as err:
                failed.append({"filepath": row["filepath"], "error": f"{type(err).__name__}: {err}"})
                continue
            batch.append(image)
            batch_rows.append(row)
        for row, result in zip(batch_rows, detector.predict(batch) if batch else []):
            if not result.ok:
                failed.append({"filepath": row["filepath"], "error": result.error or result.skipped or ""})
                continue
            embeddings.append(result.details["embedding"])
            labels.append(LABEL_VALUES[row["label"]])
    if failed:
        log.warning("%d images could not be embedded; first: %s", len(failed), failed[0])
    X = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
    return X, np.asarray(labels, dtype=int), failed


def validation_metrics(head: DinoSvmHead, X_val: np.ndarray, y_val: np.ndarray) -> dict[str, Any]:
    """Val accuracy (threshold 0.5) and ROC AUC; each is None, with the reason, where it is undefined."""
    from sklearn.metrics import roc_auc_score

    if len(y_val) == 0:
        return {"val_accuracy": None, "val_auc": None, "val_note": "no val split"}
    p_ai = head.predict_proba(X_val)[:, 1]
    metrics: dict[str, Any] = {"val_accuracy": float(np.mean((p_ai >= 0.5) == y_val)), "val_auc": None}
    if len(set(y_val.tolist())) == 2:
        metrics["val_auc"] = float(roc_auc_score(y_val, p_ai))
    else:
        metrics["val_note"] = "val split has one class: AUC undefined"
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train_dino_svm", description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path, help="CSV or Parquet with filepath,label,split")
    parser.add_argument("--out", type=Path, required=True, help="where to write the head (.npz)")
    parser.add_argument("--model-id", default=DinoDetector.default_config["model_id"], help="HF id or local dir")
    parser.add_argument("--pooling", choices=["cls", "cls+mean"], default="cls")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--C", type=float, default=1.0, help="SVM regularisation (larger = less)")
    parser.add_argument("--cv", type=int, default=5, help="calibration folds")
    parser.add_argument(
        "--no-reencode",
        dest="reencode",
        action="store_false",
        help="embed the files as they are (not recommended: see the module docstring)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    report = train_dino_svm(
        args.manifest,
        args.out,
        {"model_id": args.model_id, "pooling": args.pooling},
        device=args.device,
        batch_size=args.batch_size,
        C=args.C,
        cv=args.cv,
        reencode=args.reencode,
        seed=args.seed,
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
