"""Detectors as Ray Data stages: the batch-scoring twin of ``deployments/detector.py``.

A dataset of files flows through::

    decode_stage (tasks)  ->  DetectorStage per detector (actor pools)  ->  FusionStage  ->  rows

``decode_stage`` hashes and decodes each file once with the service's ``decode_image``; a file that
cannot be decoded becomes a row with ``error`` set and flows on untouched. Each ``DetectorStage`` holds
one detector (the same class the Serve deployment wraps, same config) and adds one JSON column,
``outcome.<name>``; with the config's ``timeout_s`` (batch scoring) a detector slower than that, or one whose
call raises, is ``missing`` with the outcome the HTTP ingress gives it (``DetectorOutcome.timed_out`` /
``.raised``). ``FusionStage`` calls the service's own ``decide``, so a row equals the HTTP answer for the same
image, failures and file warnings included. Training's feature extraction uses the first two stages, without
timeouts (it waits for every feature), and stops before fusion.
"""

from __future__ import annotations

import hashlib
import json
import time
import types
import typing
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import models
from models.fusion import DetectorOutcome
from models.image_input import (
    WARNINGS_COLUMN,
    ImageInputError,
    InputLimits,
    column_lines,
    decode_image,
    images_from_columns,
    images_to_columns,
)
from models.verdict import Verdict, VerdictBody


def outcome_column(detector: str) -> str:
    return f"outcome.{detector}"


def decode_stage(batch: dict[str, np.ndarray], limits: InputLimits, done: frozenset = frozenset()) -> dict[str, Any]:
    """``path`` + ``bytes`` in; hash, skip what ``done`` holds (resume), decode the rest once."""
    paths, hashes, errors, images, datas = [], [], [], [], []
    for path, data in zip(batch["path"], batch["bytes"]):
        data = bytes(data)
        sha256 = hashlib.sha256(data).hexdigest()
        if (str(path), sha256) in done:
            continue
        try:
            image, error = decode_image(data, limits), ""
        except ImageInputError as err:
            image, error = None, f"{err.code}: {err.message}"
        paths.append(str(path))
        hashes.append(sha256)
        errors.append(error)
        images.append(image)
        datas.append(data)
    return {
        "path": np.asarray(paths, dtype=object),
        "sha256": np.asarray(hashes, dtype=object),
        "error": np.asarray(errors, dtype=object),
        **images_to_columns(images, datas),
    }


class DetectorStage:
    """One detector as a Ray Data actor: loads once, scores each batch, adds ``outcome.<name>``.

    With ``cache`` (``{key: outcome JSON}`` for this detector's current version), cached rows are not
    recomputed; the ``key`` column names each row's cache key. With ``timeout_s`` (batch scoring: the config's, as
    HTTP applies it), a batch the detector has not answered within it is reported ``timeout`` for each of its images.
    """

    def __init__(self, name: str, config: dict[str, Any], cache_dir: str | None = None, timeout_s: float | None = None):
        from deployments.detector import pick_device

        self.name = name
        self.detector = models.create_detector(name, config, device=pick_device())
        self.cache = load_outcome_cache(Path(cache_dir), name, self.detector.version) if cache_dir else {}
        self.timeout_s = timeout_s
        # One model thread: a call past its timeout is left to finish there (a Python thread cannot be stopped), and
        # the next batch waits for it within its own timeout, as a Serve call queued behind a hung batch does.
        self.model_thread = ThreadPoolExecutor(max_workers=1) if timeout_s is not None else None
        self.running: Future | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = images_from_columns(batch)
        keys = batch["key"] if "key" in batch else [None] * len(images)
        outcomes: list[str | None] = [self.cache.get(k) if k is not None else None for k in keys]
        todo = [i for i, image in enumerate(images) if image is not None and outcomes[i] is None]
        if todo:
            for i, outcome in zip(todo, self._outcomes([images[i] for i in todo])):
                outcomes[i] = outcome.to_json()
        batch[outcome_column(self.name)] = np.asarray([o or "" for o in outcomes], dtype=object)
        return batch

    def _outcomes(self, images: list) -> list[DetectorOutcome]:
        started = time.perf_counter()
        if self.model_thread is None:  # training: no timeout, and a raising detector stops the run
            results = self.detector.predict(images)
        else:
            try:
                results = self._predict_within_timeout(images)
            except TimeoutError:
                return [DetectorOutcome.timed_out(self.name, self.timeout_s) for _ in images]
            except Exception as err:  # noqa: BLE001 - reported as missing, as over HTTP, never invented
                ms = (time.perf_counter() - started) * 1000
                return [DetectorOutcome.raised(self.name, err, ms) for _ in images]
        # Batch time shared evenly: in batch scoring, per-image latency is throughput's inverse.
        per_image_ms = (time.perf_counter() - started) * 1000 / len(images)
        return [DetectorOutcome.from_result(self.name, r, self.detector.version, per_image_ms) for r in results]

    def _predict_within_timeout(self, images: list) -> list:
        """``predict`` on the model thread; TimeoutError when it (or the call still running before it) takes longer
        than ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        if self.running is not None and not wait([self.running], timeout=self.timeout_s).done:
            raise TimeoutError
        self.running = self.model_thread.submit(self.detector.predict, images)
        return self.running.result(timeout=max(0.0, deadline - time.monotonic()))


def add_detector_stages(
    ds, detectors: dict[str, Any], compute, cache_dir: str | None = None, timeouts: dict[str, float] | None = None
):
    """One :class:`DetectorStage` actor pool per detector, in config order, each with its deployment's batch
    size and resources (``detectors``: name -> ``DetectorProfile``). Batch scoring and feature extraction both
    build their pipelines with this; they differ in ``compute`` (fixed or autoscaling pools), the cache and
    ``timeouts`` (name -> the config's ``timeout_s``: batch scoring's, as HTTP; None: wait, for training)."""
    for name, detector in detectors.items():
        ds = ds.map_batches(
            DetectorStage,
            fn_constructor_kwargs={
                "name": name,
                "config": detector.user_config.detector,
                "cache_dir": cache_dir,
                "timeout_s": (timeouts or {}).get(name),
            },
            batch_size=detector.user_config.max_batch_size,
            batch_format="numpy",
            num_cpus=detector.num_cpus,
            num_gpus=detector.num_gpus,
            compute=compute,
        )
    return ds


class FusionStage:
    """The service's verdict for each row, from the outcome columns, as flat output columns."""

    def __init__(self, verdict_args: dict[str, Any]):
        self.verdict = Verdict.build(**verdict_args)
        self.detectors = list(verdict_args["detectors"])

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = []
        for i in range(len(batch["path"])):
            row: dict[str, Any] = {
                "path": batch["path"][i],
                "sha256": batch["sha256"][i],
                "error": batch["error"][i] or None,
            }
            if not row["error"]:
                outcomes = [DetectorOutcome.from_json(batch[outcome_column(n)][i]) for n in self.detectors]
                row.update(self.verdict.decide(outcomes, column_lines(batch[WARNINGS_COLUMN][i])))
            rows.append(row)
        return output_table(rows, self.verdict.features)


# ---- the output schema, derived from the verdict's declared shape ---------------------------------------
ROW_FIELDS = [
    pa.field("path", pa.string(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("error", pa.string()),  # set when the file could not be decoded: "code: message"; verdict fields null
]
SCALAR_TYPES = {float: pa.float64(), bool: pa.bool_(), str: pa.string(), int: pa.int64()}


def verdict_column(annotation: Any) -> tuple[pa.DataType, Any]:
    """A VerdictBody field's column: a scalar type, or a JSON string with the empty value an error row gets
    (lists and maps: their keys vary by profile, e.g. one entry per detector)."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)] if _is_union(annotation) else [annotation]
    base = options[0] if len(options) == 1 else None
    if typing.get_origin(base) is typing.Literal:
        base = type(typing.get_args(base)[0])
    if base in SCALAR_TYPES:
        return SCALAR_TYPES[base], None
    return pa.string(), [] if typing.get_origin(base) is list else {}


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def output_schema(features: list[str]) -> pa.Schema:
    """One row per input file: path, sha256 and error, then every VerdictBody field, then one column per feature."""
    verdict = [pa.field(name, verdict_column(field.annotation)[0]) for name, field in VerdictBody.model_fields.items()]
    return pa.schema(ROW_FIELDS + verdict + [pa.field(name, pa.float64()) for name in features])


def output_table(rows: list[dict[str, Any]], features: list[str]) -> pa.Table:
    """Flatten verdicts (plus path / sha256 / error) into the batch output schema."""
    columns: dict[str, list] = {field.name: [r.get(field.name) for r in rows] for field in ROW_FIELDS}
    for name, field in VerdictBody.model_fields.items():
        _, empty = verdict_column(field.annotation)
        values = [r.get(name) for r in rows]
        columns[name] = values if empty is None else [json.dumps(empty if v is None else v) for v in values]
    for name in features:
        columns[name] = [r.get(name) for r in rows]
    return pa.Table.from_pydict(columns, schema=output_schema(features))


# ---- the feature cache (training) ------------------------------------------------------------------
def cache_path(cache_dir: Path, detector: str, version: str) -> Path:
    return cache_dir / detector / hashlib.sha256(version.encode()).hexdigest()[:16]


def load_outcome_cache(cache_dir: Path, detector: str, version: str) -> dict[str, str]:
    """``{key: outcome JSON}`` from every Parquet part under this detector version's cache folder."""
    import pyarrow.parquet as pq

    folder = cache_path(cache_dir, detector, version)
    cache: dict[str, str] = {}
    for part in sorted(folder.glob("*.parquet")):
        table = pq.read_table(part, columns=["key", "outcome"])
        cache.update(zip(table.column("key").to_pylist(), table.column("outcome").to_pylist()))
    return cache
