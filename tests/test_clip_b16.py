"""clip_b16: the ONNX rebuild, the HF production path, the heads (trained and published), the real INT8 file.

The backbones are tiny random ``CLIPVisionModelWithProjection``s built here: saved with ``save_pretrained`` (the
production path loads ``openai/clip-vit-base-patch16`` the same way), and exported to ONNX then quantised with
``onnxruntime.quantization.quantize_dynamic`` (per channel, MatMul only: the same kind of graph as the real file,
MatMulInteger + DynamicQuantizeLinear with an fp32 Conv). The real file is used when ``imgverify weights fetch``
has cached it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models import create_detector, feature_schema
from models.clip_b16 import (
    FP32_EXPORT,
    HF_ID,
    OFFLINE_CONFIG,
    ONNX_LOCATION,
    PUBLISHED_HEAD_LOCATION,
    ClipB16Detector,
    EmbeddingHead,
    clip_from_onnx,
    clip_pixels,
    current_backbone_id,
    native_crops,
)
from models.image_input import DecodedImage, decode_image
from models.weights import WeightsUnavailable, derive_weights, file_sha256

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
    """De-quantised weights, fp32 activations: the fp32 model to within weight rounding, and the INT8 graph in
    onnxruntime to within its activation rounding besides."""
    import onnxruntime as ort

    x = _pixels(images)
    rebuilt = clip_from_onnx(tiny_onnx["int8"])
    with torch.no_grad():
        ours = rebuilt(pixel_values=torch.from_numpy(x))
        fp32 = tiny_model()(pixel_values=torch.from_numpy(x))
    session = ort.InferenceSession(str(tiny_onnx["int8"]), providers=["CPUExecutionProvider"])
    runs = [session.run(None, {"pixel_values": x[i : i + 1]}) for i in range(len(x))]
    ort_embeds, ort_cls = np.concatenate([r[0] for r in runs]), np.concatenate([r[1][:, 0] for r in runs])
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


# ---- precision: fp32 in both runtimes, int8 in onnxruntime -----------------------------------------------------
KINDS = {"image_embeds": "embedding", "cls": "cls", "cls_layers": "cls_layers"}


def _all_kinds(results) -> dict[str, np.ndarray]:
    return {kind: _embeddings(results, key) for kind, key in KINDS.items()}


def test_fp32_runtimes_agree_to_float_precision(tiny_onnx, images, no_network):
    """precision fp32: onnxruntime on the fp32 export and torch on the rebuild give one function, to float
    rounding, for every kind (cls_layers from the export's graph outputs and from torch's hidden states), in one
    backbone_id; onnxruntime runs the whole batch at once."""
    config = {"backbone": str(tiny_onnx["int8"]), "return_embedding": True, "cls_layers": [0, 1], **NO_PUBLISHED}
    fast = create_detector("clip_b16", {**config, "runtime": "onnxruntime"})
    rebuilt = create_detector("clip_b16", {**config, "runtime": "torch"})
    assert fast.backbone_id == rebuilt.backbone_id and fast.backbone_id.endswith(":fp32")
    assert "runtime=onnxruntime/fp32" in fast.version and "runtime=torch/fp32" in rebuilt.version
    auto = create_detector("clip_b16", config)  # auto on CPU: onnxruntime, at the default precision fp32
    assert (auto.runtime, auto.precision, auto.backbone_id) == ("onnxruntime", "fp32", fast.backbone_id)
    a, b = _all_kinds(fast.predict(images)), _all_kinds(rebuilt.predict(images))
    assert {k: v.shape for k, v in a.items()} == {"image_embeds": (5, 16), "cls": (5, 64), "cls_layers": (5, 128)}
    for kind in KINDS:
        np.testing.assert_allclose(a[kind], b[kind], atol=1e-5, err_msg=kind)
    np.testing.assert_allclose(a["cls_layers"][:, 64:], a["cls"], atol=1e-6)  # layer 1 is the last
    # A whole batch per run: an image alone gives its batch numbers to float rounding.
    np.testing.assert_allclose(_embeddings(fast.predict(images[:1])), a["image_embeds"][:1], atol=1e-6)
    with pytest.raises(ValueError, match="has no node '/vision_model/encoder/layers.5/Add_1'"):
        create_detector("clip_b16", {**config, "cls_layers": [5], "runtime": "onnxruntime"})


def test_int8_is_the_graph_as_built_in_onnxruntime_on_cpu(tiny_onnx, images, no_network):
    """precision int8: the INT8 graph in onnxruntime, one image per run (a batch neighbour never changes an
    image's embedding), close to fp32 (activation rounding) but not the same backbone; refused where it cannot run."""
    config = {"backbone": str(tiny_onnx["int8"]), "return_embedding": True, "cls_layers": [0, 1], **NO_PUBLISHED}
    int8 = create_detector("clip_b16", {**config, "precision": "int8"})
    fp32 = create_detector("clip_b16", {**config, "runtime": "torch"})
    assert int8.backbone_id == fp32.backbone_id.removesuffix(":fp32") + ":int8"
    assert (int8.runtime, int8.precision) == ("onnxruntime", "int8") and "runtime=onnxruntime/int8" in int8.version
    a, b = _all_kinds(int8.predict(images)), _all_kinds(fp32.predict(images))
    np.testing.assert_array_equal(a["image_embeds"][:1], _embeddings(int8.predict(images[:1])))
    # Each layer's output read out of the INT8 graph: close to the rebuild's, as its last-layer CLS token is.
    assert _cos(a["cls_layers"].reshape(5, 2, 64), b["cls_layers"].reshape(5, 2, 64)).min() > 0.95
    assert _cos(a["image_embeds"], b["image_embeds"]).min() > 0.98
    assert np.abs(a["image_embeds"] - b["image_embeds"]).max() > 1e-3  # not the same function
    plain = create_detector("clip_b16", {**config, "precision": "int8", "cls_layers": []})
    np.testing.assert_array_equal(_embeddings(plain.predict(images)), a["image_embeds"])

    refusals = [
        ({"precision": "int8", "runtime": "torch"}, "cpu", "precision 'int8' is the ONNX graph as built"),
        ({"precision": "int8"}, "cuda", "precision 'int8' is the ONNX graph as built"),
        ({"runtime": "onnxruntime"}, "cuda", "runtime 'onnxruntime' runs on CPU only"),
        ({"precision": "fp16"}, "cpu", "precision must be one of"),
    ]
    for settings, device, message in refusals:
        with pytest.raises(ValueError, match=message):
            ClipB16Detector({**config, **settings}, device=device)


def _tiny_int8_copy(tiny_onnx, folder: Path) -> Path:
    """The tiny INT8 file alone in ``folder``: its derived fp32 export is made there afresh."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(tiny_onnx["int8"], folder / "clip.int8.onnx"))


def test_fp32_export_is_made_once_recorded_and_reused(tiny_onnx, tmp_path, no_network):
    """The export is cached beside the INT8 file, named by its sha256, with a record; a second load finds it
    (same file, not written again); a truncated or unrecorded file is made again, never read."""
    source = _tiny_int8_copy(tiny_onnx, tmp_path / "cache")
    sha = file_sha256(source)
    target = source.parent / f"{FP32_EXPORT.name}-{sha[:16]}.onnx"
    config = {"backbone": str(source), "return_embedding": True, **NO_PUBLISHED}
    first = create_detector("clip_b16", config)
    record = json.loads(target.with_name(target.name + ".json").read_text())
    assert (record["recipe"], record["source_sha256"]) == (FP32_EXPORT.name, sha)
    assert (record["sha256"], record["bytes"]) == (file_sha256(target), target.stat().st_size)
    assert record["made_with"]["torch"] == torch.__version__
    made = target.stat()

    second = create_detector("clip_b16", config)
    assert (target.stat().st_ino, target.stat().st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    assert derive_weights(source, sha, FP32_EXPORT).status == "cached"
    np.testing.assert_array_equal(
        second._embed(np.zeros((1, 3, 32, 32), np.float32))["cls"],
        first._embed(np.zeros((1, 3, 32, 32), np.float32))["cls"],
    )

    whole = target.read_bytes()
    target.write_bytes(whole[: len(whole) // 2])  # truncated: the record's size and sha256 no longer match
    assert derive_weights(source, sha, FP32_EXPORT).status == "made"
    assert target.stat().st_size == record["bytes"]
    target.with_name(target.name + ".json").unlink()  # a file without its record is not trusted either
    assert derive_weights(source, sha, FP32_EXPORT).status == "made"
    assert derive_weights(source, sha, FP32_EXPORT).status == "cached"
    assert [p.name for p in source.parent.iterdir() if p.name.endswith(".part")] == []  # no temporary file left


def test_weights_fetch_makes_the_fp32_export(tiny_onnx, tmp_path, capsys, no_network):
    """``imgverify weights fetch`` makes the export for a config at precision fp32 in onnxruntime (or auto), so
    the service's first load finds it; none at int8 or in torch."""
    from serve_app import weights_cli

    source = _tiny_int8_copy(tiny_onnx, tmp_path / "cache")
    config = {"backbone": str(source), **NO_PUBLISHED}
    sources = [("clip_b16", s) for s in ClipB16Detector.weight_sources(config)]
    outcomes = weights_cli.fetch_all(sources)
    assert [(o.status, o.derivation) for o in outcomes] == [("local", None), ("made", FP32_EXPORT)]
    export = outcomes[1].path
    assert export.parent == source.parent and outcomes[1].sha256 == file_sha256(export)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"clip_b16  {source} => {FP32_EXPORT.name}  {export}  sha256:{file_sha256(export)[:12]}  made"
    assert weights_cli.summary(outcomes).splitlines()[0] == "2 sources: 0 fetched, 0 cached, 1 local, 1 made, 0 failed"
    assert [o.status for o in weights_cli.fetch_all(sources)] == ["local", "cached"]
    for settings in ({"precision": "int8"}, {"runtime": "torch"}):
        assert [s.derived for s in ClipB16Detector.weight_sources({**config, **settings})] == [()]


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
    with pytest.raises(ValueError, match="an HF backbone is fp32; precision 'int8' is for an ONNX file"):
        create_detector("clip_b16", {"backbone": tiny_clip, "precision": "int8", "return_embedding": True})


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


def test_novelty_is_the_share_of_validation_images_nearer_the_training_ones(tmp_path):
    """A head fitted with a reference keeps a projected sample of its training rows; novelty is where an
    embedding's distance to them falls among the validation images' distances: about uniform for new images like
    the training ones, 1 for images from elsewhere. It survives saving, and a head without it reports none."""
    rng = np.random.default_rng(0)
    X, X_val, X_new = rng.normal(size=(600, 40)), rng.normal(size=(300, 40)), rng.normal(size=(300, 40))
    y, y_val = (X[:, 0] > 0).astype(int), (X_val[:, 0] > 0).astype(int)
    head = EmbeddingHead(C=1.0, reference=400).fit(X, y, X_val=X_val, y_val=y_val)
    assert head.reference_.shape == (400, 64) and head.reference_.dtype == np.float16
    alike = head.novelty(X_new)
    assert 0.4 < np.median(alike) < 0.6 and 0.02 < np.mean(alike >= 0.95) < 0.1  # 5% of such images by construction
    elsewhere = head.novelty(X_new + 3.0)  # shifted: a distribution the head never saw
    assert np.mean(elsewhere >= 0.95) > 0.95
    loaded = EmbeddingHead.load(head.save(tmp_path / "head.npz"))
    assert np.allclose(loaded.novelty(X_new + 3.0), elsewhere) and np.allclose(loaded.novelty(X_new), alike, atol=0.01)
    assert EmbeddingHead(C=1.0).fit(X, y, X_val=X_val, y_val=y_val).novelty(X_new) is None


def test_detector_reports_novelty_as_context(tiny_clip, embedder, images, tmp_path, no_network):
    results = embedder.predict(images)
    X = _embeddings(results, "cls")
    head = EmbeddingHead(cv=2, backbone_id=tiny_clip, embedding_kind="cls", reference=5)
    head = head.fit(X, np.array([0, 0, 1, 1, 0]), X_val=X, y_val=np.array([0, 0, 1, 1, 0]))
    detector = create_detector(
        "clip_b16", {"backbone": tiny_clip, "head": str(head.save(tmp_path / "h.npz")), **NO_PUBLISHED}
    )
    for result, novelty in zip(detector.predict(images), head.novelty(X)):
        assert result.features["clip_b16_novelty"] == pytest.approx(float(novelty), abs=1e-6)
    assert feature_schema(["clip_b16"])["clip_b16_novelty"].fusion_input is False


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
                        "args": {"detectors": [{"name": "clip_b16"}], "fusion": {"model": "rule"}},
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


def test_a_head_belongs_to_its_precision_not_its_runtime(tiny_onnx, images, tmp_path, no_network):
    """A head trained on fp32 embeddings scores in both fp32 runtimes, with the same probabilities, and is refused
    at int8, and the other way round, naming both ids. Heads from before ``precision`` named the runtime, which
    fixed the arithmetic: ``:onnxruntime`` loads at int8 only, ``:torch`` at fp32 only."""
    config = {"backbone": str(tiny_onnx["int8"]), **NO_PUBLISHED}
    runs = {
        "onnxruntime/fp32": {"runtime": "onnxruntime"},
        "torch/fp32": {"runtime": "torch"},
        "onnxruntime/int8": {"precision": "int8"},
    }
    embedders = {
        name: create_detector("clip_b16", {**config, **s, "return_embedding": True}) for name, s in runs.items()
    }
    labels = np.array([0, 0, 1, 1, 0])

    def head_for(name: str, backbone_id: str | None = None) -> Path:
        X = _embeddings(embedders[name].predict(images))
        head = EmbeddingHead(cv=2, backbone_id=backbone_id or embedders[name].backbone_id).fit(X, labels)
        return head.save(tmp_path / f"{len(list(tmp_path.iterdir()))}.npz")

    def probs(name: str, head: Path) -> np.ndarray:
        detector = create_detector("clip_b16", {**config, **runs[name], "head": str(head)})
        return np.array([r.features["clip_b16_prob"] for r in detector.predict(images)])

    def refused(name: str, head: Path) -> str:
        with pytest.raises(ValueError, match="trained for a different embedding") as refusal:
            create_detector("clip_b16", {**config, **runs[name], "head": str(head)})
        return str(refusal.value)

    fp32_id, int8_id = embedders["torch/fp32"].backbone_id, embedders["onnxruntime/int8"].backbone_id
    fp32_head = head_for("torch/fp32")
    expected = EmbeddingHead.load(fp32_head).predict_proba(_embeddings(embedders["torch/fp32"].predict(images)))
    np.testing.assert_allclose(probs("torch/fp32", fp32_head), expected[:, 1], atol=1e-6)
    np.testing.assert_allclose(probs("onnxruntime/fp32", fp32_head), expected[:, 1], atol=1e-5)
    assert f"backbone '{fp32_id}' (configured: '{int8_id}')" in refused("onnxruntime/int8", fp32_head)
    int8_head = head_for("onnxruntime/int8")
    assert 0 <= probs("onnxruntime/int8", int8_head).min()
    for name in ("onnxruntime/fp32", "torch/fp32"):
        assert f"backbone '{int8_id}' (configured: '{fp32_id}')" in refused(name, int8_head)

    stem = fp32_id.removesuffix(":fp32")
    legacy_int8 = head_for("onnxruntime/int8", f"{stem}:onnxruntime")
    assert current_backbone_id(f"{stem}:onnxruntime") == int8_id
    np.testing.assert_allclose(probs("onnxruntime/int8", legacy_int8), probs("onnxruntime/int8", int8_head))
    assert f"backbone '{stem}:onnxruntime' (configured: '{fp32_id}')" in refused("torch/fp32", legacy_int8)
    legacy_fp32 = head_for("torch/fp32", f"{stem}:torch")
    np.testing.assert_allclose(probs("onnxruntime/fp32", legacy_fp32), expected[:, 1], atol=1e-5)
    assert f"backbone '{stem}:torch' (configured: '{int8_id}')" in refused("onnxruntime/int8", legacy_fp32)


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
    assert [s.derived for s in offline] == [(FP32_EXPORT,), (), ()]  # precision fp32, runtime auto: the export
    assert ClipB16Detector.weight_sources({"backbone": tiny_clip, **NO_PUBLISHED}) == []


# ---- the real INT8 file ----------------------------------------------------------------------------------------
REAL_LAYERS = [3, 5, 7, 9, 11]  # the local profile's cls_layers


def _real_detector(**settings: Any) -> ClipB16Detector:
    """The real file's detector (fp32 in onnxruntime unless ``settings`` say otherwise); the test is skipped when the
    file is not cached. The first fp32 onnxruntime load makes its fp32 export (about a minute), later ones find it."""
    try:
        return create_detector("clip_b16", {**OFFLINE_CONFIG, "return_embedding": True, **settings})
    except WeightsUnavailable as err:
        pytest.skip(
            f"real clip_b16 weights not cached ({err}); run "
            "`imgverify weights fetch --config serve_config.local.yaml` first"
        )


@pytest.mark.parametrize("runtime,precision", [("onnxruntime", "int8"), ("onnxruntime", "fp32"), ("torch", "fp32")])
def test_real_file_reproduces_its_reference(runtime, precision, no_network):
    """Against numbers written by ``python tests/test_clip_b16.py`` (int8: onnxruntime; fp32: torch)."""
    detector = _real_detector(runtime=runtime, precision=precision)
    reference = json.loads(REFERENCE.read_text())[precision]
    image = decode_image(REAL_IMAGE.read_bytes())
    embeds = detector._embed(detector.preprocess(image))["image_embeds"]
    # Float ops differ by CPU kernel (AVX2 / AVX-512 / ARM) and library version; in INT8 they can flip a rounding
    # tie: 1e-3 on unit-norm 512-d vectors is far below the 0.01-0.04 batch effects it guards.
    np.testing.assert_allclose(np.linalg.norm(embeds[0]), reference["image_embeds_norm"], rtol=1e-3)
    np.testing.assert_allclose(embeds[0][:16], reference["image_embeds_first16"], atol=2e-3)
    result = detector.predict([image])[0]
    assert _cos(np.array(result.details["embedding"]), np.array(reference["embedding"])) > 0.9999
    assert result.features["clip_b16_pub_prob"] == pytest.approx(reference["clip_b16_pub_prob"], abs=2e-3)


def test_real_file_fp32_runtimes_agree(images, no_network):
    """The two fp32 runtimes on the real file: the same embeddings, every kind and each of the local profile's
    cls_layers (cosine > 0.9999; measured 1.0000 on 60 test items, bench/clip_b16_runtimes.py), on real images."""
    items = [decode_image(REAL_IMAGE.read_bytes()), images[2]]  # a photo and an AI image
    found = {}
    for runtime in ("onnxruntime", "torch"):
        detector = _real_detector(runtime=runtime, cls_layers=REAL_LAYERS)
        found[runtime] = _all_kinds(detector.predict(items))
    a, b = found["onnxruntime"], found["torch"]
    assert a["cls_layers"].shape == (2, 5 * 768)
    for kind in ("image_embeds", "cls"):
        assert _cos(a[kind], b[kind]).min() > 0.9999, kind
    per_layer = _cos(a["cls_layers"].reshape(2, 5, 768), b["cls_layers"].reshape(2, 5, 768))
    assert per_layer.min() > 0.9999, per_layer


def test_real_file_committed_head_keeps_to_its_precision(images, no_network):
    """The committed head (models/weights/clip_b16_head.npz) scores at the precision it was trained for and is
    refused at the other. Trained on INT8 embeddings (id ``...:onnxruntime``), it loads at int8 only; once
    retrained on fp32 embeddings, in both fp32 runtimes, with the same probabilities."""
    head = Path(__file__).resolve().parents[1] / "models" / "weights" / "clip_b16_head.npz"
    if not head.exists():
        pytest.skip(f"{head} not here")
    trained = current_backbone_id(EmbeddingHead.load(head).backbone_id).rpartition(":")[2]
    other = {"int8": "fp32", "fp32": "int8"}[trained]
    items = [decode_image(REAL_IMAGE.read_bytes()), *images[:2]]
    settings = {"cls_layers": REAL_LAYERS, "head": str(head), "return_embedding": False, **NO_PUBLISHED}
    runtimes = ["onnxruntime"] if trained == "int8" else ["onnxruntime", "torch"]
    probs = {}
    for runtime in runtimes:
        detector = _real_detector(runtime=runtime, precision=trained, **settings)
        probs[runtime] = np.array([r.features["clip_b16_prob"] for r in detector.predict(items)])
    assert all(((0 <= p) & (p <= 1)).all() for p in probs.values())
    if len(probs) == 2:
        assert np.abs(probs["onnxruntime"] - probs["torch"]).max() < 1e-3
    with pytest.raises(ValueError, match=f"backbone '[^']*' \\(configured: 'onnx:sha256:[0-9a-f]{{16}}:{other}'\\)"):
        _real_detector(precision=other, **settings)


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
    for precision, runtime in (("int8", "onnxruntime"), ("fp32", "torch")):
        config = {**OFFLINE_CONFIG, "precision": precision, "runtime": runtime, "return_embedding": True}
        detector = create_detector("clip_b16", config)
        embeds = detector._embed(detector.preprocess(image))["image_embeds"]
        result = detector.predict([image])[0]
        reference[precision] = {
            "runtime": runtime,
            "image_embeds_norm": float(np.linalg.norm(embeds[0])),
            "image_embeds_first16": [float(v) for v in embeds[0][:16]],
            "embedding": [round(v, 7) for v in result.details["embedding"]],
            "cls_first16": [round(v, 7) for v in result.details["cls"][:16]],
            "clip_b16_pub_prob": result.features["clip_b16_pub_prob"],
        }
    path.write_text(json.dumps(reference, indent=1))


if __name__ == "__main__":
    sys.exit(write_reference())
