"""CLIP detectors: prompt scoring maths, published probe heads, dimension checks, batching, offline loading.

Backbones are tiny random models built here and loaded through the same code path as real weights
(open_clip: a registered model config + ``pretrained=<checkpoint file>``; transformers: ``save_pretrained`` to a
folder loaded by path). The probe heads are the real published files from the shared data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_detector, get_detector_class, list_detectors
from models.clip_detector import (
    DEFAULT_AI_PROMPTS,
    DEFAULT_REAL_PROMPTS,
    RineHead,
    load_cues_head,
)
from models.image_input import DecodedImage, decode_image
from models.weights import WeightsUnavailable, load_state_dict

HEADS = Path("detector-heads")
UFD_HEAD = HEADS / "universalfakedetect" / "fc_weights.pth"
RINE_HEAD = HEADS / "rine" / "model_2class_trainable.pth"
CUES_LINEAR = HEADS / "clip-cues" / "checkpoints" / "linear_probe_combined.ckpt"
CUES_ORTHOGONAL = HEADS / "clip-cues" / "checkpoints" / "clip_orthogonal_synthclic.ckpt"
CUES_CONCEPT = HEADS / "clip-cues" / "checkpoints" / "cm_antonyms_combined.ckpt"

TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
TINY_VISION = {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}


# ---- tiny backbones ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory) -> dict[str, dict]:
    """Two registered open_clip configs (64-d and 768-d image embeddings) with random checkpoint files."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip")
    made = {}
    for name, embed_dim in (("imgverify-test-tiny", 64), ("imgverify-test-tiny-768", 768)):
        (folder / f"{name}.json").write_text(
            json.dumps({"embed_dim": embed_dim, "vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT})
        )
        open_clip.add_model_config(folder / f"{name}.json")
        torch.manual_seed(0)
        checkpoint = folder / f"{name}.pt"
        torch.save(open_clip.create_model(name).state_dict(), checkpoint)
        made[name] = {"model_name": name, "pretrained": str(checkpoint)}
    return made


@pytest.fixture(scope="module")
def tiny_hf_clip(tmp_path_factory) -> dict[int, str]:
    """HF CLIPVisionModel folders: hidden 1024 (what the clip-cues heads expect, kept cheap) and hidden 64."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    made = {}
    for hidden in (1024, 64):
        folder = tmp_path_factory.mktemp(f"hf_clip_{hidden}")
        torch.manual_seed(0)
        config = CLIPVisionConfig(
            hidden_size=hidden,
            num_hidden_layers=1,
            intermediate_size=64,
            num_attention_heads=4,
            image_size=336,
            patch_size=28,
        )
        CLIPVisionModel(config).save_pretrained(folder)
        CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(folder)
        made[hidden] = str(folder)
    return made


@pytest.fixture(scope="module")
def images(data_set) -> list[DecodedImage]:
    """Two real photos (both sides >= 224, for RINE) and two AI images, decoded the one supported way."""
    with open(data_set("imagenet-real") / "labels.csv", newline="") as handle:
        photos = [r["file"] for r in csv.DictReader(handle) if min(int(r["width"]), int(r["height"])) >= 256][:2]
    generated = sorted((data_set("early-generators-ai") / "ai").rglob("*.png"))[:2]
    paths = [data_set("imagenet-real") / p for p in photos] + generated
    return [decode_image(p.read_bytes()) for p in paths]


@pytest.fixture(scope="module")
def heads_root(data_set) -> Path:
    """The folder holding ``detector-heads/`` (the published head files, named as ``UFD_HEAD`` etc. give them)."""
    return data_set("detector-heads").parent


@pytest.fixture(scope="module")
def prompt_detector(tiny_open_clip):
    return create_detector("clip_h14", tiny_open_clip["imgverify-test-tiny"])


def _probability(result, feature: str) -> float:
    assert result.ok, result.error or result.skipped
    return result.features[feature]


# ---- registration -----------------------------------------------------------------------------------------
def test_all_variants_are_registered_with_one_score_each():
    expected = {
        "clip_h14": "clip_h14_prob",
        "clip_bigg": "clip_bigg_prob",
        "clip_probe_ufd": "clip_probe_ufd_prob",
        "clip_probe_cues": "clip_probe_cues_prob",
        "clip_probe_rine": "clip_probe_rine_prob",
    }
    assert set(expected) <= set(list_detectors())
    for name, feature in expected.items():
        cls = get_detector_class(name)
        assert [spec.name for spec in cls.features] == [feature]
        # P(AI)-shaped in [0, 1], but zero-shot softmaxes and published probes are not calibrated here: no
        # `probability` flag, so the explicit rule fusion never averages them as if they were.
        spec = cls.features[0]
        assert (spec.low, spec.high, spec.direction, spec.probability) == (0.0, 1.0, "ai_high", False)
    # Defaults point at the published backbones and heads.
    assert get_detector_class("clip_h14").default_config["pretrained"] == "laion2b_s32b_b79k"
    assert get_detector_class("clip_bigg").default_config["model_name"] == "ViT-bigG-14"
    assert get_detector_class("clip_probe_ufd").default_config["model_name"] == "ViT-L-14-quickgelu"
    assert get_detector_class("clip_probe_cues").default_config["model_name"] == "openai/clip-vit-large-patch14-336"


# ---- prompt scoring ---------------------------------------------------------------------------------------
def test_prompt_probability_matches_an_independent_computation(tiny_open_clip, prompt_detector, images, no_network):
    import open_clip

    tiny = tiny_open_clip["imgverify-test-tiny"]
    results = prompt_detector.predict(images)

    # The same model, loaded and used directly with open_clip's published transform and tokenizer.
    model, _, preprocess = open_clip.create_model_and_transforms(tiny["model_name"], pretrained=tiny["pretrained"])
    model.eval()
    tokenizer = open_clip.get_tokenizer(tiny["model_name"])
    with torch.no_grad():
        text = model.encode_text(tokenizer(DEFAULT_REAL_PROMPTS + DEFAULT_AI_PROMPTS))
        text = text / text.norm(dim=-1, keepdim=True)
        real = text[: len(DEFAULT_REAL_PROMPTS)].mean(0)
        ai = text[len(DEFAULT_REAL_PROMPTS) :].mean(0)
        classes = torch.stack([real / real.norm(), ai / ai.norm()])
        pixels = torch.stack([preprocess(image.to_pil()) for image in images])
        image = model.encode_image(pixels)
        image = image / image.norm(dim=-1, keepdim=True)
        expected = torch.softmax(model.logit_scale.exp() * image @ classes.T, dim=-1)[:, 1]
        best = (image @ text.T).argmax(dim=-1)

    prompts = DEFAULT_REAL_PROMPTS + DEFAULT_AI_PROMPTS
    for result, p_ai, best_index in zip(results, expected, best):
        assert _probability(result, "clip_h14_prob") == pytest.approx(float(p_ai), abs=1e-5)
        assert result.details["best_prompt"] == prompts[int(best_index)]
        assert result.details["best_prompt_class"] == ("real" if best_index < len(DEFAULT_REAL_PROMPTS) else "ai")
        assert prompts[int(best_index)] in result.evidence[0]
        assert result.hard_evidence == []
    json.dumps([r.details for r in results])  # details are JSON-serialisable


def test_custom_prompts_change_the_score_and_the_version(tiny_open_clip, images, no_network):
    tiny = tiny_open_clip["imgverify-test-tiny"]
    default = create_detector("clip_bigg", tiny)
    custom = create_detector(
        "clip_bigg", {**tiny, "real_prompts": ["a photo"], "ai_prompts": ["a painting", "a cartoon"]}
    )
    assert default.version != custom.version
    assert "prompts:" in custom.version and tiny["model_name"] in custom.version
    a = _probability(default.predict(images[:1])[0], "clip_bigg_prob")
    b = custom.predict(images[:1])[0]
    assert abs(a - _probability(b, "clip_bigg_prob")) > 1e-6
    assert b.details["best_prompt"] in {"a photo", "a painting", "a cartoon"}
    with pytest.raises(ValueError, match="at least one prompt"):
        create_detector("clip_bigg", {**tiny, "ai_prompts": []})


def test_prompt_scores_are_deterministic_and_batch_equals_single(prompt_detector, images, no_network):
    detector = prompt_detector
    batch = [_probability(r, "clip_h14_prob") for r in detector.predict(images)]
    again = [_probability(r, "clip_h14_prob") for r in detector.predict(images)]
    single = [_probability(detector.predict([image])[0], "clip_h14_prob") for image in images]
    assert batch == again
    np.testing.assert_allclose(batch, single, atol=1e-5)
    assert all(0.0 < p < 1.0 for p in batch)


def test_preprocessing_is_the_published_open_clip_transform(prompt_detector, images):
    detector = prompt_detector
    pixels = detector.preprocess(images[0])
    assert pixels.shape == (3, 64, 64) and pixels.dtype == torch.float32
    cfg = detector.backbone.visual.preprocess_cfg
    assert cfg["interpolation"] == "bicubic" and cfg["resize_mode"] == "shortest"
    assert tuple(cfg["mean"]) == (0.48145466, 0.4578275, 0.40821073)


# ---- UniversalFakeDetect ------------------------------------------------------------------------------------
def test_ufd_real_head_on_a_768_d_backbone(tiny_open_clip, images, heads_root, no_network):
    tiny = tiny_open_clip["imgverify-test-tiny-768"]
    config = {**tiny, "head_weights": str(heads_root / UFD_HEAD)}  # the pinned sha256 stays checked
    detector = create_detector("clip_probe_ufd", config)
    results = detector.predict(images)

    # sigmoid(fc(encode_image(x))): features NOT normalised before the fc, as in UFD's CLIPModel.forward.
    state = load_state_dict(str(heads_root / UFD_HEAD))
    with torch.no_grad():
        pixels = torch.stack([detector.preprocess(image) for image in images])
        logits = detector.backbone.visual(pixels) @ state["weight"].T + state["bias"]
    for result, logit in zip(results, logits[:, 0]):
        assert _probability(result, "clip_probe_ufd_prob") == pytest.approx(float(torch.sigmoid(logit)), abs=1e-5)
        assert result.details["logit"] == pytest.approx(float(logit), abs=1e-3)
    assert "ufd:sha256:47710074571" in detector.version


def test_ufd_head_is_refused_on_a_backbone_of_another_size(tiny_open_clip, heads_root, no_network):
    config = {**tiny_open_clip["imgverify-test-tiny"], "head_weights": str(heads_root / UFD_HEAD)}
    with pytest.raises(ValueError, match=r"expects 768-d features but backbone imgverify-test-tiny produces 64-d"):
        create_detector("clip_probe_ufd", config)


def test_head_checksum_and_missing_head_are_refused(tiny_open_clip, heads_root, no_network):
    tiny = tiny_open_clip["imgverify-test-tiny-768"]
    with pytest.raises(WeightsUnavailable, match="does not match sha256"):
        create_detector("clip_probe_ufd", {**tiny, "head_weights": str(heads_root / UFD_HEAD), "head_sha256": "0" * 64})
    with pytest.raises(ValueError, match="needs `head_weights`"):
        create_detector("clip_probe_ufd", {**tiny, "head_weights": None})
    with pytest.raises(ValueError, match="unknown config keys"):
        create_detector("clip_probe_ufd", {**tiny, "real_prompts": ["a photo"]})


# ---- clip-cues -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("checkpoint,kind", [(CUES_LINEAR, "linear_probe"), (CUES_ORTHOGONAL, "clip_orthogonal")])
def test_cues_real_heads_on_a_1024_d_backbone(tiny_hf_clip, images, heads_root, checkpoint, kind, no_network):
    from transformers import CLIPVisionModel

    config = {"model_name": tiny_hf_clip[1024], "head_weights": str(heads_root / checkpoint), "head_sha256": None}
    detector = create_detector("clip_probe_cues", config)
    results = detector.predict(images[:2])
    assert detector.head_variant == kind
    # A local backbone folder is identified by its weights, the head by its file.
    assert f"{tiny_hf_clip[1024]}@sha256:" in detector.version and "clip_cues:sha256:" in detector.version

    # pooler_output -> the checkpoint's own layers, written out by hand -> sigmoid.
    state = load_state_dict(str(heads_root / checkpoint), key="state_dict")
    model = CLIPVisionModel.from_pretrained(tiny_hf_clip[1024]).eval()
    with torch.no_grad():
        pixels = torch.stack([detector.preprocess(image) for image in images[:2]])
        pooled = model(pixel_values=pixels).pooler_output
        prefix = "model.classification_head."
        if kind == "linear_probe":
            logits = pooled @ state[prefix + "fc.weight"].T + state[prefix + "fc.bias"]
        else:
            hidden = pooled @ state[prefix + "layers.0.weight"].T + state[prefix + "layers.0.bias"]
            logits = hidden @ state[prefix + "to_logits.weight"].T + state[prefix + "to_logits.bias"]
    assert pixels.shape == (2, 3, 336, 336)
    for result, logit in zip(results, logits[:, 0]):
        p = _probability(result, "clip_probe_cues_prob")
        assert 0.0 < p < 1.0
        assert p == pytest.approx(float(torch.sigmoid(logit)), abs=1e-5)


def test_cues_head_is_refused_on_a_small_backbone_and_concept_models_are_refused(tiny_hf_clip, heads_root, no_network):
    config = {"model_name": tiny_hf_clip[64], "head_weights": str(heads_root / CUES_LINEAR), "head_sha256": None}
    with pytest.raises(ValueError, match=r"expects 1024-d features but backbone .* produces 64-d"):
        create_detector("clip_probe_cues", config)
    with pytest.raises(ValueError, match="only linear_probe"):
        load_cues_head(load_state_dict(str(heads_root / CUES_CONCEPT), key="state_dict"))


def test_cues_batch_equals_single(tiny_hf_clip, images, heads_root, no_network):
    config = {"model_name": tiny_hf_clip[1024], "head_weights": str(heads_root / CUES_ORTHOGONAL), "head_sha256": None}
    detector = create_detector("clip_probe_cues", config)
    batch = [_probability(r, "clip_probe_cues_prob") for r in detector.predict(images)]
    single = [_probability(detector.predict([image])[0], "clip_probe_cues_prob") for image in images]
    np.testing.assert_allclose(batch, single, atol=1e-5)


# ---- RINE ---------------------------------------------------------------------------------------------------
def test_real_rine_checkpoint_loads_strictly_into_the_head(heads_root):
    head = RineHead.from_state_dict(load_state_dict(str(heads_root / RINE_HEAD)))
    assert head.alpha.shape == (1, 24, 128)  # 24 blocks of ViT-L/14
    assert head.proj1[1].in_features == 1024 and len(head.proj1) == 1 + 3 * 4  # nproj=4, proj_dim=128
    with torch.no_grad():
        logit = head.eval()(torch.zeros(2, 24, 1024))
    assert logit.shape == (2, 1) and torch.isfinite(logit).all()


def test_rine_real_head_is_refused_on_a_small_backbone(tiny_open_clip, heads_root, no_network):
    config = {**tiny_open_clip["imgverify-test-tiny"], "head_weights": str(heads_root / RINE_HEAD)}
    with pytest.raises(ValueError, match=r"expects 1024-d features but backbone imgverify-test-tiny produces 64-d"):
        create_detector("clip_probe_rine", config)


@pytest.fixture(scope="module")
def tiny_rine_head(tmp_path_factory) -> str:
    """A random head shaped for the tiny backbone: 2 blocks of width 64, nproj 2, proj_dim 16."""
    torch.manual_seed(1)
    head = RineHead(in_dim=64, n_layers=2, nproj=2, proj_dim=16)
    torch.nn.init.normal_(head.alpha)
    path = tmp_path_factory.mktemp("rine") / "tiny_rine.pth"
    torch.save(head.state_dict(), path)
    return str(path)


def test_rine_uses_the_cls_token_after_every_ln_2(tiny_open_clip, tiny_rine_head, images, no_network):
    config = {**tiny_open_clip["imgverify-test-tiny"], "head_weights": tiny_rine_head, "head_sha256": None}
    detector = create_detector("clip_probe_rine", config)
    pixels = torch.stack([detector.preprocess(image) for image in images])
    # RINE's test transform: centre crop to the input size, no resize.
    top, left = (images[0].height - 64) // 2, (images[0].width - 64) // 2
    crop = torch.from_numpy(images[0].rgb[top : top + 64, left : left + 64]).permute(2, 0, 1).float() / 255
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    torch.testing.assert_close(pixels[0], (crop - mean) / std, atol=1e-5, rtol=0)

    # The blocks run by hand: x + attn(ln_1(x)), record ln_2(x)[:, 0] (the CLS token), then x + mlp(ln_2(x)).
    visual = detector.backbone.visual
    with torch.no_grad():
        tokens = detector.backbone.layer_cls_tokens(pixels)
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.expand(x.shape[0], 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
        expected = []
        for block in visual.transformer.resblocks:
            x = x + block.attention(block.ln_1(x))
            expected.append(block.ln_2(x)[:, 0])
            x = x + block.mlp(block.ln_2(x))
    assert tokens.shape == (len(images), 2, 64)
    torch.testing.assert_close(tokens, torch.stack(expected, dim=1), atol=1e-5, rtol=0)

    results = detector.predict(images)
    head = RineHead.from_state_dict(torch.load(tiny_rine_head, weights_only=True)).eval()
    with torch.no_grad():
        expected_p = torch.sigmoid(head(tokens))[:, 0]
    for result, p in zip(results, expected_p):
        assert _probability(result, "clip_probe_rine_prob") == pytest.approx(float(p), abs=1e-5)
    single = [_probability(detector.predict([image])[0], "clip_probe_rine_prob") for image in images]
    np.testing.assert_allclose([r.features["clip_probe_rine_prob"] for r in results], single, atol=1e-5)


def test_rine_skips_images_smaller_than_its_crop(tiny_open_clip, tiny_rine_head, images, make_image, no_network):
    config = {**tiny_open_clip["imgverify-test-tiny"], "head_weights": tiny_rine_head, "head_sha256": None}
    detector = create_detector("clip_probe_rine", config)
    small = decode_image(make_image(size=(200, 300)))
    results = detector.predict([small, images[0]])
    assert results[0].skipped and "224" in results[0].skipped and results[0].features == {}
    assert results[1].ok


def test_input_dtype_follows_open_clip_mixed_precision(tiny_open_clip):
    """On CUDA the backbone runs in open_clip's fp16 mode; inputs must match the conv, not class_embedding."""
    import open_clip

    from models.clip_detector import input_dtype

    tiny = tiny_open_clip["imgverify-test-tiny"]
    model, _ = open_clip.create_model_from_pretrained(
        tiny["model_name"], pretrained=tiny["pretrained"], precision="fp16"
    )
    assert model.visual.class_embedding.dtype == torch.float32
    assert input_dtype(model.visual) == torch.float16
    with torch.inference_mode():
        features = model.encode_image(torch.zeros(1, 3, 64, 64, dtype=input_dtype(model.visual)))
    assert features.shape == (1, 64) and torch.isfinite(features.float()).all()
