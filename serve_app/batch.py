"""``imgverify batch``: score a bucket of images with Ray Data, to Parquet, resumably.

    imgverify batch INPUT --out OUT [--config serve_config.local.yaml]

INPUT is a local folder (recursive), a glob, a manifest (.csv/.parquet with a ``filepath`` column) or
a URI any pyarrow filesystem reads (``s3://bucket/prefix``). The detectors, their settings, resources
and batch sizes, the fusion model and the verdict policy all come from the same Serve config file as
the HTTP service (``deployments.config.load_profile``), and the same stages compute the same answer
(``deployments/data.py``).

Output: Parquet files ``part-<run>-<n>.parquet`` under OUT with ``deployments.data.output_schema``, one row per
input file, failed files included (``error`` set). A scored row is the HTTP verdict for the same file and config:
each detector has its ``timeout_s`` here too (slower: ``missing``, status ``timeout``), a damaged file that still
decodes carries its ``warnings``, and a file no detector the fusion reads answered for is a row with label
``UNKNOWN`` and ``error`` null (``/v1/detect`` answers that verdict with 503, ``/v1/detect/batch`` as an item).
Each part is written whole or not at all (a temporary name renamed into place), so a run killed midway keeps
every part it finished, and a re-run skips every (path, sha256) already in OUT.
"""

from __future__ import annotations

import argparse
import glob as globlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import models
from deployments.config import Profile, load_profile
from deployments.data import output_schema

log = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "serve_config.local.yaml"
FILES_PER_BLOCK = 16
STAGES_BESIDE_POOLS = 4  # read, decode, drop the pixels, fusion: each holds stage_cpus


# ---- filesystems ---------------------------------------------------------------------------------------
def filesystem_from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem and path for a URI; an ``s3://`` one resolved whole, here, from this process's AWS
    environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL_S3``
    or ``AWS_ENDPOINT_URL``, the region ``from_uri`` found from ``AWS_REGION``/``AWS_DEFAULT_REGION`` or the
    bucket).

    Why: Ray Data's read tasks get this object pickled, and a pickled ``S3FileSystem`` keeps only what was
    passed to it explicitly; the rest (region, keys) the worker re-reads from *its* environment, which on a
    cluster is not the shell that ran ``imgverify batch``. A URI with its own options (``?region=...``,
    ``key:secret@``) is taken as written."""
    filesystem, path = pafs.FileSystem.from_uri(uri)
    parts = urlsplit(uri)
    if not isinstance(filesystem, pafs.S3FileSystem) or parts.query or "@" in parts.netloc:
        return filesystem, path
    env = os.environ
    keys = {}
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        keys = {"access_key": env["AWS_ACCESS_KEY_ID"], "secret_key": env["AWS_SECRET_ACCESS_KEY"]}
        keys["session_token"] = env.get("AWS_SESSION_TOKEN") or None
    # Else the default chain (config files, instance or pod role) on each node: credentials that refresh.
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    return pafs.S3FileSystem(region=filesystem.region, endpoint_override=endpoint, **keys), path


# ---- inputs ------------------------------------------------------------------------------------------
def list_inputs(source: str) -> tuple[list[str], pafs.FileSystem | None]:
    """Every file INPUT names, and the filesystem to read them with (None: local)."""
    if "://" in source:
        filesystem, root = filesystem_from_uri(source)
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File), filesystem
    path = Path(source)
    if path.is_file() and path.suffix in (".csv", ".parquet"):
        return manifest_files(path), None
    if path.is_dir():
        return sorted(str(p.resolve()) for p in path.rglob("*") if p.is_file()), None
    matches = sorted(str(Path(p).resolve()) for p in globlib.glob(source, recursive=True) if Path(p).is_file())
    if not matches:
        raise FileNotFoundError(f"{source} is not a folder, manifest, URI or glob that matches any file")
    return matches, None


def manifest_files(path: Path) -> list[str]:
    """The files a manifest lists in its ``filepath`` column, the one column batch scoring needs (a training
    manifest's labels and splits are not read). Refuses a manifest that names files that do not exist."""
    if path.suffix == ".csv":
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    else:
        table = pq.read_table(path)
    if "filepath" not in table.column_names:
        raise ValueError(f"manifest {path} has no 'filepath' column (columns: {table.column_names})")
    files = [str(Path(p).resolve()) for p in table.column("filepath").to_pylist()]
    missing = [p for p in files if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"manifest {path} names {len(missing)} files that do not exist, e.g. {missing[:3]}")
    return files


# ---- outputs -------------------------------------------------------------------------------------------
def _out_filesystem(out: str) -> tuple[pafs.FileSystem, str]:
    if "://" in out:
        return filesystem_from_uri(out)
    Path(out).mkdir(parents=True, exist_ok=True)
    return pafs.LocalFileSystem(), str(Path(out).resolve())


def already_scored(out: str) -> frozenset[tuple[str, str]]:
    """(path, sha256) of every row in OUT's finished parts."""
    filesystem, root = _out_filesystem(out)
    infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
    done = set()
    for info in infos:
        if (
            info.type == pafs.FileType.File
            and info.base_name.startswith("part-")
            and info.base_name.endswith(".parquet")
        ):
            table = pq.read_table(info.path, columns=["path", "sha256"], filesystem=filesystem)
            done.update(zip(table.column("path").to_pylist(), table.column("sha256").to_pylist()))
    return frozenset(done)


class PartWriter:
    """Writes rows to OUT in parts of ``rows_per_file``; each part appears whole or not at all."""

    def __init__(self, out: str, schema: pa.Schema, rows_per_file: int):
        self.filesystem, self.root = _out_filesystem(out)
        self.schema, self.rows_per_file = schema, rows_per_file
        self.run = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.pending: list[pa.Table] = []
        self.parts = 0

    def add(self, batch: pa.Table) -> None:
        self.pending.append(batch.select(self.schema.names).cast(self.schema))
        while sum(t.num_rows for t in self.pending) >= self.rows_per_file:
            table = pa.concat_tables(self.pending)
            self.pending = [table.slice(self.rows_per_file)]
            self._write(table.slice(0, self.rows_per_file))

    def flush(self) -> None:
        """Write what is pending (fewer than ``rows_per_file`` rows) as a last part."""
        table = pa.concat_tables(self.pending) if self.pending else None
        self.pending = []
        if table is not None and table.num_rows:
            self._write(table)

    def _write(self, table: pa.Table) -> None:
        name = f"part-{self.run}-{self.parts:05d}.parquet"
        final = f"{self.root}/{name}"
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            temporary = f"{self.root}/.{name}.tmp"
            pq.write_table(table, temporary, filesystem=self.filesystem)
            os.replace(temporary, final)  # atomic on one filesystem
        else:
            pq.write_table(table, final, filesystem=self.filesystem)  # an object store PUT is all-or-nothing
        self.parts += 1


# ---- the job ----------------------------------------------------------------------------------------------
@dataclass
class Summary:
    files: int
    skipped: int
    scored: int
    failed: int
    seconds: float
    parts: int

    @property
    def images_per_s(self) -> float:
        return (self.scored + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.files} files: {self.scored} scored, {self.failed} failed, {self.skipped} already in OUT; "
            f"{self.images_per_s:.2f} images/s over {self.seconds:.1f} s; {self.parts} new part files"
        )


def actors_per_detector(profile: Profile, stage_cpus: float, free: dict[str, float]) -> int:
    """How many full sets of detector actors fit in the resources that are free right now.

    The pools are fixed and all their actors must start before images flow (see ``build_dataset``);
    a pool larger than what is free waits for resources forever and the job hangs without a word
    (for example beside a running Serve application on the same cluster). So: size them from what
    is free, and refuse clearly when not even one actor per detector fits.
    """
    need_cpu = sum(d.num_cpus for d in profile.detectors.values())
    need_gpu = sum(d.num_gpus for d in profile.detectors.values())
    stages_cpu = STAGES_BESIDE_POOLS * stage_cpus
    spare_cpu = free.get("CPU", 0.0) - stages_cpu
    fits = [spare_cpu / need_cpu if need_cpu else float("inf")]
    if need_gpu:
        fits.append(free.get("GPU", 0.0) / need_gpu)
    sets = int(min(fits) + 1e-9)
    if sets < 1:
        raise RuntimeError(
            f"the detectors need {need_cpu:g} CPU and {need_gpu:g} GPU (plus {stages_cpu:g} CPU for reading, "
            f"decoding, dropping the pixels and fusion), but only {free.get('CPU', 0.0):g} CPU and "
            f"{free.get('GPU', 0.0):g} GPU are free on this Ray cluster; free some, lower num_cpus/num_gpus in "
            "the config, or pass --actors-per-detector on an autoscaling cluster"
        )
    return sets


def build_dataset(
    paths: list[str],
    filesystem,
    profile: Profile,
    done: frozenset,
    actors: int | None = None,
    files_per_block: int = FILES_PER_BLOCK,
    stage_cpus: float = 0.1,
):
    """The Ray Data pipeline: read -> decode once -> one actor pool per detector -> fusion.

    ``actors`` per detector pool; by default as many as the free resources hold, at most one per CPU.
    """
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    from deployments.data import FusionStage, add_detector_stages, decode_stage
    from models.image_input import IMAGE_COLUMNS

    # Blocks of a few files (default 16, at most 2000 blocks): small enough that rows stream to OUT as
    # they finish, large enough to pay the per-task scheduling of the read / decode stages rarely.
    # Measured on 2 CPUs (bench/batch_throughput.py): 4 files per block 8.2 images/s, 8 -> 10.7, 16 -> 22.6.
    blocks = max(1, min(2000, -(-len(paths) // files_per_block)))
    if actors is None:
        per_cpu = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = min(per_cpu, actors_per_detector(profile, stage_cpus, ray.available_resources()))
    ds = ray.data.read_binary_files(
        paths, include_paths=True, filesystem=filesystem, num_cpus=stage_cpus, override_num_blocks=blocks
    )
    ds = ds.map_batches(
        decode_stage,
        fn_kwargs={"limits": profile.args.input.limits(), "done": done},
        batch_size=8,
        batch_format="numpy",
        num_cpus=stage_cpus,
    )
    # Fixed pools, all started before images flow: an actor started mid-run (autoscaling) spends seconds
    # loading torch and weights while the others wait.
    # Each detector's timeout_s, as the HTTP ingress applies it: a slower one is missing, the job goes on.
    timeouts = {d.name: d.timeout_s for d in profile.args.detectors}
    ds = add_detector_stages(ds, profile.detectors, compute=ActorPoolStrategy(size=actors), timeouts=timeouts)
    # The pixels' last stop was the last detector. Without num_cpus this task asks for a whole CPU and
    # never starts beside the pools on a small cluster.
    ds = ds.drop_columns(list(IMAGE_COLUMNS), num_cpus=stage_cpus)
    return ds.map_batches(
        FusionStage,
        fn_constructor_kwargs={"verdict_args": profile.args.verdict_args()},
        batch_size=None,  # whatever the detectors pass on: batching here would hold rows back from OUT
        batch_format="numpy",
        num_cpus=stage_cpus,
        compute=ActorPoolStrategy(size=1),
    )


def run_batch(
    source: str,
    out: str,
    config: str | Path = DEFAULT_CONFIG,
    rows_per_file: int = 1000,
    progress: bool = True,
    actors: int | None = None,
    files_per_block: int = FILES_PER_BLOCK,
) -> Summary:
    """Score every file of ``source`` into ``out``; files already in ``out`` are skipped."""
    import ray
    from ray.data import DataContext
    from tqdm import tqdm

    profile = load_profile(config)
    started = time.perf_counter()
    paths, filesystem = list_inputs(source)
    done = already_scored(out)
    if not ray.is_initialized():
        # A cluster when RAY_ADDRESS names one, else a fresh local instance.
        ray.init(address=os.environ.get("RAY_ADDRESS", "local"), include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False  # one bar, ours, in files
    writer = PartWriter(out, output_schema(list(models.feature_schema(profile.args.detector_names()))), rows_per_file)
    scored = failed = 0
    already = len({p for p, _ in done} & set(paths))  # approximate: a changed file is scored again
    with tqdm(total=len(paths) - already, unit="img", disable=not progress, desc="imgverify batch") as bar:
        if paths:
            for batch in build_dataset(paths, filesystem, profile, done, actors, files_per_block).iter_batches(
                batch_size=None, batch_format="pyarrow"
            ):
                writer.add(batch)
                errors = batch.num_rows - batch.column("error").null_count
                failed += errors
                scored += batch.num_rows - errors
                bar.update(batch.num_rows)
    writer.flush()
    return Summary(
        len(paths), len(paths) - scored - failed, scored, failed, time.perf_counter() - started, writer.parts
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgverify batch", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="folder, glob, manifest (.csv/.parquet) or URI (s3://...)")
    parser.add_argument("--out", required=True, help="output folder or URI for the Parquet parts")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config file naming the detectors")
    parser.add_argument("--rows-per-file", type=int, default=1000)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--files-per-block", type=int, default=FILES_PER_BLOCK, help="files read per Ray Data block")
    parser.add_argument(
        "--actors-per-detector",
        type=int,
        default=None,
        help="actors in each detector's pool (default: as many as the free CPUs/GPUs hold, at most one per CPU)",
    )
    args = parser.parse_args(argv)
    summary = run_batch(
        args.input,
        args.out,
        args.config,
        args.rows_per_file,
        progress=not args.no_progress,
        actors=args.actors_per_detector,
        files_per_block=args.files_per_block,
    )
    print(summary)
    return 0
