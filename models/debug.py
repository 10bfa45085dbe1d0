"""Tiny detectors for exercising the serving graph: fast, slow and failing on purpose.

They are real detectors (registered, batched, versioned) with trivial maths, so graph tests and the
serving benchmark run without model weights. ``debug_sleep``'s delay makes timeouts and latency
measurable; ``debug_fail`` raises on every image.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from models.base import Detector, DetectorResult
from models.image_input import DecodedImage
from models.registry import register_detector
from models.schema import features_of


@register_detector
class DebugMeanDetector(Detector):
    """Mean brightness as a stand-in "probability"; ``busy_ms`` burns CPU per image to emulate a model."""

    name = "debug_mean"
    features = features_of(name)
    default_config: dict[str, Any] = {"busy_ms": 0.0}

    @property
    def version(self) -> str:
        return f"debug_mean-1 busy_ms={self.config['busy_ms']}"

    def preprocess(self, image: DecodedImage) -> np.ndarray:
        return image.rgb

    def _forward(self, inputs: list[np.ndarray]) -> list[float]:
        busy_until = time.perf_counter() + len(inputs) * float(self.config["busy_ms"]) / 1000.0
        while time.perf_counter() < busy_until:
            pass
        return [float(x.mean()) / 255.0 for x in inputs]

    def postprocess(self, output: float, artifacts: bool) -> DetectorResult:
        result = DetectorResult(features={"debug_prob": output})
        if artifacts:
            result.artifacts["debug_map"] = np.full((8, 8), output, dtype=np.float32)
        return result


@register_detector
class DebugSleepDetector(Detector):
    """Sleeps ``sleep_s`` per batch, then answers; for timeout and concurrency tests."""

    name = "debug_sleep"
    features = features_of(name)
    default_config: dict[str, Any] = {"sleep_s": 0.05}

    @property
    def version(self) -> str:
        return f"debug_sleep-1 sleep_s={self.config['sleep_s']}"

    def preprocess(self, image: DecodedImage) -> None:
        return None

    def _forward(self, inputs: list[None]) -> list[float]:
        time.sleep(float(self.config["sleep_s"]))
        return [0.25 for _ in inputs]

    def postprocess(self, output: float, artifacts: bool) -> DetectorResult:
        return DetectorResult(features={"debug_sleep_prob": output})


@register_detector
class DebugFailDetector(Detector):
    """Raises in its forward pass on every batch."""

    name = "debug_fail"
    features = features_of(name)

    @property
    def version(self) -> str:
        return "debug_fail-1"

    def preprocess(self, image: DecodedImage) -> None:
        return None

    def _forward(self, inputs: list[None]) -> list[float]:
        raise RuntimeError("debug_fail always fails")

    def postprocess(self, output: float, artifacts: bool) -> DetectorResult:
        raise AssertionError("unreachable")
