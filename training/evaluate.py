"""Step 6 of training: the honest evaluation report of the detectors and the fusion model on one split.

    imgverify evaluate MANIFEST --config serve_config.local.yaml [--model PATH] [--split test]
                       [--robustness] [--out reports/<name>/] [--cache cache/features]

Features come from ``training.features.extract_features`` (cached), for the ``clean`` variant and, with
``--robustness``, for each perturbation of ``training.augment.ROBUSTNESS`` applied to both classes. For
each variant the fusion model gives ``fusion_prob`` and the service's own ``decide`` gives the verdict
(hard provenance evidence included). Written to ``--out``:

* ``report.md``: what was evaluated, overall / per-source / per-generator tables, the robustness grid,
  calibration, each single feature's AUC, the unreadable items, and the plots;
* ``metrics.json``: every number of the report (plus per-source and per-generator metrics of every variant);
* ``predictions.parquet``: one row per (item, variant): labels, features, fusion_prob and the verdict;
* ``roc.png``, ``reliability.png``, ``per_source_accuracy.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deployments.config import Profile, load_profile
from deployments.data import outcome_column
from models.base import FeatureSpec
from models.fusion import SchemaMismatch, json_safe, resolve_fusion_path
from models.registry import feature_owner
from models.verdict import Verdict
from models.weights import file_sha256
from training.augment import ROBUSTNESS
from training.dataset import check_two_classes, load_manifest
from training.features import DEFAULT_CACHE, DEFAULT_CONFIG, extract_features
from training.metrics import binary_metrics, oriented_auc, reliability_bins
from training.scoring import TRUTH, fmt, markdown_table, predictions_table

TARGET_FPR = 0.05
TPR_KEY = f"tpr_at_{round(TARGET_FPR * 100)}pct_fpr"  # the key binary_metrics uses for it
RIGHT_VERDICT = {0: "NON-AI", 1: "AI"}  # UNKNOWN is right for neither class

# Written into the report so every number can be read without this file.
DEFINITIONS = f"""\
- **Fusion metrics** (AUC, AP, acc_real, acc_ai, TPR@{TARGET_FPR:.0%}FPR, ECE, Brier) use the items that have a
  fusion probability, at the threshold the service uses; `real` / `AI` count those items and `no prob` the
  readable items without one (the fusion model reads none of their features). acc_real is the share of real
  images below the threshold, acc_ai the share of AI images at or above it.
- **Verdict accuracy** uses every readable item and the service's full verdict, hard provenance evidence
  included: `AI` is right for AI images, `NON-AI` for real ones, `UNKNOWN` for neither.
- **Uncertain rate**: share of readable items the service flags `uncertain` (fusion_prob inside the model's uncertain
  range, or no verdict at all). **Confident accuracy**: verdict accuracy on the other items.
- **Real called AI**: share of the readable real images the service labels `AI`; **confident**: labelled `AI`
  and not `uncertain`. The `generator_size` variant crops and resizes every image to a standard generator size
  (JPEG q90), the trap of a real photo at a common size. **AI called NON-AI, confident**: share of the readable
  AI images labelled `NON-AI` and not `uncertain`.
- Metrics that need both classes are n/a for a one-class group; a metric of a class that is absent is n/a.
- Unreadable items (the file or its variant could not be decoded) are left out of every metric and listed below.
"""


class EvaluationRefused(ValueError):
    """Nothing honest can be evaluated: an empty or single-class split, or no such fusion model."""


@dataclass
class VariantScores:
    """The readable rows of one variant: truth, fusion probability (NaN: none) and the service's verdict."""

    y: np.ndarray
    prob: np.ndarray
    verdict: np.ndarray
    decided_by: np.ndarray
    uncertain: np.ndarray
    source: np.ndarray
    generator: np.ndarray

    @classmethod
    def from_predictions(cls, readable: pa.Table) -> VariantScores:
        def column(name: str) -> np.ndarray:
            return np.asarray(readable.column(name).to_pylist(), dtype=object)

        return cls(
            y=np.asarray([TRUTH[label] for label in readable.column("label").to_pylist()], dtype=np.int64),
            prob=np.asarray(readable.column("fusion_prob").to_pylist(), dtype=np.float64),  # None -> NaN
            verdict=column("verdict"),
            decided_by=column("decided_by"),
            uncertain=np.asarray(readable.column("uncertain").to_pylist(), dtype=bool),
            source=column("source"),
            generator=column("generator"),
        )

    def metrics(self, threshold: float, mask: np.ndarray | None = None) -> dict[str, Any]:
        """Fusion and verdict metrics of all rows, or of the rows in ``mask``."""
        keep = np.ones(self.y.size, dtype=bool) if mask is None else mask
        return group_metrics(
            self.y[keep], self.prob[keep], self.verdict[keep], self.decided_by[keep], self.uncertain[keep], threshold
        )

    def grouped(self, by: str, threshold: float) -> dict[str, dict[str, Any]]:
        values = getattr(self, by)
        return {str(group): self.metrics(threshold, values == group) for group in sorted(set(values.tolist()))}


# ---- metrics ------------------------------------------------------------------------------------------
def group_metrics(
    y: np.ndarray,
    prob: np.ndarray,
    verdict: np.ndarray,
    decided_by: np.ndarray,
    uncertain: np.ndarray,
    threshold: float,
) -> dict[str, Any]:
    """One group's numbers (see DEFINITIONS). ``prob`` is NaN where the fusion model gave no probability."""
    scored = ~np.isnan(prob)
    correct = np.asarray([v == RIGHT_VERDICT[int(t)] for v, t in zip(verdict, y)], dtype=bool)
    confident = ~np.asarray(uncertain, dtype=bool)
    return {
        "n": int(y.size),
        "n_no_prob": int((~scored).sum()),
        **binary_metrics(y[scored], prob[scored], threshold, TARGET_FPR),
        "verdict_accuracy": float(correct.mean()) if y.size else None,
        "n_hard_evidence": int(sum(d == "hard_evidence" for d in decided_by)),
        "uncertain_rate": float((~confident).mean()) if y.size else None,
        "confident_accuracy": float(correct[confident].mean()) if confident.any() else None,
        **false_accusations(y, verdict, confident),
    }


def false_accusations(y: np.ndarray, verdict: np.ndarray, confident: np.ndarray) -> dict[str, float | None]:
    """Share of the real images labelled AI, and labelled AI without "uncertain": the worst failure; and its
    mirror, the share of AI images labelled NON-AI without "uncertain"."""
    real, ai = y == 0, y == 1
    called_ai = np.asarray([v == "AI" for v in verdict], dtype=bool)
    called_real = np.asarray([v == "NON-AI" for v in verdict], dtype=bool)
    return {
        "real_called_ai": float(called_ai[real].mean()) if real.any() else None,
        "real_called_ai_confident": float((called_ai & confident)[real].mean()) if real.any() else None,
        "ai_called_real_confident": float((called_real & confident)[ai].mean()) if ai.any() else None,
    }


def single_feature_aucs(readable: pa.Table, schema: dict[str, FeatureSpec]) -> list[dict[str, Any]]:
    """Each feature alone as a score for AI, oriented by its declared direction (which detector signal
    carries what), strongest first. Items without the feature are left out; ``coverage`` says how many."""
    y = np.asarray([TRUTH[label] for label in readable.column("label").to_pylist()], dtype=np.int64)
    out = []
    for name, spec in schema.items():
        values = np.asarray(readable.column(name).to_pylist(), dtype=np.float64)  # None -> NaN
        present = ~np.isnan(values)
        auc = oriented_auc(y[present], values[present], spec.direction) if present.any() else None
        out.append(
            {
                "feature": name,
                "detector": feature_owner(name),
                "direction": spec.direction,
                "n": int(present.sum()),
                "coverage": float(present.mean()) if y.size else None,
                "auc": auc,
                # A directional feature that ranks the classes the other way round on this data.
                "against_direction": bool(auc is not None and spec.direction != "neutral" and auc < 0.5),
            }
        )
    return sorted(out, key=lambda row: -1.0 if row["auc"] is None else abs(row["auc"] - 0.5), reverse=True)


def detector_versions(table: pa.Table, detectors: list[str]) -> dict[str, list[str]]:
    """The detector versions that actually produced the evaluated outcomes (normally one each)."""
    versions: dict[str, set[str]] = {name: set() for name in detectors}
    for name in detectors:
        for text in table.column(outcome_column(name)).to_pylist():
            if text:
                versions[name].add(json.loads(text)["version"])
    return {name: sorted(found) for name, found in versions.items()}


def unreadable_items(predictions: pa.Table, variants: list[str]) -> list[dict[str, Any]]:
    """Items with an error in any variant, each once, with the variants it failed in (in ``variants`` order)."""
    items: dict[tuple[str, str], dict[str, Any]] = {}
    for row in predictions.filter(pc.not_equal(predictions["error"], "")).to_pylist():
        item_key = row["key"].rsplit("|", 1)[0]
        entry = items.setdefault(
            (row["filepath"], item_key),
            {
                "filepath": row["filepath"],
                "key": item_key,
                "label": row["label"],
                "source": row["source"],
                "error": row["error"],
                "variants": [],
            },
        )
        entry["variants"].append(row["variant"])
    for entry in items.values():
        entry["variants"].sort(key=variants.index)
    return list(items.values())


def _artifact_sha256(location: str | None) -> str | None:
    """sha256 of the fusion artifact file, resolved the way ``load_fusion`` resolves it."""
    if location is None:
        return None
    return file_sha256(resolve_fusion_path(location))


def _rows_of(table: pa.Table, column: str, value: str) -> pa.Table:
    return table.filter(pc.equal(table[column], value))


# ---- the evaluation -------------------------------------------------------------------------------------
def evaluate(
    manifest_path: Path,
    out: Path,
    config: Path = DEFAULT_CONFIG,
    model: str | None = None,
    split: str = "test",
    robustness: bool = False,
    cache_dir: Path = DEFAULT_CACHE,
    command: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``split`` of the manifest, write the report files to ``out`` and return metrics.json's content."""
    profile = load_profile(config)
    detectors = profile.args.detector_names()
    model = model if model is not None else profile.args.fusion.model
    verdict = _load_verdict(profile, model)  # before any extraction: a wrong model fails in seconds, not hours
    items = _split_items(manifest_path, split)
    variants = ["clean", *ROBUSTNESS] if robustness else ["clean"]
    table = extract_features(items, profile, variants, cache_dir, progress=progress)
    predictions = predictions_table(table, verdict, detectors)
    readable, clean = _readable_rows(predictions, items.num_rows, split)

    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(predictions, out / "predictions.parquet")
    scores = {v: VariantScores.from_predictions(_rows_of(readable, "variant", v)) for v in variants}
    unreadable = unreadable_items(predictions, variants)
    metrics: dict[str, Any] = {
        "evaluated": _evaluated(
            manifest_path, items, split, config, model, verdict, profile, table, detectors, variants, command, cache_dir
        ),
        "variants": _variant_metrics(scores, verdict.threshold, unreadable),
        "single_feature_auc": single_feature_aucs(clean, verdict.schema),
        "unreadable": unreadable,
        "files": _report_files(),
    }
    metrics = json_safe(metrics)
    _write_report(metrics, scores, out)
    return metrics


def _load_verdict(profile: Profile, model: str | None) -> Verdict:
    """The service's verdict with fusion model ``model``; refused when that model does not exist."""
    try:
        return profile.args.verdict(model)
    except FileNotFoundError as err:
        raise EvaluationRefused(
            f"fusion model {model!r} not found ({err.filename}); "
            "train one with `imgverify train fusion` or pass --model"
        ) from None


def _split_items(manifest_path: Path, split: str) -> pa.Table:
    """The manifest's items of ``split``; refused unless both classes are there."""
    # A missing file is an unreadable item like a corrupt one: listed in the report, never an abort.
    manifest = load_manifest(manifest_path, check_files=False)
    items = (
        manifest.filter(pc.equal(manifest["split"], split))
        if "split" in manifest.column_names
        else manifest.slice(0, 0)
    )
    _refuse_unless_two_classes(items, f"split {split!r} of {manifest_path}")
    return items


def _readable_rows(predictions: pa.Table, n_items: int, split: str) -> tuple[pa.Table, pa.Table]:
    """(readable rows of every variant, readable rows of ``clean``); refused unless clean has both classes."""
    readable = predictions.filter(pc.equal(predictions["error"], ""))
    clean = _rows_of(readable, "variant", "clean")
    _refuse_unless_two_classes(clean, f"the readable items of split {split!r} ({n_items - clean.num_rows} unreadable)")
    return readable, clean


def _evaluated(
    manifest_path: Path,
    items: pa.Table,
    split: str,
    config: Path,
    model: str | None,
    verdict: Verdict,
    profile: Profile,
    table: pa.Table,
    detectors: list[str],
    variants: list[str],
    command: str,
    cache_dir: Path,
) -> dict[str, Any]:
    """metrics.json's ``evaluated``: what was evaluated, with which model, detectors and policy."""
    labels = items.column("label").to_pylist()
    return {
        "manifest": str(manifest_path),
        "manifest_sha256": hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest(),
        "split": split,
        "n_items": items.num_rows,
        "n_real_items": labels.count("real"),
        "n_ai_items": labels.count("ai"),
        "config": str(config),
        "model": model,
        "model_sha256": _artifact_sha256(model),
        "model_version": verdict.fusion.version,
        "model_features": list(verdict.fusion.features),
        "threshold": verdict.threshold,
        "threshold_from": verdict.threshold_from,
        "uncertain_range": list(verdict.uncertain_range),
        "hard_evidence": verdict.hard_evidence,
        "detectors": {
            name: {"versions": found, "config": profile.detectors[name].user_config.detector}
            for name, found in detector_versions(table, detectors).items()
        },
        "variants": variants,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "cache": str(cache_dir),
    }


def _variant_metrics(
    scores: dict[str, VariantScores], threshold: float, unreadable: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """metrics.json's ``variants``: overall, per-source, per-generator and reliability numbers of each variant."""
    return {
        variant: {
            "overall": s.metrics(threshold),
            "per_source": s.grouped("source", threshold),
            "per_generator": s.grouped("generator", threshold),
            "reliability": reliability_bins(s.y[~np.isnan(s.prob)], s.prob[~np.isnan(s.prob)]),
            "n_unreadable": sum(variant in item["variants"] for item in unreadable),
        }
        for variant, s in scores.items()
    }


def _report_files() -> dict[str, str]:
    """The names of the files written beside metrics.json."""
    return {
        "report": "report.md",
        "predictions": "predictions.parquet",
        "roc": "roc.png",
        "reliability": "reliability.png",
        "per_source_accuracy": "per_source_accuracy.png",
    }


def _write_report(metrics: dict[str, Any], scores: dict[str, VariantScores], out: Path) -> None:
    """metrics.json, the three plots and report.md, into ``out``."""
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_roc(scores, out / "roc.png")
    clean_metrics = metrics["variants"]["clean"]
    plot_reliability(clean_metrics["reliability"], clean_metrics["overall"]["ece"], out / "reliability.png")
    plot_per_source_accuracy(clean_metrics["per_source"], out / "per_source_accuracy.png")
    (out / "report.md").write_text(render_report(metrics))


def _refuse_unless_two_classes(table: pa.Table, what: str) -> None:
    try:
        check_two_classes(table, what)
    except ValueError as err:
        raise EvaluationRefused(str(err)) from None


# ---- plots ----------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt

    return plt


def plot_roc(scores: dict[str, VariantScores], path: Path) -> None:
    """ROC curves of fusion_prob, one per variant that has both classes scored."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    for variant, s in scores.items():
        scored = ~np.isnan(s.prob)
        y, p = s.y[scored], s.prob[scored]
        if (y == 0).any() and (y == 1).any():
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, lw=2.0 if variant == "clean" else 1.0, label=f"{variant} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.axvline(TARGET_FPR, color="grey", ls="--", lw=0.8)
    ax.set(
        xlabel="false-positive rate (real flagged AI)",
        ylabel="true-positive rate (AI caught)",
        title="ROC of fusion_prob",
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(bins: list[dict[str, Any]], ece: float | None, path: Path) -> None:
    """Observed AI rate against mean predicted probability per bin (clean variant)."""
    plt = _pyplot()
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(6, 7), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    ax.plot([b["mean_p"] for b in bins], [b["observed_ai_rate"] for b in bins], "o-", label="fusion_prob")
    ax.set(ylabel="observed AI rate", title=f"Reliability (clean), ECE {'n/a' if ece is None else f'{ece:.3f}'}")
    ax.legend(loc="upper left")
    counts.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["count"] for b in bins], width=0.09)
    counts.set(xlabel="predicted P(AI)", ylabel="items", xlim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_per_source_accuracy(per_source: dict[str, dict[str, Any]], path: Path) -> None:
    """Accuracy on real, on AI, and verdict accuracy per source (clean); a bar is absent where n/a."""
    plt = _pyplot()
    sources = list(per_source)
    keys = [("acc_real", "acc_real"), ("acc_ai", "acc_ai"), ("verdict_accuracy", "verdict accuracy")]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(sources)))
    height = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        positions = [i + (k - 1) * height for i, s in enumerate(sources) if per_source[s][key] is not None]
        values = [per_source[s][key] for s in sources if per_source[s][key] is not None]
        ax.barh(positions, values, height=height, label=label)
    ax.set_yticks(range(len(sources)), sources)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="accuracy", title="Per-source accuracy (clean)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the bars, never over them
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the report ---------------------------------------------------------------------------------------------
GROUP_COLUMNS = [
    ("n", "n"),
    ("n_real", "real"),
    ("n_ai", "AI"),
    ("n_no_prob", "no prob"),
    ("auc", "AUC"),
    ("ap", "AP"),
    ("acc_real", "acc_real"),
    ("acc_ai", "acc_ai"),
    (TPR_KEY, f"TPR@{TARGET_FPR:.0%}FPR"),
    ("ece", "ECE"),
    ("brier", "Brier"),
    ("verdict_accuracy", "verdict acc"),
    ("uncertain_rate", "uncertain"),
    ("confident_accuracy", "confident acc"),
    ("n_hard_evidence", "hard evidence"),
]
ROBUSTNESS_COLUMNS = [
    ("n", "n"),
    ("auc", "AUC"),
    ("acc_real", "acc_real"),
    ("acc_ai", "acc_ai"),
    (TPR_KEY, f"TPR@{TARGET_FPR:.0%}FPR"),
    ("ece", "ECE"),
    ("uncertain_rate", "uncertain rate"),
    ("verdict_accuracy", "verdict acc"),
    ("real_called_ai", "real called AI"),
    ("real_called_ai_confident", "real called AI, confident"),
    ("ai_called_real_confident", "AI called NON-AI, confident"),
    ("n_no_prob", "no prob"),
]
MAX_LISTED_UNREADABLE = 200


def _group_table(first: str, groups: dict[str, dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    return markdown_table(
        [first, *(title for _, title in columns)],
        [[name, *(m[key] for key, _ in columns)] for name, m in groups.items()],
    )


def render_report(metrics: dict[str, Any]) -> str:
    """report.md from metrics.json's content, section by section."""
    e = metrics["evaluated"]
    variants = metrics["variants"]
    clean = variants["clean"]
    parts = [
        f"# Evaluation of `{Path(e['manifest']).name}`, split {e['split']}",
        "## What was evaluated",
        _evaluated_table(e),
        "## Definitions",
        DEFINITIONS,
        "## Overall (clean)",
        _group_table("", {"all": clean["overall"]}, GROUP_COLUMNS),
        "## Per source (clean)",
        _group_table("source", clean["per_source"], GROUP_COLUMNS),
        f"![per-source accuracy]({metrics['files']['per_source_accuracy']})",
        "## Per generator (clean)",
        _group_table("generator", clean["per_generator"], GROUP_COLUMNS),
        "## Robustness",
        *_robustness_section(variants, metrics["files"]),
        "## Calibration (clean)",
        *_calibration_section(clean, metrics["files"]),
        "## Single-feature AUC (clean)",
        *_single_feature_section(metrics["single_feature_auc"]),
        "## Unreadable items",
        _unreadable_section(metrics["unreadable"]),
    ]
    return "\n\n".join(parts) + "\n"


def _evaluated_table(e: dict[str, Any]) -> str:
    """The "What was evaluated" table: data, model, threshold, policy, detectors, command."""
    detector_lines = "; ".join(
        f"`{name}`: {', '.join(d['versions']) or '(no outcome)'}" for name, d in e["detectors"].items()
    )
    low, high = e["uncertain_range"][0], e["uncertain_range"][1]
    return markdown_table(
        ["", ""],
        [
            ["manifest", f"`{e['manifest']}` (sha256 `{e['manifest_sha256']}`)"],
            ["split", f"{e['split']}: {e['n_items']} items ({e['n_real_items']} real, {e['n_ai_items']} AI)"],
            [
                "fusion model",
                f"`{e['model'] or 'rule (no trained model)'}`, version `{e['model_version']}`"
                + (f", sha256 `{e['model_sha256']}`" if e["model_sha256"] else ""),
            ],
            ["model features", ", ".join(e["model_features"])],
            [
                "threshold",
                f"{e['threshold']:.4f} (from the {e['threshold_from']}); uncertain range [{low:.3f}, {high:.3f})",
            ],
            ["hard provenance evidence", "decides alone" if e["hard_evidence"] else "ignored (policy)"],
            ["detectors", detector_lines],
            ["variants", ", ".join(e["variants"])],
            ["feature cache", f"`{e['cache']}`"],
            ["date (UTC)", e["date"]],
            ["command", f"`{e['command']}`" if e["command"] else "(called from Python)"],
        ],
    )


def _robustness_section(variants: dict[str, dict[str, Any]], files: dict[str, str]) -> list[str]:
    """What the robustness grid is (or that there is none), the grid, and the ROC plot."""
    if len(variants) > 1:
        intro = (
            "Each perturbation applied to real and AI images alike (`training/augment.py`: ROBUSTNESS), then decoded "
            "the service's way."
        )
    else:
        intro = "Only the clean variant was evaluated (run with `--robustness` for the grid)."
    grid = _group_table(
        "variant",
        {v: {**m["overall"], "n_unreadable": m["n_unreadable"]} for v, m in variants.items()},
        ROBUSTNESS_COLUMNS + [("n_unreadable", "unreadable")],
    )
    return [intro, grid, f"![ROC curves]({files['roc']})"]


def _calibration_section(clean: dict[str, Any], files: dict[str, str]) -> list[str]:
    """The reliability bins of the clean variant, its ECE and the reliability diagram."""
    return [
        markdown_table(
            ["bin", "items", "mean P(AI)", "observed AI rate"],
            [
                [f"{b['low']:.1f}-{b['high']:.1f}", b["count"], b["mean_p"], b["observed_ai_rate"]]
                for b in clean["reliability"]
            ],
        ),
        f"ECE {fmt(clean['overall']['ece'])} (equal-width bins over items with a fusion probability).",
        f"![reliability diagram]({files['reliability']})",
    ]


def _single_feature_section(rows: list[dict[str, Any]]) -> list[str]:
    """How each feature alone was scored, and the table of their AUCs."""
    return [
        (
            "Each feature alone as a score for AI: `ai_high` as is, `real_high` negated, `neutral` as is (below 0.5: "
            "higher values point to real). Items without the feature are left out (coverage). Strongest first."
        ),
        markdown_table(
            ["feature", "detector", "direction", "n", "coverage", "AUC", "against its direction"],
            [
                [r["feature"], r["detector"], r["direction"], r["n"], r["coverage"], r["auc"], r["against_direction"]]
                for r in rows
            ],
        ),
    ]


def _unreadable_section(unreadable: list[dict[str, Any]]) -> str:
    if not unreadable:
        return "None: every item was decoded in every variant."
    listed = unreadable[:MAX_LISTED_UNREADABLE]
    table = markdown_table(
        ["file", "label", "source", "variants", "error"],
        [[f"`{u['filepath']}`", u["label"], u["source"], ", ".join(u["variants"]), u["error"]] for u in listed],
    )
    more = len(unreadable) - len(listed)
    tail = f"\n\n... and {more} more (all in metrics.json)." if more > 0 else ""
    count = f"{len(unreadable)} item{'s' if len(unreadable) > 1 else ''}"
    return f"{count} could not be read in at least one variant; left out of every metric.\n\n{table}{tail}"


# ---- command line -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="imgverify evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="Serve config: detectors and verdict policy"
    )
    parser.add_argument("--model", default=None, help="fusion artifact (default: the config's fusion model)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--robustness", action="store_true", help=f"also evaluate {', '.join(ROBUSTNESS)}")
    parser.add_argument(
        "--leave-out",
        action="store_true",
        help="hold each source out in turn, refit the clip head and fusion without it, score it (leave_out.py)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder (default reports/<manifest>-<split>-<time>/)"
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    out = args.out or Path("reports") / f"{args.manifest.stem}-{args.split}-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    if args.leave_out:
        return _leave_out_main(args, out, shlex.join(["imgverify", "evaluate", *argv]), started)
    try:
        metrics = evaluate(
            args.manifest,
            out,
            args.config,
            args.model,
            args.split,
            args.robustness,
            args.cache,
            command=shlex.join(["imgverify", "evaluate", *argv]),
        )
    except (EvaluationRefused, SchemaMismatch, FileNotFoundError) as err:
        print(f"imgverify evaluate: {err}", file=sys.stderr)
        return 2
    overall = metrics["variants"]["clean"]["overall"]
    print(
        f"{metrics['evaluated']['n_items']} items ({len(metrics['unreadable'])} unreadable): "
        f"AUC {fmt(overall['auc'])}, verdict accuracy {fmt(overall['verdict_accuracy'])} "
        f"-> {out / 'report.md'} in {time.perf_counter() - started:.1f} s"
    )
    return 0


def _leave_out_main(args: argparse.Namespace, out: Path, command: str, started: float) -> int:
    """``--leave-out``: the leave-one-source-out yardstick, written to ``out/leave_out.{md,json}``."""
    from training import leave_out

    if args.model or args.robustness or args.split != "test":
        print("imgverify evaluate: --leave-out refits the config's own head and fusion on every split", file=sys.stderr)
        return 2
    result = leave_out.leave_out(args.manifest, args.config, cache_dir=args.cache)
    leave_out.write_report(result, out, command)
    mean = result["mean"]["clean"]
    print(
        f"{len(result['sources'])} sources held out: mean AUC {fmt(mean['auc'])}, AI labelled AI "
        f"{fmt(mean['ai_labelled_ai'])}, real labelled AI {fmt(mean['real_labelled_ai'])} "
        f"-> {out / 'leave_out.md'} in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
