"""Metrics for probabilities of "AI" (label 1) against real (label 0): one definition for training,
calibration, threshold choice and the evaluation report."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def threshold_for_fpr(p_real: np.ndarray, target_fpr: float, weights: np.ndarray | None = None) -> float:
    """The smallest threshold whose false-positive rate on real images (share of them with p >= t) is at most
    ``target_fpr``; just above the highest score when none is. With ``weights``, the share is weighted
    (``source_weights``: every source of photos counts alike). Tied scores fall on one side together."""
    values, share = _weighted_levels(p_real, weights, "real images to choose a threshold on")
    at_or_above = np.cumsum(share[::-1])[::-1]  # share of real weight at or above each distinct score
    allowed = np.flatnonzero(at_or_above <= target_fpr + 1e-12)
    return float(values[allowed[0]]) if allowed.size else float(np.nextafter(values[-1], np.inf))


def bound_for_miss(p_ai: np.ndarray, miss: float, weights: np.ndarray | None = None) -> float:
    """The largest bound below which at most ``miss`` of the AI images score (share with p < bound), weighted like
    :func:`threshold_for_fpr`: a confident "not AI" only below it misses at most that share of AI images."""
    values, share = _weighted_levels(p_ai, weights, "AI images to choose a bound on")
    below = np.concatenate([[0.0], np.cumsum(share)[:-1]])  # share strictly under each distinct score
    return float(values[np.flatnonzero(below <= miss + 1e-12)[-1]])


def _weighted_levels(scores: np.ndarray, weights: np.ndarray | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The distinct scores, ascending, and the share of the total weight at each."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError(f"no {what}")
    weights = np.ones_like(scores) if weights is None else np.asarray(weights, dtype=np.float64)
    values, index = np.unique(scores, return_inverse=True)
    share = np.bincount(index, weights=weights, minlength=values.size) / weights.sum()
    return values, share


def source_weights(sources: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row weights under which every (source, label) group weighs the same within its label: a source with many
    images (one generator, one collection) counts as one source, like every other, in a threshold or calibration."""
    sources, labels = np.asarray(sources), np.asarray(labels)
    weights = np.zeros(len(sources), dtype=np.float64)
    for label in np.unique(labels):
        in_label = labels == label
        groups = np.unique(sources[in_label])
        for group in groups:
            rows = in_label & (sources == group)
            weights[rows] = in_label.sum() / (len(groups) * rows.sum())
    return weights


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width bins: the bin-weighted mean |observed AI rate - mean predicted p|."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(error)


def binary_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float, target_fpr: float = 0.05
) -> dict[str, float | int | None]:
    """AUC, AP, accuracy on real and on AI separately, TPR at ``target_fpr``, ECE, Brier. Metrics that
    need both classes are None when a class is absent (never a made-up 0.5)."""
    y, p = np.asarray(y, dtype=np.int64), np.asarray(p, dtype=np.float64)
    real, ai = p[y == 0], p[y == 1]
    both = real.size > 0 and ai.size > 0
    tpr = None
    if both:
        t = threshold_for_fpr(real, target_fpr)
        tpr = float((ai >= t).mean())
    return {
        "n_real": int(real.size),
        "n_ai": int(ai.size),
        "auc": float(roc_auc_score(y, p)) if both else None,
        "ap": float(average_precision_score(y, p)) if both else None,
        "acc_real": float((real < threshold).mean()) if real.size else None,
        "acc_ai": float((ai >= threshold).mean()) if ai.size else None,
        "accuracy": float(((p >= threshold) == (y == 1)).mean()) if y.size else None,
        f"tpr_at_{round(target_fpr * 100)}pct_fpr": tpr,
        "ece": expected_calibration_error(y, p) if y.size else None,
        "brier": float(np.mean((p - y) ** 2)) if y.size else None,
    }


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float | int]]:
    """The reliability diagram behind :func:`expected_calibration_error` (same equal-width bins): for
    each non-empty bin its edges, count, mean predicted p and observed AI rate."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "count": int(mask.sum()),
                    "mean_p": float(p[mask].mean()),
                    "observed_ai_rate": float(y[mask].mean()),
                }
            )
    return out


def oriented_auc(y: np.ndarray, values: np.ndarray, direction: str) -> float | None:
    """AUC of one raw feature as a score for "AI", turned the way its ``FeatureSpec.direction`` says:
    ``ai_high`` as is, ``real_high`` negated; ``neutral`` as is (so below 0.5 means higher = real).
    None when a class is absent."""
    y, values = np.asarray(y, dtype=np.int64), np.asarray(values, dtype=np.float64)
    if not ((y == 0).any() and (y == 1).any()):
        return None
    return float(roc_auc_score(y, -values if direction == "real_high" else values))
