"""The yardstick for the unseen: each source held out in turn, and everything trained here refitted without it.

    imgverify evaluate MANIFEST --leave-out --config serve_config.local.yaml [--out reports/local]

The test split shares every source with train, so it cannot tell how the product does on a generator or a pipeline
it has never met. Here each *source* of the manifest (``training.folds``: one generator family and its processing, or
one collection of photos) is held out in turn, whole (every split, both classes), and the product is trained again
without it by the recipe the shipped one was trained with:

1. clip_b16's head: refitted on the cached embeddings of the other sources' train rows (the shipped head's kind,
   model, C, layers and variants) and calibrated on their val rows;
2. that head's out-of-fold scores for the other sources' train rows (near-duplicate cluster folds, what
   ``imgverify train cross-fit clip-head`` gives the shipped fusion; ``Recipe.cross_fit = "source"`` holds out whole
   sources instead);
3. the fusion: refitted on those rows with the shipped artifact's settings (its ``training.settings``), calibrated
   and thresholded on their val rows; its uncertain range comes from how the *other* held-out sources scored under
   their own folds (``fit_policy``), never from the source it is judged on. ``imgverify train leave-out-policy`` puts
   the range all held-out sources give into the shipped artifact.

Fixed, not refitted, and named in the report: what is not trained here (forensics, provenance, the published CLIP
probe), and any other trained detector of the config (effnet_artifact would be: one fine-tuning costs ~25 min here,
so its score on a held-out source would be optimistic; `train_effnet_artifact --hold-out-source` makes an honest
copy). Sources with fewer than ``min_items`` items stay in every fold's training and are not reported.

Scored, under each variant (clean and the laundering routes): the held-out source's items against the held-out images
of the other class, which are the other sources' test items (no fold trained on them) plus the held-out source's own.
Per source: AUC, AI images labelled AI at the fold's threshold, real photos labelled AI, and confidently wrong (an AI
image labelled NON-AI, or a photo labelled AI, without "uncertain"), from the service's own verdict (``Verdict``, hard
provenance evidence included).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import models
from deployments.config import Profile, load_profile
from deployments.data import outcome_column
from models.clip_b16 import DETAIL_OF_KIND, UNFAMILIAR_NOVELTY, EmbeddingHead
from models.fusion import DetectorOutcome, TrainedFusion, json_safe, resolve_fusion_path
from models.verdict import Verdict
from training.augment import LAUNDERING_ROUTES
from training.clip_embeddings import EMBEDDING_SETTINGS, clip_detector, outcomes_from_embeddings
from training.cross_fit import FUSION_VARIANTS
from training.dataset import load_manifest
from training.features import DEFAULT_CACHE, extract_features, feature_rows
from training.folds import fold_of, item_key, out_of_fold_probs, variant_of
from training.metrics import bound_for_miss, source_weights, threshold_for_fpr
from training.scoring import TRUTH, fusion_probabilities, markdown_table, predictions_table
from training.train_fusion import FusionSettings, fit_fusion

EVALUATION_VARIANTS = ["clean", *LAUNDERING_ROUTES]
MIN_ITEMS = 10
# A confident NON-AI verdict only below the score that at most this share of held-out AI images fall under (the
# issue's bound on confidently wrong AI verdicts for a generator never seen).
LEAVE_OUT_MISS = 0.10
# An image farther from the clip head's training images than 95% of the validation images gets no confident verdict
# (models.verdict.Verdict.is_unfamiliar); a head without a reference reports no novelty, and the rule never fires.
UNFAMILIAR = {"feature": "clip_b16_novelty", "from": UNFAMILIAR_NOVELTY}
CLIP_FEATURES = list(models.feature_schema(["clip_b16"]))


# ---- the rows every fold is cut from ------------------------------------------------------------------------
@dataclass
class Recipe:
    """How the shipped clip head and fusion were trained: what each fold repeats."""

    head_params: dict[str, Any]  # EmbeddingHead(**head_params)
    head_variants: list[str]
    fusion: FusionSettings
    fusion_variants: list[str]
    # How the fusion's training rows get the head's scores: cluster folds (what the shipped fusion is trained on) or
    # whole sources (``train cross-fit clip-head --by source``).
    cross_fit: str = "cluster"
    folds: int = 5

    @classmethod
    def of_shipped(cls, profile: Profile) -> Recipe:
        """The recipe recorded in the config's clip head (its metadata) and fusion artifact (``training``)."""
        detector = models.create_detector("clip_b16", profile.detectors["clip_b16"].user_config.detector)
        if detector.head is None or not profile.args.fusion.model:
            raise ValueError(
                "leave-out refits the shipped clip_b16 head and fusion: the config names no head or no model"
            )
        artifact = json.loads(resolve_fusion_path(profile.args.fusion.model).read_text())
        training = artifact.get("training", {})
        recorded = training.get("settings") or {
            "kind": artifact["model_type"],
            "target_fpr": artifact.get("target_fpr", 0.05),
            "confident_fpr": artifact.get("confident_fpr", 0.01),
            **{k: training[k] for k in ("dropout", "dropout_copies", "seed") if k in training},
        }
        # An artifact trained before `probabilities_as_logits` existed read its features as they are.
        settings = {"probabilities_as_logits": False, **recorded}
        return cls(
            head_params=detector.head.get_params(),
            head_variants=list(detector.head.metadata_.get("variants") or ["clean", *FUSION_VARIANTS]),
            fusion=FusionSettings(**{**settings, "features": tuple(settings.get("features") or ())}),
            fusion_variants=list(training.get("variants") or FUSION_VARIANTS),
        )


@dataclass
class Rows:
    """Every (item, variant) row: the features table without the embeddings, and the embeddings as arrays."""

    table: pa.Table  # feature rows; clip_b16's outcome column emptied (it held the embeddings)
    embeddings: dict[str, np.ndarray]  # kind -> [rows, d]; zeros where a row has none
    embedded: np.ndarray  # rows with an embedding
    y: np.ndarray
    split: np.ndarray
    source: np.ndarray
    variant: np.ndarray
    cluster: np.ndarray  # the item's near-duplicate cluster (cluster cross-fitting holds out whole clusters)

    @classmethod
    def from_table(cls, table: pa.Table, clusters: dict[str, str]) -> Rows:
        column = table.column(outcome_column("clip_b16")).to_pylist()
        outcomes = [DetectorOutcome.from_json(t) if t else None for t in column]
        embedded = np.asarray([o is not None and o.status == "ok" for o in outcomes])
        first = next(o for o, ok in zip(outcomes, embedded) if ok)
        embeddings = {}
        for kind, detail in DETAIL_OF_KIND.items():
            if detail in first.result.details:
                size = len(first.result.details[detail])
                values = [o.result.details[detail] if ok else [0.0] * size for o, ok in zip(outcomes, embedded)]
                embeddings[kind] = np.asarray(values, dtype=np.float32)
        index = table.column_names.index(outcome_column("clip_b16"))
        table = table.set_column(index, outcome_column("clip_b16"), pa.nulls(table.num_rows, pa.string()))
        return cls(
            table=table,
            embeddings=embeddings,
            embedded=embedded,
            y=np.asarray([TRUTH[label] for label in table.column("label").to_pylist()]),
            split=np.asarray(table.column("split").to_pylist()),
            source=np.asarray(table.column("source").to_pylist()),
            variant=np.asarray([variant_of(k) for k in table.column("key").to_pylist()]),
            cluster=np.asarray([clusters[item_key(k)] for k in table.column("key").to_pylist()]),
        )

    def with_clip(self, detector: Any, rows: np.ndarray) -> pa.Table:
        """The ``rows`` of the table with clip_b16's outcome and features as ``detector`` (its heads) gives them."""
        table = self.table.filter(pa.array(rows))
        scored = rows & self.embedded
        outcomes = outcomes_from_embeddings(
            detector, {kind: value[scored] for kind, value in self.embeddings.items()}, [None] * int(scored.sum())
        )
        column: list[str | None] = [None] * int(rows.sum())
        for i, outcome in zip(np.flatnonzero(scored[rows]), outcomes):
            column[i] = outcome
        return set_clip(table, column)


def set_clip(table: pa.Table, outcomes: list[str | None]) -> pa.Table:
    """``table`` with clip_b16's outcome column and its feature columns replaced by ``outcomes``'."""
    table = table.set_column(
        table.column_names.index(outcome_column("clip_b16")),
        outcome_column("clip_b16"),
        pa.array(outcomes, pa.string()),
    )
    parsed = [DetectorOutcome.from_json(text) if text else None for text in outcomes]
    for name in CLIP_FEATURES:
        values = [o.result.features.get(name) if o and o.status == "ok" else None for o in parsed]
        table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.float64()))
    return table


def leave_out_profile(config: Path) -> Profile:
    """The config's detectors, with clip_b16 giving its embeddings (every fold's heads are applied to them here)."""
    profile = load_profile(config, check_fusion=False)
    clip = profile.detectors["clip_b16"]
    user_config = clip.user_config.model_copy(update={"detector": {**clip.user_config.detector, **EMBEDDING_SETTINGS}})
    profile.detectors["clip_b16"] = clip.model_copy(update={"user_config": user_config})
    return profile


def load_rows(manifest: pa.Table, config: Path, variants: list[str], cache_dir: Path) -> Rows:
    """Every item of ``manifest`` under every variant, through the feature pipeline and its cache."""
    table = extract_features(manifest, leave_out_profile(config), variants, cache_dir)
    table = table.filter(pc.equal(pc.fill_null(table["error"], ""), ""))
    return Rows.from_table(table, dict(zip(manifest.column("key").to_pylist(), manifest.column("cluster").to_pylist())))


# ---- one fold: the recipe without the held-out source ---------------------------------------------------------
@dataclass
class Fold:
    held_out: str
    head: EmbeddingHead
    artifact: dict[str, Any]
    folder: Path


def refit(rows: Rows, held_out: str, recipe: Recipe, detectors: list[str], clip: Any, folder: Path) -> Fold:
    """The clip head and fusion trained by ``recipe`` on every source but ``held_out`` (``""``: none)."""
    kind = recipe.head_params["embedding_kind"]
    X = rows.embeddings[kind]
    in_fold = rows.embedded & (rows.source != held_out)
    for_head = in_fold & np.isin(rows.variant, recipe.head_variants)
    fit, calibrate = for_head & (rows.split == "train"), for_head & (rows.split == "val")
    head = EmbeddingHead(**recipe.head_params).fit(X[fit], rows.y[fit], X_val=X[calibrate], y_val=rows.y[calibrate])
    # The fusion learns how far to trust the head from scores it gives on images it never saw.
    group = inner_groups(rows, in_fold, recipe)
    role = np.where(fit, "fit", np.where(calibrate, "calibrate", ""))
    oof = out_of_fold_probs(X, rows.y, group, role, recipe.head_params)
    table = fusion_rows(rows, held_out, with_head(clip, head), oof, recipe)
    artifact = fit_fusion(table, detectors, recipe.fusion, folder / "fold.json")
    return Fold(held_out, head, artifact, folder)


def inner_groups(rows: Rows, in_fold: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The fold's cross-fitting groups (``out_of_fold_probs``): its train rows by cluster fold (val rows only
    calibrate), or its train and val rows by source; -1 for rows never held out."""
    if recipe.cross_fit == "cluster":
        folds = np.asarray([fold_of(c, recipe.folds) for c in rows.cluster])
        return np.where(in_fold & (rows.split == "train"), folds, -1)
    inner = in_fold & np.isin(rows.split, ["train", "val"])
    sources = sorted(set(rows.source[inner].tolist()))
    return np.where(inner, [sources.index(s) if s in sources else -1 for s in rows.source], -1)


def fusion_rows(rows: Rows, held_out: str, clip: Any, oof: np.ndarray, recipe: Recipe) -> pa.Table:
    """The fold's fusion training table: the fusion's variants of every other source, each row with the cross-fitted
    head score where it has one (train rows; val rows too by source), else the fold head's own."""
    chosen = (rows.source != held_out) & np.isin(rows.variant, recipe.fusion_variants)
    table = rows.with_clip(clip, chosen)
    probs = np.asarray(table.column("clip_b16_prob").to_pylist(), dtype=np.float64)
    replace = ~np.isnan(oof[chosen])
    probs[replace] = oof[chosen][replace]
    column = pa.array([None if np.isnan(p) else float(p) for p in probs], pa.float64())
    return table.set_column(table.column_names.index("clip_b16_prob"), "clip_b16_prob", column)


def with_head(clip: Any, head: EmbeddingHead) -> Any:
    """``clip`` (the shipped clip_b16 detector: its published probe and all) with ``head`` in place of its own."""
    clip.head = head
    return clip


def score(rows: Rows, fold: Fold, detectors: list[str], clip: Any, evaluated: np.ndarray) -> pa.Table:
    """The service's verdict on the ``evaluated`` rows by the fold's head and fusion (predictions table)."""
    table = rows.with_clip(with_head(clip, fold.head), evaluated)
    schema = models.feature_schema(detectors)
    verdict = Verdict(schema, TrainedFusion(fold.artifact, fold.folder))
    return predictions_table(table, verdict, detectors)


# ---- metrics ---------------------------------------------------------------------------------------------------
def held_out_metrics(predictions: pa.Table, held_out: str, variant: str) -> dict[str, Any]:
    """One held-out source under one variant: its items against the held-out images of the other class."""
    from sklearn.metrics import roc_auc_score

    rows = predictions.filter(pc.equal(predictions["variant"], variant))
    y = np.asarray([TRUTH[label] for label in rows.column("label").to_pylist()])
    source = np.asarray(rows.column("source").to_pylist())
    prob = np.asarray(rows.column("fusion_prob").to_pylist(), dtype=np.float64)
    verdict = np.asarray(rows.column("verdict").to_pylist())
    confident = ~np.asarray(rows.column("uncertain").to_pylist(), dtype=bool)
    novelty = np.asarray(rows.column(UNFAMILIAR["feature"]).to_pylist(), dtype=np.float64)
    mine = source == held_out
    ai, real = mine & (y == 1), mine & (y == 0)
    # A source with AI images: they against every held-out photo (its own and the other sources' test photos). A
    # source of photos: they against the other sources' test AI images.
    positive, negative = (ai, y == 0) if ai.any() else (~mine & (y == 1), real)
    compared = (positive | negative) & ~np.isnan(prob)
    auc = None
    if positive[compared].any() and negative[compared].any():
        auc = float(roc_auc_score(positive[compared], prob[compared]))
    return {
        "n_ai": int(ai.sum()),
        "n_real": int(real.sum()),
        "auc": auc,
        "ai_labelled_ai": _share(verdict[ai] == "AI"),
        "ai_confidently_non_ai": _share((verdict[ai] == "NON-AI") & confident[ai]),
        "real_labelled_ai": _share(verdict[real] == "AI"),
        "real_confidently_ai": _share((verdict[real] == "AI") & confident[real]),
        "uncertain": _share(~confident[mine]),
        "unfamiliar": _share(novelty[mine] >= UNFAMILIAR["from"]),
        "other_real_labelled_ai": _share(verdict[~mine & (y == 0)] == "AI"),
    }


def _share(flags: np.ndarray) -> float | None:
    return float(np.mean(flags)) if flags.size else None


def summary(per_source: dict[str, dict[str, dict[str, Any]]], variant: str) -> dict[str, Any]:
    """Means over the held-out sources of one variant: AI metrics over sources with AI images, real metrics over
    sources with photos, the uncertain share over all (every source counts once, whatever its size)."""

    def mean(key: str, having: str | None = None) -> float | None:
        values = [
            m[variant][key]
            for m in per_source.values()
            if (having is None or m[variant][having]) and m[variant][key] is not None
        ]
        return float(np.mean(values)) if values else None

    return {
        "auc": mean("auc", "n_ai"),
        "ai_labelled_ai": mean("ai_labelled_ai", "n_ai"),
        "ai_confidently_non_ai": mean("ai_confidently_non_ai", "n_ai"),
        "real_labelled_ai": mean("real_labelled_ai", "n_real"),
        "real_confidently_ai": mean("real_confidently_ai", "n_real"),
        "uncertain": mean("uncertain"),
    }


# ---- the whole run ---------------------------------------------------------------------------------------------
def leave_out(
    manifest_path: Path,
    config: Path,
    recipe: Recipe | None = None,
    variants: list[str] = EVALUATION_VARIANTS,
    cache_dir: Path = DEFAULT_CACHE,
    min_items: int = MIN_ITEMS,
    rows: Rows | None = None,
    predictions_out: Path | None = None,
) -> dict[str, Any]:
    """Every source with at least ``min_items`` items held out in turn; per source and variant the metrics of
    :func:`held_out_metrics`, and their means. ``recipe``: the shipped one unless given (to compare candidates);
    ``rows``: already loaded (:func:`load_rows`); ``predictions_out``: a Parquet file for every fold's predictions."""
    profile = load_profile(config)
    detectors = profile.args.detector_names()
    recipe = recipe or Recipe.of_shipped(profile)
    manifest = load_manifest(manifest_path, check_files=False)
    wanted = sorted({*variants, *recipe.head_variants, *recipe.fusion_variants})
    rows = rows or load_rows(manifest, config, wanted, cache_dir)
    counts = {s: manifest.column("source").to_pylist().count(s) for s in set(manifest.column("source").to_pylist())}
    held_out = sorted(s for s, n in counts.items() if n >= min_items)
    per_source, policies, predictions = run_folds(rows, held_out, recipe, detectors, clip_detector(config), variants)
    if predictions_out is not None:
        pq.write_table(predictions, predictions_out)
    raw = predictions.filter(pc.equal(predictions["source"], predictions["held_out"]))
    view = raw.select(["key", "label", "source", "variant"]).append_column("raw_prob", raw["raw_prob"])
    return json_safe(
        {
            "sources": held_out,
            "kept_in_every_fold": sorted(s for s, n in counts.items() if n < min_items),
            "fixed": _fixed_parts(detectors),
            "recipe": {
                "head": {k: v for k, v in recipe.head_params.items() if k != "backbone_id"},
                "head_variants": recipe.head_variants,
                "fusion": {**recipe.fusion.__dict__, "features": list(recipe.fusion.features)},
                "fusion_variants": recipe.fusion_variants,
                "cross_fit": recipe.cross_fit,
            },
            "policies": policies,
            # From every held-out source: what the shipped verdict takes (``write_policy``).
            "shipped_policy": fit_policy(view, recipe.fusion, 0.5),
            "per_source": per_source,
            "mean": {v: summary(per_source, v) for v in variants},
        }
    )


def run_folds(
    rows: Rows, held_out: list[str], recipe: Recipe, detectors: list[str], clip: Any, variants: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], pa.Table]:
    """Each source of ``held_out`` in turn: refit without it, score it and the other sources' test rows. Each fold's
    verdict then takes its uncertain range from the leave-out view of the *other* held-out sources (:func:`fit_policy`,
    never from the source it is judged on). Returns the metrics per source and variant,
    each fold's policy, and every fold's predictions."""
    schema = models.feature_schema(detectors)
    fitted: dict[str, tuple[Fold, pa.Table]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in held_out:
            folder = Path(tmp) / source
            folder.mkdir()
            fold = refit(rows, source, recipe, detectors, clip, folder)
            evaluated = np.isin(rows.variant, variants) & ((rows.source == source) | (rows.split == "test"))
            fitted[source] = (fold, rows.with_clip(with_head(clip, fold.head), evaluated))
        raw = {s: _raw_predictions(f, t, schema) for s, (f, t) in fitted.items()}
        view = leave_out_view(raw, variants)
        per_source, policies, predictions = {}, {}, []
        for source, (fold, table) in fitted.items():
            others = view.filter(pc.not_equal(view["source"], source))
            policies[source] = {
                "threshold": fold.artifact["threshold"],
                **fit_policy(others, recipe.fusion, fold.artifact["threshold"]),
            }
            verdict = Verdict(schema, TrainedFusion(with_policy(fold.artifact, policies[source]), fold.folder))
            scored = predictions_table(table, verdict, detectors)
            scored = scored.append_column("raw_prob", raw[source]["raw_prob"])
            per_source[source] = {v: held_out_metrics(scored, source, v) for v in variants}
            predictions.append(scored.append_column("held_out", pa.array([source] * scored.num_rows)))
    return per_source, policies, pa.concat_tables(predictions)


def _raw_predictions(fold: Fold, table: pa.Table, schema: dict[str, Any]) -> pa.Table:
    """The fold's own calibrated fusion probability for every row of ``table`` (the evaluated rows)."""
    fusion = TrainedFusion(fold.artifact, fold.folder)
    prob = fusion_probabilities(fusion, feature_rows(table, fusion.features))
    return table.select(["key", "label", "source", "split", "variant"]).append_column(
        "raw_prob", pa.array([None if np.isnan(p) else float(p) for p in prob], pa.float64())
    )


def leave_out_view(raw: dict[str, pa.Table], variants: list[str]) -> pa.Table:
    """Every held-out source's own rows as its fold scored them: how the product scores sources it never saw."""
    parts = [t.filter(pc.equal(t["source"], s)) for s, t in raw.items()]
    view = pa.concat_tables(parts)
    return view.filter(pc.and_(pc.is_in(view["variant"], pa.array(variants)), pc.is_valid(view["raw_prob"])))


def fit_policy(view: pa.Table, settings: FusionSettings, threshold: float) -> dict[str, Any]:
    """The verdict's uncertain range from leave-out scores (each held-out source scored by the fold that never saw
    it): an AI verdict is confident only above the score that at most ``confident_fpr`` of held-out photos reach
    (``confident_ai_from``), a NON-AI verdict only below the score that at most ``LEAVE_OUT_MISS`` of held-out AI
    images fall under (``confident_real_below``). Every source weighs the same within its class, so one big
    collection does not set the policy for all. The probability and the threshold stay those calibrated on
    validation images; only what counts as confident widens."""
    from training.train_fusion import uncertain_range

    y = np.asarray([TRUTH[label] for label in view.column("label").to_pylist()])
    if set(y.tolist()) != {0, 1}:
        raise ValueError("the leave-out view needs held-out sources of both classes to set a policy")
    prob = np.asarray(view.column("raw_prob").to_pylist(), dtype=np.float64)
    weights = source_weights(np.asarray(view.column("source").to_pylist()), y)
    real, ai = y == 0, y == 1
    high = threshold_for_fpr(prob[real], settings.confident_fpr, weights[real])
    low = bound_for_miss(prob[ai], min(settings.confident_miss, LEAVE_OUT_MISS), weights[ai])
    return {
        "confident_ai_from": high,
        "confident_real_below": low,
        "uncertain_range": uncertain_range(threshold, settings.confidence, high, low),
        "rows": {"real": int(real.sum()), "ai": int(ai.sum())},
        "sources": sorted(set(view.column("source").to_pylist())),
    }


def with_policy(artifact: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    """``artifact`` with the policy's uncertain range (its probability and threshold unchanged) and the novelty bound
    from which no verdict is confident (``clip_b16_novelty``: an image unlike the training images)."""
    return {**artifact, "uncertain_range": policy["uncertain_range"], "unfamiliar": UNFAMILIAR}


def _fixed_parts(detectors: list[str]) -> list[str]:
    fixed = [d for d in detectors if d != "clip_b16"]
    return [*fixed, "clip_b16_pub_prob (the published probe)"]


# ---- the report ------------------------------------------------------------------------------------------------
COLUMNS = [
    ("n_ai", "AI"),
    ("n_real", "real"),
    ("auc", "AUC"),
    ("ai_labelled_ai", "AI labelled AI"),
    ("ai_confidently_non_ai", "AI confidently NON-AI"),
    ("real_labelled_ai", "real labelled AI"),
    ("real_confidently_ai", "real confidently AI"),
    ("uncertain", "uncertain"),
    ("unfamiliar", "unfamiliar"),
    ("other_real_labelled_ai", "other test photos labelled AI"),
]
SUMMARY_COLUMNS = [
    c
    for c in COLUMNS
    if c[0]
    in ("auc", "ai_labelled_ai", "ai_confidently_non_ai", "real_labelled_ai", "real_confidently_ai", "uncertain")
]

DEFINITIONS = """\
- Each row is one source held out: the clip head and the fusion were trained again without any of its images (same
  recipe as the shipped ones, settings below), and its images were scored by that fold's service verdict.
- **AUC**: a source with AI images, its AI images against every held-out photo (its own photos and the other
  sources' test photos); a source of photos, its photos against the other sources' test AI images.
- **AI labelled AI** (recall at the fold's threshold), **AI confidently NON-AI** (labelled NON-AI and not uncertain),
  **real labelled AI**, **real confidently AI**, **uncertain**: shares of the held-out source's own images.
- **unfamiliar**: share of the held-out source's images farther from the fold head's training images than 95% of its
  validation images (`clip_b16_novelty` >= 0.95); the verdict is never confident on those.
- **other test photos labelled AI**: the other sources' test photos under the same fold (in-distribution photos).
- **mean**: every source counts once; AI columns over the sources with AI images, real columns over those with photos,
  uncertain over all.
"""


def render(result: dict[str, Any], command: str) -> str:
    """leave_out.md from the result of :func:`leave_out`."""

    def table(first: str, rows: dict[str, dict[str, Any]], columns: list[tuple[str, str]]) -> str:
        header = [first, *(title for _, title in columns)]
        return markdown_table(header, [[name, *(m.get(key) for key, _ in columns)] for name, m in rows.items()])

    variants = list(result["mean"])
    parts = [
        "# Leave one source out",
        f"`{command}`",
        "## Definitions",
        DEFINITIONS,
        "## Means over the held-out sources",
        table("variant", result["mean"], SUMMARY_COLUMNS),
    ]
    for variant in variants:
        rows = {s: result["per_source"][s][variant] for s in result["sources"]}
        parts += [f"## {variant}", table("source", {**rows, "mean": result["mean"][variant]}, COLUMNS)]
    recipe, small = result["recipe"], ", ".join(result["kept_in_every_fold"]) or "none"
    folds = "; ".join(
        f"{s} {f['threshold']:.3f} [{f['uncertain_range'][0]:.3f}, {f['uncertain_range'][1]:.3f})"
        for s, f in result["policies"].items()
    )
    parts += [
        "## What each fold refits, and what stays fixed",
        f"- Refitted per fold: clip_b16's head ({json.dumps(recipe['head'])}, on {recipe['head_variants']}), its "
        f"out-of-fold scores for the fusion's train rows ({recipe['cross_fit']} folds), and the fusion "
        f"({json.dumps(recipe['fusion'])}, on {recipe['fusion_variants']}).",
        f"- Fixed (trained on every source, or not trained here): {', '.join(result['fixed'])}.",
        f"- Too small to hold out (kept in every fold's training): {small}.",
        f"- Fold thresholds and uncertain ranges: {folds}.",
    ]
    return "\n\n".join(parts) + "\n"


def write_report(result: dict[str, Any], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "leave_out.json").write_text(json.dumps({**result, "command": command}, indent=2))
    (out / "leave_out.md").write_text(render(result, command))


def write_policy(config: Path, result: dict[str, Any], command: str) -> Path:
    """Put the leave-out view's confident bounds into the config's fusion artifact (re-versioned), with a record of
    where they came from. Probability and threshold stay those calibrated on validation images; the threshold is
    always inside the range."""
    from training.train_fusion import uncertain_range, write_artifact

    path = resolve_fusion_path(load_profile(config).args.fusion.model)
    artifact = json.loads(path.read_text())
    policy = result["shipped_policy"]
    before = artifact.get("leave_out", {}).get("in_distribution_uncertain_range", artifact["uncertain_range"])
    confidence = artifact.get("training", {}).get("settings", {}).get("confidence", 0.8)
    artifact["uncertain_range"] = uncertain_range(
        artifact["threshold"], confidence, policy["confident_ai_from"], policy["confident_real_below"]
    )
    artifact["unfamiliar"] = UNFAMILIAR
    artifact["version"] = ""  # versioned by content (write_artifact): the same policy gives the same version
    artifact["leave_out"] = {
        "uncertain_range_from": "leave-one-source-out scores (imgverify train leave-out-policy)",
        "confident_ai_from": policy["confident_ai_from"],
        "confident_real_below": policy["confident_real_below"],
        "sources": policy["sources"],
        "rows": policy["rows"],
        "in_distribution_uncertain_range": before,
        "command": command,
    }
    write_artifact(artifact, artifact["model_type"], path)
    return path


def main_policy(argv: list[str] | None = None) -> int:
    """``imgverify train leave-out-policy``: the leave-out run, its report, and its bounds into the fusion artifact."""
    import argparse
    import shlex
    import sys
    import time

    parser = argparse.ArgumentParser(prog="imgverify train leave-out-policy", description=main_policy.__doc__)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--config", type=Path, required=True, help="the Serve config whose fusion artifact is updated")
    parser.add_argument("--out", type=Path, default=Path("reports/local"), help="where leave_out.md/.json go")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    command = shlex.join(["imgverify", "train", "leave-out-policy", *(sys.argv[3:] if argv is None else argv)])
    started = time.perf_counter()
    result = leave_out(args.manifest, args.config, cache_dir=args.cache)
    write_report(result, args.out, command)
    path = write_policy(args.config, result, command)
    artifact = json.loads(path.read_text())
    print(
        f"uncertain range {artifact['uncertain_range']} (threshold {artifact['threshold']:.3f}) -> {path}; "
        f"report -> {args.out / 'leave_out.md'} in {time.perf_counter() - started:.0f} s"
    )
    return 0
