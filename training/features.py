"""Step 3 of training: detector features for every manifest item, with Ray Data, cached.

    imgverify features extract MANIFEST --out FEATURES.parquet [--config serve_config.local.yaml]
                               [--variant clean|reencode|jpeg75|...] [--copies N] [--cache DIR]

Each enabled detector runs as an actor pool (``deployments.data.DetectorStage``: the same class and
config as its Serve deployment). A *variant* says what happens to an image before it is decoded the
service's way: ``clean`` (as stored), ``reencode`` (``training.augment.Reencode``, seeded per item, the
same processing for both classes: ``training.augment.FUSION_PROCESSING``), ``launder`` (one laundering route per
item: screenshot, social re-encode, thumbnail, crop or padding; ``training.augment.Launder``, seeded per item), or one
of ``training.augment.ROBUSTNESS``. Outcomes are cached per
detector version under ``--cache`` keyed by ``row_key(item key, variant)``, so a re-run computes only what is
missing, and a new detector version recomputes only that detector.

Output columns: key, variant, filepath, label, split, source, generator, error, one float column per
feature (null when missing), and ``outcome.<detector>`` (JSON of the whole outcome, for ``decide``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import models
from deployments.config import Profile, load_profile
from deployments.data import cache_path, load_outcome_cache, outcome_column
from models.fusion import DetectorOutcome
from models.image_input import ImageInputError, decode_image, images_to_columns
from training.augment import FUSION_PROCESSING, LAUNDERING, LAUNDERING_ID, LAUNDERING_ROUTES, ROBUSTNESS, Launder
from training.dataset import DATASET_LIMITS, item_bytes, load_manifest

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "serve_config.local.yaml"
DEFAULT_CACHE = Path("cache/features")
ITEM_COLUMNS = ("key", "variant", "filepath", "label", "split", "source", "generator")
CACHE_FLUSH_ROWS = 200  # outcomes are written to the cache every this many rows, not only at the end


# A variant's name plus, for re-encoded variants, the processing's parameters: changing FUSION_PROCESSING
# changes every cache key it produced, so stale features are never served from the cache.
PROCESSING_ID = hashlib.sha256(repr(FUSION_PROCESSING).encode()).hexdigest()[:8]


LAUNDER = Launder()


def row_key(key: str, variant: str) -> str:
    """The feature row's (and cache's) key for one item under one variant."""
    if variant.startswith("reencode"):
        return f"{key}|{variant}@{PROCESSING_ID}"
    if variant.startswith("launder") or variant in LAUNDERING:
        return f"{key}|{variant}@{LAUNDERING_ID}"
    return f"{key}|{variant}"


def variant_bytes(filepath: str, crop: str, key: str, variant: str) -> bytes:
    """The bytes a detector sees for one item under ``variant`` (``reencode`` and ``launder`` may carry a copy index:
    ``reencode#1``; ``launder-thumbnail#0`` takes that one laundering route, ``launder#0`` a random one); every random
    choice is seeded by the item key, so a variant is reproducible."""
    data = item_bytes(filepath, crop)
    if variant == "clean":
        return data
    original = decode_image(data, DATASET_LIMITS)
    if variant.startswith(("reencode", "launder")):
        seed = int.from_bytes(hashlib.sha256(f"{key}|{variant}".encode()).digest()[:8], "big")
        processing = FUSION_PROCESSING if variant.startswith("reencode") else launder_of(variant)
        return processing(original, np.random.default_rng(seed))
    if variant in ROBUSTNESS:
        return ROBUSTNESS[variant](original)
    raise ValueError(
        f"unknown variant {variant!r}; use clean, reencode[#n], launder[-ROUTE][#n] or one of {sorted(ROBUSTNESS)}"
    )


def launder_of(variant: str) -> Launder:
    """``launder#n``: a random route per item; ``launder-ROUTE#n``: that route (one of ``LAUNDERING_ROUTES``)."""
    name = variant.partition("#")[0]
    if name == "launder":
        return LAUNDER
    route = name.removeprefix("launder-")
    if route not in LAUNDERING_ROUTES:
        raise ValueError(f"unknown laundering route in {variant!r}; use one of {LAUNDERING_ROUTES}")
    return Launder(routes=(route,))


def load_stage(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Manifest rows in; the variant's bytes decoded once by the service's decoder; errors become rows."""
    rows: dict[str, list] = {k: [] for k in ("path", "sha256", "error", *ITEM_COLUMNS)}
    images, datas = [], []
    for i in range(len(batch["key"])):
        item = {c: str(batch[c][i]) for c in ITEM_COLUMNS}
        image, data, error = None, b"", ""
        try:
            data = variant_bytes(item["filepath"], str(batch["crop"][i]), item["key"], item["variant"])
            image = decode_image(data, DATASET_LIMITS)
        except (OSError, ImageInputError) as err:  # logged in the output and counted, never aborts the run
            error = f"{getattr(err, 'code', type(err).__name__)}: {err}"
        images.append(image)
        datas.append(data)
        rows["path"].append(item["filepath"])
        rows["sha256"].append(image.sha256 if image else "")
        rows["error"].append(error)
        for column, value in item.items():
            rows[column].append(row_key(value, item["variant"]) if column == "key" else value)
    return {**{k: np.asarray(v, dtype=object) for k, v in rows.items()}, **images_to_columns(images, datas)}


def extract_features(
    manifest: pa.Table,
    profile: Profile,
    variants: list[str],
    cache_dir: Path = DEFAULT_CACHE,
    progress: bool = True,
) -> pa.Table:
    """One row per (item, variant): features, outcomes, and the item's labels."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext
    from tqdm import tqdm

    from deployments.data import add_detector_stages

    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    items = [
        {
            **{c: row.get(c) or "" for c in ("key", "filepath", "label", "split", "source", "generator", "crop")},
            "variant": v,
        }
        for row in manifest.to_pylist()
        for v in variants
    ]
    detectors = profile.args.detector_names()
    keep = [*ITEM_COLUMNS, "error", *(outcome_column(n) for n in detectors)]
    # Items every detector already has in its cache (at its current version) skip the pipeline entirely.
    caches = {n: load_outcome_cache(cache_dir, n, v) for n, v in detector_versions(profile).items()}
    cached = [i for i in items if all(row_key(i["key"], i["variant"]) in c for c in caches.values())]
    todo = [i for i in items if not all(row_key(i["key"], i["variant"]) in c for c in caches.values())]
    tables = [_cached_table(cached, caches, keep)] if cached else []
    with tqdm(total=len(todo), unit="img", disable=not progress, desc=f"features ({len(cached)} cached)") as bar:
        if todo:
            ds = ray.data.from_items(todo, override_num_blocks=max(1, min(200, len(todo) // 8)))
            ds = ds.map_batches(load_stage, batch_size=8, batch_format="numpy", num_cpus=0.1)
            ds = add_detector_stages(ds, profile.detectors, ActorPoolStrategy(min_size=1, max_size=2), str(cache_dir))
            # A small CPU share on purpose: without one this step asks for a whole CPU, which the detector pools
            # hold on a 2-CPU machine, and the pixels it should drop pile up until the pipeline stalls (seen).
            ds = ds.select_columns(keep, num_cpus=0.1)
            pending: list[pa.Table] = []
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                tables.append(batch.cast(tables[0].schema) if tables else batch)
                pending.append(tables[-1])
                bar.update(batch.num_rows)
                if sum(t.num_rows for t in pending) >= CACHE_FLUSH_ROWS:  # a killed run keeps what it computed
                    update_cache(pa.concat_tables(pending), detectors, cache_dir)
                    pending = []
    table = pa.concat_tables(tables) if tables else pa.table({c: pa.array([], pa.string()) for c in keep})
    update_cache(table, detectors, cache_dir)
    # Ray Data yields rows in the order its tasks finish: sorted, a cold run and a cached one give trainers the same
    # rows in the same order, so a seeded model (the head's novelty sample, folds) comes out byte for byte the same.
    table = table.sort_by([("key", "ascending"), ("variant", "ascending")])
    return _with_feature_columns(table, detectors)


def single_detector_profile(config: Path, name: str, settings: dict[str, Any]) -> Profile:
    """A one-detector profile: ``name`` as the Serve config has it (resources, batching), with some of its detector
    settings replaced (a head switched off, other weights), for training steps that run only that detector."""
    from deployments.config import AppArgs, DetectorArgs, DetectorProfile

    detector = load_profile(config, check_fusion=False).detectors.get(name) or DetectorProfile(name=name)
    user_config = detector.user_config.model_copy(update={"detector": {**detector.user_config.detector, **settings}})
    return Profile(
        args=AppArgs(detectors=[DetectorArgs(name=name)]),
        detectors={name: detector.model_copy(update={"user_config": user_config})},
    )


def detector_versions(profile: Profile) -> dict[str, str]:
    """Each detector's current version, asked of a detector built with its own resources in a Ray task
    (a version can depend on the weights' hash, so it is only known once they are resolved)."""
    import ray

    @ray.remote
    def version_of(name: str, config: dict) -> str:
        return models.create_detector(name, config).version

    refs = {
        name: version_of.options(num_cpus=d.num_cpus, num_gpus=d.num_gpus).remote(name, d.user_config.detector)
        for name, d in profile.detectors.items()
    }
    return {name: ray.get(ref) for name, ref in refs.items()}


def _cached_table(items: list[dict], caches: dict[str, dict[str, str]], columns: list[str]) -> pa.Table:
    rows = {c: [] for c in columns}
    for item in items:
        key = row_key(item["key"], item["variant"])
        for column in ITEM_COLUMNS:
            rows[column].append(key if column == "key" else item[column])
        rows["error"].append("")
        for name, cache in caches.items():
            rows[outcome_column(name)].append(cache[key])
    return pa.table({c: pa.array(v, pa.string()) for c, v in rows.items()})


def update_cache(table: pa.Table, detectors: list[str], cache_dir: Path) -> None:
    """Append outcomes the cache does not hold yet, one Parquet part per detector version and run."""
    keys = table.column("key").to_pylist()
    for name in detectors:
        by_version: dict[str, dict[str, str]] = {}
        for key, text in zip(keys, table.column(outcome_column(name)).to_pylist()):
            if text:
                by_version.setdefault(json.loads(text)["version"], {})[key] = text
        for version, outcomes in by_version.items():
            known = load_outcome_cache(cache_dir, name, version)
            new = {k: v for k, v in outcomes.items() if k not in known}
            if new:
                folder = cache_path(cache_dir, name, version)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "VERSION").write_text(version)
                part = (
                    folder / f"part-{time.strftime('%Y%m%d-%H%M%S')}-{len(list(folder.glob('*.parquet'))):05d}.parquet"
                )
                pq.write_table(pa.table({"key": list(new), "outcome": list(new.values())}), part)


def _with_feature_columns(table: pa.Table, detectors: list[str]) -> pa.Table:
    """Add one float column per feature (null when the detector did not produce it)."""
    schema = models.feature_schema(detectors)
    values: dict[str, list[float | None]] = {name: [] for name in schema}
    for i in range(table.num_rows):
        features: dict[str, float] = {}
        for name in detectors:
            text = table.column(outcome_column(name))[i].as_py()
            if text:
                outcome = DetectorOutcome.from_json(text)
                if outcome.status == "ok" and outcome.result:
                    features.update(outcome.result.features)
        for name in schema:
            values[name].append(features.get(name))
    for name, column in values.items():
        table = table.append_column(pa.field(name, pa.float64()), pa.array(column, type=pa.float64()))
    return table


def feature_rows(table: pa.Table, features: list[str]) -> list[dict[str, float]]:
    """Rows as ``{feature: value}`` with missing features left out (the fusion models' input)."""
    columns = {name: table.column(name).to_pylist() for name in features if name in table.column_names}
    return [{n: c[i] for n, c in columns.items() if c[i] is not None} for i in range(table.num_rows)]


def outcomes_of(table: pa.Table, i: int, detectors: list[str]) -> list[DetectorOutcome]:
    """The detector outcomes of row ``i``, for ``models.fusion.decide``."""
    return [DetectorOutcome.from_json(table.column(outcome_column(n))[i].as_py()) for n in detectors]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgverify features extract", description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="features .parquet")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--variant", default="clean", help="clean, reencode, launder, or a robustness name")
    parser.add_argument("--copies", type=int, default=1, help="reencode / launder: this many random copies per item")
    parser.add_argument("--split", action="append", help="only these splits (repeatable)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    manifest = load_manifest(args.manifest)
    if args.split:
        manifest = manifest.filter(pa.compute.is_in(manifest["split"], pa.array(args.split)))
    variants = [f"{args.variant}#{i}" if args.copies > 1 else args.variant for i in range(args.copies)]
    started = time.perf_counter()
    table = extract_features(manifest, load_profile(args.config, check_fusion=False), variants, args.cache)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out)
    errors = sum(1 for e in table.column("error").to_pylist() if e)
    print(f"{table.num_rows} rows ({errors} unreadable) -> {args.out} in {time.perf_counter() - started:.1f} s")
    return 0
