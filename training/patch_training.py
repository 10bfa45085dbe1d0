"""What the patch-CNN trainers share: manifest items, the training re-encode ranges, metrics, calibration, logging.

``training/train_ghostnet.py`` and ``training/train_effnet_artifact.py`` both train a network on native-resolution
patches cut from re-encoded images, select the epoch on image-level AUC and fit a Platt calibration of the mean
patch logit. The helpers they have in common live here, so that neither trainer imports the other's script:

* data: ``Item`` (one usable manifest row), ``usable_items``, ``items_hash``, ``load_item`` and
  ``reencode_ranges`` (the crop and scale ranges of ``training.augment.Reencode`` that keep one patch);
* metrics: ``auc``, ``summarise`` and ``per_source``;
* ``fit_platt`` (the calibration), ``log`` (timestamped progress lines) and ``timm_version`` (for the cards).

No torch here: the trainers set their OpenMP policy before torch is imported.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from models.image_input import DecodedImage, decode_image
from training.dataset import DATASET_LIMITS, item_bytes

MODERN_MATCHED = "modern-matched"  # the one format-controlled modern pair; reported on its own
# Reencode's default ranges, applied to the native-resolution window.
CROP_FRACTION = (0.6, 1.0)
SCALE = (0.5, 1.0)


# ---- data -----------------------------------------------------------------------------------------------------
@dataclass
class Item:
    key: str
    filepath: str
    crop: str
    label: int  # 1 = ai, 0 = real
    source: str
    split: str
    width: int
    height: int


def usable_items(table: pa.Table, patch: int) -> tuple[list[Item], dict[str, int]]:
    """Items of a cleaned manifest whose short side holds one patch, sorted by key; and what was left out."""
    items, too_small = [], {}
    for row in table.to_pylist():
        if min(row["width"], row["height"]) < patch:
            too_small[row["source"]] = too_small.get(row["source"], 0) + 1
            continue
        items.append(
            Item(
                key=row["key"],
                filepath=row["filepath"],
                crop=row["crop"] or "",
                label=1 if row["label"] == "ai" else 0,
                source=row["source"],
                split=row["split"],
                width=row["width"],
                height=row["height"],
            )
        )
    items.sort(key=lambda item: item.key)
    return items, too_small


def items_hash(items: list[Item]) -> str:
    """sha256 over the sorted ``key, label, split`` lines of the items given (the cards' ``items_sha256``)."""
    lines = sorted(f"{item.key}\t{'ai' if item.label else 'real'}\t{item.split}" for item in items)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def load_item(item: Item) -> DecodedImage:
    return decode_image(item_bytes(item.filepath, item.crop), DATASET_LIMITS)


def reencode_ranges(
    width: int, height: int, patch: int, source_cap: int
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Crop-fraction and scale ranges for ``Reencode`` on a ``width`` x ``height`` image.

    The crop is at most ``source_cap`` pixels on its long side (native-resolution window); the ranges are
    Reencode's defaults except where the result could fall below one patch: then the scale floor (and if
    needed the crop floor) is raised. None when even the largest window is smaller than a patch.
    """
    long_side, short_side = max(width, height), min(width, height)
    need = patch + 2  # Reencode rounds sizes; keep a margin so the short side stays >= patch
    top = min(1.0, source_cap / long_side)
    if short_side * top < need:
        return None
    crop_low, scale_low = CROP_FRACTION[0] * top, SCALE[0]
    if short_side * crop_low * scale_low < need:
        scale_low = min(1.0, need / (short_side * crop_low))
        if short_side * crop_low * scale_low < need:
            crop_low = need / short_side
    return (crop_low, top * CROP_FRACTION[1]), (scale_low, SCALE[1])


# ---- metrics --------------------------------------------------------------------------------------------------
def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC (ties count half); None without both classes."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    if len(positives) == 0 or len(negatives) == 0:
        return None
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def summarise(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Counts, accuracy at 0.5, AUC and mean P(AI) per class."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    out = {
        "n": len(labels),
        "n_ai": int(labels.sum()),
        "n_real": int(len(labels) - labels.sum()),
        "accuracy": round(float(((probabilities > 0.5) == (labels == 1)).mean()), 4) if len(labels) else None,
        "auc": None,
        "mean_score_ai": None,
        "mean_score_real": None,
    }
    roc = auc(labels, probabilities)
    out["auc"] = None if roc is None else round(roc, 4)
    if out["n_ai"]:
        out["mean_score_ai"] = round(float(probabilities[labels == 1].mean()), 4)
    if out["n_real"]:
        out["mean_score_real"] = round(float(probabilities[labels == 0].mean()), 4)
    return out


def per_source(labels: np.ndarray, probabilities: np.ndarray, sources: list[str]) -> dict:
    sources_arr = np.asarray(sources)
    return {
        "all": summarise(labels, probabilities),
        **{s: summarise(labels[sources_arr == s], probabilities[sources_arr == s]) for s in sorted(set(sources))},
    }


# ---- calibration, logging, the cards ---------------------------------------------------------------------------
def fit_platt(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Class-balanced logistic regression of the label on the logit: P(AI) for equal class priors."""
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=np.inf, class_weight="balanced").fit(logits.reshape(-1, 1), labels)
    scale, bias = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if scale <= 0:
        # The model ranks validation images backwards: a calibration would invert it. Say so, keep identity.
        return {"fitted": False, "reason": f"fitted slope {scale:.4f} <= 0 on validation", "scale": 1.0, "bias": 0.0}
    return {"fitted": True, "scale": scale, "bias": bias}


def log(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)


def timm_version() -> str:
    import timm

    return timm.__version__
