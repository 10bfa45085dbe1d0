"""One generic Serve deployment that wraps any registered detector.

Each enabled detector becomes its own deployment (named after the detector), so it scales, batches
and takes GPU fractions independently. Replicas, autoscaling and ``ray_actor_options`` come from the
Serve config's ``deployments`` list; ``user_config`` (see ``deployments.config.DetectorUserConfig``)
sets batching and the detector's settings, and ``reconfigure`` applies a new one to live replicas.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray import serve
from ray.serve.metrics import Counter, Histogram

import models
from deployments.batching import DynamicBatcher
from deployments.config import DEFAULT_DETECTOR_CPUS, DetectorUserConfig
from models.base import Detector, DetectorResult
from models.image_input import DecodedImage

log = logging.getLogger("ray.serve")

LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


def pick_device() -> str:
    """CUDA when Ray assigned this replica a GPU (a fraction counts) and torch sees it, else CPU."""
    if not ray.get_gpu_ids():
        # Without a GPU, no torch import just to learn that: it takes seconds, which a CPU-only detector's new
        # replica (after a node is lost) or batch pool actor would otherwise spend before it can answer.
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@serve.deployment(
    # Large enough that a batch can fill, and that Serve's router never finds the replica full: a full
    # replica makes the router retry with backoff up to 0.5 s, which collapses throughput (docs/operations.md).
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": DEFAULT_DETECTOR_CPUS},
    health_check_period_s=10,
)
class DetectorDeployment:
    """Serves ``detect(image, artifacts)`` for one detector, batching concurrent calls."""

    def __init__(self, detector_name: str):
        self.name = detector_name
        self.detector: Detector | None = None
        self.user_config: DetectorUserConfig | None = None
        self.device = pick_device()
        # Batches form when the model is free, not on a timer (deployments/batching.py says why not @serve.batch).
        self.batcher = DynamicBatcher(self._detect_batch)
        self.batch_ms = Histogram(
            "imgverify_detector_batch_ms",
            description="Time of one batched predict in a detector replica.",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("detector",),
        )
        self.batch_size = Histogram(
            "imgverify_detector_batch_size",
            description="Images per batched predict.",
            boundaries=[1, 2, 4, 8, 16, 32, 64],
            tag_keys=("detector",),
        )
        self.image_errors = Counter(
            "imgverify_detector_image_errors_total",
            description="Images a detector failed on.",
            tag_keys=("detector",),
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batching settings; (re)load the detector when its settings changed. Called by Serve right
        after ``__init__`` and on every ``user_config`` change, without restarting the replica."""
        config = DetectorUserConfig.model_validate(user_config or {})
        self.batcher.configure(config.max_batch_size, config.batch_wait_timeout_s)
        if self.detector is None or self.user_config is None or config.detector != self.user_config.detector:
            started = time.perf_counter()
            # Build the new detector fully before swapping, so requests in flight keep the old one.
            self.detector = models.create_detector(self.name, config.detector, device=self.device)
            log.info(
                "detector %s loaded (%s) on %s in %.1f s",
                self.name,
                self.detector.version,
                self.device,
                time.perf_counter() - started,
            )
        self.user_config = config

    def check_health(self) -> None:
        self._loaded()

    def _loaded(self) -> Detector:
        """The detector, or a clear error: reconfigure() loads it before Serve routes any request here."""
        if self.detector is None:
            raise RuntimeError(f"detector {self.name} is not loaded")
        return self.detector

    def describe(self) -> dict[str, Any]:
        detector = self._loaded()
        info = detector.describe()
        info["config"] = detector.config
        info["replica"] = serve.get_replica_context().replica_id.unique_id
        info["batching"] = {
            **(self.user_config.model_dump(exclude={"detector"}) if self.user_config else {}),
            "queued": self.batcher.queued,  # calls waiting for the model now (a stuck model shows here)
        }
        return info

    async def detect(self, image: DecodedImage, artifacts: bool = False) -> tuple[DetectorResult, str]:
        """One image in, (result, detector version) out. ``image`` arrives from the object store: the
        ingress puts it there once and every detector receives the same reference."""
        return await self.batcher.submit((image, artifacts))

    async def _detect_batch(self, calls: list[tuple[DecodedImage, bool]]) -> list[tuple[DetectorResult, str]]:
        detector = self._loaded()
        images = [image for image, _ in calls]
        artifacts = [wanted for _, wanted in calls]
        started = time.perf_counter()
        # The model runs in a worker thread so the replica's event loop keeps accepting requests
        # (and filling the next batch) meanwhile; torch and numpy release the GIL.
        results = await asyncio.to_thread(detector.predict, images, any(artifacts))
        tags = {"detector": self.name}
        self.batch_ms.observe((time.perf_counter() - started) * 1000, tags=tags)
        self.batch_size.observe(len(images), tags=tags)
        failed = sum(r.error is not None for r in results)
        if failed:
            self.image_errors.inc(failed, tags=tags)
        for result, wanted in zip(results, artifacts):
            if not wanted:
                result.artifacts = {}  # computed for the batch; only the callers who asked get them back
        return [(result, detector.version) for result in results]
