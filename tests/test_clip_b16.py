"""clip_b16: the ONNX rebuild, the HF production path, the heads (trained and published), the real INT8 file.

The backbones are tiny random ``CLIPVisionModelWithProjection``s built here: saved with ``save_pretrained`` (the
production path loads ``openai/clip-vit-base-patch16`` the same way), and exported to ONNX then quantised with
``onnxruntime.quantization.quantize_dynamic`` (per channel, MatMul only: the same kind of graph as the real file,
MatMulInteger + DynamicQuantizeLinear with an fp32 Conv). The real file is used when ``imgverify weights fetch``
has cached it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_detector
from models.clip_b16 import (
    HF_ID,
    OFFLINE_CONFIG,
    ONNX_LOCATION,
    PUBLISHED_HEAD_LOCATION,
    ClipB16Detector,
    EmbeddingHead,
    clip_from_onnx,
    clip_pixels,
    native_crops,
)
from models.image_input import DecodedImage, decode_image
from models.weights import WeightsUnavailable

FIXTURES = Path(__file__).parent / "fixtures"
REAL_IMAGE = FIXTURES / "clip_b16_real_0010.jpg"
REFERENCE = FIXTURES / "clip_b16_real_0010.json"
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 1,
    "intermediate_size": 128,
    "patch_size": 16,
    "image_size": 32,
    "projection_dim": 16,
}  # 64-wide heads, as CLIP's
NO_PUBLISHED = {"published_head": None}


def tiny_model() -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(**TINY, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    model = CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():  # no two equal tensors (zero biases, unit norms): the exporter would merge them
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("clip_tiny")
    tiny_model().save_pretrained(folder)
    return str(folder)


def _towers() -> torch.nn.Module:
    """The tiny model with the two outputs of the real export (image_embeds, the last hidden state), as a
    subclass so that the exported initializers keep the HF names (a wrapper would prefix them)."""
    from transformers import CLIPVisionModelWithProjection

    class Towers(CLIPVisionModelWithProjection):
        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = super().forward(pixel_values=pixel_values)
            return out.image_embeds, out.last_hidden_state

    original = tiny_model()
    towers = Towers(original.config).eval()
    towers.load_state_dict(original.state_dict())
    return towers


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("clip_onnx")
    fp32, int8 = folder / "clip.onnx", folder / "clip.int8.onnx"
    torch.onnx.export(
        _towers(),
        (torch.randn(1, 3, 32, 32),),
        str(fp32),
        dynamo=False,
        opset_version=14,
        input_names=["pixel_values"],
        output_names=["image_embeds", "last_hidden_state"],
        dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}, "last_hidden_state": {0: "batch"}},
    )
    quantize_dynamic(
        str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"]
    )
    return {"fp32": fp32, "int8": int8}


@pytest.fixture(scope="module")
def images(shared_data: Path) -> list[DecodedImage]:
    files = sorted((shared_data / "modern-matched" / "real").glob("*.jpg"))[:2]
    files += sorted((shared_data / "modern-matched" / "ai").glob("*"))[:2]
    files += sorted((shared_data / "imagenet-real" / "real").glob("*.JPEG"))[:1]
    return [decode_image(p.read_bytes()) for p in files]


def _pixels(images: list[DecodedImage], size: int = 32) -> np.ndarray:
    return np.stack([clip_pixels(im.to_pil(), size) for im in images])


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _embeddings(results, key: str = "embedding") -> np.ndarray:
    assert all(r.ok for r in results), [r.error for r in results]
    return np.array([r.details[key] for r in results])


def separable(n: int = 60, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    direction = np.random.default_rng(1234).normal(size=dim)
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, dim)) * 0.5 + np.where(y[:, None] == 1, direction, -direction)
    return X / np.linalg.norm(X, axis=1, keepdims=True), y


# ---- the ONNX rebuild ------------------------------------------------------------------------------------------
def test_quantised_graph_is_the_kind_of_the_real_file(tiny_onnx):
    import onnx

    ops = {node.op_type for node in onnx.load(str(tiny_onnx["int8"])).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear", "Conv"} <= ops and "ConvInteger" not in ops


def test_rebuild_of_the_fp32_export_is_the_torch_model(tiny_onnx, images):
    """The mapping itself, without quantisation noise: every weight lands where it came from."""
    original, rebuilt = tiny_model(), clip_from_onnx(tiny_onnx["fp32"])
    for key, value in original.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0)
    x = torch.from_numpy(_pixels(images))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(pixel_values=x).image_embeds, original(pixel_values=x).image_embeds)


def test_rebuild_of_the_int8_export_matches_torch_and_onnxruntime(tiny_onnx, images):
    import onnxruntime as ort

    x = _pixels(images)
    rebuilt = clip_from_onnx(tiny_onnx["int8"])
    with torch.no_grad():
        ours = rebuilt(pixel_values=torch.from_numpy(x))
        fp32 = tiny_model()(pixel_values=torch.from_numpy(x))
    session = ort.InferenceSession(str(tiny_onnx["int8"]), providers=["CPUExecutionProvider"])
    runs = [session.run(None, {"pixel_values": x[i : i + 1]}) for i in range(len(x))]
    ort_embeds = np.concatenate([r[0] for r in runs])
    ort_cls = np.concatenate([r[1][:, 0] for r in runs])
    # Per-channel int8 weights only: the rebuild is the fp32 model to within weight rounding.
    assert _cos(ours.image_embeds.numpy(), fp32.image_embeds.numpy()).min() > 0.999
    # onnxruntime also rounds activations to uint8 per tensor: looser (the real ViT-B/16 gives 0.96-0.99).
    assert _cos(ours.image_embeds.numpy(), ort_embeds).min() > 0.98
    assert _cos(ours.last_hidden_state[:, 0].numpy(), ort_cls).min() > 0.98


def test_rebuild_refuses_a_graph_it_cannot_map_completely(tiny_onnx, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(tiny_onnx["int8"]))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "stray.weight"))
    onnx.save(model, str(tmp_path / "extra.onnx"))
    with pytest.raises(ValueError, match="not mapped to the HF model: \\['stray.weight'\\]"):
        clip_from_onnx(tmp_path / "extra.onnx")

    model = onnx.load(str(tiny_onnx["int8"]))
    kept = [i for i in model.graph.initializer if i.name != "vision_model.post_layernorm.weight"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(tmp_path / "missing.onnx"))
    with pytest.raises(ValueError, match="missing \\['vision_model.post_layernorm.weight'\\]"):
        clip_from_onnx(tmp_path / "missing.onnx")


def test_onnx_backbone_in_both_runtimes(tiny_onnx, images, no_network):
    config = {"backbone": str(tiny_onnx["int8"]), "return_embedding": True, **NO_PUBLISHED}
    fast = create_detector("clip_b16", {**config, "runtime": "onnxruntime"})
    rebuilt = create_detector("clip_b16", {**config, "runtime": "torch"})
    assert fast.backbone_id.endswith(":onnxruntime") and rebuilt.backbone_id.endswith(":torch")
    assert create_detector("clip_b16", config).runtime == "onnxruntime"  # auto, on CPU
    a, b = _embeddings(fast.predict(images)), _embeddings(rebuilt.predict(images))
    assert a.shape == (len(images), 16) and _cos(a, b).min() > 0.98
    # onnxruntime runs one image at a time: a batch neighbour never changes an image's embedding.
    np.testing.assert_array_equal(a[:1], _embeddings(fast.predict(images[:1])))
    with pytest.raises(ValueError, match="runs on CPU only"):
        ClipB16Detector({**config, "runtime": "onnxruntime"}, device="cuda")


# ---- the production path (HF folder) -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedder(tiny_clip):
    return create_detector("clip_b16", {"backbone": tiny_clip, "return_embedding": True, **NO_PUBLISHED})


def test_hf_backbone_embeddings_are_the_models_normalised_outputs(tiny_clip, embedder, images, no_network):
    from transformers import CLIPVisionModelWithProjection

    results = embedder.predict(images)
    embeddings, cls = _embeddings(results), _embeddings(results, "cls")
    assert embeddings.shape == (len(images), 16) and cls.shape == (len(images), 64)
    assert all(r.features == {} for r in results)  # no head configured: no probability invented
    model = CLIPVisionModelWithProjection.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(_pixels(images)))
    np.testing.assert_allclose(embeddings, torch.nn.functional.normalize(out.image_embeds, dim=-1), atol=1e-5)
    np.testing.assert_allclose(cls, torch.nn.functional.normalize(out.last_hidden_state[:, 0], dim=-1), atol=1e-5)
    assert embedder.runtime == "torch" and embedder.backbone_id == tiny_clip
    assert f"{tiny_clip}@sha256:" in embedder.version and "head=none" in embedder.version


def test_batch_equals_single(embedder, images, no_network):
    batch = _embeddings(embedder.predict(images))
    single = np.concatenate([_embeddings(embedder.predict([im])) for im in images])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_preprocessing_is_clip_resize_and_centre_crop(images):
    from PIL import Image

    image = images[0].to_pil()  # 1280 x 720
    pixels = clip_pixels(image, 224)
    resized = np.asarray(image.resize((398, 224), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    expected = (resized[:, 87 : 87 + 224] - [0.48145466, 0.4578275, 0.40821073]) / [0.26862954, 0.26130258, 0.27577711]
    np.testing.assert_allclose(pixels.transpose(1, 2, 0), expected, atol=1e-5)


def test_native_crops_and_multi_crop_averaging(tiny_clip, embedder, images, no_network):
    rgb = np.zeros((720, 1280, 3), np.float32)
    crops = native_crops(rgb, 4, 224)
    assert len(crops) == 4 and all(c.shape == (224, 224, 3) for c in crops)
    assert native_crops(rgb[:100], 4, 224) == []  # smaller than a crop: only CLIP's resized view
    multi = create_detector("clip_b16", {"backbone": tiny_clip, "return_embedding": True, "crops": 3, **NO_PUBLISHED})
    assert multi.preprocess(images[0]).shape == (4, 3, 32, 32)
    emb = _embeddings(multi.predict(images[:2]))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert multi.version != embedder.version


def test_nothing_to_give_is_refused(tiny_clip):
    with pytest.raises(ValueError, match="nothing to give"):
        create_detector("clip_b16", {"backbone": tiny_clip, **NO_PUBLISHED})
    with pytest.raises(ValueError, match="pin an ONNX file"):
        create_detector(
            "clip_b16", {"backbone": tiny_clip, "backbone_sha256": "0" * 64, "return_embedding": True, **NO_PUBLISHED}
        )


# ---- intermediate layers (cls_layers) -----------------------------------------------------------------------------
def test_cls_layers_are_the_encoder_layers_cls_tokens(tiny_clip, images, no_network):
    """HF path: each listed layer's CLS token (hidden_states[i + 1]), unit-normalised, concatenated in order; the
    last layer's is the ``cls`` embedding itself."""
    from transformers import CLIPVisionModelWithProjection

    detector = create_detector(
        "clip_b16", {"backbone": tiny_clip, "return_embedding": True, "cls_layers": [1, 0], **NO_PUBLISHED}
    )
    results = detector.predict(images)
    layers = _embeddings(results, "cls_layers")
    assert layers.shape == (len(images), 2 * 64) and detector.embedding_sizes["cls_layers"] == 128
    model = CLIPVisionModelWithProjection.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        hidden = model(pixel_values=torch.from_numpy(_pixels(images)), output_hidden_states=True).hidden_states
    for slot, layer in enumerate([1, 0]):
        expected = torch.nn.functional.normalize(hidden[layer + 1][:, 0], dim=-1)
        np.testing.assert_allclose(layers[:, slot * 64 : (slot + 1) * 64], expected, atol=1e-5)
    np.testing.assert_allclose(layers[:, :64], _embeddings(results, "cls"), atol=1e-6)
    assert "cls_layers=1,0" in detector.version
    # Several views: each layer's tokens averaged over the views and normalised on their own, not as one vector.
    multi = create_detector(
        "clip_b16", {"backbone": tiny_clip, "return_embedding": True, "cls_layers": [1, 0], "crops": 3, **NO_PUBLISHED}
    )
    averaged = _embeddings(multi.predict(images[:2]), "cls_layers").reshape(2, 2, 64)
    np.testing.assert_allclose(np.linalg.norm(averaged, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(averaged[:, 0], _embeddings(multi.predict(images[:2]), "cls"), atol=1e-6)
    assert not np.allclose(averaged[:, 0], layers[:2, :64], atol=1e-3)  # the crops did change the tokens
    with pytest.raises(ValueError, match=r"cls_layers \[0, 2\] outside the backbone's 2 layers"):
        create_detector("clip_b16", {"backbone": tiny_clip, "return_embedding": True, "cls_layers": [0, 2]})


def test_cls_layers_from_the_onnx_graph_match_the_rebuild(tiny_onnx, images, no_network):
    """onnxruntime reads the layers' outputs out of the graph (extra outputs, same numbers); the rebuild computes
    them in torch: the two agree as closely as their last-layer CLS tokens do."""
    config = {"backbone": str(tiny_onnx["int8"]), "return_embedding": True, "cls_layers": [0, 1], **NO_PUBLISHED}
    fast = create_detector("clip_b16", {**config, "runtime": "onnxruntime"})
    rebuilt = create_detector("clip_b16", {**config, "runtime": "torch"})
    a, b = _embeddings(fast.predict(images), "cls_layers"), _embeddings(rebuilt.predict(images), "cls_layers")
    assert a.shape == b.shape == (len(images), 128)
    for slot in range(2):
        assert _cos(a[:, slot * 64 : (slot + 1) * 64], b[:, slot * 64 : (slot + 1) * 64]).min() > 0.95
    plain = create_detector("clip_b16", {**config, "cls_layers": [], "runtime": "onnxruntime"})
    np.testing.assert_array_equal(_embeddings(plain.predict(images)), _embeddings(fast.predict(images)))
    with pytest.raises(ValueError, match="has no node '/vision_model/encoder/layers.5/Add_1'"):
        create_detector("clip_b16", {**config, "cls_layers": [5], "runtime": "onnxruntime"})


def test_a_cls_layers_head_is_tied_to_its_layers(tiny_clip, images, tmp_path, no_network):
    config = {"backbone": tiny_clip, **NO_PUBLISHED}
    embedder = create_detector("clip_b16", {**config, "return_embedding": True, "cls_layers": [0, 1]})
    X = _embeddings(embedder.predict(images), "cls_layers")
    head = EmbeddingHead(cv=2, backbone_id=tiny_clip, embedding_kind="cls_layers", layers=[0, 1])
    path = head.fit(X, np.array([0, 0, 1, 1, 0])).save(tmp_path / "layers.npz")
    detector = create_detector("clip_b16", {**config, "head": str(path), "cls_layers": [0, 1]})
    got = [r.features["clip_b16_prob"] for r in detector.predict(images)]
    np.testing.assert_allclose(got, head.predict_proba(X)[:, 1], atol=1e-6)
    with pytest.raises(ValueError, match=r"CLS tokens of layers \[0, 1\] \(configured: \[1, 0\]\)"):
        create_detector("clip_b16", {**config, "head": str(path), "cls_layers": [1, 0]})


# ---- heads -----------------------------------------------------------------------------------------------------
def test_published_head_is_sigmoid_of_the_normalised_embedding(tiny_clip, embedder, images, tmp_path, no_network):
    rng = np.random.default_rng(0)
    weights, bias = rng.normal(size=16) * 3, 0.25
    path = tmp_path / "clip_head.json"
    path.write_text(json.dumps({"weights": weights.tolist(), "bias": bias, "embed_dim": 16}))
    detector = create_detector(
        "clip_b16",
        {
            "backbone": tiny_clip,
            "published_head": str(path),
            "published_head_sha256": None,
            "published_head_archive_sha256": None,
        },
    )
    results = detector.predict(images)
    embeddings = _embeddings(embedder.predict(images))
    expected = 1 / (1 + np.exp(-(embeddings @ weights + bias)))
    got = np.array([r.features["clip_b16_pub_prob"] for r in results])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert all(set(r.features) == {"clip_b16_pub_prob"} for r in results) and len(set(got.round(6))) > 1

    path.write_text(json.dumps({"weights": weights[:8].tolist(), "bias": bias}))
    with pytest.raises(ValueError, match=r"shape \(8,\) \(configured backbone gives 16-d image_embeds\)"):
        create_detector(
            "clip_b16",
            {
                "backbone": tiny_clip,
                "published_head": str(path),
                "published_head_sha256": None,
                "published_head_archive_sha256": None,
            },
        )


@pytest.mark.parametrize("model,calibration", [("logreg", "sigmoid"), ("linear_svm", "isotonic")])
def test_head_fits_calibrates_and_round_trips(model, calibration, tmp_path):
    X, y = separable()
    X_test, y_test = separable(n=40, seed=1)
    head = EmbeddingHead(model=model, calibration=calibration, cv=3, backbone_id=HF_ID)
    assert head.fit(X, y) is head and head.coef_.shape == (16,) and head.n_features_in_ == 16
    probs = head.predict_proba(X_test)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert ((probs >= 0) & (probs <= 1)).all() and np.mean(head.predict(X_test) == y_test) >= 0.95

    X_val, y_val = separable(n=30, seed=2)
    with_val = EmbeddingHead(model=model, calibration=calibration, backbone_id=HF_ID).fit(X, y, X_val, y_val)
    assert np.mean(with_val.predict(X_test) == y_test) >= 0.95

    path = head.save(tmp_path / "head.npz", metadata={"n_train": 60})
    with np.load(path, allow_pickle=False) as data:  # plain arrays: loadable with pickle disabled
        assert {"mean", "scale", "coef", "intercept", "calib_x", "calib_y", "schema"} == set(data.files)
    loaded = EmbeddingHead.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), probs)
    assert loaded.get_params() == head.get_params() and loaded.metadata_ == {"n_train": 60}


def test_head_refuses_bad_training_data():
    X, y = separable(n=10)
    with pytest.raises(ValueError, match="0 real, 10 AI"):
        EmbeddingHead().fit(X, np.ones(10, dtype=int))
    with pytest.raises(ValueError, match="labels must be 0"):
        EmbeddingHead().fit(X, y + 1)


@pytest.mark.parametrize("kind", ["image_embeds", "cls"])
def test_detector_with_a_trained_head(tiny_clip, embedder, images, kind, tmp_path, no_network):
    results = embedder.predict(images)
    X = _embeddings(results, "embedding" if kind == "image_embeds" else "cls")
    head = EmbeddingHead(cv=2, backbone_id=tiny_clip, embedding_kind=kind).fit(X, np.array([0, 0, 1, 1, 0]))
    path = head.save(tmp_path / f"{kind}.npz")
    detector = create_detector("clip_b16", {"backbone": tiny_clip, "head": str(path), **NO_PUBLISHED})
    for result, p in zip(detector.predict(images), head.predict_proba(X)[:, 1]):
        assert result.features == {"clip_b16_prob": pytest.approx(float(p), abs=1e-6)}
        assert "embedding" not in result.details and "P(AI)" in result.evidence[0]
    assert "head=sha256:" in detector.version


@pytest.mark.parametrize("kind", ["cls", "cls_layers"])
def test_head_features_from_cached_embeddings_equal_the_detectors_own(tiny_clip, kind, images, tmp_path, no_network):
    """train clip-head caches the new head's features from the embeddings it computed: same numbers as running
    the detector, under the version the fusion's feature extraction looks up."""
    import pyarrow as pa
    import yaml

    from deployments.data import load_outcome_cache
    from models.fusion import DetectorOutcome
    from training.train_clip_head import cache_head_features

    detector_settings = {"backbone": tiny_clip, "head": "elsewhere.npz", "cls_layers": [0, 1], **NO_PUBLISHED}
    embedder = create_detector("clip_b16", {**detector_settings, "head": None, "return_embedding": True})
    embedded = [DetectorOutcome.from_result("clip_b16", r, embedder.version, 1.0) for r in embedder.predict(images)]
    X = _embeddings(embedder.predict(images), kind)
    layers = [0, 1] if kind == "cls_layers" else None
    head = EmbeddingHead(cv=2, backbone_id=tiny_clip, embedding_kind=kind, layers=layers)
    path = head.fit(X, np.array([0, 0, 1, 1, 0])).save(tmp_path / "head.npz")
    config = tmp_path / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "applications": [
                    {
                        "name": "x",
                        "import_path": "serve_app.app:build_app",
                        "args": {"detectors": [{"name": "clip_b16"}]},
                        "deployments": [{"name": "clip_b16", "user_config": {"detector": detector_settings}}],
                    }
                ]
            }
        )
    )
    table = pa.table(
        {"key": [f"k{i}" for i in range(len(images))], "outcome.clip_b16": [o.to_json() for o in embedded]}
    )
    assert cache_head_features(table, config, path, tmp_path / "cache") == len(images)

    detector = create_detector("clip_b16", {**detector_settings, "head": str(path)})
    cached = load_outcome_cache(tmp_path / "cache", "clip_b16", detector.version)
    for i, result in enumerate(detector.predict(images)):
        outcome = DetectorOutcome.from_json(cached[f"k{i}"])
        assert outcome.version == detector.version and outcome.status == "ok"
        assert outcome.result.features == pytest.approx(result.features, abs=1e-6)
        assert outcome.result.evidence == result.evidence


def test_detector_refuses_a_head_for_another_embedding(tiny_clip, tiny_onnx, tmp_path, no_network):
    y = separable(n=20)[1]
    onnx_id = create_detector(
        "clip_b16", {"backbone": str(tiny_onnx["int8"]), "return_embedding": True, **NO_PUBLISHED}
    ).backbone_id
    cases = [
        ({"backbone_id": HF_ID}, 16, f"backbone '{HF_ID}' (configured: '{tiny_clip}')"),
        ({"backbone_id": onnx_id}, 16, f"backbone '{onnx_id}' (configured: '{tiny_clip}')"),
        ({"backbone_id": tiny_clip}, 24, "embedding size 24 (configured backbone gives 16)"),
        ({"backbone_id": tiny_clip, "embedding_kind": "cls"}, 16, "embedding size 16 (configured backbone gives 64)"),
    ]
    for params, dim, problem in cases:
        path = EmbeddingHead(cv=2, **params).fit(separable(n=20, dim=dim)[0], y).save(tmp_path / f"{dim}.npz")
        with pytest.raises(ValueError, match="trained for a different embedding") as refused:
            create_detector("clip_b16", {"backbone": tiny_clip, "head": str(path), **NO_PUBLISHED})
        assert problem in str(refused.value)


def test_weight_sources(tiny_clip):
    sources = ClipB16Detector.weight_sources()
    assert [s.location for s in sources] == [f"hf://{HF_ID}", PUBLISHED_HEAD_LOCATION]
    assert sources[1].sha256 and sources[1].archive_sha256
    offline = ClipB16Detector.weight_sources({**OFFLINE_CONFIG, "head": "/models/h.npz", "head_sha256": "ab"})
    assert [(s.location, bool(s.sha256), bool(s.archive_sha256)) for s in offline] == [
        (ONNX_LOCATION, True, True),
        ("/models/h.npz", True, False),
        (PUBLISHED_HEAD_LOCATION, True, True),
    ]
    assert ClipB16Detector.weight_sources({"backbone": tiny_clip, **NO_PUBLISHED}) == []


# ---- the real INT8 file ----------------------------------------------------------------------------------------
def _real_detector(runtime: str) -> ClipB16Detector:
    try:
        return create_detector("clip_b16", {**OFFLINE_CONFIG, "runtime": runtime, "return_embedding": True})
    except WeightsUnavailable as err:
        pytest.skip(
            f"real clip_b16 weights not cached ({err}); run "
            "`imgverify weights fetch --config serve_config.local.yaml` first"
        )


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_real_int8_file_reproduces_its_reference(runtime, no_network):
    detector = _real_detector(runtime)
    reference = json.loads(REFERENCE.read_text())[runtime]
    image = decode_image(REAL_IMAGE.read_bytes())
    embeds = detector._embed(detector.preprocess(image))["image_embeds"]
    # Integer matmuls are exact, but float ops around them differ by CPU kernel (AVX2 / AVX-512 / ARM) and
    # library version: 1e-3 on unit-norm 512-d vectors is far below the 0.01-0.04 batch effects it guards.
    np.testing.assert_allclose(np.linalg.norm(embeds[0]), reference["image_embeds_norm"], rtol=1e-3)
    np.testing.assert_allclose(embeds[0][:16], reference["image_embeds_first16"], atol=2e-3)
    result = detector.predict([image])[0]
    assert _cos(np.array(result.details["embedding"]), np.array(reference["embedding"])) > 0.9999
    assert result.features["clip_b16_pub_prob"] == pytest.approx(reference["clip_b16_pub_prob"], abs=2e-3)


def test_real_file_cls_layers_agree_across_runtimes(no_network):
    """The shipped head reads layers 3, 5, 7, 9, 11: onnxruntime (extra graph outputs) and the rebuild (torch
    hidden states) give the same tokens up to activation rounding (measured per layer 0.97-0.998)."""
    _real_detector("onnxruntime")  # skips when the real file is not cached
    image = decode_image(REAL_IMAGE.read_bytes())
    layers = [3, 5, 7, 9, 11]
    tokens = {}
    for runtime in ("onnxruntime", "torch"):
        config = {**OFFLINE_CONFIG, "runtime": runtime, "return_embedding": True, "cls_layers": layers}
        tokens[runtime] = np.array(create_detector("clip_b16", config).predict([image])[0].details["cls_layers"])
    a, b = (tokens[r].reshape(len(layers), -1) for r in ("onnxruntime", "torch"))
    assert a.shape == (5, 768) and _cos(a, b).min() > 0.95


def write_reference(path: Path = REFERENCE) -> None:
    """Regenerate the reference from the real file: ``python tests/test_clip_b16.py``."""
    import onnxruntime
    import transformers

    image = decode_image(REAL_IMAGE.read_bytes())
    reference: dict = {
        "image": REAL_IMAGE.name,
        "onnx_sha256": OFFLINE_CONFIG["backbone_sha256"],
        "made_with": {
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    for runtime in ("onnxruntime", "torch"):
        detector = create_detector("clip_b16", {**OFFLINE_CONFIG, "runtime": runtime, "return_embedding": True})
        embeds = detector._embed(detector.preprocess(image))["image_embeds"]
        result = detector.predict([image])[0]
        reference[runtime] = {
            "image_embeds_norm": float(np.linalg.norm(embeds[0])),
            "image_embeds_first16": [float(v) for v in embeds[0][:16]],
            "embedding": [round(v, 7) for v in result.details["embedding"]],
            "cls_first16": [round(v, 7) for v in result.details["cls"][:16]],
            "clip_b16_pub_prob": result.features["clip_b16_pub_prob"],
        }
    path.write_text(json.dumps(reference, indent=1))


if __name__ == "__main__":
    sys.exit(write_reference())
