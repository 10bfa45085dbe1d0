"""DINOv2 embeddings + a calibrated linear SVM: ``dino_prob``.

The backbone is a Hugging Face ``AutoModel`` (``facebook/dinov2-base`` by default) with its published image
processor (resize shortest edge 256 bicubic, centre crop 224, ImageNet mean/std). The embedding is the CLS token,
optionally concatenated with the mean patch token (DINOv2's own linear-evaluation recipe), L2-normalised.

The head, :class:`DinoSvmHead`, is trained by ``training/train_dino_svm.py``. It is a linear SVM with Platt
(sigmoid) calibration, ``CalibratedClassifierCV(LinearSVC, method="sigmoid")``:

* linear, because DINOv2 features are built to be linearly separable for downstream tasks, and a linear model
  is d + 1 numbers per fold: saved as plain arrays in an ``.npz`` (no pickle, nothing executed on load);
* Platt scaling on cross-validated decision values (each fold's SVM is calibrated on data it did not see),
  rather than ``SVC(probability=True)``, whose libsvm-internal calibration is randomised, quadratic in the
  number of samples, and whose RBF model would have to be stored as support vectors.

The head file carries its feature schema (backbone id, embedding size, pooling); loading refuses a head made
for a different backbone or pooling.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.base import Detector, DetectorResult
from models.image_input import DecodedImage
from models.registry import register_detector
from models.schema import features_of
from models.weights import WeightSource, hf_repo_source, hf_weights_id, resolve_weights

CODE_VERSION = "dino-1"
HEAD_FORMAT = "imgverify-dino-svm-1"
POOLINGS = ("cls", "cls+mean")


class DinoSvmHead:
    """Linear SVM + Platt calibration on embeddings; labels 0 = real, 1 = AI.

    scikit-learn conventions (constructor arguments are the parameters, ``fit`` returns ``self``, learned
    attributes end in ``_``) without inheriting ``BaseEstimator``: importing scikit-learn costs more than a
    second, and ``import models`` must stay cheap. It is imported inside ``fit``.

    ``fit`` runs scikit-learn's ``CalibratedClassifierCV(LinearSVC(C), method="sigmoid", cv=k)`` and keeps only
    its numbers: per fold the SVM's ``coef_`` / ``intercept_`` and the sigmoid's ``a_`` / ``b_``.
    ``predict_proba`` recomputes exactly what scikit-learn computes: the fold average of
    ``expit(-(a * (x . w + c) + b))``.
    """

    def __init__(
        self,
        C: float = 1.0,
        cv: int = 5,
        max_iter: int = 10000,
        random_state: int = 0,
        backbone_id: str = "",
        pooling: str = "cls",
    ):
        self.C = C
        self.cv = cv
        self.max_iter = max_iter
        self.random_state = random_state
        self.backbone_id = backbone_id
        self.pooling = pooling

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {
            "C": self.C,
            "cv": self.cv,
            "max_iter": self.max_iter,
            "random_state": self.random_state,
            "backbone_id": self.backbone_id,
            "pooling": self.pooling,
        }

    def set_params(self, **params: Any) -> DinoSvmHead:
        unknown = set(params) - set(self.get_params())
        if unknown:
            raise ValueError(f"unknown DinoSvmHead parameters {sorted(unknown)}")
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def fit(self, X: np.ndarray, y: np.ndarray) -> DinoSvmHead:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.model_selection import StratifiedKFold
        from sklearn.svm import LinearSVC

        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).astype(int)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X must be (n_samples, n_features) matching y; got {X.shape} and {y.shape}")
        if set(np.unique(y)) - {0, 1}:
            raise ValueError(f"labels must be 0 (real) or 1 (AI); got {sorted(set(np.unique(y)))}")
        counts = np.bincount(y, minlength=2)
        if counts.min() < 2:
            raise ValueError(
                f"need at least 2 examples of each class to calibrate; got {counts[0]} real and {counts[1]} AI"
            )
        folds = StratifiedKFold(n_splits=int(min(self.cv, counts.min())), shuffle=True, random_state=self.random_state)
        svm = LinearSVC(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
        calibrated = CalibratedClassifierCV(svm, method="sigmoid", cv=folds).fit(X, y)
        folds_fitted = calibrated.calibrated_classifiers_
        self.coef_ = np.stack([f.estimator.coef_[0] for f in folds_fitted])
        self.intercept_ = np.array([f.estimator.intercept_[0] for f in folds_fitted])
        self.platt_a_ = np.array([f.calibrators[0].a_ for f in folds_fitted], dtype=np.float64)
        self.platt_b_ = np.array([f.calibrators[0].b_ for f in folds_fitted], dtype=np.float64)
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Per-fold SVM margins, shape (n_samples, n_folds)."""
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Columns: P(real), P(AI)."""
        from scipy.special import expit  # numerically stable sigmoid (what scikit-learn's calibrator uses)

        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected (n, {self.n_features_in_}) embeddings, got {X.shape}")
        p_ai = expit(-(self.platt_a_ * self.decision_function(X) + self.platt_b_)).mean(axis=1)
        return np.column_stack([1.0 - p_ai, p_ai])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    # ---- persistence: plain arrays, no pickle ---------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write the head and its schema to ``path`` (.npz). ``metadata`` (JSON) records how it was trained."""
        schema = {
            "format": HEAD_FORMAT,
            "backbone_id": self.backbone_id,
            "embedding_size": int(self.n_features_in_),
            "pooling": self.pooling,
            "params": self.get_params(),
            "metadata": metadata or {},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:  # a file handle, so numpy does not append its own ".npz"
            np.savez(
                handle,
                coef=self.coef_,
                intercept=self.intercept_,
                platt_a=self.platt_a_,
                platt_b=self.platt_b_,
                schema=np.array(json.dumps(schema)),
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> DinoSvmHead:
        with np.load(path, allow_pickle=False) as data:
            schema = json.loads(str(data["schema"]))
            if schema.get("format") != HEAD_FORMAT:
                raise ValueError(f"{path} is not a {HEAD_FORMAT} head (format {schema.get('format')!r})")
            head = cls(**schema["params"])
            head.coef_ = data["coef"].astype(np.float64)
            head.intercept_ = data["intercept"].astype(np.float64)
            head.platt_a_ = data["platt_a"].astype(np.float64)
            head.platt_b_ = data["platt_b"].astype(np.float64)
        head.classes_ = np.array([0, 1])
        head.n_features_in_ = int(schema["embedding_size"])
        head.metadata_ = schema["metadata"]
        if head.coef_.shape[1] != head.n_features_in_:
            raise ValueError(f"{path}: weights are {head.coef_.shape[1]}-d but schema says {head.n_features_in_}")
        return head

    def check_compatible(self, backbone_id: str, embedding_size: int, pooling: str) -> None:
        """Refuse to score embeddings this head was not trained on."""
        problems = []
        if self.backbone_id != backbone_id:
            problems.append(f"backbone {self.backbone_id!r} (configured: {backbone_id!r})")
        if self.n_features_in_ != embedding_size:
            problems.append(f"embedding size {self.n_features_in_} (configured backbone gives {embedding_size})")
        if self.pooling != pooling:
            problems.append(f"pooling {self.pooling!r} (configured: {pooling!r})")
        if problems:
            raise ValueError("DINO head was trained for a different embedding: " + "; ".join(problems))


@register_detector
class DinoDetector(Detector):
    """DINOv2 embedding -> calibrated linear SVM -> ``dino_prob``; or the embedding itself for training."""

    name = "dino"
    features = features_of(name)
    default_config: dict[str, Any] = {
        "model_id": "facebook/dinov2-base",  # HF id or local directory
        "cache_dir": None,
        "local_files_only": False,  # HF_HUB_OFFLINE=1 has the same effect
        "pooling": "cls",  # "cls" or "cls+mean" (CLS concatenated with the mean patch token)
        "head": None,  # trained head: path, URL or hf://repo/file (.npz)
        "head_sha256": None,
        "return_embedding": False,  # put the embedding in details["embedding"] (training, caching)
        "processor_backend": "pil",  # transformers image-processor backend; "pil" is the published numerics
    }

    @classmethod
    def weight_sources(cls, config: dict[str, Any] | None = None) -> list[WeightSource]:
        """The SVM head, and the DINOv2 repo when ``model_id`` is a hub id (``hf://OWNER/NAME``, whole repo).

        The repo is listed only without ``cache_dir``: the fetch fills the default Hugging Face cache, which a
        detector configured with another ``cache_dir`` would not read.
        """
        config = cls.merged_config(config)
        model_id = str(config["model_id"] or "")
        sources = hf_repo_source(model_id, config["cache_dir"], "DINOv2 backbone (Hugging Face repo)")
        if config["head"]:
            sources.append(WeightSource(str(config["head"]), config["head_sha256"], description="DINOv2 SVM head"))
        return sources

    def load(self) -> None:
        from transformers import AutoImageProcessor, AutoModel

        if self.config["pooling"] not in POOLINGS:
            raise ValueError(f"dino: pooling must be one of {POOLINGS}, got {self.config['pooling']!r}")
        if not self.config["head"] and not self.config["return_embedding"]:
            raise ValueError(
                "dino: no SVM head configured, so there is no probability to give; set `head` to a file made by "
                "training/train_dino_svm.py, or set `return_embedding` to use the detector as an embedder"
            )
        self.head: DinoSvmHead | None = None
        self.head_id = "none"
        if self.config["head"]:
            path = resolve_weights(self.config["head"], self.config["head_sha256"])
            self.head = DinoSvmHead.load(path)
            self.head_id = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        hub = {"cache_dir": self.config["cache_dir"], "local_files_only": bool(self.config["local_files_only"])}
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.model = AutoModel.from_pretrained(self.config["model_id"], dtype=dtype, **hub).to(self.device).eval()
        self.weights_id = hf_weights_id(self.config["model_id"])
        self.processor = AutoImageProcessor.from_pretrained(
            self.config["model_id"], backend=self.config["processor_backend"], **hub
        )
        # Register tokens (dinov2 "with registers") sit between CLS and the patches; they are not patches.
        self.first_patch = 1 + int(getattr(self.model.config, "num_register_tokens", 0) or 0)
        self.embedding_size = self.model.config.hidden_size * (2 if self.config["pooling"] == "cls+mean" else 1)
        if self.head is not None:
            self.head.check_compatible(self.config["model_id"], self.embedding_size, self.config["pooling"])

    @property
    def version(self) -> str:
        return (
            f"{CODE_VERSION} {self.config['model_id']}@{self.weights_id} pooling={self.config['pooling']} "
            f"processor={self.config['processor_backend']} head={self.head_id}"
        )

    def preprocess(self, image: DecodedImage) -> torch.Tensor:
        return self.processor(images=image.to_pil(), return_tensors="pt")["pixel_values"][0]

    def _forward(self, inputs: list[torch.Tensor]) -> list[dict[str, Any]]:
        pixels = torch.stack(inputs).to(self.device, self.model.dtype)
        with torch.inference_mode():
            tokens = self.model(pixel_values=pixels).last_hidden_state.float()  # after the final layernorm
            embedding = tokens[:, 0]
            if self.config["pooling"] == "cls+mean":
                embedding = torch.cat([embedding, tokens[:, self.first_patch :].mean(dim=1)], dim=-1)
            embedding = torch.nn.functional.normalize(embedding, dim=-1).cpu().numpy()
        probs = self.head.predict_proba(embedding)[:, 1] if self.head is not None else [None] * len(inputs)
        return [{"embedding": e, "prob": None if p is None else float(p)} for e, p in zip(embedding, probs)]

    def postprocess(self, output: dict[str, Any], artifacts: bool) -> DetectorResult:
        result = DetectorResult(details={"backbone": self.config["model_id"], "pooling": self.config["pooling"]})
        if output["prob"] is not None:
            result.features["dino_prob"] = output["prob"]
            result.evidence.append(f"DINOv2 embedding + linear SVM: P(AI) {output['prob']:.2f}")
        if self.config["return_embedding"]:
            result.details["embedding"] = [float(v) for v in output["embedding"]]
        return result
