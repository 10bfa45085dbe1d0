"""GhostNet forensic-noise detector: a CNN that classifies the noise residuals of native-resolution patches.

Pipeline for one image:

1. ``preprocess``: cut up to ``max_patches`` patches of ``patch`` x ``patch`` pixels from a deterministic grid
   over the image at its NATIVE resolution (no global resize: resizing would erase the noise we look at).
2. ``_forward``: every patch of every image in the batch goes through one network:
   a fixed high-pass front end (the 3 classic 5x5 SRM kernels, applied per colour channel, plus a
   Bayar-constrained 5x5 convolution) that keeps the noise residual and drops the scene content, then a
   GhostNet from timm (``in_chans`` = front-end channels, one logit out).
3. ``postprocess``: the image's score is the mean of its patch logits, mapped to P(AI) by the Platt
   calibration stored with the weights (fitted on the validation split by ``training/train_ghostnet.py``).

Images with a side shorter than ``patch`` are skipped (``min_side`` follows the configured patch size): the
model never saw padded patches in training, so padding them would be a guess.

The shipped weights (``models/weights/ghostnet_noise.safetensors``, card beside it) come from
``training/train_ghostnet.py``. They separate the held-out test split moderately overall but are near chance
on the one format-matched modern pair; the card has the numbers per source.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.base import Detector, DetectorResult
from models.image_input import DecodedImage
from models.registry import register_detector
from models.schema import entry_of, features_of
from models.weights import WeightSource, file_sha256, load_state_dict, resolve_weights

CODE_VERSION = "1"
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "ghostnet_noise.safetensors"
VARIANTS = ("ghostnet_050", "ghostnet_100")
FRONT_ENDS = ("srm+bayar", "srm", "bayar")
# Patches per forward call: bounds memory for images with many patches and batches of many images.
FORWARD_CHUNK = 128
# A score this far from 0.5 earns an evidence sentence; in between, the model says nothing worth quoting.
EVIDENCE_MARGIN = 0.3

# The three 5x5 SRM high-pass kernels of image forensics (Fridrich & Kodovsky's rich models, as used by
# RGB-N and ManTra-Net), each divided by its normaliser q = 4, 12, 2. Every kernel sums to zero, so flat
# regions give zero and only local deviations (noise, texture, interpolation traces) pass.
SRM_KERNELS = np.stack(
    [
        np.array(
            [[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]],
            dtype=np.float32,
        )
        / 4.0,
        np.array(
            [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]],
            dtype=np.float32,
        )
        / 12.0,
        np.array(
            [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
            dtype=np.float32,
        )
        / 2.0,
    ]
)


# ---- the network ----------------------------------------------------------------------------------------
class SRMFilter(nn.Module):
    """The 3 fixed SRM kernels applied to each colour channel separately: 3 channels in, 9 out."""

    out_channels = 9

    def __init__(self) -> None:
        super().__init__()
        # (9, 1, 5, 5): output channel 3*c + k is kernel k on colour c (a grouped convolution, groups=3).
        kernels = torch.from_numpy(SRM_KERNELS).unsqueeze(1).repeat(3, 1, 1, 1)
        # Not persistent: the kernels are constants of the code, never read from a weights file.
        self.register_buffer("kernels", kernels, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernels.to(x.dtype), groups=3)


class BayarConv2d(nn.Module):
    """Bayar & Stamm's constrained convolution: each 5x5 kernel predicts the centre pixel from its neighbours.

    The constraint (centre weight -1, the other 24 weights summing to 1) is applied in ``forward`` as a
    reparameterisation of the raw weights, so it holds for any stored weights, during training and after.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, kernel_size: int = 5) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.rand(out_channels, in_channels, kernel_size, kernel_size))
        centre = torch.zeros(kernel_size, kernel_size)
        centre[kernel_size // 2, kernel_size // 2] = 1.0
        self.register_buffer("centre", centre, persistent=False)

    def constrained_weight(self) -> torch.Tensor:
        neighbours = self.weight * (1.0 - self.centre)
        total = neighbours.sum(dim=(2, 3), keepdim=True)
        # Keep the divisor away from zero without flipping its sign.
        total = torch.where(total.abs() < 1e-4, torch.full_like(total, 1e-4).copysign(total), total)
        return neighbours / total - self.centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.constrained_weight().to(x.dtype))


class NoiseResidualFrontEnd(nn.Module):
    """RGB in [0, 1] -> noise residual channels (SRM: 9, Bayar: 3), in 8-bit grey-level units.

    Reflection padding keeps the size. The residuals are scaled back to 0..255 units because in [0, 1]
    units sensor noise (a few grey levels, ~0.01) makes the first BatchNorm's variance comparable to its
    epsilon (1e-5), which would damp exactly the signal this model is for.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in FRONT_ENDS:
            raise ValueError(f"front_end {kind!r} is not one of {FRONT_ENDS}")
        self.srm = SRMFilter() if "srm" in kind else None
        self.bayar = BayarConv2d() if "bayar" in kind else None
        self.out_channels = sum(m.out_channels for m in (self.srm, self.bayar) if m is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
        return torch.cat([m(padded) for m in (self.srm, self.bayar) if m is not None], dim=1) * 255.0


class GhostNoiseNet(nn.Module):
    """Front end + timm GhostNet with one output logit per patch."""

    def __init__(self, variant: str, front_end: str) -> None:
        super().__init__()
        import timm  # heavy import kept out of ``import models``

        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
        self.front_end = NoiseResidualFrontEnd(front_end)
        self.backbone = timm.create_model(
            variant, pretrained=False, in_chans=self.front_end.out_channels, num_classes=1
        )
        # Platt calibration of the image-level mean logit; identity until training fits it.
        self.register_buffer("calibration_scale", torch.tensor(1.0))
        self.register_buffer("calibration_bias", torch.tensor(0.0))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """(N, 3, P, P) floats in [0, 1] -> (N,) logits (before calibration)."""
        return self.backbone(self.front_end(rgb)).squeeze(1)


def build_model(variant: str, front_end: str, seed: int | None = None) -> GhostNoiseNet:
    """A fresh network; with ``seed`` its random initialisation is reproducible (global RNG untouched)."""
    if seed is None:
        return GhostNoiseNet(variant, front_end)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GhostNoiseNet(variant, front_end)


# ---- tiling ------------------------------------------------------------------------------------------------
def tile_grid(width: int, height: int, patch: int, max_patches: int) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x0, y0, x1, y1)`` of up to ``max_patches`` patches spread evenly over the image.

    The grid has as many patches as fit without overlap (at most ``max_patches``); among grids with that
    many, the one whose cells are closest to square wins, so the patches cover both directions evenly.
    Each patch sits in the centre of its grid cell. Deterministic: it depends on the sizes only.
    """
    if width < patch or height < patch:
        raise ValueError(f"image {width}x{height} is smaller than the {patch}x{patch} patch")
    best: tuple[int, float, int] | None = None
    for rows in range(1, height // patch + 1):
        for cols in range(1, width // patch + 1):
            count = cols * rows
            if count > max_patches:
                continue
            squareness = -abs(math.log((width / cols) / (height / rows)))
            key = (count, squareness, cols)
            if best is None or key > best:
                best = key
                grid = (cols, rows)
    cols, rows = grid
    return [(x, y, x + patch, y + patch) for y in _spread(height, patch, rows) for x in _spread(width, patch, cols)]


def _spread(length: int, patch: int, count: int) -> list[int]:
    """Start offsets of ``count`` patches, each centred in one of ``count`` equal cells of ``length``."""
    cell = length / count
    return [min(max(0, round((i + 0.5) * cell - patch / 2)), length - patch) for i in range(count)]


@dataclass
class Tiles:
    """One image's patches, cut from its native-resolution pixels."""

    patches: np.ndarray  # (n, patch, patch, 3) uint8
    boxes: list[tuple[int, int, int, int]]  # (x0, y0, x1, y1) of each patch in the image


@dataclass
class PatchLogits:
    logits: np.ndarray  # (n,) float32, before calibration
    boxes: list[tuple[int, int, int, int]]


def patches_to_tensor(patches: np.ndarray, device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, P, P, 3) uint8 -> (n, 3, P, P) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(patches)).to(device).permute(0, 3, 1, 2).to(dtype) / 255.0


# safetensors writes its metadata map in no fixed order; one key holding sorted JSON keeps the file's bytes
# (and so its sha256, the weights' identity in ``version``) reproducible.
METADATA_KEY = "imgverify"


def encode_metadata(metadata: dict[str, str]) -> dict[str, str]:
    return {METADATA_KEY: json.dumps(metadata, sort_keys=True)}


def weights_metadata(path: Path) -> dict[str, str]:
    """The architecture a ``.safetensors`` file says it was trained with (empty when it says nothing)."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        stored = (handle.metadata() or {}).get(METADATA_KEY)
    return json.loads(stored) if stored else {}


# ---- the detector ------------------------------------------------------------------------------------------
def save_half_precision(model: nn.Module, out: Path, metadata: dict[str, str]) -> None:
    """Write ``model`` as safetensors: fp16 weights, fp32 BatchNorm statistics and calibration (small values fp16
    would round). Shared by the patch CNNs trained here (ghostnet, effnet_artifact)."""
    from safetensors.torch import save_file

    state = {}
    for name, tensor in model.state_dict().items():
        keep_fp32 = name.endswith(("running_mean", "running_var")) or name.startswith("calibration")
        if tensor.is_floating_point() and not keep_fp32:
            tensor = tensor.half()
        state[name] = tensor.detach().contiguous().clone()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=encode_metadata(metadata))


def patch_logit_result(output: PatchLogits, score, feature: str, looks_what: str, model_name: str) -> DetectorResult:
    """A patch CNN's result: the calibrated mean of its patch logits as ``feature``, per-patch scores in the
    details, and an evidence sentence when the score is clearly on one side. Shared by ghostnet and effnet_artifact."""
    mean_logit = float(np.mean(output.logits))
    value = score(mean_logit)
    patch_scores = [score(float(v)) for v in output.logits]
    result = DetectorResult(
        features={feature: value},
        details={
            "aggregate": "mean of patch logits, then Platt calibration",
            "mean_logit": round(mean_logit, 4),
            "patch_scores": [round(s, 4) for s in patch_scores],
            "patch_boxes": [list(box) for box in output.boxes],
        },
    )
    if abs(value - 0.5) >= EVIDENCE_MARGIN:
        looks = "generated" if value > 0.5 else "camera-like"
        above = sum(s > 0.5 for s in patch_scores)
        result.evidence.append(
            f"{looks_what} look {looks} ({model_name} score {value:.2f}; "
            f"{above} of {len(patch_scores)} patches above 0.5)."
        )
    return result


@register_detector
class GhostNetNoiseDetector(Detector):
    """P(AI) from a GhostNet on SRM/Bayar noise residuals of native-resolution patches."""

    name = "ghostnet"
    features = features_of(name)
    default_config: ClassVar[dict[str, Any]] = {
        "weights": str(PACKAGED_WEIGHTS),  # local path, http(s) URL or hf://repo/file
        "weights_sha256": None,  # optional: verify the weights file
        "variant": "ghostnet_050",  # the narrower GhostNet: CPU cost measured in training/train_ghostnet.py
        "front_end": "srm+bayar",
        "patch": 96,
        "max_patches": 8,
        "random_init": False,  # tests and benchmarks only: seeded random weights, no file
    }
    min_side = 96  # replaced by the configured patch size in ``load``
    has_artifacts = entry_of(name).has_artifacts

    @classmethod
    def weight_sources(cls, config: dict[str, Any] | None = None) -> list[WeightSource]:
        """The configured weights file (by default the packaged one, a local path); none with ``random_init``."""
        config = cls.merged_config(config)
        if config["random_init"] or not config["weights"]:
            return []
        return [WeightSource(str(config["weights"]), config["weights_sha256"], description="GhostNet noise weights")]

    def load(self) -> None:
        config = self.config
        self.patch = int(config["patch"])
        self.max_patches = int(config["max_patches"])
        if self.patch < 32 or self.max_patches < 1:
            raise ValueError(f"patch must be >= 32 (GhostNet's stride) and max_patches >= 1; got {config}")
        self.min_side = self.patch
        if config["random_init"]:
            model = build_model(config["variant"], config["front_end"], seed=0)
            self._weights_id = "random-init-seed0"
        else:
            model = build_model(config["variant"], config["front_end"])
            self._weights_id = self._load_weights(model)
        model.eval()
        dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
        self.model = model.to(device=self.device, dtype=dtype)
        self.dtype = dtype
        # Calibration is applied in float64 on the CPU, after aggregation.
        self.calibration = (float(model.calibration_scale), float(model.calibration_bias))

    def _load_weights(self, model: GhostNoiseNet) -> str:
        path = resolve_weights(str(self.config["weights"]), self.config["weights_sha256"])
        trained_as = weights_metadata(path)
        for key in ("variant", "front_end"):
            if key in trained_as and trained_as[key] != str(self.config[key]):
                raise ValueError(
                    f"weights {path} were trained with {key}={trained_as[key]!r} but the config asks for "
                    f"{key}={self.config[key]!r}; set {key}={trained_as[key]!r} or use matching weights"
                )
        state = load_state_dict(str(path))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"weights {path} do not fit variant={self.config['variant']!r} "
                f"front_end={self.config['front_end']!r}: {err}"
            ) from err
        return "sha256:" + file_sha256(path)[:16]

    @property
    def version(self) -> str:
        c = self.config
        return (
            f"ghostnet-{CODE_VERSION} {c['variant']} {c['front_end']} patch={self.patch} "
            f"max_patches={self.max_patches} weights={self._weights_id}"
        )

    def preprocess(self, image: DecodedImage) -> Tiles:
        boxes = tile_grid(image.width, image.height, self.patch, self.max_patches)
        patches = np.stack([image.rgb[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes])
        return Tiles(patches=patches, boxes=boxes)

    def _forward(self, inputs: list[Tiles]) -> list[PatchLogits]:
        every_patch = np.concatenate([tiles.patches for tiles in inputs])
        logits = []
        with torch.inference_mode():
            for start in range(0, len(every_patch), FORWARD_CHUNK):
                chunk = patches_to_tensor(every_patch[start : start + FORWARD_CHUNK], self.device, self.dtype)
                logits.append(self.model(chunk).float().cpu().numpy())
        flat = np.concatenate(logits)
        outputs, start = [], 0
        for tiles in inputs:
            count = len(tiles.boxes)
            outputs.append(PatchLogits(logits=flat[start : start + count], boxes=tiles.boxes))
            start += count
        return outputs

    def score(self, mean_logit: float) -> float:
        """Calibrated P(AI) of an image-level mean logit."""
        scale, bias = self.calibration
        z = scale * mean_logit + bias
        # Written so that exp never overflows, whatever the sign of z.
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def postprocess(self, output: PatchLogits, artifacts: bool) -> DetectorResult:
        return patch_logit_result(output, self.score, "ghostnet_score", "Noise residuals", "GhostNet")
