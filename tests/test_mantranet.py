"""ManTra-Net: published key layout, weights loading, shapes, features and batching on real images.

Everything runs a tiny randomly initialised configuration, except the layout test, which builds the
full configuration on the meta device (no memory, no weights) and compares it with the layout derived
from the PyTorch port's code (models/reference/mantranet_keys.json).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models import create_detector
from models.image_input import DecodedImage, decode_image
from models.mantranet import (
    ManTraNetDetector,
    bayar_constrained,
    box_mean,
    build_model,
    srm_kernels,
    symmetric_pad,
)

KEYS_JSON = Path(__file__).resolve().parents[1] / "models" / "reference" / "mantranet_keys.json"
TINY = {
    "random_init": True,
    "feature_widths": [8, 8, 12],
    "adaptation_channels": 6,
    "lstm_hidden": 3,
    "max_side": 128,
}
WIDE_PHOTO = "imagenet-real/real/n01798484_prairie_chicken.JPEG"  # 500x188 JPEG
TALL_PHOTO = "imagenet-real/real/n03272010_electric_guitar.JPEG"  # 320x685 JPEG
AI_IMAGE = "modern-matched/ai"  # 1280x720 JPEGs


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _crop(image: DecodedImage, height: int, width: int, top: int = 0, left: int = 0) -> DecodedImage:
    """A real crop, re-encoded losslessly and decoded the one supported way."""
    return decode_image(_png(np.ascontiguousarray(image.rgb[top : top + height, left : left + width])))


@pytest.fixture(scope="module")
def photos(data_set, fixtures) -> dict[str, DecodedImage]:
    imagenet_root = data_set("imagenet-real").parent
    ai_file = sorted((fixtures / AI_IMAGE).glob("*.jpg"))[0]  # the set's first, committed
    return {
        "wide": decode_image((imagenet_root / WIDE_PHOTO).read_bytes()),
        "tall": decode_image((imagenet_root / TALL_PHOTO).read_bytes()),
        "ai": decode_image(ai_file.read_bytes()),
    }


@pytest.fixture(scope="module")
def tiny() -> ManTraNetDetector:
    return create_detector("mantranet", dict(TINY))


def test_full_configuration_has_the_published_key_layout():
    reference = json.loads(KEYS_JSON.read_text())
    source = reference.pop("_source")
    assert "RonyAbecidan/ManTraNet-pytorch" in source["repo"] and len(source["commit"]) == 40
    with torch.device("meta"):
        model = build_model(ManTraNetDetector.default_config)
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == reference
    assert sum(math.prod(shape) for shape in ours.values()) == 3_805_625


def test_weights_saved_to_a_file_load_by_path_and_give_the_same_maps(tiny, photos, tmp_path, no_network):
    path = tmp_path / "tiny_mantranet.pt"
    torch.save(tiny.model.state_dict(), path)
    loaded = create_detector("mantranet", {**TINY, "random_init": False, "weights": str(path)})
    assert "sha256:" in loaded.version and loaded.version != tiny.version
    image = _crop(photos["wide"], 120, 160, top=30, left=200)
    ours, theirs = tiny.predict([image], artifacts=True)[0], loaded.predict([image], artifacts=True)[0]
    assert ours.ok and theirs.ok
    np.testing.assert_array_equal(ours.artifacts["mantra_heatmap"], theirs.artifacts["mantra_heatmap"])
    assert ours.features == theirs.features


def test_a_checkpoint_of_another_layout_is_refused_with_the_differences_named(tiny, tmp_path):
    state = dict(tiny.model.state_dict())
    del state["AnomalyDetector.sigma_F"]
    state["AnomalyDetector.conv_gru.cell_list.0.conv1.weight"] = torch.zeros(6, 9, 7, 7)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"1 missing keys \['AnomalyDetector.sigma_F'\].*1 unexpected keys"):
        create_detector("mantranet", {**TINY, "random_init": False, "weights": str(path)})
    # Same keys, full-size shapes: the tiny configuration refuses them too.
    with torch.device("meta"):
        full = build_model(ManTraNetDetector.default_config)
    wrong = {key: torch.zeros(value.shape) for key, value in full.state_dict().items()}
    torch.save(wrong, path)
    with pytest.raises(ValueError, match=r"shape mismatches"):
        create_detector("mantranet", {**TINY, "random_init": False, "weights": str(path)})


def test_bayar_kernels_are_constrained_when_loaded(tiny, tmp_path):
    state = dict(tiny.model.state_dict())
    raw = torch.rand(3, 3, 5, 5) + 0.1  # an unconstrained kernel in the file
    state["IMTFE.BayarConv2D.weight"] = raw
    path = tmp_path / "raw_bayar.pt"
    torch.save(state, path)
    loaded = create_detector("mantranet", {**TINY, "random_init": False, "weights": str(path)})
    kernel = loaded.model.IMTFE.BayarConv2D.weight.double()
    assert torch.all(kernel[..., 2, 2] == -1.0)
    off_centre = kernel.sum(dim=(2, 3)) - kernel[..., 2, 2]
    torch.testing.assert_close(off_centre, torch.ones(3, 3, dtype=torch.float64), atol=1e-6, rtol=0)
    # Proportional to the raw taps off the centre, and idempotent.
    ratio = kernel[0, 0, 0, 0] / kernel[0, 0, 4, 4]
    assert float(ratio) == pytest.approx(float(raw[0, 0, 0, 0] / raw[0, 0, 4, 4]), rel=1e-5)
    torch.testing.assert_close(bayar_constrained(kernel), kernel)


def test_srm_filters_are_the_fixed_high_pass_kernels(tiny):
    kernels = srm_kernels()
    np.testing.assert_array_equal(tiny.model.IMTFE.SRMConv2D.weight.numpy(), kernels.numpy())
    assert kernels.shape == (9, 3, 5, 5)
    # High-pass: each kernel removes a constant; channel 3k+c reads only colour c.
    assert torch.allclose(kernels.sum(dim=(1, 2, 3)), torch.zeros(9), atol=1e-6)
    assert float(kernels[4, 1, 2, 2]) == pytest.approx(-1.0)  # second kernel (-12/12) on green
    assert float(kernels[4, 0].abs().sum()) == 0.0


def test_symmetric_padding_and_box_mean_match_their_definitions():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    for pad in (1, 2, 5):  # 5 is wider than the image: mirrored again, as numpy does
        expected = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="symmetric")
        np.testing.assert_array_equal(symmetric_pad(x, pad).numpy(), expected)
    y = torch.randn(1, 3, 20, 37, generator=torch.Generator().manual_seed(0))
    for window in (7, 15, 31):
        direct = F.avg_pool2d(y, window, stride=1, padding=window // 2, count_include_pad=False)
        torch.testing.assert_close(box_mean(y, window), direct, atol=1e-5, rtol=1e-5)
    # A corner: the 31-box there covers rows 0..15 and columns 0..15 only.
    assert float(box_mean(y, 31)[0, 0, 0, 0]) == pytest.approx(float(y[0, 0, :16, :16].mean()), abs=1e-5)


def _reference_heatmap(state: dict[str, torch.Tensor], rgb: np.ndarray) -> np.ndarray:
    """ManTra-Net written out step by step from the port's description, straight from a state dict.

    Independent of models/mantranet.py's modules: numpy symmetric padding at every layer, 2-D average
    pooling, one standardisation, the ConvLSTM loop with Keras hard-sigmoid gates in i, f, c, o order.
    """

    def sym(t: torch.Tensor, pad: int) -> torch.Tensor:
        return torch.from_numpy(np.pad(t.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="symmetric"))

    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].double() / 255.0 * 2 - 1
    w = {key: value.double() for key, value in state.items()}
    x = sym(x, 2)
    h = torch.cat(
        [
            F.conv2d(x, w["IMTFE.init_conv.weight"]),
            F.conv2d(x, w["IMTFE.SRMConv2D.weight"]),
            F.conv2d(x, w["IMTFE.BayarConv2D.weight"]),
        ],
        1,
    ).relu()
    convs = sorted({int(k.split(".")[2]) for k in w if k.startswith("IMTFE.middle_and_last_block.")})
    for i, index in enumerate(convs):
        prefix = f"IMTFE.middle_and_last_block.{index}."
        h = F.conv2d(sym(h, 1), w[prefix + "weight"], w[prefix + "bias"])
        h = h.relu() if i < len(convs) - 1 else h
    h = h / h.norm(dim=1, keepdim=True)
    a = F.conv2d(h, w["AnomalyDetector.adaptation.weight"])
    a = (a - a.mean((2, 3), keepdim=True)) / (a.var((2, 3), unbiased=False, keepdim=True) + 1e-3).sqrt()
    sigma = torch.maximum(a.std((2, 3), unbiased=False, keepdim=True), w["AnomalyDetector.sigma_F"] + 1e-6)
    steps = [F.avg_pool2d(a, k, 1, k // 2, count_include_pad=False) for k in (7, 15, 31)]
    steps = [((m - a) / sigma).abs() for m in steps + [a.mean((2, 3), keepdim=True).expand_as(a)]]
    hidden_dim = w["AnomalyDetector.end.0.weight"].shape[1]
    hid = torch.zeros(1, hidden_dim, *a.shape[2:], dtype=torch.float64)
    cell = torch.zeros_like(hid)
    for step in steps:
        gates = F.conv2d(
            torch.cat([step, hid], 1),
            w["AnomalyDetector.conv_lstm.cell_list.0.conv.weight"],
            w["AnomalyDetector.conv_lstm.cell_list.0.conv.bias"],
            padding=3,
        )
        i, f, c, o = torch.split(gates, hidden_dim, dim=1)
        gate = lambda t: (0.2 * t + 0.5).clamp(0, 1)  # noqa: E731
        cell = gate(f) * cell + gate(i) * torch.tanh(c)
        hid = gate(o) * torch.tanh(cell)
    out = torch.sigmoid(F.conv2d(hid, w["AnomalyDetector.end.0.weight"], w["AnomalyDetector.end.0.bias"], padding=3))
    return out[0, 0].numpy()


def test_heatmap_equals_the_step_by_step_reference(tiny, photos):
    image = _crop(photos["wide"], 47, 66, top=60, left=150)
    ours = tiny.predict([image], artifacts=True)[0].artifacts["mantra_heatmap"]
    reference = _reference_heatmap(tiny.model.state_dict(), image.rgb)
    assert reference.std() > 1e-3  # a map with structure, so the comparison means something
    np.testing.assert_allclose(ours, reference, atol=2e-5)


@pytest.mark.parametrize("size", [(37, 91), (91, 37), (64, 64), (200, 300), (300, 200)])
def test_heatmap_has_the_image_size_and_features_summarise_it(tiny, photos, size):
    height, width = size
    image = _crop(photos["tall"], height, width, top=100)
    result = tiny.predict([image], artifacts=True)[0]
    assert result.ok, result.error
    heatmap = result.artifacts["mantra_heatmap"]
    assert heatmap.shape == (height, width) and heatmap.dtype == np.float32
    assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0 and heatmap.std() > 0
    assert set(result.features) == {"mantra_anomaly", "mantra_area"}
    working = tuple(result.details["working_size"])
    if max(size) <= TINY["max_side"]:
        # Network resolution = image resolution: the features are exactly these statistics of the map.
        assert working == size
        assert result.features["mantra_area"] == pytest.approx(float((heatmap > 0.5).mean()), abs=1e-12)
        top = np.sort(heatmap.ravel())[::-1][: math.ceil(0.01 * heatmap.size)]
        assert result.features["mantra_anomaly"] == pytest.approx(float(top.mean()), rel=1e-6)
    else:
        # Above max_side: the longer side is scaled to max_side and the map scaled back.
        assert max(working) == TINY["max_side"]
        assert working == (round(height * 128 / max(size)), round(width * 128 / max(size)))
        # The features summarise the network's own map; the artifact is that map resized bilinearly.
        small = tiny._forward([tiny.preprocess(image)])[0].heatmap
        assert small.shape == working
        assert result.features["mantra_area"] == pytest.approx(float((small > 0.5).mean()), abs=1e-12)
        resized = F.interpolate(torch.from_numpy(small)[None, None], size=size, mode="bilinear", align_corners=False)
        np.testing.assert_allclose(heatmap, resized[0, 0].numpy(), atol=1e-6)


def test_large_real_images_are_scaled_to_max_side_and_back(tiny, photos):
    results = tiny.predict([photos["ai"], photos["wide"]], artifacts=True)
    for result, image in zip(results, (photos["ai"], photos["wide"])):
        assert result.ok, result.error
        assert result.artifacts["mantra_heatmap"].shape == (image.height, image.width)
        assert max(result.details["working_size"]) == 128
        for name, value in result.features.items():
            spec = next(s for s in tiny.features if s.name == name)
            assert spec.low <= value <= spec.high
    assert results[0].details["working_size"] == [72, 128]  # 1280x720
    assert results[1].details["working_size"] == [48, 128]  # 500x188


def test_no_artifacts_unless_asked(tiny, photos):
    image = _crop(photos["wide"], 64, 80)
    plain, with_map = tiny.predict([image])[0], tiny.predict([image], artifacts=True)[0]
    assert plain.artifacts == {} and "mantra_heatmap" in with_map.artifacts
    assert plain.features == with_map.features


def test_a_batch_gives_what_each_image_gives_alone(tiny, photos):
    images = [
        _crop(photos["tall"], 90, 70, top=0),
        _crop(photos["wide"], 90, 70, top=50, left=300),  # same size as the first: run together
        _crop(photos["wide"], 60, 110, top=10, left=10),  # another size: its own group
        _crop(photos["tall"], 90, 70, top=400),
    ]
    batched = tiny.predict(images, artifacts=True)
    for image, together in zip(images, batched):
        alone = tiny.predict([image], artifacts=True)[0]
        np.testing.assert_allclose(together.artifacts["mantra_heatmap"], alone.artifacts["mantra_heatmap"], atol=1e-5)
        for name in alone.features:
            assert together.features[name] == pytest.approx(alone.features[name], abs=1e-5)
    # Different content, different maps: the batch did not mix images.
    assert not np.allclose(batched[0].artifacts["mantra_heatmap"], batched[1].artifacts["mantra_heatmap"])


def test_small_batch_pixel_budget_gives_the_same_result(photos):
    images = [_crop(photos["tall"], 50, 60, top=t) for t in (0, 100, 200)]
    one_at_a_time = create_detector("mantranet", {**TINY, "max_batch_pixels": 1})
    all_together = create_detector("mantranet", dict(TINY))
    for a, b in zip(one_at_a_time.predict(images), all_together.predict(images)):
        assert a.features == pytest.approx(b.features, abs=1e-5)


def test_images_smaller_than_min_side_are_skipped(tiny, photos):
    result = tiny.predict([_crop(photos["wide"], 20, 200)])[0]
    assert result.skipped and "32" in result.skipped and result.features == {}


def test_version_follows_weights_and_working_resolution():
    a = create_detector("mantranet", dict(TINY))
    b = create_detector("mantranet", {**TINY, "max_side": 96})
    assert a.version != b.version and "max_side=128" in a.version and "random_init" in a.version
    with pytest.raises(ValueError, match="unknown config keys"):
        create_detector("mantranet", {**TINY, "use_gru": True})
