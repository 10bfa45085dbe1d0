"""The detector contract.

A detector is a plain Python class (no Ray) that turns a batch of :class:`DecodedImage` into one
:class:`DetectorResult` per image. It follows the Hugging Face pipeline split:

* ``preprocess(image)``: per image, CPU, its own resizing / cropping / normalisation;
* ``_forward(inputs)``: the whole batch at once (the part worth batching on a GPU);
* ``postprocess(output, artifacts)``: per image, scalar features and optional artifacts.

``predict`` runs the three steps and isolates failures per image, so one bad image in a batch is
reported as failed for that image only. The same class is wrapped by its Serve deployment and used
by Ray Data batch scoring and by the training pipeline.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from models.image_input import DecodedImage
from models.schema import Direction, FeatureSpec  # noqa: F401  (re-exported: defined in models/schema.py)
from models.weights import WeightSource

# Evidence sentences that start with this are context (facts any photo can have), listed after real reasons.
CONTEXT_PREFIX = "Context: "
# The verdict's top-level ``provenance`` object when nothing claims where the image comes from.
NO_PROVENANCE: dict[str, Any] = {"kind": "none", "trusted": False, "signer": None, "generator": None, "source": None}


@dataclass
class DetectorResult:
    """What one detector says about one image."""

    features: dict[str, float] = field(default_factory=dict)
    # Heatmaps etc.: float arrays in [0, 1], shape (H, W); only computed when asked for.
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)
    # Structured, JSON-serialisable context (e.g. the provenance evidence list, the best CLIP prompt).
    details: dict[str, Any] = field(default_factory=dict)
    # Short human sentences worth showing in the verdict's reasoning.
    evidence: list[str] = field(default_factory=list)
    # Evidence strong enough to decide the verdict on its own (a valid C2PA AI claim, generator metadata,
    # a decoded generator watermark). Empty for every pixel model.
    hard_evidence: list[str] = field(default_factory=list)
    # Evidence that alone decides "NON-AI": a valid C2PA camera-capture manifest from a trusted signer, with no
    # AI anywhere in its history. Loses to nothing but trusted AI evidence; governed by the same policy switch.
    hard_evidence_real: list[str] = field(default_factory=list)
    # What the file's provenance says, summarised for the verdict's top-level ``provenance`` object
    # ({"kind", "trusted", "signer", "generator", "source", ...}); None for detectors that do not read it.
    provenance: dict[str, Any] | None = None
    # Set when this image failed in this detector; features are then empty.
    error: str | None = None
    skipped: str | None = None  # set when the detector does not apply (e.g. image smaller than it needs)

    @property
    def ok(self) -> bool:
        return self.error is None and self.skipped is None


class Detector(ABC):
    """Base class of every detector. Subclasses set the class attributes and the three steps."""

    name: ClassVar[str]
    # From the detector's entry in ``models/schema.py`` (``features = schema.features_of(name)``): the schema is
    # defined once there, and ``register_detector`` refuses a class whose features differ from it.
    features: ClassVar[tuple[FeatureSpec, ...]]
    # Configuration defaults as data (like timm's default_cfgs); a deployment's user_config overrides keys.
    default_config: ClassVar[dict[str, Any]] = {}
    # Images with a shorter side are skipped (reported as missing with the reason), not guessed at.
    min_side: ClassVar[int] = 1
    # Whether the detector produces artifacts (heatmaps) when asked; as its entry in ``models/schema.py`` says.
    has_artifacts: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any] | None = None, device: str = "cpu"):
        self.config: dict[str, Any] = self.merged_config(config)
        self.device = device
        self.load()

    @classmethod
    def merged_config(cls, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """``config`` over ``default_config``, as the detector would run with it; unknown keys are refused
        (a misspelt key would otherwise be ignored without a word)."""
        unknown = set(config or {}) - set(cls.default_config)
        if unknown:
            raise ValueError(
                f"detector {cls.name!r} got unknown config keys {sorted(unknown)}; "
                f"it accepts {sorted(cls.default_config)}"
            )
        return {**cls.default_config, **(config or {})}

    # ---- what subclasses write -------------------------------------------------------------------
    @classmethod
    def weight_sources(cls, config: dict[str, Any] | None = None) -> list[WeightSource]:
        """The weight files this detector would load with ``config`` (merged over ``default_config``);
        ``imgverify weights fetch`` fetches them ahead of time. Weight-free detectors return []."""
        return []

    def load(self) -> None:  # noqa: B027 - optional hook, see the docstring
        """Load weights / build the model from ``self.config``. Called at init and on reconfigure; the weight-free
        detectors have nothing to load, so this is a no-op rather than abstract."""

    @property
    @abstractmethod
    def version(self) -> str:
        """A string that changes whenever the detector's outputs could change (code, weights, config)."""

    @abstractmethod
    def preprocess(self, image: DecodedImage) -> Any:
        """Per-image preparation; runs on CPU."""

    @abstractmethod
    def _forward(self, inputs: list[Any]) -> list[Any]:
        """Run the model on a batch of preprocessed inputs; one output per input."""

    @abstractmethod
    def postprocess(self, output: Any, artifacts: bool) -> DetectorResult:
        """Turn one model output into features (and artifacts when ``artifacts`` is true)."""

    # ---- what callers use ------------------------------------------------------------------------
    def predict(self, images: list[DecodedImage], artifacts: bool = False) -> list[DetectorResult]:
        """Score a batch. Always returns one result per image, in order; failures are per image."""
        results: list[DetectorResult | None] = [None] * len(images)
        inputs, positions = [], []
        for i, image in enumerate(images):
            if min(image.width, image.height) < self.min_side:
                results[i] = DetectorResult(
                    skipped=f"image is {image.width}x{image.height}; {self.name} needs a side of {self.min_side}"
                )
                continue
            try:
                inputs.append(self.preprocess(image))
                positions.append(i)
            except Exception as err:  # noqa: BLE001 - reported as this image's failure
                results[i] = DetectorResult(error=f"preprocess: {type(err).__name__}: {err}")
        if inputs:
            try:
                outputs = self._forward(inputs)
                if len(outputs) != len(inputs):
                    raise RuntimeError(f"_forward returned {len(outputs)} outputs for {len(inputs)} inputs")
            except Exception as err:  # noqa: BLE001 - the whole batch failed in the model; say so per image
                for i in positions:
                    results[i] = DetectorResult(error=f"forward: {type(err).__name__}: {err}")
                return results  # type: ignore[return-value]
            for i, output in zip(positions, outputs):
                try:
                    results[i] = self._checked(self.postprocess(output, artifacts))
                except Exception as err:  # noqa: BLE001
                    results[i] = DetectorResult(error=f"postprocess: {type(err).__name__}: {err}")
        return results  # type: ignore[return-value]

    def _checked(self, result: DetectorResult) -> DetectorResult:
        """Features must be exactly the declared ones, finite and in range: nothing is made up downstream."""
        if result.ok:
            declared = {spec.name: spec for spec in self.features}
            extra = set(result.features) - set(declared)
            if extra:
                raise ValueError(f"undeclared features {sorted(extra)}")
            result.features = {name: declared[name].check(v) for name, v in result.features.items()}
        return result

    def describe(self) -> dict[str, Any]:
        """Name, version and feature specs, as reported by ``GET /v1/detectors``."""
        return {
            "name": self.name,
            "version": self.version,
            "device": self.device,
            "features": [spec.__dict__ for spec in self.features],
        }
