"""clip_b16's cached embeddings, and what a head gives on them without running the backbone: shared by the head's
training (``training.train_clip_head``), cross-fitting (``training.cross_fit``) and the leave-out yardstick
(``training.leave_out``), which each fit heads on the same cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from deployments.config import Profile, load_profile
from models.clip_b16 import DETAIL_OF_KIND
from models.fusion import DetectorOutcome
from training.features import outcome_column, single_detector_profile
from training.folds import variant_of

# clip_b16 as the Serve config has it, but giving its embeddings instead of any head's probability: one cache of
# embeddings serves every head trained on them (here, in cross-fitting and in each leave-out fold).
EMBEDDING_SETTINGS = {"return_embedding": True, "head": None, "head_sha256": None, "published_head": None}


def embedding_profile(config: Path) -> Profile:
    """A one-detector profile: ``clip_b16`` as the Serve config has it, returning embeddings instead of heads."""
    return single_detector_profile(config, "clip_b16", EMBEDDING_SETTINGS)


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


def clip_detector(config: Path, **settings: Any) -> Any:
    """The Serve config's ``clip_b16`` (heads and all, no embeddings returned), with some settings replaced."""
    import models

    configured = load_profile(config, check_fusion=False).detectors["clip_b16"].user_config.detector
    replaced = {"head_sha256": None} if "head" in settings else {}
    return models.create_detector("clip_b16", {**configured, "return_embedding": False, **replaced, **settings})


def head_outcomes(table: pa.Table, detector: Any) -> list[str | None]:
    """``detector``'s outcome (JSON) for each row of ``table``, computed from the row's cached embeddings by the
    detector's own ``apply_heads`` and ``postprocess`` (no backbone run); None where the row has no embedding."""
    embedded: list[tuple[int, DetectorOutcome]] = []
    for i, text in enumerate(table.column(outcome_column("clip_b16")).to_pylist()):
        outcome = DetectorOutcome.from_json(text) if text else None
        if outcome is not None and outcome.status == "ok":
            embedded.append((i, outcome))
    out: list[str | None] = [None] * table.num_rows
    if not embedded:
        return out
    # One detector version made every row, so the first row says which embeddings they all carry.
    details = embedded[0][1].result.details
    embeddings = {
        kind: np.asarray([o.result.details[detail] for _, o in embedded], dtype=np.float32)
        for kind, detail in DETAIL_OF_KIND.items()
        if detail in details
    }
    latencies = [o.latency_ms for _, o in embedded]
    for (i, _), outcome in zip(embedded, outcomes_from_embeddings(detector, embeddings, latencies)):
        out[i] = outcome
    return out


def outcomes_from_embeddings(
    detector: Any, embeddings: dict[str, np.ndarray], latencies: list[float | None]
) -> list[str]:
    """The outcome (JSON) ``detector`` gives for each image whose embeddings (by kind, one row per image) are given."""
    return [
        DetectorOutcome.from_result("clip_b16", detector.postprocess(output, False), detector.version, ms).to_json()
        for output, ms in zip(detector.apply_heads(embeddings), latencies)
    ]
