"""Cross-fitting (training/cross_fit.py): out-of-fold features for the train rows of detectors trained on train.

Plain functions on small synthetic data; the real runs (clip_b16's head from cached embeddings, effnet_artifact
with one fine-tuning per fold) are in scripts/train_local_default.sh.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from training.cross_fit import apply_cross_fitted
from training.features import row_key
from training.folds import fold_of, out_of_fold_probs, row_folds, train_item_folds, variant_of
from training.train_fusion import train_fusion

HEAD = {"model": "logreg", "C": 100.0, "backbone_id": "test", "embedding_kind": "cls"}


def test_every_row_of_a_cluster_falls_in_one_fold_and_folds_are_balanced():
    """Two near-duplicates (one cluster) and all their re-encoded rows are held out together."""
    manifest = pa.table(
        {
            "key": [f"item{i}" for i in range(2000)] + ["dup"],
            "cluster": [f"c{i}" for i in range(2000)] + ["c7"],  # "dup" is a near-duplicate of item7
            "split": ["train"] * 2001,
        }
    )
    item_fold = train_item_folds(manifest, 5)
    assert item_fold["dup"] == item_fold["item7"]
    keys = [row_key(item, variant) for item in ("item7", "dup") for variant in ("clean", "reencode#0", "reencode#1")]
    assert set(row_folds(keys, item_fold).tolist()) == {item_fold["item7"]}
    assert [variant_of(k) for k in keys[:3]] == ["clean", "reencode#0", "reencode#1"]
    counts = np.bincount(list(item_fold.values()), minlength=5)
    assert counts.min() > 340 and counts.max() < 460  # 400 expected each


def test_out_of_fold_probabilities_score_the_train_rows_as_unseen_images():
    """A weak signal in 60 dimensions: a weakly regularised head fits its own rows far better than new ones (the
    leak the fusion would learn from). Each row's out-of-fold probability comes from a head that never saw it, so
    its AUC is what the head gets on unseen (validation) images, not what it gets on its own rows."""
    from models.clip_b16 import EmbeddingHead

    rng = np.random.default_rng(0)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        X = rng.normal(size=(n, 60))
        return X, (X[:, 0] + 1.5 * rng.normal(size=n) > 0).astype(int)

    (X, y), (X_val, y_val), (X_new, y_new) = draw(300), draw(150), draw(2000)
    fold = np.asarray([fold_of(f"c{i}", 5) for i in range(300)])
    head = EmbeddingHead(**HEAD).fit(X, y, X_val=X_val, y_val=y_val)
    in_sample = roc_auc_score(y, head.predict_proba(X)[:, 1])
    unseen = roc_auc_score(y_new, head.predict_proba(X_new)[:, 1])
    rows_X, rows_y = np.vstack([X, X_val]), np.concatenate([y, y_val])
    group = np.concatenate([fold, np.full(len(y_val), -1)])  # val rows only calibrate
    role = np.asarray(["fit"] * len(y) + ["calibrate"] * len(y_val))
    probs = out_of_fold_probs(rows_X, rows_y, group, role, HEAD)
    assert np.isnan(probs[len(y) :]).all()  # never held out, never scored
    oof = roc_auc_score(y, probs[: len(y)])
    assert in_sample > unseen + 0.15
    assert abs(oof - unseen) < 0.08


def _feature_table() -> pa.Table:
    return pa.table(
        {
            "key": ["t1|reencode#0", "t2|reencode#0", "t3|reencode#0", "v1|reencode#0"],
            "split": ["train", "train", "train", "val"],
            "label": ["ai", "real", "ai", "real"],
            "clip_b16_prob": [0.99, 0.01, None, 0.7],
        }
    )


def _oof_file(
    tmp_path, keys: list[str], values: list[float], version: str | None = None, name: str = "oof", by: str = ""
) -> str:
    path = tmp_path / f"{name}.parquet"
    table = pa.table({"key": keys, "fold": [0] * len(keys), "clip_b16_prob": values})
    if version or by:
        meta = {"detector": "clip_b16", "shipped_version": version, "by": by} if version else {"by": by}
        table = table.replace_schema_metadata({"imgverify_cross_fit": json.dumps(meta)})
    pq.write_table(table, path)
    return path


def test_out_of_fold_values_replace_the_train_rows_only(tmp_path):
    path = _oof_file(tmp_path, ["t1|reencode#0", "t2|reencode#0"], [0.6, 0.4])
    table, record = apply_cross_fitted(_feature_table(), [path])
    assert table.column("clip_b16_prob").to_pylist() == [0.6, 0.4, None, 0.7]  # t3 unscored stays missing
    assert record[0]["features"] == ["clip_b16_prob"] and record[0]["rows"] == {"train": 2}
    assert len(record[0]["sha256"]) == 64


def test_a_train_row_without_an_out_of_fold_value_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no cross-fitted clip_b16_prob for the train row 't2"):
        apply_cross_fitted(_feature_table(), [_oof_file(tmp_path, ["t1|reencode#0"], [0.6])])


def test_a_file_for_another_detector_version_or_a_second_file_for_one_feature_is_refused(tmp_path):
    outcome = json.dumps({"version": "clip_b16-1 head=sha256:new"})
    table = _feature_table().append_column("outcome.clip_b16", pa.array([outcome] * 4))
    keys = ["t1|reencode#0", "t2|reencode#0"]
    stale = _oof_file(tmp_path, keys, [0.6, 0.4], version="clip_b16-1 head=sha256:old")
    with pytest.raises(ValueError, match="made for clip_b16 .*head=sha256:old.*run `imgverify train cross-fit` again"):
        apply_cross_fitted(table, [stale])
    fresh = _oof_file(tmp_path, keys, [0.6, 0.4], version="clip_b16-1 head=sha256:new", name="fresh")
    assert apply_cross_fitted(table, [fresh])[0].column("clip_b16_prob").to_pylist()[:2] == [0.6, 0.4]
    with pytest.raises(ValueError, match="clip_b16_prob is cross-fitted by an earlier file too"):
        apply_cross_fitted(table, [fresh, fresh])


def test_fp32_outcomes_of_either_runtime_pass_for_each_other_int8_does_not(tmp_path):
    """Cross-fit on a CPU box (onnxruntime), features on a GPU box (torch): one fp32 backbone, one head."""
    keys = ["t1|reencode#0", "t2|reencode#0"]
    made_on_cpu = _oof_file(tmp_path, keys, [0.6, 0.4], version="clip_b16-9 runtime=onnxruntime/fp32 head=sha256:h")
    for runtime, accepted in (("torch/fp32", True), ("onnxruntime/int8", False), ("torch/fp16", False)):
        outcome = json.dumps({"version": f"clip_b16-9 runtime={runtime} head=sha256:h"})
        table = _feature_table().append_column("outcome.clip_b16", pa.array([outcome] * 4))
        if accepted:
            assert apply_cross_fitted(table, [made_on_cpu])[0].column("clip_b16_prob").to_pylist()[:2] == [0.6, 0.4]
        else:
            with pytest.raises(ValueError, match=f"made for clip_b16 .*features come from .*{runtime}"):
                apply_cross_fitted(table, [made_on_cpu])


def test_a_trained_feature_left_in_sample_is_refused_once_any_file_is_given(tmp_path):
    table = _feature_table().append_column("effnet_artifact_prob", pa.array([0.9, 0.1, 0.5, 0.5]))
    path = _oof_file(tmp_path, ["t1|reencode#0", "t2|reencode#0"], [0.6, 0.4])
    with pytest.raises(ValueError, match=r"not cross-fitted: \['effnet_artifact_prob'\]"):
        apply_cross_fitted(table, [path], required=["clip_b16_prob", "effnet_artifact_prob"])
    with pytest.warns(UserWarning, match="in-sample train rows of .'clip_b16_prob', 'effnet_artifact_prob'"):
        apply_cross_fitted(table, [], required=["clip_b16_prob", "effnet_artifact_prob"])


def test_out_of_fold_values_for_a_validation_row_are_refused_unless_whole_sources_were_held_out(tmp_path):
    keys = ["t1|reencode#0", "t2|reencode#0", "v1|reencode#0"]
    with pytest.raises(ValueError, match="1 rows are not train rows"):
        apply_cross_fitted(_feature_table(), [_oof_file(tmp_path, keys, [0.6, 0.4, 0.5])])
    # By source: a val row's source was held out as a whole, so its score is an unseen-source score: used too.
    table, record = apply_cross_fitted(_feature_table(), [_oof_file(tmp_path, keys, [0.6, 0.4, 0.5], by="source")])
    assert table.column("clip_b16_prob").to_pylist() == [0.6, 0.4, None, 0.5]
    assert record[0]["rows"] == {"train": 2, "val": 1}
    with pytest.raises(ValueError, match="no cross-fitted clip_b16_prob for the val row 'v1"):
        apply_cross_fitted(_feature_table(), [_oof_file(tmp_path, keys[:2], [0.6, 0.4], by="source")])


def test_source_folds_hold_out_a_source_whole_and_cluster_folds_hold_out_train_rows_only():
    from training.clip_embeddings import EmbeddingRows
    from training.cross_fit import fold_groups

    keys = np.asarray([row_key(k, "clean") for k in ("a", "b", "c", "d")])
    rows = EmbeddingRows(
        key=keys,
        split=np.asarray(["train", "val", "train", "val"]),
        source=np.asarray(["s1", "s1", "s2", "s2"]),
        y=np.asarray([0, 0, 1, 1]),
        X=np.zeros((4, 2)),
    )
    assert fold_groups(rows, "source", {}).tolist() == [0, 0, 1, 1]
    assert fold_groups(rows, "cluster", {"a": 3, "c": 1}).tolist() == [3, -1, 1, -1]
    with pytest.raises(ValueError, match="use 'cluster' or 'source'"):
        fold_groups(rows, "family", {})


def test_the_fusion_trusts_a_cross_fitted_feature_as_much_as_it_deserves(tmp_path):
    """A feature that separates the train rows perfectly in-sample but is weak on new images (as a head scores its
    own training rows): fitted on the in-sample values the fusion leans on it; on out-of-fold values much less."""
    rng = np.random.default_rng(3)
    n = 900
    y = rng.integers(0, 2, n)
    split = rng.choice(["train", "val", "test"], n, p=[0.6, 0.2, 0.2])
    weak = np.clip(0.5 + 0.15 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)  # what the detector gives on unseen images
    leaked = np.where(split == "train", np.where(y == 1, 0.99, 0.01), weak)
    table = pa.table(
        {
            "key": [f"k{i}" for i in range(n)],
            "label": ["ai" if v else "real" for v in y],
            "split": split.tolist(),
            "source": ["synthetic"] * n,
            "clip_b16_prob": leaked.tolist(),
            "clip_b16_pub_prob": np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1).tolist(),
        }
    )
    train = split == "train"
    oof = tmp_path / "oof.parquet"
    pq.write_table(pa.table({"key": table["key"].filter(pa.array(train)), "clip_b16_prob": weak[train]}), oof)

    def weight_of_clip(artifact: dict) -> float:
        return abs(artifact["logistic"]["coef"][artifact["features"].index("clip_b16_prob")])

    with pytest.warns(UserWarning, match="in-sample train rows"):
        leaky = train_fusion(table, ["clip_b16"], tmp_path / "leaky.json", dropout=0.0)
    fair = train_fusion(table, ["clip_b16"], tmp_path / "fair.json", dropout=0.0, cross_fitted=(oof,))
    assert weight_of_clip(leaky) > 3 * weight_of_clip(fair)
    assert fair["metrics"]["test"]["overall"]["auc"] > leaky["metrics"]["test"]["overall"]["auc"]
    saved = json.loads((tmp_path / "fair.json").read_text())
    assert saved["training"]["cross_fitted"][0]["rows"] == {"train": int(train.sum())}
