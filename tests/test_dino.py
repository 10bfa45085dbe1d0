"""DINOv2 + SVM: embeddings, preprocessing, the calibrated head (fit, save, load, refuse), training pipeline.

The backbone is a tiny random ``Dinov2Model`` saved with ``save_pretrained`` (with a DINOv2-style image processor
scaled down: shortest edge 64, crop 56) and loaded by path, the same way ``facebook/dinov2-base`` is.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_detector, get_detector_class
from models.dino import DinoSvmHead
from models.image_input import DecodedImage, decode_image
from training.train_dino_svm import main as train_main
from training.train_dino_svm import train_dino_svm

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory) -> str:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2_tiny")
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14, image_size=56
    )
    Dinov2Model(config).save_pretrained(folder)
    # facebook/dinov2-base's preprocessor_config.json, scaled down (published: 256 / 224).
    BitImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 56, "width": 56},
        resample=3,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def images(data_set) -> list[DecodedImage]:
    photos = sorted((data_set("imagenet-real") / "real").glob("*.JPEG"))[:3]
    generated = sorted((data_set("early-generators-ai") / "ai").rglob("*.png"))[:3]
    return [decode_image(p.read_bytes()) for p in photos + generated]


@pytest.fixture(scope="module")
def embedder(tiny_dino):
    return create_detector("dino", {"model_id": tiny_dino, "return_embedding": True})


def _embeddings(results) -> np.ndarray:
    assert all(r.ok for r in results), [r.error for r in results]
    return np.array([r.details["embedding"] for r in results])


def separable(n: int = 60, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs on the unit sphere, far apart: any linear classifier separates them."""
    direction = np.random.default_rng(1234).normal(size=dim)  # the same two blobs for every sample
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, dim)) * 0.3 + np.where(y[:, None] == 1, direction, -direction)
    return X / np.linalg.norm(X, axis=1, keepdims=True), y


# ---- embeddings -----------------------------------------------------------------------------------------
def test_embedding_is_the_normalised_cls_token(tiny_dino, embedder, images, no_network):
    from transformers import AutoImageProcessor, AutoModel

    results = embedder.predict(images)
    embeddings = _embeddings(results)
    assert embeddings.shape == (len(images), 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    assert all(r.features == {} for r in results)  # no head: no probability, and none invented

    model = AutoModel.from_pretrained(tiny_dino).eval()
    processor = AutoImageProcessor.from_pretrained(tiny_dino, backend="pil")
    with torch.no_grad():
        pixels = processor(images=[im.to_pil() for im in images], return_tensors="pt")["pixel_values"]
        cls = model(pixel_values=pixels).last_hidden_state[:, 0]
    np.testing.assert_allclose(embeddings, torch.nn.functional.normalize(cls, dim=-1).numpy(), atol=1e-5)


def test_cls_plus_mean_pooling(tiny_dino, embedder, images, no_network):
    both = create_detector("dino", {"model_id": tiny_dino, "return_embedding": True, "pooling": "cls+mean"})
    assert both.embedding_size == 64 and both.version != embedder.version
    assert f"{tiny_dino}@sha256:" in embedder.version and "head=none" in embedder.version
    combined = _embeddings(both.predict(images[:2]))
    cls_only = _embeddings(embedder.predict(images[:2]))
    assert combined.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(combined, axis=1), 1.0, atol=1e-6)
    # The first half is the CLS token, up to the joint normalisation.
    first = combined[:, :32] / np.linalg.norm(combined[:, :32], axis=1, keepdims=True)
    np.testing.assert_allclose(first, cls_only, atol=1e-5)


def test_preprocessing_is_resize_shortest_edge_bicubic_then_centre_crop(embedder, images):
    from PIL import Image

    image = images[0]
    pixels = embedder.preprocess(image)
    assert pixels.shape == (3, 56, 56)
    # By hand: shortest edge -> 64 (bicubic), centre crop 56, /255, ImageNet mean/std.
    scale = 64 / min(image.width, image.height)
    size = (64, int(image.height * scale)) if image.width <= image.height else (int(image.width * scale), 64)
    resized = np.asarray(image.to_pil().resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255
    top, left = (resized.shape[0] - 56) // 2, (resized.shape[1] - 56) // 2
    expected = (resized[top : top + 56, left : left + 56] - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(pixels.permute(1, 2, 0).numpy(), expected, atol=1e-4)


def test_batch_equals_single_and_is_deterministic(embedder, images, no_network):
    batch = _embeddings(embedder.predict(images))
    again = _embeddings(embedder.predict(images))
    single = np.concatenate([_embeddings(embedder.predict([im])) for im in images])
    np.testing.assert_array_equal(batch, again)
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_without_a_head_the_detector_refuses_to_load(tiny_dino, no_network):
    with pytest.raises(ValueError, match="no SVM head configured"):
        create_detector("dino", {"model_id": tiny_dino})
    assert get_detector_class("dino").default_config["model_id"] == "facebook/dinov2-base"


# ---- the head -------------------------------------------------------------------------------------------
def test_head_reproduces_scikit_learn_and_survives_a_round_trip(tmp_path):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import LinearSVC

    X, y = separable()
    X_test, y_test = separable(n=40, seed=1)
    head = DinoSvmHead(C=0.5, cv=3, backbone_id="facebook/dinov2-base", pooling="cls")
    assert head.fit(X, y) is head
    assert head.coef_.shape == (3, 32) and head.n_features_in_ == 32

    reference = CalibratedClassifierCV(
        LinearSVC(C=0.5, max_iter=10000, random_state=0),
        method="sigmoid",
        cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0),
    ).fit(X, y)
    probs = head.predict_proba(X_test)
    np.testing.assert_allclose(probs, reference.predict_proba(X_test), atol=1e-12)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert np.mean(head.predict(X_test) == y_test) == 1.0
    assert probs[y_test == 1, 1].min() > 0.8 and probs[y_test == 0, 1].max() < 0.2

    path = head.save(tmp_path / "head.npz", metadata={"note": "test"})
    assert path == tmp_path / "head.npz"
    with np.load(path, allow_pickle=False) as data:  # plain arrays: loadable with pickle disabled
        assert set(data.files) == {"coef", "intercept", "platt_a", "platt_b", "schema"}
    loaded = DinoSvmHead.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), probs)
    assert loaded.get_params() == head.get_params() and loaded.metadata_ == {"note": "test"}


def test_head_refuses_bad_training_data():
    X, y = separable(n=10)
    with pytest.raises(ValueError, match="0 real and 10 AI"):
        DinoSvmHead().fit(X, np.ones(10, dtype=int))
    with pytest.raises(ValueError, match="labels must be 0"):
        DinoSvmHead().fit(X, y + 1)


def test_detector_with_head_gives_the_head_probability(tiny_dino, embedder, images, tmp_path, no_network):
    embeddings = _embeddings(embedder.predict(images))
    labels = np.array([0, 0, 0, 1, 1, 1])
    head = DinoSvmHead(cv=2, backbone_id=tiny_dino, pooling="cls").fit(embeddings, labels)
    path = head.save(tmp_path / "head.npz")

    detector = create_detector("dino", {"model_id": tiny_dino, "head": str(path)})
    results = detector.predict(images)
    expected = head.predict_proba(embeddings)[:, 1]
    for result, p in zip(results, expected):
        assert result.features["dino_prob"] == pytest.approx(float(p), abs=1e-6)
        assert "embedding" not in result.details and "P(AI)" in result.evidence[0]
    assert "head=sha256:" in detector.version and detector.version != embedder.version


def test_detector_refuses_a_head_for_another_embedding(tiny_dino, tmp_path, no_network):
    y = separable(n=20)[1]
    for params, dim, problem in [
        ({"backbone_id": "facebook/dinov2-base"}, 32, "backbone 'facebook/dinov2-base'"),
        ({"backbone_id": tiny_dino}, 48, "embedding size 48 (configured backbone gives 32)"),
        ({"backbone_id": tiny_dino, "pooling": "cls+mean"}, 32, "pooling 'cls+mean'"),
    ]:
        path = DinoSvmHead(cv=2, **params).fit(separable(n=20, dim=dim)[0], y).save(tmp_path / f"{dim}.npz")
        with pytest.raises(ValueError, match="trained for a different embedding") as refused:
            create_detector("dino", {"model_id": tiny_dino, "head": str(path)})
        assert problem in str(refused.value)


# ---- training pipeline ----------------------------------------------------------------------------------
def _manifest(shared_data: Path, path: Path, splits: dict[str, tuple[int, int]]) -> Path:
    """CIFAKE images (absolute paths into the shared data, nothing copied): (n_real, n_ai) per split."""
    with open(shared_data / "cifake-32px" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    pools = {label: [r["file"] for r in rows if r["label"] == label] for label in ("real", "ai")}
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "label", "split"])
        for split, counts in splits.items():
            for label, count in zip(("real", "ai"), counts):
                for _ in range(count):
                    writer.writerow([shared_data / "cifake-32px" / pools[label].pop(), label, split])
    return path


def test_training_pipeline_fits_reports_and_saves_a_loadable_head(tiny_dino, data_set, tmp_path, no_network, capsys):
    splits = {"train": (12, 12), "val": (6, 6), "test": (2, 2)}
    manifest = _manifest(data_set("cifake-32px").parent, tmp_path / "manifest.csv", splits)
    out = tmp_path / "heads" / "dino_svm.npz"
    argv = [str(manifest), "--out", str(out), "--model-id", tiny_dino, "--cv", "3", "--batch-size", "8"]
    assert train_main(argv) == 0
    printed = capsys.readouterr().out
    assert '"n_train": 24' in printed and '"val_auc"' in printed

    head = DinoSvmHead.load(out)
    report = head.metadata_
    assert report["n_train"] == 24 and report["n_train_ai"] == 12 and report["n_val"] == 12
    assert report["failed"] == [] and report["reencode"] is True
    assert 0.0 <= report["val_accuracy"] <= 1.0 and 0.0 <= report["val_auc"] <= 1.0
    assert head.backbone_id == tiny_dino and head.n_features_in_ == 32 and head.coef_.shape == (3, 32)

    # The saved head serves through the detector, with the same embedding the training used.
    detector = create_detector("dino", {"model_id": tiny_dino, "head": str(out), "return_embedding": True})
    with open(manifest, newline="") as handle:
        first_file = next(csv.DictReader(handle))["filepath"]
    image = decode_image(Path(first_file).read_bytes())
    result = detector.predict([image])[0]
    expected = head.predict_proba(np.array([result.details["embedding"]]))[0, 1]
    assert result.features["dino_prob"] == pytest.approx(float(expected), abs=1e-9)


def test_training_without_reencode_is_reproducible(tiny_dino, data_set, tmp_path, no_network):
    manifest = _manifest(data_set("cifake-32px").parent, tmp_path / "manifest.csv", {"train": (6, 6), "val": (3, 3)})
    first = train_dino_svm(manifest, tmp_path / "a.npz", {"model_id": tiny_dino}, cv=2, reencode=False)
    second = train_dino_svm(manifest, tmp_path / "b.npz", {"model_id": tiny_dino}, cv=2, reencode=False)
    assert first["val_accuracy"] == second["val_accuracy"] and first["val_auc"] == second["val_auc"]
    first_head, second_head = DinoSvmHead.load(tmp_path / "a.npz"), DinoSvmHead.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(first_head.coef_, second_head.coef_)


def test_training_refuses_a_single_class_train_split(tiny_dino, data_set, tmp_path):
    manifest = _manifest(data_set("cifake-32px").parent, tmp_path / "manifest.csv", {"train": (5, 0), "val": (2, 2)})
    with pytest.raises(ValueError, match="needs both 'real' and 'ai'"):
        train_dino_svm(manifest, tmp_path / "head.npz", {"model_id": tiny_dino})
    assert not (tmp_path / "head.npz").exists()
