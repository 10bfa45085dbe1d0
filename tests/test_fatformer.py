"""FatFormer: official checkpoint layout, Haar DWT, preprocessing, strict loading and batched scoring.

Everything runs on tiny random models built here (same code as the full model); the full ViT-L/14 configuration
is only built on the meta device, to compare its state-dict keys and shapes with the official reference list.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import create_detector
from models.fatformer import (
    FULL_ARCHITECTURE,
    CheckpointMismatch,
    FatFormer,
    HaarDWT,
    HaarIDWT,
    resolve_architecture,
)
from models.image_input import decode_image
from models.weights import WeightsUnavailable

REFERENCE_KEYS = Path(__file__).resolve().parents[1] / "models" / "reference" / "fatformer_keys.json"

# Same network, tiny sizes: 32 px crop, 8x8 patch grid, 4 blocks with adapters after blocks 1 and 3.
TINY = {
    "image_size": 32,
    "patch_size": 4,
    "vision_width": 32,
    "vision_layers": 4,
    "vision_heads": 2,
    "embed_dim": 32,
    "text_width": 32,
    "text_layers": 1,
    "text_heads": 2,
    "context_length": 16,
    "adapter_count": 2,
    "adapter_bottleneck": 8,
    "adapter_heads": 2,
    "adapter_groups": 4,
    "prompt_context_tokens": 4,
    "lga_heads": 2,
}
TINY_RESIZE = 36


def build_tiny(arch_overrides: dict | None = None, seed: int = 7) -> FatFormer:
    torch.manual_seed(seed)
    model = FatFormer(resolve_architecture({**TINY, **(arch_overrides or {})})).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("freq_scale"):
                param.fill_(0.5)  # the official init is 0, which would hide the wavelet branch from these tests
    return model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny model saved the way the official training script saves: {"model": state_dict, "args": Namespace}."""
    path = tmp_path_factory.mktemp("fatformer") / "tiny_ckpt.pth"
    torch.save({"model": build_tiny().state_dict(), "args": argparse.Namespace(num_vit_adapter=2)}, path)
    return path


@pytest.fixture(scope="module")
def tiny_detector(tiny_checkpoint):
    return create_detector(
        "fatformer", {"weights": str(tiny_checkpoint), "architecture": TINY, "resize_size": TINY_RESIZE}
    )


@pytest.fixture(scope="module")
def real_images(shared_data) -> list:
    paths = (
        sorted((shared_data / "imagenet-real").rglob("*.JPEG"))[:2]
        + sorted((shared_data / "early-generators-ai").rglob("*.png"))[:1]
        + sorted((shared_data / "modern-matched" / "ai").glob("*.jpg"))[:1]
    )
    assert len(paths) == 4
    return [decode_image(path.read_bytes()) for path in paths]


# ---- architecture vs the official checkpoint layout ------------------------------------------------------------


def test_full_configuration_has_the_official_keys_and_shapes():
    reference = json.loads(REFERENCE_KEYS.read_text())
    source = reference.pop("_source")
    with torch.device("meta"):
        model = FatFormer(FULL_ARCHITECTURE)
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == reference
    assert len(ours) == source["tensors"] == 1116
    assert sum(int(np.prod(shape)) for shape in ours.values()) == source["elements"] == 933_160_936
    adapters = sorted({int(k.split(".")[4]) for k in ours if k.startswith("clip_model.visual") and "adapter" in k})
    assert adapters == [7, 15, 23]


def test_token_ids_and_tied_modules():
    model = build_tiny()
    # "X X X X real." -> <sot> x x x x real . <eot>: the end-of-text token sits at index 1 + 4 + 2 = 7.
    assert model.eot_index == [7, 7]
    assert model.image_encoder is model.clip_model.visual
    assert model.text_encoder.transformer is model.clip_model.transformer
    assert model.logit_scale is model.clip_model.logit_scale


# ---- Haar DWT ---------------------------------------------------------------------------------------------------


def test_haar_dwt_matches_hand_computed_values():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    low, high = HaarDWT()(x)
    # For [[a, b], [c, d]]: LL=(a+b+c+d)/2, then (a+b-c-d)/2, (a-b+c-d)/2, (a-b-c+d)/2.
    assert low.flatten().tolist() == pytest.approx([5.0], abs=1e-6)
    assert high.flatten().tolist() == pytest.approx([-2.0, -1.0, 0.0], abs=1e-6)


def test_haar_dwt_odd_size_pads_one_zero_at_the_end():
    # pytorch_wavelets' mode "zero": a 3x3 input is filtered as 4x4 with a zero last row and column.
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    low, high = HaarDWT()(x)
    assert low.shape == (1, 1, 2, 2) and high.shape == (1, 1, 3, 2, 2)
    expected_low = [[6.0, 4.5], [7.5, 4.5]]
    expected_high = [[[-3.0, -1.5], [7.5, 4.5]], [[-1.0, 4.5], [-0.5, 4.5]], [[0.0, -1.5], [-0.5, 4.5]]]
    assert torch.allclose(low[0, 0], torch.tensor(expected_low), atol=1e-6)
    assert torch.allclose(high[0, 0], torch.tensor(expected_high), atol=1e-6)


def test_haar_dwt_is_orthonormal_and_inverts():
    # The filters are float32 (like pytorch_wavelets' buffers): 1/sqrt(2) carries a ~1e-8 relative rounding.
    x = torch.randn(2, 5, 16, 12)
    low, high = HaarDWT()(x)
    assert (low.square().sum() + high.square().sum()).item() == pytest.approx(x.square().sum().item(), rel=1e-5)
    restored = HaarIDWT()(low, high)
    assert restored.shape == x.shape
    assert (restored - x).abs().max().item() < 1e-5


# ---- preprocessing ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector_224():
    """Random tiny network at the official input size (224 crop of a 256 square resize)."""
    return create_detector(
        "fatformer", {"random_init": True, "architecture": {**TINY, "image_size": 224, "patch_size": 28}}
    )


def test_preprocess_is_the_official_transform(detector_224, real_images):
    from torchvision import transforms

    official = transforms.Compose(
        [
            transforms.Resize((256, 256)),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    for image in real_images[:2]:
        ours = detector_224.preprocess(image)
        assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
        assert torch.allclose(ours, official(image.to_pil()), atol=1e-6)


def test_preprocess_normalises_with_imagenet_mean_and_std(detector_224):
    grey = Image.new("RGB", (300, 200), (128, 64, 255))
    buffer = __import__("io").BytesIO()
    grey.save(buffer, format="PNG")
    tensor = detector_224.preprocess(decode_image(buffer.getvalue()))
    expected = (np.array([128, 64, 255]) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    assert tensor.mean(dim=(1, 2)).tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert tensor.std(dim=(1, 2)).max().item() < 1e-5


# ---- loading and scoring ----------------------------------------------------------------------------------------


def test_tiny_checkpoint_loads_strictly_and_scores_real_images(tiny_checkpoint, tiny_detector, real_images):
    with torch.serialization.safe_globals([argparse.Namespace]):
        saved = torch.load(tiny_checkpoint, weights_only=True, map_location="cpu")["model"]
    loaded = tiny_detector.model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)
    assert hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()[:16] in tiny_detector.version

    results = tiny_detector.predict(real_images)
    probs = [r.features["fatformer_prob"] for r in results]
    assert all(r.ok for r in results)
    assert all(0.0 < p < 1.0 for p in probs)
    assert max(probs) - min(probs) > 1e-4  # the score depends on the image

    # Independently: the official torchvision transform, the network, softmax column 1 ("fake").
    from torchvision import transforms

    official = transforms.Compose(
        [
            transforms.Resize((TINY_RESIZE, TINY_RESIZE)),
            transforms.CenterCrop(TINY["image_size"]),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    model = build_tiny()
    with torch.no_grad():
        logits = model(torch.stack([official(image.to_pil()) for image in real_images]))
    assert probs == pytest.approx(logits.softmax(dim=1)[:, 1].tolist(), abs=1e-5)
    assert results[0].details["logits"]["fake"] == pytest.approx(logits[0, 1].item(), abs=1e-4)


def test_batch_equals_single(tiny_detector, real_images):
    batch = tiny_detector.predict(real_images)
    for image, together in zip(real_images, batch):
        alone = tiny_detector.predict([image])[0]
        assert alone.features["fatformer_prob"] == pytest.approx(together.features["fatformer_prob"], abs=1e-6)
        assert np.allclose(list(alone.details["logits"].values()), list(together.details["logits"].values()), atol=1e-5)


def test_too_small_image_is_skipped(tiny_detector, shared_data):
    stubs = [decode_image(p.read_bytes()) for p in sorted((shared_data / "generator-metadata").rglob("*.png"))]
    stub = next(image for image in stubs if image.width < 64)  # metadata fixtures cropped to 1x1
    result = tiny_detector.predict([stub])[0]
    assert result.skipped and "needs a side of 64" in result.skipped and not result.features


# ---- refusing what does not fit ---------------------------------------------------------------------------------


def test_checkpoint_with_other_keys_is_refused(tmp_path):
    state = build_tiny().state_dict()
    state.pop("language_guided_alignment.ctx")
    state["language_guided_alignment.patch_based_enhancer.in_proj_weight"] = state.pop(
        "language_guided_alignment.patch_basaed_enhancer.in_proj_weight"
    )
    path = tmp_path / "renamed.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatch) as err:
        create_detector("fatformer", {"weights": str(path), "architecture": TINY})
    message = str(err.value)
    assert "2 missing keys" in message and "language_guided_alignment.ctx" in message
    assert "1 unexpected keys" in message and "patch_based_enhancer.in_proj_weight" in message


def test_checkpoint_of_another_size_is_refused(tmp_path):
    path = tmp_path / "wider.pth"
    torch.save({"model": build_tiny({"adapter_bottleneck": 16}).state_dict()}, path)
    with pytest.raises(CheckpointMismatch, match=r"first_conv_layer.weight \(16, 32, 1\) vs \(8, 32, 1\)"):
        create_detector("fatformer", {"weights": str(path), "architecture": TINY})


class NotATensor:
    """Any pickled object beyond tensors and containers must not be unpickled."""


def test_checkpoint_with_arbitrary_objects_is_not_unpickled(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"model": build_tiny().state_dict(), "extra": NotATensor()}, path)
    with pytest.raises(pickle.UnpicklingError):
        create_detector("fatformer", {"weights": str(path), "architecture": TINY})


def test_missing_weights_name_the_config_key():
    with pytest.raises(WeightsUnavailable, match="'weights' is not set"):
        create_detector("fatformer", {"architecture": TINY})
    with pytest.raises(ValueError, match="either 'weights' or 'random_init'"):
        create_detector("fatformer", {"weights": "x.pth", "random_init": True, "architecture": TINY})
    with pytest.raises(ValueError, match="unknown keys"):
        create_detector("fatformer", {"random_init": True, "architecture": {"depth": 3}})


def test_random_init_is_seeded_and_says_so(detector_224, real_images):
    again = create_detector(
        "fatformer", {"random_init": True, "architecture": {**TINY, "image_size": 224, "patch_size": 28}}
    )
    first, second = detector_224.predict(real_images[:1])[0], again.predict(real_images[:1])[0]
    assert first.features["fatformer_prob"] == second.features["fatformer_prob"]
    assert "random-init" in detector_224.version
    assert "random weights" in first.evidence[0]
