"""Feature tables into the service's verdicts, and numbers into report cells: what ``training.evaluate`` (one split)
and ``training.leave_out`` (each source held out) share, so neither reads the other's script."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from deployments.data import outcome_column
from models.fusion import FusionModel, TrainedFusion
from models.verdict import Verdict
from training.features import feature_rows, outcomes_of

TRUTH = {"real": 0, "ai": 1}


def fusion_probabilities(fusion: FusionModel, rows: list[dict[str, float]]) -> np.ndarray:
    """P(AI) per feature row; NaN where the model reads none of the row's features (the service gives no
    fusion verdict then either). The numbers of ``fusion.predict_proba``, batched for a trained model."""
    prob = np.full(len(rows), np.nan)
    usable = [i for i, row in enumerate(rows) if any(name in row for name in fusion.features)]
    if usable and isinstance(fusion, TrainedFusion):
        prob[usable] = fusion.predict_proba_rows([rows[i] for i in usable])
    elif usable:
        prob[usable] = [fusion.predict_proba(rows[i]) for i in usable]
    return prob


def predictions_table(table: pa.Table, verdict: Verdict, detectors: list[str]) -> pa.Table:
    """``extract_features``' table with the outcome JSON dropped and fusion_prob, verdict, decided_by and
    uncertain added; unreadable rows keep their error and get nulls."""
    prob = fusion_probabilities(verdict.fusion, feature_rows(table, verdict.features))
    bodies = [
        None if error else verdict.decide(outcomes_of(table, i, detectors))
        for i, error in enumerate(table.column("error").to_pylist())
    ]
    table = table.drop_columns([outcome_column(name) for name in detectors])
    return (
        table.append_column("fusion_prob", pa.array([None if np.isnan(p) else float(p) for p in prob], pa.float64()))
        .append_column("verdict", pa.array([None if b is None else b["label"] for b in bodies], pa.string()))
        .append_column("decided_by", pa.array([None if b is None else b["decided_by"] for b in bodies], pa.string()))
        .append_column("uncertain", pa.array([None if b is None else b["uncertain"] for b in bodies], pa.bool_()))
    )


def fmt(value: Any) -> str:
    """A report cell: integers as they are, other numbers to 3 decimals, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
