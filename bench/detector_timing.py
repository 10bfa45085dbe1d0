"""Timing detectors' ``predict`` side by side, shared by the cost benches (clip_b16_cost, effnet_artifact_cost)."""

from __future__ import annotations

import statistics
import time
from typing import Any

BATCHES = (1, 8)


def run_batches(detector: Any, images: list, batch: int) -> None:
    """``images`` through ``detector.predict`` in calls of ``batch``; a failed image stops the bench."""
    for start in range(0, len(images), batch):
        for result in detector.predict(images[start : start + batch]):
            if not result.ok:
                raise RuntimeError(f"{detector.name} failed: {result.error or result.skipped}")


def time_per_image(
    detectors: dict[str, Any], images: list, rounds: int
) -> tuple[dict[tuple[str, int], float], dict[tuple[str, int], float]]:
    """(wall ms, process CPU ms) per image for each (detector name, batch size in ``BATCHES``): the median over
    ``rounds`` rounds after one warm-up round. Rounds are interleaved across the detectors, so load from other
    processes on a shared machine hits all of them alike."""
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {(n, b): [] for n in detectors for b in BATCHES}
    for round_ in range(rounds + 1):  # round 0 warms up
        for (name, batch), taken in samples.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run_batches(detectors[name], images, batch)
            if round_:
                taken.append(
                    (
                        (time.perf_counter() - wall) * 1000 / len(images),
                        (time.process_time() - cpu) * 1000 / len(images),
                    )
                )
    wall_ms = {key: statistics.median(w for w, _ in taken) for key, taken in samples.items()}
    cpu_ms = {key: statistics.median(c for _, c in taken) for key, taken in samples.items()}
    return wall_ms, cpu_ms
