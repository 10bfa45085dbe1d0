"""ManTra-Net: a per-pixel map of *local* image manipulation (splicing, copy-move, removal, enhancement).

Wu, AbdAlmageed, Natarajan, "ManTra-Net: Manipulation Tracing Network for Detection and Localization of
Image Forgeries With Anomalous Features", CVPR 2019 (official Keras code: github.com/ISICV/ManTraNet).

This is our own PyTorch code, written to load the published PyTorch state dict ``MantraNetv4.pt`` of the
port github.com/RonyAbecidan/ManTraNet-pytorch (``MantraNet/mantranet.py``) without renaming a key: module
attribute names (``IMTFE``, ``AnomalyDetector``, ``middle_and_last_block``, ``conv_lstm.cell_list``, ...)
are the port's. ``models/reference/mantranet_keys.json`` lists that layout, derived from the port's code.

The network, as the port computes it:

1. **Trace feature extractor** (``IMTFE``), full resolution throughout (no pooling or stride):
   input ``x / 255 * 2 - 1`` (RGB in [-1, 1]); symmetric padding (mirror including the edge pixel, as
   TensorFlow's ``mode='symmetric'``) before every convolution; a first 5x5 layer of 16 channels =
   4 free filters + 9 fixed SRM high-pass filters (3 kernels x 3 colour channels) + 3 Bayar-constrained
   filters (centre -1, other taps sum to 1); ReLU; eleven 3x3 convolutions with ReLU (VGG-style widths
   32, 64, 64, 128, 128, 128, 256 x 5) and a last 3x3 convolution without activation; L2 normalisation
   over channels.
2. **Local anomaly detector** (``AnomalyDetector``): 1x1 "adaptation" to 64 channels; standardisation per
   channel with the statistics of the image itself (the port's ``batch_norm``, eps 1e-3, no learned
   statistics: the Keras model's moving averages are not in the PyTorch checkpoint); Z-scores
   ``|mean_k(x) - x| / sigma`` for box windows k = 7, 15, 31 (average pooling that counts only pixels inside
   the image) and for the global mean, where sigma is the global standard deviation floored by the learned
   ``sigma_F`` (+1e-6); these four maps are read, in that order, by a one-layer ConvLSTM (8 channels, 7x7,
   Keras hard sigmoid gates, not a ConvGRU: the published checkpoint is the ConvLSTM variant); a 7x7
   convolution and a sigmoid give the heatmap.

Deviation from the port, with the reason: the port computes the standardisation statistics over the
whole batch; here they are computed per image, which is what the port does for its (single-image)
inference and keeps every image's result independent of its batch mates.

Serving choices: images are scaled down (never up) so that the longer side is at most ``max_side`` --
ManTra-Net has no downsampling, so its cost grows with the pixel count (about 4 GMAC per 1000 pixels) --
and the heatmap is scaled back to the image size. Scaling down resamples away some of the traces the
network looks for, so ``max_side`` trades sensitivity for cost. Batches are grouped by working size
(no padding: symmetric padding at the borders and the per-image statistics would change with padding).
fp16 on CUDA for the feature extractor; the L2 normalisation and the whole anomaly head (standardisation,
Z-scores, ConvLSTM) stay in fp32.

ManTra-Net detects local manipulation: regions whose traces differ from the rest of the image. A fully
generated image is "uniform" to it, so its scores are evidence of editing, not of generation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.base import Detector, DetectorResult
from models.image_input import DecodedImage
from models.registry import register_detector
from models.schema import entry_of, features_of
from models.weights import WeightSource, file_sha256, load_state_dict, resolve_weights

CODE_VERSION = "1"
# The port's published checkpoint (state dict of its MantraNet(), ConvLSTM variant).
PUBLISHED_WEIGHTS = "https://raw.githubusercontent.com/RonyAbecidan/ManTraNet-pytorch/main/MantraNet/MantraNetv4.pt"
# Output widths of the twelve 3x3 convolutions of the feature extractor (the port's middle_and_last_block).
FULL_FEATURE_WIDTHS = (32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 256)
WINDOW_SIZES = (7, 15, 31)  # local windows of the Z-score features, as in the port (and Keras [7, 15, 31])
STANDARDISE_EPS = 1e-3  # the port's batch_norm eps (Keras BatchNormalization default)
SIGMA_EPS = 1e-6  # the port's eps added to the learned sigma floor
HEATMAP_THRESHOLD = 0.5  # a pixel counts as "manipulated" above this heatmap value
TOP_FRACTION = 0.01  # mantra_anomaly is the mean of this top fraction of the heatmap


# ---------------------------------------------------------------------------------------------------------
# Fixed filters and small operations
# ---------------------------------------------------------------------------------------------------------
def srm_kernels() -> torch.Tensor:
    """The 9 fixed SRM filters, shape (9, 3, 5, 5): each of 3 high-pass kernels applied to each colour.

    Output channel ``3 * kernel + colour`` reads only input channel ``colour``: the order of the Keras
    original's ``_build_SRM_kernel`` (which the port's ``SRMConv2D.weight`` holds, transposed to PyTorch).
    """
    srm1 = np.zeros((5, 5), np.float32)
    srm1[1:-1, 1:-1] = np.array([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]]) / 4.0
    srm2 = (
        np.array(
            [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]],
            np.float32,
        )
        / 12.0
    )
    srm3 = np.zeros((5, 5), np.float32)
    srm3[2, 1:-1] = np.array([1, -2, 1]) / 2.0
    kernel = np.zeros((9, 3, 5, 5), np.float32)
    for k, srm in enumerate((srm1, srm2, srm3)):
        for colour in range(3):
            kernel[3 * k + colour, colour] = srm
    return torch.from_numpy(kernel)


def bayar_constrained(weight: torch.Tensor) -> torch.Tensor:
    """Bayar & Stamm's constraint per (output, input) kernel: centre tap -1, the other taps sum to 1.

    The port re-applies this to ``BayarConv2D.weight`` at every forward pass; it is idempotent, so applying
    it once at load gives the same kernels. Computed in float64 so fp16 deployment gets exact kernels.
    """
    kernel = weight.detach().to(torch.float64).clone()
    centre_row, centre_col = kernel.shape[-2] // 2, kernel.shape[-1] // 2
    kernel[..., centre_row, centre_col] = 0.0
    kernel = kernel / kernel.sum(dim=(-2, -1), keepdim=True)
    kernel[..., centre_row, centre_col] = -1.0
    return kernel.to(weight.dtype)


def _symmetric_index(size: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a 1-D symmetric padding (edge pixel repeated, then mirrored), valid for any ``size >= 1``."""
    index = torch.arange(-pad, size + pad, device=device).remainder(2 * size)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def symmetric_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two dimensions like ``numpy.pad(mode='symmetric')`` / TF ``mode='symmetric'``."""
    if pad == 1:
        return F.pad(x, (1, 1, 1, 1), mode="replicate")  # identical for one pixel, and a single fast op
    rows = _symmetric_index(x.shape[-2], pad, x.device)
    cols = _symmetric_index(x.shape[-1], pad, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window`` x ``window`` box around each pixel, counting only pixels inside the image.

    Equal to ``avg_pool2d(x, window, 1, window // 2, count_include_pad=False)`` (the port's pooling), done as
    two 1-D passes: the clipped box is a rectangle, so its sum and its pixel count both factor by axis.
    """
    half = window // 2
    x = F.avg_pool2d(x, (window, 1), stride=1, padding=(half, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, window), stride=1, padding=(0, half), count_include_pad=False)


def keras_hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras's hard sigmoid, clip(0.2 x + 0.5, 0, 1) (PyTorch's hardsigmoid uses x / 6 instead)."""
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------
# The network (attribute names are the port's, so its state dict loads unchanged)
# ---------------------------------------------------------------------------------------------------------
class TraceFeatureExtractor(nn.Module):
    """Image Manipulation Trace Feature Extractor (the port's ``IMTFE``): (B, 3, H, W) in [-1, 1] -> unit features."""

    def __init__(self, feature_widths: tuple[int, ...] = FULL_FEATURE_WIDTHS):
        super().__init__()
        self.init_conv = nn.Conv2d(3, 4, 5, bias=False)  # free filters
        self.BayarConv2D = nn.Conv2d(3, 3, 5, bias=False)  # constrained at load (bayar_constrained)
        self.SRMConv2D = nn.Conv2d(3, 9, 5, bias=False)  # fixed SRM filters (stored in the checkpoint)
        self.SRMConv2D.weight.requires_grad_(False)
        layers: list[nn.Module] = []
        in_channels = 4 + 9 + 3
        for index, width in enumerate(feature_widths):
            if index:
                layers.append(nn.ReLU(inplace=True))  # ReLU between convolutions, none after the last
            layers.append(nn.Conv2d(in_channels, width, 3))
            in_channels = width
        self.middle_and_last_block = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = symmetric_pad(x, 2)
        # Concatenation order as in the Keras CombinedConv2D and the port: free, SRM, Bayar.
        h = torch.cat([self.init_conv(x), self.SRMConv2D(x), self.BayarConv2D(x)], dim=1).relu_()
        for layer in self.middle_and_last_block:
            if isinstance(layer, nn.Conv2d):
                h = symmetric_pad(h, 1)  # rebinding frees the unpadded map before the convolution runs
            h = layer(h)
        # In fp32: in fp16 the sum of 256 squares overflows for activations above ~16.
        return F.normalize(h.float(), p=2.0, dim=1)


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step; one convolution over [input, hidden] gives the i, f, candidate, o gates (Keras order)."""

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(input_dim + hidden_dim, 4 * hidden_dim, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate_in, gate_forget, candidate, gate_out = self.conv(torch.cat([x, hidden], dim=1)).chunk(4, dim=1)
        cell = keras_hard_sigmoid(gate_forget) * cell + keras_hard_sigmoid(gate_in) * torch.tanh(candidate)
        hidden = keras_hard_sigmoid(gate_out) * torch.tanh(cell)
        return hidden, cell


class ConvLSTM(nn.Module):
    """A one-layer ConvLSTM returning the last hidden state; the cell sits in ``cell_list`` as in the port."""

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int = 7):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.cell_list = nn.ModuleList([ConvLSTMCell(input_dim, hidden_dim, kernel_size)])

    def forward(self, sequence: list[torch.Tensor]) -> torch.Tensor:
        batch, _, height, width = sequence[0].shape
        hidden = sequence[0].new_zeros(batch, self.hidden_dim, height, width)
        cell = torch.zeros_like(hidden)
        for step in sequence:
            hidden, cell = self.cell_list[0](step, hidden, cell)
        return hidden


class LocalAnomalyDetector(nn.Module):
    """Local anomaly detection network (the port's ``AnomalyDetector``): features -> heatmap logits -> sigmoid."""

    def __init__(self, in_channels: int = 256, channels: int = 64, lstm_hidden: int = 8):
        super().__init__()
        self.adaptation = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.sigma_F = nn.Parameter(torch.zeros(1, channels, 1, 1))  # learned floor of the global std
        self.conv_lstm = ConvLSTM(channels, lstm_hidden, 7)
        self.end = nn.Sequential(nn.Conv2d(lstm_hidden, 1, 7, padding=3), nn.Sigmoid())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.adaptation(features)
        # Standardise each channel with this image's own statistics (see the module docstring).
        mean = x.mean(dim=(2, 3), keepdim=True)
        variance = (x - mean).square().mean(dim=(2, 3), keepdim=True)
        x = (x - mean) / torch.sqrt(variance + STANDARDISE_EPS)
        # Z-scores of the deviation from local and global means, in units of the global std.
        global_mean = x.mean(dim=(2, 3), keepdim=True)
        sigma = (x - global_mean).square().mean(dim=(2, 3), keepdim=True).sqrt()
        sigma = torch.maximum(sigma, self.sigma_F + SIGMA_EPS)
        sequence = [(box_mean(x, window) - x).abs() / sigma for window in WINDOW_SIZES]
        sequence.append((global_mean - x).abs() / sigma)
        return self.end(self.conv_lstm(sequence))


class ManTraNet(nn.Module):
    """The whole network: (B, 3, H, W) RGB in 0..255 -> (B, H, W) heatmap in [0, 1]."""

    def __init__(
        self,
        feature_widths: tuple[int, ...] = FULL_FEATURE_WIDTHS,
        adaptation_channels: int = 64,
        lstm_hidden: int = 8,
    ):
        super().__init__()
        self.IMTFE = TraceFeatureExtractor(tuple(feature_widths))
        self.AnomalyDetector = LocalAnomalyDetector(feature_widths[-1], adaptation_channels, lstm_hidden)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = rgb.float() / 255.0 * 2.0 - 1.0  # the port's normalisation: [0, 255] -> [-1, 1]
        features = self.IMTFE(x.to(self.IMTFE.init_conv.weight.dtype))
        return self.AnomalyDetector(features)[:, 0]


def build_model(config: dict[str, Any]) -> ManTraNet:
    """The architecture described by ``config`` (weights uninitialised in meaning: load or randomise next)."""
    return ManTraNet(
        feature_widths=tuple(int(w) for w in config["feature_widths"]),
        adaptation_channels=int(config["adaptation_channels"]),
        lstm_hidden=int(config["lstm_hidden"]),
    )


def randomise(model: ManTraNet, seed: int = 0) -> None:
    """Deterministic random weights for tests and benchmarks; the fixed parts (SRM) get their real values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim > 1:
                fan_in = parameter[0].numel()
                bound = math.sqrt(6.0 / fan_in)  # He-uniform, so activations neither vanish nor explode
                parameter.copy_((torch.rand(parameter.shape, generator=generator) * 2 - 1) * bound)
            elif name.endswith("bias"):
                parameter.zero_()
        extractor = model.IMTFE
        extractor.SRMConv2D.weight.copy_(srm_kernels())
        # Positive raw taps, so each Bayar kernel's normalising sum is far from zero.
        extractor.BayarConv2D.weight.copy_(torch.rand(extractor.BayarConv2D.weight.shape, generator=generator))
        model.AnomalyDetector.sigma_F.fill_(0.0)


# ---------------------------------------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    pixels: torch.Tensor  # (3, h, w) uint8 at the working resolution
    original_size: tuple[int, int]  # (H, W) of the decoded image


@dataclass
class _Heatmap:
    heatmap: np.ndarray  # (h, w) float32 in [0, 1] at the working resolution
    original_size: tuple[int, int]


def working_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) with the longer side at most ``max_side``; never enlarged."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def top_fraction_mean(values: np.ndarray, fraction: float) -> float:
    """Mean of the largest ``ceil(fraction * n)`` values (at least one)."""
    flat = values.reshape(-1)
    count = max(1, math.ceil(fraction * flat.size))
    return float(np.partition(flat, flat.size - count)[flat.size - count :].mean())


@register_detector
class ManTraNetDetector(Detector):
    """ManTra-Net heatmap of local manipulation, with two scalar summaries of it."""

    name = "mantranet"
    features = features_of(name)
    default_config: dict[str, Any] = {
        "weights": PUBLISHED_WEIGHTS,  # path, http(s) URL or hf://repo/file of a state dict in the port's layout
        "weights_sha256": None,  # optional checksum of the weights file
        "max_side": 1024,  # longer side of the working resolution (images are only scaled down)
        "max_batch_pixels": 4 * 1024 * 1024,  # images of one size are run together up to this many pixels
        "random_init": False,  # tests and benchmarks only: seeded random weights, nothing is loaded
        # Architecture; change only for tiny test models (the published weights need the defaults).
        "feature_widths": list(FULL_FEATURE_WIDTHS),
        "adaptation_channels": 64,
        "lstm_hidden": 8,
    }
    # Below the largest local window the local Z-scores collapse onto the global one.
    min_side = 32
    has_artifacts = entry_of(name).has_artifacts

    @classmethod
    def weight_sources(cls, config: dict[str, Any] | None = None) -> list[WeightSource]:
        """The configured state dict (by default the published port's); none with ``random_init``."""
        config = cls.merged_config(config)
        if config["random_init"] or not config["weights"]:
            return []
        return [WeightSource(str(config["weights"]), config["weights_sha256"], description="ManTra-Net state dict")]

    def load(self) -> None:
        config = self.config
        if int(config["max_side"]) < self.min_side:
            raise ValueError(f"max_side must be at least {self.min_side}, got {config['max_side']}")
        if not config["feature_widths"]:
            raise ValueError("feature_widths must list at least one convolution width")
        model = build_model(config)
        if config["random_init"]:
            randomise(model)
            self._weights_id = "random_init(seed=0)"
        else:
            path = resolve_weights(str(config["weights"]), config["weights_sha256"])
            self._weights_id = "sha256:" + file_sha256(path)
            state = load_state_dict(str(path))
            _check_layout(state, model, str(config["weights"]))
            model.load_state_dict(state, strict=True)
        with torch.no_grad():
            bayar = model.IMTFE.BayarConv2D.weight
            bayar.copy_(bayar_constrained(bayar))
        model.eval().requires_grad_(False)
        model.to(self.device)
        self._half = str(self.device).startswith("cuda")
        if self._half:
            model.IMTFE.half()  # the anomaly head stays fp32 (variance, Z-scores, ConvLSTM)
        self.model = model

    @property
    def version(self) -> str:
        config = self.config
        widths = ",".join(str(int(w)) for w in config["feature_widths"])
        return (
            f"mantranet-{CODE_VERSION} weights={self._weights_id} max_side={int(config['max_side'])} "
            f"widths={widths} adaptation={config['adaptation_channels']} lstm={config['lstm_hidden']} "
            f"{'fp16' if self._half else 'fp32'}"
        )

    def preprocess(self, image: DecodedImage) -> _Prepared:
        pixels = torch.from_numpy(image.rgb).permute(2, 0, 1)  # (3, H, W) uint8
        size = working_size(image.height, image.width, int(self.config["max_side"]))
        if size != (image.height, image.width):
            # Antialiased downscale, back to 8 bit: the network was trained on 8-bit images.
            scaled = F.interpolate(
                pixels[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
            )
            pixels = scaled[0].round_().clamp_(0, 255).to(torch.uint8)
        return _Prepared(pixels=pixels.contiguous(), original_size=(image.height, image.width))

    def _forward(self, inputs: list[_Prepared]) -> list[_Heatmap]:
        # Group by working size: no padding, so each image's result is what it would be alone.
        groups: dict[tuple[int, int], list[int]] = {}
        for index, prepared in enumerate(inputs):
            groups.setdefault(tuple(prepared.pixels.shape[1:]), []).append(index)
        outputs: list[_Heatmap | None] = [None] * len(inputs)
        with torch.inference_mode():
            for (height, width), indices in groups.items():
                per_batch = max(1, int(self.config["max_batch_pixels"]) // (height * width))
                for start in range(0, len(indices), per_batch):
                    chunk = indices[start : start + per_batch]
                    batch = torch.stack([inputs[i].pixels for i in chunk]).to(self.device)
                    heatmaps = self.model(batch).float().cpu().numpy()
                    for i, heatmap in zip(chunk, heatmaps):
                        outputs[i] = _Heatmap(heatmap=heatmap, original_size=inputs[i].original_size)
        return outputs  # type: ignore[return-value]

    def postprocess(self, output: _Heatmap, artifacts: bool) -> DetectorResult:
        heatmap = output.heatmap
        if not np.isfinite(heatmap).all():
            raise ValueError(f"heatmap has {int((~np.isfinite(heatmap)).sum())} non-finite values")
        anomaly = top_fraction_mean(heatmap, TOP_FRACTION)
        area = float((heatmap > HEATMAP_THRESHOLD).mean())
        result = DetectorResult(
            features={"mantra_anomaly": anomaly, "mantra_area": area},
            details={
                "working_size": list(heatmap.shape),
                "image_size": list(output.original_size),
                "heatmap_max": float(heatmap.max()),
                "threshold": HEATMAP_THRESHOLD,
            },
        )
        if anomaly > HEATMAP_THRESHOLD:
            result.evidence.append(
                f"ManTra-Net marks {area:.1%} of the image as locally manipulated (top-1% score {anomaly:.2f}): "
                "a sign of editing or splicing, not of whole-image generation."
            )
        if artifacts:
            result.artifacts["mantra_heatmap"] = _resize_map(heatmap, output.original_size)
        return result


def _resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a [0, 1] map to ``size`` (H, W); float32, still in [0, 1]."""
    if heatmap.shape == size:
        return heatmap.astype(np.float32, copy=True)
    resized = F.interpolate(torch.from_numpy(heatmap)[None, None], size=size, mode="bilinear", align_corners=False)
    return resized[0, 0].clamp_(0.0, 1.0).numpy().astype(np.float32)


def _check_layout(state: dict[str, Any], model: nn.Module, location: str) -> None:
    """Refuse a checkpoint whose keys or shapes differ from the model's, naming the differences."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{key}: file {tuple(getattr(state[key], 'shape', ()))}, model {tuple(expected[key].shape)}"
        for key in expected
        if key in state and (not isinstance(state[key], torch.Tensor) or state[key].shape != expected[key].shape)
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{location} is not a ManTra-Net state dict for this configuration "
            f"(expected the layout of RonyAbecidan/ManTraNet-pytorch MantraNetv4.pt): "
            f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}, "
            f"{len(wrong)} shape mismatches {wrong[:4]}"
        )
