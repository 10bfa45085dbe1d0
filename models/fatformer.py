"""FatFormer: a CLIP ViT-L/14 with forgery-aware adapters and language-guided alignment.

Liu et al., "Forgery-aware Adaptive Transformer for Generalizable Synthetic Image Detection", CVPR 2024;
official code github.com/Michel-liu/FatFormer (commit 75b07014d69bae8aa1002f98115d44aa9edbe2e8). This is an
independent plain-PyTorch re-implementation whose ``state_dict`` has exactly the official key names and shapes, so
the released checkpoint (``torch.load(path)["model"]``) loads with a strict ``load_state_dict``. The reference list
is ``models/reference/fatformer_keys.json``.

The network, read top-down:

* **Image encoder**: OpenAI CLIP ViT-L/14 (OpenAI's module names, as the official code vendors OpenAI's
  ``clip/model.py``). After blocks 7, 15 and 23 (``--num_vit_adapter 3``: every ``layers / 3``-th block) a
  *forgery-aware adapter* adds two branches to the block's residual: an image branch (1x1 conv bottleneck) and a
  frequency branch (Haar DWT of the patch grid, attention across and within the four sub-bands, inverse DWT).
  The encoder returns every token after ``ln_post @ proj``.
* **Language-guided alignment**: 8 learnable context vectors ("X X X X X X X X real." / "... fake.", CoOp style)
  are shifted per image by a *patch-based enhancer* (cross-attention to the image tokens), then run through CLIP's
  text encoder, giving one text feature per class.
* **Text-guided interactor**: the patch tokens cross-attend to the two text features; their mean is a second image
  feature. Logits = CLIP-style cosine logits of the CLS feature + those of the interactor feature.

``fatformer_prob`` is ``softmax(logits)[fake]`` (class order ["real", "fake"], as the official evaluation reads
``softmax(dim=1)[:, 1]``).

The state dict holds several entries twice because the official model registers the same modules under two
names: ``image_encoder.*`` is ``clip_model.visual.*``, ``text_encoder.*`` is CLIP's text transformer, final norm,
projection and positional embedding, and ``logit_scale`` is ``clip_model.logit_scale``. This module keeps those
ties, so a strict load sees the same 1116 keys as the official model.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from models.base import Detector, DetectorResult
from models.image_input import DecodedImage
from models.registry import register_detector
from models.schema import features_of
from models.weights import WeightSource, WeightsUnavailable, file_sha256, resolve_weights

CODE_VERSION = "1"

# The released configuration: CLIP ViT-L/14 at 224 px, README eval flags --num_vit_adapter 3
# --num_context_embedding 8; the adapter sizes are the defaults of the official ForgeryAwareAdapterLayer
# (d_model=1024, bottleneck=64, head=8, GroupNorm(128), adapter_scalar=0.1) and the two LGA attentions use 12 heads.
FULL_ARCHITECTURE: dict[str, Any] = {
    "image_size": 224,  # the centre crop the network sees
    "patch_size": 14,
    "vision_width": 1024,
    "vision_layers": 24,
    "vision_heads": 16,
    "embed_dim": 768,  # CLIP's joint image-text space
    "text_width": 768,
    "text_layers": 12,
    "text_heads": 12,
    "context_length": 77,  # text tokens
    "vocab_size": 49408,  # CLIP's BPE vocabulary
    "adapter_count": 3,  # adapters after every (vision_layers / adapter_count)-th block
    "adapter_bottleneck": 64,
    "adapter_heads": 8,
    "adapter_groups": 128,  # GroupNorm groups on the DWT sub-bands
    "adapter_scale": 0.1,  # weight of the image branch
    "prompt_context_tokens": 8,  # learnable "X" tokens before the class name
    "lga_heads": 12,  # heads of the patch-based enhancer and of the text-guided interactor
}

CLASS_NAMES = ("real", "fake")  # index 1 is "fake": fatformer_prob = softmax(logits)[:, 1]

# The official test transform (utils/dataset.py): Resize((256, 256)) -- a square resize that ignores the aspect
# ratio, bilinear on PIL images -- then CenterCrop(224), ToTensor, ImageNet mean / std (not CLIP's).
RESIZE_SIZE = 256
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# The official README publishes the checkpoint only on cloud drives that need a browser, so there is no default:
#   Google Drive https://drive.google.com/file/d/1Q_Kgq4ygDf8XEHgAf-SgDN6Ru_IOTLkj/view?usp=sharing
#   OneDrive     https://1drv.ms/u/s!Aqkrc9gPuk8jqZ5Z01EeDlzQIBGFrw?e=F6tdyX
#   Baidu        https://pan.baidu.com/s/19wijsvrX0-9Q3dzho8LjUQ?pwd=b759
# (the 4-class ProGAN model, ~1.97 GB, a dict {"model": state_dict}).
OFFICIAL_CHECKPOINT_LINKS = (
    "https://drive.google.com/file/d/1Q_Kgq4ygDf8XEHgAf-SgDN6Ru_IOTLkj/view?usp=sharing",
    "https://1drv.ms/u/s!Aqkrc9gPuk8jqZ5Z01EeDlzQIBGFrw?e=F6tdyX",
    "https://pan.baidu.com/s/19wijsvrX0-9Q3dzho8LjUQ?pwd=b759",
)

RANDOM_INIT_SEED = 0


class CheckpointMismatch(ValueError):
    """A checkpoint whose keys or shapes are not exactly those of the configured architecture."""


# ---- Haar wavelet transform ------------------------------------------------------------------------------------
#
# The official adapter uses pytorch_wavelets' DWTForward(J=1, wave="haar") (default mode "zero") and
# DWTInverse(wave="haar"). Their filter buffers are part of the checkpoint, so the modules below keep the same
# buffer names and shapes and compute with them the way pytorch_wavelets does: separable strided convolutions,
# first along the width, then along the height. For one 2x2 block [[a, b], [c, d]] of a channel:
#   low          = (a + b + c + d) / 2
#   high[:, :, 0] = (a + b - c - d) / 2   (low-pass along the width, high-pass along the height)
#   high[:, :, 1] = (a - b + c - d) / 2   (high-pass along the width, low-pass along the height)
#   high[:, :, 2] = (a - b - c + d) / 2
# In mode "zero" an odd length gets one zero appended at its end before filtering.

_HAAR = 1.0 / math.sqrt(2.0)


def _analysis_1d(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, dim: int) -> torch.Tensor:
    """Filter ``x`` (B, C, H, W) along ``dim`` (2: height, 3: width) with stride 2.

    Returns (B, 2C, ...) with channels ordered [c0 low, c0 high, c1 low, c1 high, ...], as pytorch_wavelets does.
    """
    channels = x.shape[1]
    if x.shape[dim] % 2:
        x = F.pad(x, (0, 1, 0, 0) if dim == 3 else (0, 0, 0, 1))
    kernel = torch.cat([low, high] * channels, dim=0).to(x.dtype)  # (2C, 1, kh, kw): correlation filters
    return F.conv2d(x, kernel, stride=(1, 2) if dim == 3 else (2, 1), groups=channels)


def _synthesis_1d(low: torch.Tensor, high: torch.Tensor, g0: torch.Tensor, g1: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`_analysis_1d` for length-2 filters: upsample by 2 along ``dim`` and merge the two bands."""
    channels = low.shape[1]
    stride = (1, 2) if dim == 3 else (2, 1)
    g0 = torch.cat([g0] * channels, dim=0).to(low.dtype)
    g1 = torch.cat([g1] * channels, dim=0).to(low.dtype)
    return F.conv_transpose2d(low, g0, stride=stride, groups=channels) + F.conv_transpose2d(
        high, g1, stride=stride, groups=channels
    )


class HaarDWT(nn.Module):
    """One level of the 2-D Haar DWT, equal to pytorch_wavelets' ``DWTForward(J=1, wave="haar", mode="zero")``."""

    def __init__(self) -> None:
        super().__init__()
        # pytorch_wavelets stores the analysis filters reversed (conv2d correlates): pywt's haar dec_lo [s, s] and
        # dec_hi [-s, s] become [s, s] and [s, -s].
        low = torch.tensor([_HAAR, _HAAR])
        high = torch.tensor([_HAAR, -_HAAR])
        self.register_buffer("h0_col", low.reshape(1, 1, 2, 1))
        self.register_buffer("h1_col", high.reshape(1, 1, 2, 1))
        self.register_buffer("h0_row", low.reshape(1, 1, 1, 2))
        self.register_buffer("h1_row", high.reshape(1, 1, 1, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> low (B, C, H', W') and high (B, C, 3, H', W'), H' = ceil(H / 2)."""
        along_width = _analysis_1d(x, self.h0_row, self.h1_row, dim=3)
        bands = _analysis_1d(along_width, self.h0_col, self.h1_col, dim=2)
        bands = bands.reshape(x.shape[0], x.shape[1], 4, bands.shape[-2], bands.shape[-1])
        return bands[:, :, 0], bands[:, :, 1:]


class HaarIDWT(nn.Module):
    """The inverse, equal to pytorch_wavelets' ``DWTInverse(wave="haar", mode="zero")``."""

    def __init__(self) -> None:
        super().__init__()
        # Synthesis filters are used as stored (conv_transpose2d convolves): pywt's haar rec_lo and rec_hi.
        low = torch.tensor([_HAAR, _HAAR])
        high = torch.tensor([_HAAR, -_HAAR])
        self.register_buffer("g0_col", low.reshape(1, 1, 2, 1))
        self.register_buffer("g1_col", high.reshape(1, 1, 2, 1))
        self.register_buffer("g0_row", low.reshape(1, 1, 1, 2))
        self.register_buffer("g1_row", high.reshape(1, 1, 1, 2))

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """low (B, C, H', W'), high (B, C, 3, H', W') -> (B, C, 2H', 2W')."""
        low_height_detail, width_detail, diagonal = high.unbind(dim=2)
        low_along_width = _synthesis_1d(low, low_height_detail, self.g0_col, self.g1_col, dim=2)
        high_along_width = _synthesis_1d(width_detail, diagonal, self.g0_col, self.g1_col, dim=2)
        return _synthesis_1d(low_along_width, high_along_width, self.g0_row, self.g1_row, dim=3)


# ---- CLIP building blocks (OpenAI naming) ----------------------------------------------------------------------


class ClipLayerNorm(nn.LayerNorm):
    """OpenAI CLIP's LayerNorm: computed in fp32 whatever the activations' dtype (keeps fp16 inference stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ForgeryAwareAdapter(nn.Module):
    """The forgery-aware adapter (official ``ForgeryAwareAdapterLayer``), inference only.

    Input and output are (tokens, batch, width) with token 0 the CLS token and the rest a square patch grid.
    Output = ``scale * image_branch(x) + freq_scale * frequency_branch(x)``; the frequency branch is zero on the CLS
    token. The official dropouts (p=0.1) are training-only and are omitted.
    """

    def __init__(self, width: int, grid: int, bottleneck: int, heads: int, groups: int, scale: float) -> None:
        super().__init__()
        self.grid = grid
        self.scale = scale
        # Image branch: a 1x1-conv bottleneck over the tokens.
        self.first_conv_layer = nn.Conv1d(width, bottleneck, kernel_size=1)
        self.second_conv_layer = nn.Conv1d(bottleneck, width, kernel_size=1)
        # Frequency branch. freq_scale starts at 0 in the official code, so it is learnt from nothing.
        self.freq_scale = nn.Parameter(torch.zeros(1))
        self.dwt_transform = HaarDWT()
        self.idwt_transform = HaarIDWT()
        self.dwt_norm = nn.GroupNorm(groups, width)
        self.intra_band = nn.MultiheadAttention(width, heads)  # attends across the 4 bands at each position
        self.norm_intra = nn.LayerNorm(width)
        self.inter_band = nn.MultiheadAttention(width, heads)  # attends across positions within each band
        self.norm_inter = nn.LayerNorm(width)
        self.linear1 = nn.Linear(width, width * 4)
        self.linear2 = nn.Linear(width * 4, width)
        self.norm3 = nn.LayerNorm(width)

    def frequency_branch(self, x: torch.Tensor) -> torch.Tensor:
        """(1 + grid^2, B, width) -> (1 + grid^2, B, width)."""
        batch, width = x.shape[1:]
        patches = x[1:].permute(1, 2, 0).reshape(batch, width, self.grid, self.grid)  # (B, width, grid, grid)
        low, high = self.dwt_transform(patches)
        bands = torch.cat([low[:, :, None], high], dim=2)  # (B, width, 4, g, g), bands LL, LH, HL, HH
        half_h, half_w = bands.shape[-2:]
        bands = self.dwt_norm(bands.flatten(-2)).permute(0, 2, 3, 1)  # (B, 4, positions, width)
        n_bands, positions = bands.shape[1], bands.shape[2]

        # Across bands: a sequence of 4 bands for every (image, position).
        seq = bands.permute(1, 0, 2, 3).reshape(n_bands, batch * positions, width)
        attended = self.intra_band(seq, seq, seq, need_weights=False)[0]
        bands = self.norm_intra(bands + attended.reshape(n_bands, batch, positions, width).permute(1, 0, 2, 3))
        # Within each band: a sequence of positions for every (image, band).
        seq = bands.reshape(batch * n_bands, positions, width).transpose(0, 1)
        attended = self.inter_band(seq, seq, seq, need_weights=False)[0]
        bands = self.norm_inter(bands + attended.transpose(0, 1).reshape(batch, n_bands, positions, width))
        bands = self.norm3(bands + self.linear2(F.relu(self.linear1(bands))))

        bands = bands.reshape(batch, n_bands, half_h, half_w, width).permute(0, 4, 1, 2, 3)  # (B, width, 4, h, w)
        patches = self.idwt_transform(bands[:, :, 0], bands[:, :, 1:])  # (B, width, grid, grid)
        patches = patches.flatten(-2).permute(2, 0, 1)  # (grid^2, B, width)
        return torch.cat([torch.zeros_like(x[:1]), patches], dim=0)

    def image_branch(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.first_conv_layer(x.permute(1, 2, 0)))  # (B, bottleneck, tokens)
        return self.second_conv_layer(hidden).permute(2, 0, 1) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_branch(x) + self.frequency_branch(x) * self.freq_scale


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-norm transformer block; with an adapter, its output joins the MLP residual (as in the official
    code)."""

    def __init__(self, width: int, heads: int, adapter: ForgeryAwareAdapter | None = None, causal: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = ClipLayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]
            )
        )
        self.ln_2 = ClipLayerNorm(width)
        self.forgery_aware_adapter = adapter
        self.causal = causal  # the text transformer's causal mask (built per call: it is not in the state dict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.causal:
            mask = torch.ones(x.shape[0], x.shape[0], dtype=torch.bool, device=x.device).triu_(1)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        out = x + self.mlp(self.ln_2(x))
        if self.forgery_aware_adapter is not None:
            out = out + self.forgery_aware_adapter(x)  # the adapter sees the block's post-attention stream
        return out


class Transformer(nn.Module):
    def __init__(self, blocks: list[ResidualAttentionBlock]) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """CLIP's ViT with forgery-aware adapters. Returns all tokens, ``ln_post``-normalised and projected."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        width, patch = arch["vision_width"], arch["patch_size"]
        grid = arch["image_size"] // patch
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = ClipLayerNorm(width)
        adapter_blocks = adapter_block_indices(arch["vision_layers"], arch["adapter_count"])
        self.transformer = Transformer(
            [
                ResidualAttentionBlock(
                    width,
                    arch["vision_heads"],
                    adapter=ForgeryAwareAdapter(
                        width,
                        grid,
                        arch["adapter_bottleneck"],
                        arch["adapter_heads"],
                        arch["adapter_groups"],
                        arch["adapter_scale"],
                    )
                    if index in adapter_blocks
                    else None,
                )
                for index in range(arch["vision_layers"])
            ]
        )
        self.ln_post = ClipLayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, arch["embed_dim"]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 1 + grid^2, embed_dim)."""
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (B, grid^2, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x).transpose(0, 1)  # tokens first, as CLIP's nn.MultiheadAttention layers expect
        x = self.transformer(x).transpose(0, 1)
        return self.ln_post(x) @ self.proj


class CLIP(nn.Module):
    """OpenAI CLIP's module tree (``visual``, text ``transformer``, ``token_embedding`` ...)."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        width = arch["text_width"]
        self.visual = VisionTransformer(arch)
        self.transformer = Transformer(
            [ResidualAttentionBlock(width, arch["text_heads"], causal=True) for _ in range(arch["text_layers"])]
        )
        self.token_embedding = nn.Embedding(arch["vocab_size"], width)
        self.positional_embedding = nn.Parameter(torch.empty(arch["context_length"], width))
        self.ln_final = ClipLayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, arch["embed_dim"]))
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        # CLIP's own initialisation, for the parameters created empty above (random-weight models only).
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)


class TextEncoder(nn.Module):
    """CLIP's text tower run on prompt *embeddings* (not token ids); shares its modules with ``CLIP``."""

    def __init__(self, clip_model: CLIP) -> None:
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection

    def forward(self, prompts: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """prompts (N, context_length, width), eot_index (N,) -> (N, embed_dim): the end-of-text token's feature."""
        x = prompts + self.positional_embedding.to(prompts.dtype)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot_index] @ self.text_projection


class LanguageGuidedAlignment(nn.Module):
    """Learnable context prompts shifted per image by the patch-based enhancer.

    ``token_prefix`` / ``token_suffix`` are the token embeddings of the start token and of "<class>. <eot> <pad>..."
    for each class; they are buffers in the checkpoint (the official code saves them), so a loaded model uses the
    checkpoint's values.
    """

    def __init__(self, clip_model: CLIP, token_ids: torch.Tensor, n_context: int, heads: int) -> None:
        super().__init__()
        width = clip_model.ln_final.weight.shape[0]
        self.ctx = nn.Parameter(torch.empty(n_context, width))
        nn.init.normal_(self.ctx, std=0.02)
        with torch.no_grad():
            embedding = clip_model.token_embedding(token_ids.to(clip_model.token_embedding.weight.device))
        self.register_buffer("token_prefix", embedding[:, :1, :].clone())  # start of text
        self.register_buffer("token_suffix", embedding[:, 1 + n_context :, :].clone())  # class name, ".", eot, pad
        # The official attribute name, typo included: it is a checkpoint key.
        self.patch_basaed_enhancer = nn.MultiheadAttention(width, heads)
        self.norm1 = nn.LayerNorm(width)
        self.linear1 = nn.Linear(width, width * 4)
        self.linear2 = nn.Linear(width * 4, width)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """image_features (B, tokens, width) -> prompt embeddings (B, n_classes, context_length, width)."""
        batch = image_features.shape[0]
        ctx = self.ctx.to(image_features.dtype)[:, None].expand(-1, batch, -1)  # (n_context, B, width)
        memory = image_features.transpose(0, 1)
        ctx = self.norm1(ctx + self.patch_basaed_enhancer(ctx, memory, memory, need_weights=False)[0])
        ctx = self.norm2(ctx + self.linear2(F.relu(self.linear1(ctx))))
        n_classes = self.token_prefix.shape[0]
        ctx = ctx.transpose(0, 1)[:, None].expand(-1, n_classes, -1, -1)  # same shifted context for every class
        prefix = self.token_prefix.to(ctx.dtype)[None].expand(batch, -1, -1, -1)
        suffix = self.token_suffix.to(ctx.dtype)[None].expand(batch, -1, -1, -1)
        return torch.cat([prefix, ctx, suffix], dim=2)


class FatFormer(nn.Module):
    """The whole network (official ``CLIPModel``): images (B, 3, S, S) ImageNet-normalised -> logits (B, 2)."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        token_ids, eot_index = prompt_tokens(arch["prompt_context_tokens"], arch["context_length"])
        self.clip_model = CLIP(arch)
        self.language_guided_alignment = LanguageGuidedAlignment(
            self.clip_model, token_ids, arch["prompt_context_tokens"], arch["lga_heads"]
        )
        self.eot_index = eot_index  # per class; a plain list, not state
        # The official model registers these a second time under their own names (they are checkpoint keys).
        self.image_encoder = self.clip_model.visual
        self.text_encoder = TextEncoder(self.clip_model)
        self.logit_scale = self.clip_model.logit_scale
        width = arch["text_width"]
        self.text_guided_interactor = nn.MultiheadAttention(width, arch["lga_heads"])
        self.norm1 = nn.LayerNorm(width)
        self.linear1 = nn.Linear(width, width * 4)
        self.linear2 = nn.Linear(width * 4, width)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_features = self.image_encoder(images)  # (B, 1 + patches, embed)
        batch = image_features.shape[0]
        scale = self.logit_scale.exp()

        # Class prompts conditioned on this image, through the text tower (all images and classes in one pass).
        prompts = self.language_guided_alignment(image_features)
        n_classes = prompts.shape[1]
        eot = torch.tensor(self.eot_index, device=images.device).repeat(batch)
        text_features = self.text_encoder(prompts.flatten(0, 1), eot).reshape(batch, n_classes, -1)
        text_unit = text_features / text_features.norm(dim=-1, keepdim=True)

        # Eq. (1): cosine logits of the CLS feature.
        cls_unit = image_features[:, 0] / image_features[:, 0].norm(dim=-1, keepdim=True)
        logits = scale * torch.einsum("be,bce->bc", cls_unit, text_unit)

        # Eq. (9): text-guided interactor; the patch tokens attend to the class text features.
        patches = image_features[:, 1:].transpose(0, 1)  # (patches, B, embed)
        texts = text_features.transpose(0, 1)  # (classes, B, embed)
        x = self.norm1(patches + self.text_guided_interactor(patches, texts, texts, need_weights=False)[0])
        x = self.norm2(x + self.linear2(F.relu(self.linear1(x))))
        pooled = x.mean(dim=0)
        pooled = pooled / pooled.norm(dim=-1, keepdim=True)
        return logits + scale * torch.einsum("be,bce->bc", pooled, text_unit)


# ---- configuration helpers -------------------------------------------------------------------------------------


def adapter_block_indices(layers: int, count: int) -> set[int]:
    """Blocks followed by an adapter: the last of each of ``count`` equal groups (official rule; 24/3 -> 7, 15, 23)."""
    if count <= 0:
        return set()
    step = layers // count
    return {(i + 1) * step - 1 for i in range(count)}


@functools.lru_cache(maxsize=8)
def _prompt_token_lists(n_context: int, context_length: int) -> tuple[tuple[int, ...], ...]:
    # CLIP's BPE tokenizer as shipped in open_clip (same vocabulary and ids as OpenAI's simple_tokenizer).
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    prefix = " ".join(["X"] * n_context)  # the official placeholder text for random-initialised context
    rows = []
    for name in CLASS_NAMES:
        ids = [tokenizer.sot_token_id, *tokenizer.encode(f"{prefix} {name}."), tokenizer.eot_token_id]
        if len(ids) > context_length:
            raise ValueError(f"prompt for {name!r} has {len(ids)} tokens, more than context_length={context_length}")
        rows.append(tuple(ids) + (0,) * (context_length - len(ids)))
    return tuple(rows)


def prompt_tokens(n_context: int, context_length: int) -> tuple[torch.Tensor, list[int]]:
    """Token ids of "X ... X real." and "X ... X fake." (CPU tensor, (2, context_length)) and each end-of-text index."""
    rows = _prompt_token_lists(n_context, context_length)
    ids = torch.tensor(rows, dtype=torch.long, device="cpu")
    return ids, [int(i) for i in ids.argmax(dim=-1)]  # the end-of-text id is the largest id


def resolve_architecture(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``FULL_ARCHITECTURE`` with ``overrides`` applied, validated."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(FULL_ARCHITECTURE)
    if unknown:
        raise ValueError(f"fatformer architecture: unknown keys {sorted(unknown)}; known: {sorted(FULL_ARCHITECTURE)}")
    arch = {**FULL_ARCHITECTURE, **overrides}
    grid, rest = divmod(arch["image_size"], arch["patch_size"])
    problems = []
    if rest:
        problems.append("image_size must be a multiple of patch_size")
    if arch["adapter_count"] and grid % 2:
        problems.append(f"the patch grid ({grid}) must be even for the adapters' Haar DWT / inverse to round-trip")
    if arch["adapter_count"] and arch["vision_layers"] % arch["adapter_count"]:
        problems.append("vision_layers must be a multiple of adapter_count")
    if arch["vision_width"] % arch["adapter_groups"]:
        problems.append("vision_width must be a multiple of adapter_groups")
    if arch["embed_dim"] != arch["text_width"]:
        # The enhancer and the interactor attend between image features (embed_dim) and text width.
        problems.append("embed_dim must equal text_width (as in every CLIP the official code supports)")
    for width, heads in (
        ("vision_width", "vision_heads"),
        ("text_width", "text_heads"),
        ("vision_width", "adapter_heads"),
        ("text_width", "lga_heads"),
    ):
        if arch[width] % arch[heads]:
            problems.append(f"{width} must be a multiple of {heads}")
    if arch["vocab_size"] < 49408:
        problems.append("vocab_size must hold CLIP's BPE ids (49408)")
    if problems:
        raise ValueError("fatformer architecture: " + "; ".join(problems))
    return arch


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official-format checkpoint (``{"model": state_dict, ...}``) or of a bare state dict.

    Unpickling is restricted to tensors and plain containers (``weights_only=True``); ``argparse.Namespace`` is allowed
    because training scripts of this family store their arguments next to the weights.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatch(
            f"{path} is not a FatFormer checkpoint: expected a state dict or {{'model': state dict}}"
        )
    return dict(state)


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointMismatch` naming the first missing / unexpected / reshaped keys, unless exact."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        f"{key} {tuple(state[key].shape)} vs {expected[key]}"
        for key in expected
        if key in state and tuple(state[key].shape) != expected[key]
    ]
    if missing or unexpected or reshaped:

        def first(items: list[str]) -> str:
            return ", ".join(items[:5]) + (" ..." if len(items) > 5 else "") if items else "none"

        raise CheckpointMismatch(
            f"{source} does not match the configured FatFormer architecture (strict load): "
            f"{len(missing)} missing keys [{first(missing)}]; {len(unexpected)} unexpected keys [{first(unexpected)}]; "
            f"{len(reshaped)} keys with other shapes (checkpoint vs model) [{first(reshaped)}]"
        )


# ---- the detector ----------------------------------------------------------------------------------------------


@register_detector
class FatFormerDetector(Detector):
    """FatFormer (CVPR 2024) as an imgverify detector.

    Config:
      ``weights``      path, http(s) URL or ``hf://repo/file`` of an official-format checkpoint (required unless
                       ``random_init``; the official release is only on Google Drive / OneDrive / Baidu).
      ``sha256``       optional checksum of that file.
      ``random_init``  build the architecture with seeded random weights: for tests and cost benchmarks only,
                       the score means nothing.
      ``architecture`` the network's sizes; a partial dict overrides keys of ``FULL_ARCHITECTURE`` (the released
                       model), which is how tests build tiny models through the same code.
      ``resize_size``  the square resize before the centre crop (official 256; the crop is ``image_size``).
    """

    name = "fatformer"
    features = features_of(name)
    default_config: dict[str, Any] = {
        "weights": None,
        "sha256": None,
        "random_init": False,
        "architecture": dict(FULL_ARCHITECTURE),  # a partial dict overrides these keys only
        "resize_size": RESIZE_SIZE,
    }
    # Every image is squashed to 256x256; below 64 px that is mostly interpolation, not the image.
    min_side = 64

    @classmethod
    def weight_sources(cls, config: dict[str, Any] | None = None) -> list[WeightSource]:
        """The configured checkpoint; none when ``weights`` is unset (there is no public default to fetch)."""
        config = cls.merged_config(config)
        if config["random_init"] or not config["weights"]:
            return []
        return [WeightSource(str(config["weights"]), config["sha256"], description="FatFormer checkpoint")]

    def load(self) -> None:
        arch = resolve_architecture(self.config["architecture"])
        resize = int(self.config["resize_size"])
        if resize < arch["image_size"]:
            raise ValueError(
                f"fatformer: resize_size {resize} is smaller than the crop image_size {arch['image_size']}"
            )
        weights, random_init = self.config["weights"], bool(self.config["random_init"])
        if weights and random_init:
            raise ValueError("fatformer: set either 'weights' or 'random_init', not both")
        if not weights and not random_init:
            raise WeightsUnavailable(
                "fatformer: config key 'weights' is not set. The official checkpoint is published only on cloud "
                f"drives ({', '.join(OFFICIAL_CHECKPOINT_LINKS)}): download it and set 'weights' to its path, URL or "
                "hf:// location. 'random_init': true builds random weights for tests and benchmarks only."
            )
        if random_init:
            with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
                torch.manual_seed(RANDOM_INIT_SEED)
                model = FatFormer(arch)
            self._weights_id = f"random-init-seed{RANDOM_INIT_SEED}"
        else:
            path = resolve_weights(str(weights), self.config["sha256"])
            state = read_checkpoint(path)
            with torch.device("meta"):  # no point initialising 490M parameters that are overwritten next
                model = FatFormer(arch)
            check_state_dict(model, state, source=str(path))
            # assign=True adopts the checkpoint's tensors instead of copying them into a second 2 GB set. The
            # official checkpoint stores each shared tensor once (torch.save keeps the ties), so the duplicated
            # names (image_encoder.* / clip_model.visual.*, ...) still point at the same memory afterwards.
            model.load_state_dict(state, strict=True, assign=True)
            self._weights_id = "sha256:" + (self.config["sha256"] or file_sha256(path))[:16]
        self.architecture = arch
        self.dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
        self.model = model.eval().to(device=self.device, dtype=self.dtype)

    @property
    def version(self) -> str:
        arch = self.architecture
        arch_id = (
            "vit-l14-3adapters"
            if arch == FULL_ARCHITECTURE
            else "arch-" + hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:8]
        )
        dtype = "fp16" if self.dtype == torch.float16 else "fp32"
        return f"fatformer-{CODE_VERSION} {self._weights_id} {arch_id} resize={self.config['resize_size']} {dtype}"

    def preprocess(self, image: DecodedImage) -> torch.Tensor:
        """The official test transform: square resize (bilinear), centre crop, ImageNet normalisation -> (3, S, S)."""
        resize, crop = int(self.config["resize_size"]), self.architecture["image_size"]
        resized = image.to_pil().resize((resize, resize), Image.BILINEAR)
        top = round((resize - crop) / 2.0)  # torchvision's CenterCrop offset
        pixels = np.asarray(resized, dtype=np.float32)[top : top + crop, top : top + crop] / 255.0
        return torch.from_numpy(((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy())

    def _forward(self, inputs: list[torch.Tensor]) -> list[dict[str, Any]]:
        batch = torch.stack(inputs).to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            logits = self.model(batch).float().cpu()
        probs = logits.softmax(dim=-1)[:, CLASS_NAMES.index("fake")]
        return [{"prob_fake": float(p), "logits": [float(v) for v in row]} for p, row in zip(probs, logits)]

    def postprocess(self, output: dict[str, Any], artifacts: bool) -> DetectorResult:
        prob = output["prob_fake"]
        result = DetectorResult(
            features={"fatformer_prob": prob},
            details={"logits": dict(zip(CLASS_NAMES, output["logits"])), "weights": self._weights_id},
        )
        if self.config["random_init"]:
            result.evidence.append("FatFormer runs with random weights (random_init): its score carries no meaning.")
        else:
            verdict = "generated" if prob >= 0.5 else "a real photo"
            result.evidence.append(f"FatFormer reads the image as {verdict} (P(fake) = {prob:.2f}).")
        return result
