"""The leave-one-source-out yardstick (training/leave_out.py) on synthetic embeddings and a tiny real CLIP detector.

Two generators leave different traces (embedding dimension 0 for one, 1 for the other). Trained on both, the product
separates a test split that shares their sources; with one of them held out, it cannot tell that one from photos.
The yardstick must show both: the in-distribution number high, the held-out one near chance. The recipe's steps run
for real (EmbeddingHead fits, source cross-fitting, the fusion's fit and calibration, the service's Verdict).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

import models
from training.features import row_key
from training.leave_out import Recipe, Rows, held_out_metrics, refit, run_folds, score, summary
from training.train_fusion import FusionSettings

HIDDEN, PROJECTION = 64, 16
SOURCES = {"photos-a": 0, "photos-b": 0, "gen-a": 1, "gen-b": 1}  # source -> label (1 = AI)
TRACE = {"gen-a": 0, "gen-b": 1}  # the embedding dimension each generator marks


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A real clip_b16 detector on a tiny random CLIP (only its heads run here: embeddings are given)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = tmp_path_factory.mktemp("tiny_clip")
    config = CLIPVisionConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=1,
        intermediate_size=128,
        patch_size=16,
        image_size=32,
        projection_dim=PROJECTION,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    return models.create_detector(
        "clip_b16", {"backbone": str(folder), "published_head": None, "return_embedding": True}
    )


def synthetic_rows(n_per_source: int = 120, seed: int = 0) -> Rows:
    rng = np.random.default_rng(seed)
    keys, labels, splits, sources, vectors = [], [], [], [], []
    for source, label in SOURCES.items():
        for i in range(n_per_source):
            vector = rng.normal(scale=0.3, size=HIDDEN)
            vector[list(TRACE.values())] = 0.0  # the trace dimensions carry nothing but the traces
            if source in TRACE:
                vector[TRACE[source]] = 4.0 + rng.normal(scale=0.3)
            keys.append(row_key(f"{source}-{i}", "clean"))
            labels.append("ai" if label else "real")
            splits.append(rng.choice(["train", "val", "test"], p=[0.6, 0.2, 0.2]))
            sources.append(source)
            vectors.append(vector)
    n = len(keys)
    table = pa.table(
        {
            "key": keys,
            "variant": ["clean"] * n,
            "filepath": keys,
            "label": labels,
            "split": splits,
            "source": sources,
            "generator": sources,
            "error": [""] * n,
            "outcome.clip_b16": pa.nulls(n, pa.string()),
            **{name: pa.nulls(n, pa.float64()) for name in models.feature_schema(["clip_b16"])},
        }
    )
    return Rows(
        table=table,
        embeddings={"cls": np.asarray(vectors, np.float32), "image_embeds": np.zeros((n, PROJECTION), np.float32)},
        embedded=np.ones(n, dtype=bool),
        y=np.asarray([int(label == "ai") for label in labels]),
        split=np.asarray(splits),
        source=np.asarray(sources),
        variant=np.asarray(["clean"] * n),
        cluster=np.asarray(keys),
    )


RECIPE = Recipe(
    head_params={"model": "logreg", "C": 0.1, "embedding_kind": "cls"},
    head_variants=["clean"],
    fusion=FusionSettings(dropout=0.0, dropout_copies=0),
    fusion_variants=["clean"],
)


def test_a_generator_held_out_is_measured_as_unseen_while_the_test_split_looks_solved(clip, tmp_path):
    rows = synthetic_rows()
    # In distribution: trained on every source, the test split (which shares them) is separated.
    everything = refit(rows, "", RECIPE, ["clip_b16"], clip, tmp_path)
    test = rows.split == "test"
    predictions = score(rows, everything, ["clip_b16"], clip, test)
    y = np.asarray([label == "ai" for label in predictions.column("label").to_pylist()])
    assert roc_auc_score(y, predictions.column("fusion_prob").to_pylist()) > 0.95

    per_source, policies, predictions = run_folds(rows, list(SOURCES), RECIPE, ["clip_b16"], clip, ["clean"])
    # gen-b's trace was never seen: it ranks like a photo, whatever the in-distribution number says ...
    assert per_source["gen-b"]["clean"]["auc"] < 0.75
    # ... and the verdict, taking its policy from how the other held-out sources fared, does not call it a photo
    # with confidence: it says it cannot tell.
    assert per_source["gen-b"]["clean"]["ai_confidently_non_ai"] < 0.1
    assert per_source["gen-b"]["clean"]["uncertain"] > 0.9
    # A held-out collection of photos is no harder than the others: ranked below the AI images it is compared with,
    # and never confidently called AI.
    assert per_source["photos-a"]["clean"]["auc"] > 0.9
    assert per_source["photos-a"]["clean"]["real_confidently_ai"] < 0.05
    # Every scored row is the held-out source or a test row of another source: nothing the fold trained on.
    for row in predictions.to_pylist():
        assert row["source"] == row["held_out"] or row["split"] == "test"
    # Each fold's policy comes from the other held-out sources only.
    assert all(source not in policy["sources"] for source, policy in policies.items())
    means = summary(per_source, "clean")
    assert means["auc"] == pytest.approx(np.mean([per_source[s]["clean"]["auc"] for s in ("gen-a", "gen-b")]))


def test_each_fold_fits_its_fusion_without_the_held_out_source(clip, tmp_path):
    rows = synthetic_rows()
    fold = refit(rows, "gen-a", RECIPE, ["clip_b16"], clip, tmp_path)
    trained = fold.artifact["training"]["rows"]
    kept = rows.source != "gen-a"
    assert trained["train"] == int((kept & (rows.split == "train")).sum())
    assert trained["val"] == int((kept & (rows.split == "val")).sum())
    json.dumps(fold.artifact)  # the fold's artifact is a plain, saveable one


def test_held_out_metrics_read_the_verdict_columns():
    predictions = pa.table(
        {
            "variant": ["clean"] * 6,
            "label": ["ai", "ai", "ai", "real", "real", "real"],
            "source": ["gen", "gen", "gen", "gen", "other", "other"],
            "fusion_prob": [0.9, 0.6, 0.1, 0.2, 0.3, 0.95],
            "verdict": ["AI", "AI", "NON-AI", "NON-AI", "NON-AI", "AI"],
            "uncertain": [False, True, False, True, False, False],
            "clip_b16_novelty": [0.5, 0.99, 0.2, 0.96, 0.1, None],
        }
    )
    metrics = held_out_metrics(predictions, "gen", "clean")
    assert (metrics["n_ai"], metrics["n_real"]) == (3, 1)
    assert metrics["ai_labelled_ai"] == pytest.approx(2 / 3)
    assert metrics["ai_confidently_non_ai"] == pytest.approx(1 / 3)
    assert metrics["real_labelled_ai"] == 0.0 and metrics["uncertain"] == pytest.approx(0.5)
    assert metrics["unfamiliar"] == pytest.approx(0.5)  # two of gen's four images are past 0.95
    assert metrics["other_real_labelled_ai"] == 0.5
    # AUC: gen's AI images against every photo (its own and the others'): 0.9, 0.6, 0.1 vs 0.2, 0.3, 0.95.
    assert metrics["auc"] == pytest.approx(roc_auc_score([1, 1, 1, 0, 0, 0], [0.9, 0.6, 0.1, 0.2, 0.3, 0.95]))


def test_the_shipped_policy_widens_the_artifacts_confident_bounds_and_says_where_they_came_from(tmp_path):
    import yaml

    from training.leave_out import write_policy
    from training.train_fusion import train_fusion

    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    table = pa.table(
        {
            "key": [f"k{i}|clean" for i in range(n)],
            "label": ["ai" if v else "real" for v in y],
            "split": rng.choice(["train", "val", "test"], n, p=[0.6, 0.2, 0.2]).tolist(),
            "source": ["s"] * n,
            "clip_b16_prob": np.clip(0.5 + 0.4 * (y - 0.5) + rng.normal(0, 0.15, n), 0, 1).tolist(),
        }
    )
    with pytest.warns(UserWarning, match="in-sample train rows"):  # no cross-fitted file here: not the point
        artifact = train_fusion(table, ["clip_b16"], tmp_path / "fusion.json", dropout=0.0, features=("clip_b16_prob",))
    config = {
        "applications": [
            {
                "name": "imgverify",
                "import_path": "serve_app.app:build_app",
                "args": {"detectors": [{"name": "clip_b16"}], "fusion": {"model": str(tmp_path / "fusion.json")}},
                "deployments": [{"name": "clip_b16", "user_config": {"detector": {"published_head": None}}}],
            }
        ]
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = {"shipped_policy": {"confident_ai_from": 0.97, "confident_real_below": 0.03, "sources": ["a"], "rows": {}}}
    write_policy(tmp_path / "config.yaml", result, "imgverify train leave-out-policy ...")
    written = json.loads((tmp_path / "fusion.json").read_text())
    low, high = written["uncertain_range"]
    assert (low, high) == (0.03, 0.97) and low <= written["threshold"] < high
    assert written["leave_out"]["in_distribution_uncertain_range"] == artifact["uncertain_range"]
    assert written["version"] != artifact["version"] and written["threshold"] == artifact["threshold"]
    # Written twice, the in-distribution range on record stays the one the fusion was trained with.
    write_policy(tmp_path / "config.yaml", result, "again")
    again = json.loads((tmp_path / "fusion.json").read_text())
    assert again["leave_out"]["in_distribution_uncertain_range"] == artifact["uncertain_range"]
