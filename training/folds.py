"""How training splits its rows into groups, for cross-fitting and for the leave-one-source-out yardstick.

Two groupings, both by manifest item (every variant of an item goes where its item goes):

* ``fold_of``: K folds by near-duplicate cluster, hashed: reproducible, the same for every detector, and no
  near-duplicate crosses folds (``training.cross_fit``'s default);
* ``source_of``: the item's source, the collection it came from (``modern-matched``, ``imagenet-real``, ...). A
  source is one generator family and one processing pipeline, so holding a source out measures what the product
  does on a generator *and* a pipeline it has never met (``training.leave_out``).

``out_of_fold_probs`` scores each group with a clip head that never saw it (cross-fitting, the clip head's
source-held-out selection and the leave-out yardstick all use it).

A feature row's key is ``ITEM_KEY|VARIANT`` (``training.features.row_key``, which may append ``@PROCESSING_ID``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def fold_of(cluster: str, folds: int) -> int:
    """The fold of a near-duplicate cluster: a hash, so reproducible and the same for every detector."""
    return int.from_bytes(hashlib.sha256(f"cross-fit:{cluster}".encode()).digest()[:8], "big") % folds


def train_item_folds(manifest: pa.Table, folds: int) -> dict[str, int]:
    """Item key -> fold, for the train split's items."""
    train = manifest.filter(pc.equal(manifest["split"], "train"))
    return {k: fold_of(c, folds) for k, c in zip(train.column("key").to_pylist(), train.column("cluster").to_pylist())}


def item_key(row_key: str) -> str:
    """The manifest item a feature row belongs to (``training.features.row_key`` appends ``|variant``)."""
    return row_key.split("|", 1)[0]


def variant_of(row_key: str) -> str:
    """The variant of a feature row (``reencode#0``), without the processing id ``row_key`` adds."""
    return row_key.split("|", 1)[1].split("@", 1)[0]


def row_folds(row_keys: list[str], item_fold: dict[str, int]) -> np.ndarray:
    """The fold of each feature row: its item's, so every variant of an item is held out together."""
    return np.asarray([item_fold[item_key(k)] for k in row_keys], dtype=int)


def out_of_fold_probs(
    X: np.ndarray, y: np.ndarray, group: np.ndarray, role: np.ndarray, params: dict[str, Any]
) -> np.ndarray:
    """P(AI) of every row in a held-out group, from an ``EmbeddingHead(**params)`` that never saw the group: fitted
    on the rows of the other groups whose ``role`` is ``"fit"`` and calibrated on those whose role is
    ``"calibrate"``. Rows of group ``-1`` are never held out (NaN); a group is held out whole, whatever its rows' roles.
    Cluster folds: train rows are fitted and held out by fold, val rows only calibrate (group -1). Source folds: a
    source's train and val rows are held out together, so its val rows get unseen-source scores too."""
    from models.clip_b16 import EmbeddingHead

    probs = np.full(len(y), np.nan)
    for k in np.unique(group[group >= 0]):
        held_out = group == k
        fit, calibrate = (role == "fit") & ~held_out, (role == "calibrate") & ~held_out
        head = EmbeddingHead(**params).fit(X[fit], y[fit], X_val=X[calibrate], y_val=y[calibrate])
        probs[held_out] = head.predict_proba(X[held_out])[:, 1]
    return probs
