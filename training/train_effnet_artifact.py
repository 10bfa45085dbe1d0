"""Fine-tune the EfficientNet-Lite0 artifact detector (``models/effnet_artifact.py``) and write its weights and card.

    python -m training.train_effnet_artifact --manifest runs/manifest_local.parquet \\
        --out models/weights/effnet_artifact.safetensors [--time-limit-min 25] [--train-limit N]
    python -m training.train_effnet_artifact --fetch-imagenet     # only fetch + verify the ImageNet checkpoint

Steps:

1. Manifest: ``load_manifest`` + ``clean_manifest``; only the ``train`` split fits and only ``val`` selects the epoch
   and fits the calibration. The ``test`` split is never read (not decoded, not scored). Items whose short side is
   under one patch are left out (the detector skips such images).
2. Patch pool, built once: every train image, real and AI alike, goes through the same processing ``rounds``
   times: a random native-resolution window of at most ``source_cap`` px (so a camera's 12 MP and a generator's
   1 MP give windows of native pixels alike), then ``training.augment.Reencode`` (random crop; even rounds keep the
   native scale, odd rounds resize 0.5-1.0; JPEG q65-97 / PNG / WEBP as in ``FUSION_PROCESSING``; random chroma
   subsampling), then ``decode_image``; ``patches_per_image`` random patches at even offsets are cut from each.
3. Training: the ImageNet checkpoint (``IMAGENET_SOURCE``, fetched through ``models.weights``) fills the backbone;
   AdamW (backbone ``--lr`` x ``--backbone-lr-factor``, new head ``--lr``), warm-up then cosine decay over whichever
   ends first, the planned epochs or ``--time-limit-min``; class-balanced BCE; random flips. Validation after each
   epoch (image level, the detector's own tiling and mean-logit aggregation on seeded re-encodes of the val images);
   the epoch with the best val AUC is kept.
4. Calibration: Platt scaling of the image-level mean logit on the same re-encoded validation images.
5. The written file is loaded through ``create_detector("effnet_artifact", ...)`` and scored on the validation
   images as re-encoded and as stored; metrics per source go into the card (``.json`` beside the weights).
"""

from __future__ import annotations

import os

# As in train_ghostnet: on an oversubscribed CPU, spinning OpenMP threads burn the cores the other thread needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import hashlib
import itertools
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.nn import functional as F

from models.effnet_artifact import (
    IMAGENET_SOURCE,
    INPUTS,
    PACKAGED_WEIGHTS,
    VARIANT,
    EffNetArtifactNet,
    build_model,
    cut_patches,
    load_imagenet_backbone,
    patch_boxes,
    save_weights,
)
from models.ghostnet import patches_to_tensor
from models.image_input import DecodedImage, decode_image
from models.weights import fetch_weights, file_sha256
from training.augment import FUSION_PROCESSING, Reencode
from training.dataset import check_two_classes, clean_manifest, load_manifest
from training.folds import fold_of
from training.patch_training import (
    MODERN_MATCHED,
    Item,
    auc,
    fit_platt,
    items_hash,
    load_item,
    log,
    per_source,
    reencode_ranges,
    timm_version,
    usable_items,
)

DEFAULT_MANIFEST = Path("runs/manifest_local.parquet")


# ---- data -----------------------------------------------------------------------------------------------------
def subset(items: list[Item], limit: int | None, seed: int) -> list[Item]:
    """At most ``limit`` items, drawn at random within each (source, label) stratum in proportion; all if None."""
    if not limit or limit >= len(items):
        return items
    rng = np.random.default_rng(seed)
    strata: dict[tuple[str, int], list[Item]] = {}
    for item in items:
        strata.setdefault((item.source, item.label), []).append(item)
    chosen = []
    for key in sorted(strata):
        group = strata[key]
        take = max(1, round(limit * len(group) / len(items)))
        chosen += [group[i] for i in sorted(rng.choice(len(group), min(take, len(group)), replace=False))]
    return sorted(chosen, key=lambda item: item.key)


def reencode(
    image: DecodedImage, patch: int, source_cap: int, native: bool, rng: np.random.Generator
) -> DecodedImage | None:
    """The shared training processing of one image (both classes alike), decoded again like any upload.

    ``native``: crop only, no resize, so the generator's pixel grid survives; else resized as ``reencode_ranges``
    allows (0.5-1.0, floor raised where a patch would not fit). Formats as the fusion model's processing."""
    ranges = reencode_ranges(image.width, image.height, patch, source_cap)
    if ranges is None:
        return None
    crop_fraction, scale = ranges
    if native:
        scale = (1.0, 1.0)
    processing = Reencode(crop_fraction=crop_fraction, scale=scale, formats=FUSION_PROCESSING.formats)
    decoded = decode_image(processing(image, rng))
    return decoded if min(decoded.width, decoded.height) >= patch else None


def item_patches(item: Item, index: int, patch: int, rounds: int, per_image: int, source_cap: int, seed: int):
    """``rounds`` processings of one item (even rounds native scale, odd rounds resized), ``per_image`` random
    patches at even offsets from each; seeded by the item's index."""
    image = load_item(item)
    patches = []
    for round_ in range(rounds):
        rng = np.random.default_rng([seed, index, round_])
        processed = reencode(image, patch, source_cap, round_ % 2 == 0, rng)
        if processed is None:
            continue
        rgb = processed.rgb
        for _ in range(per_image):
            y = int(rng.integers(0, (rgb.shape[0] - patch) // 2 + 1)) * 2
            x = int(rng.integers(0, (rgb.shape[1] - patch) // 2 + 1)) * 2
            patches.append(rgb[y : y + patch, x : x + patch].copy())
    return patches


@dataclass
class PatchPool:
    patches: np.ndarray  # (n, P, P, 3) uint8
    labels: np.ndarray  # (n,) float32
    sources: list[str]


def build_patch_pool(
    items: list[Item], patch: int, rounds: int, per_image: int, source_cap: int, seed: int, workers: int
) -> PatchPool:
    jobs = [(item, index, patch, rounds, per_image, source_cap, seed) for index, item in enumerate(items)]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:  # decode / re-encode only, no torch
            per_item = pool.starmap(item_patches, jobs, chunksize=4)
    else:
        per_item = [item_patches(*job) for job in jobs]
    patches, labels, sources = [], [], []
    for item, got in zip(items, per_item):
        patches += got
        labels += [item.label] * len(got)
        sources += [item.source] * len(got)
    return PatchPool(np.stack(patches), np.asarray(labels, np.float32), sources)


@dataclass
class TiledImage:
    item: Item
    patches: np.ndarray
    boxes: list


def tiled_images(
    items: list[Item], patch: int, max_patches: int, source_cap: int, seed: int, processed: bool
) -> tuple[list[TiledImage], int]:
    """Each item tiled like the detector's ``preprocess``; with ``processed``, after one seeded training
    processing (alternating native / resized like the pool). Also the count left out (smaller than a patch)."""
    tiled, left_out = [], 0
    for index, item in enumerate(items):
        image = load_item(item)
        if processed:
            image = reencode(image, patch, source_cap, index % 2 == 0, np.random.default_rng([seed, 1_000_000 + index]))
        if image is None or min(image.width, image.height) < patch:
            left_out += 1
            continue
        boxes = patch_boxes(image.width, image.height, patch, max_patches)
        tiled.append(TiledImage(item, cut_patches(image.rgb, boxes), boxes))
    return tiled, left_out


def prepared_data(
    args: argparse.Namespace, train: list[Item], val: list[Item]
) -> tuple[PatchPool, list[TiledImage], int]:
    """The training pool and the processed validation tiles; with ``--pool-cache DIR`` kept in (and read back from)
    an .npz named by the settings and items, so runs that differ only in the model reuse the same patches."""
    settings = [
        args.patch,
        args.max_patches,
        args.rounds,
        args.patches_per_image,
        args.source_cap,
        args.seed,
        items_hash(train + val),
    ]
    name = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    cache = args.pool_cache / f"effnet_pool_{name}.npz" if args.pool_cache else None
    by_key = {item.key: item for item in val}
    if cache is not None and cache.exists():
        data = np.load(cache, allow_pickle=False)
        pool = PatchPool(data["patches"], data["labels"], [str(s) for s in data["sources"]])
        bounds = np.cumsum([0, *data["val_counts"]])
        val_tiled = [
            TiledImage(by_key[str(key)], data["val_patches"][a:b], [tuple(box) for box in data["val_boxes"][a:b]])
            for key, a, b in zip(data["val_keys"], bounds[:-1], bounds[1:])
        ]
        return pool, val_tiled, int(data["val_left_out"])
    pool = build_patch_pool(
        train, args.patch, args.rounds, args.patches_per_image, args.source_cap, args.seed, args.threads
    )
    val_tiled, val_left_out = tiled_images(val, args.patch, args.max_patches, args.source_cap, args.seed, True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            patches=pool.patches,
            labels=pool.labels,
            sources=np.asarray(pool.sources),
            val_keys=np.asarray([t.item.key for t in val_tiled]),
            val_counts=np.asarray([len(t.boxes) for t in val_tiled]),
            val_patches=np.concatenate([t.patches for t in val_tiled]),
            val_boxes=np.asarray([box for t in val_tiled for box in t.boxes]),
            val_left_out=val_left_out,
        )
    return pool, val_tiled, val_left_out


# ---- model ----------------------------------------------------------------------------------------------------
def patch_logits(model: EffNetArtifactNet, patches: np.ndarray, chunk: int = 64) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(patches), chunk):
            x = patches_to_tensor(patches[start : start + chunk], "cpu", torch.float32)
            out.append(model(x.contiguous(memory_format=torch.channels_last)).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def image_logits(model: EffNetArtifactNet, tiled: list[TiledImage]) -> np.ndarray:
    flat = patch_logits(model, np.concatenate([t.patches for t in tiled]))
    bounds = np.cumsum([0] + [len(t.boxes) for t in tiled])
    return np.asarray([flat[a:b].mean() for a, b in itertools.pairwise(bounds)])


def summary_auc(labels: np.ndarray, scores: np.ndarray, sources: list[str]) -> dict:
    """AUC overall and on modern-matched (None where a class is missing)."""
    sources_arr = np.asarray(sources)
    mm = sources_arr == MODERN_MATCHED
    overall, matched = auc(labels, scores), auc(labels[mm], scores[mm])
    return {
        "all": None if overall is None else round(overall, 4),
        MODERN_MATCHED: None if matched is None else round(matched, 4),
    }


# ---- main -----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.train_effnet_artifact", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--out", type=Path, default=PACKAGED_WEIGHTS, help="weights .safetensors; card beside it")
    parser.add_argument("--fetch-imagenet", action="store_true", help="fetch + verify the ImageNet checkpoint, exit")
    parser.add_argument("--input", default="rgb", choices=INPUTS)
    parser.add_argument("--patch", type=int, default=224)
    parser.add_argument("--max-patches", type=int, default=4, help="detector tiling used for validation")
    parser.add_argument("--rounds", type=int, default=2, help="processings per training image (even: native)")
    parser.add_argument("--patches-per-image", type=int, default=2, help="random patches per processing")
    parser.add_argument("--source-cap", type=int, default=1024, help="longest side of the native window")
    parser.add_argument("--train-limit", type=int, default=None, help="about this many train items, stratified")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--time-limit-min", type=float, default=25.0, help="training + validation, minutes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="the new head's learning rate")
    parser.add_argument("--backbone-lr-factor", type=float, default=0.3)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-cache", type=Path, default=None, help="folder to keep / reuse the patch pool in")
    parser.add_argument("--prepare-only", action="store_true", help="build (and cache) the pool, then exit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folds", type=int, default=1, help="with --hold-out-fold: cross-fitting (training.cross_fit)")
    parser.add_argument(
        "--hold-out-fold", type=int, default=None, help="train without this fold of the train clusters (fold_of)"
    )
    parser.add_argument(
        "--hold-out-source",
        default=None,
        help="train and validate without this source (leave-one-source-out: training/leave_out.py)",
    )
    args = parser.parse_args(argv)
    if args.hold_out_fold is None and args.folds != 1:
        parser.error("--folds needs --hold-out-fold")
    if args.hold_out_fold is not None and not (args.folds >= 2 and 0 <= args.hold_out_fold < args.folds):
        parser.error(f"--hold-out-fold {args.hold_out_fold} --folds {args.folds}: need folds >= 2, 0 <= k < folds")
    return args


def main(argv: list[str] | None = None) -> int:
    """Steps 1-5 of the module docstring: manifest, patch pool, training, calibration, validation; then the card."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.fetch_imagenet:
        return fetch_imagenet()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    splits = load_splits(args, started)
    prepared = build_pool(args, splits, started)
    if args.prepare_only:
        return 0
    model, imagenet_path = initial_model(args)
    model, run = train(args, model, prepared, started)
    calibration, val_mean = calibrate_and_save(args, model, prepared.val_tiled)
    training_wall_s = time.perf_counter() - started
    validation = validate_written(args, splits.val, prepared.val_tiled, val_mean, started)
    card = model_card(args, argv, splits, prepared, model, imagenet_path, run, calibration, validation, training_wall_s)
    write_card(args, card, started)
    return 0


def fetch_imagenet() -> int:
    """``--fetch-imagenet``: fetch and verify the ImageNet checkpoint, say where it is."""
    resolved = fetch_weights(IMAGENET_SOURCE.location, IMAGENET_SOURCE.sha256, IMAGENET_SOURCE.archive_sha256)
    print(f"{IMAGENET_SOURCE.location}  {resolved.path}  {resolved.status}")
    return 0


def tiled_labels(tiled: list[TiledImage]) -> np.ndarray:
    """The label (1 = ai) of each tiled image."""
    return np.asarray([t.item.label for t in tiled])


def tiled_sources(tiled: list[TiledImage]) -> list[str]:
    """The source of each tiled image."""
    return [t.item.source for t in tiled]


# ---- 1. manifest ------------------------------------------------------------------------------------------------
@dataclass
class Splits:
    """The train and val items used (the test split is never read), and what was left out."""

    train: list[Item]  # without the held-out fold when cross-fitting, then cut to --train-limit
    val: list[Item]
    train_usable: int  # usable train items before --train-limit (without the held-out fold when cross-fitting)
    dropped: int  # rows clean_manifest removed
    too_small: dict[str, int]  # per source: items whose short side holds no patch


def load_splits(args: argparse.Namespace, started: float) -> Splits:
    """Step 1: the manifest, cleaned, cut to items that hold one patch; train (less a held-out fold, at most
    ``--train-limit``) and val, each with both classes."""
    table = load_manifest(args.manifest)
    kept, dropped = clean_manifest(table)
    items, too_small = usable_items(kept, args.patch)
    if args.hold_out_source is not None:  # a leave-out copy: the held-out source is scored by it, never seen
        items = [i for i in items if i.source != args.hold_out_source]
    train_all = [i for i in items if i.split == "train"]
    if args.hold_out_fold is not None:  # a cross-fitting copy: the held-out fold is scored by it, never seen
        cluster = dict(zip(kept.column("key").to_pylist(), kept.column("cluster").to_pylist()))
        train_all = [i for i in train_all if fold_of(cluster[i.key], args.folds) != args.hold_out_fold]
    train = subset(train_all, args.train_limit, args.seed)
    val = [i for i in items if i.split == "val"]
    for name, split in (("train", train), ("val", val)):
        check_two_classes(pa.table({"label": ["ai" if i.label else "real" for i in split]}), f"{name} split")
    log(
        started,
        f"manifest {args.manifest}: {table.num_rows} rows; train {len(train)} of {len(train_all)} usable, "
        f"val {len(val)}; test split not read",
    )
    return Splits(train, val, len(train_all), int(dropped.num_rows), too_small)


# ---- 2. patch pool ----------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """The training patch pool and the processed validation tiles."""

    pool: PatchPool
    val_tiled: list[TiledImage]
    val_left_out: int  # val images smaller than a patch after processing


def build_pool(args: argparse.Namespace, splits: Splits, started: float) -> Prepared:
    """Step 2: the patch pool and the validation tiles (the input transform runs in the model, so one pool serves
    every input); with ``--prepare-only`` nothing more is done with them."""
    pool, val_tiled, val_left_out = prepared_data(args, splits.train, splits.val)
    if args.prepare_only:
        log(started, f"pool: {len(pool.labels)} train patches, {len(val_tiled)} val images; --prepare-only: done")
    else:
        log(
            started,
            f"pool: {len(pool.labels)} train patches ({int(pool.labels.sum())} ai); {len(val_tiled)} val images "
            f"({val_left_out} left out after processing)",
        )
    return Prepared(pool, val_tiled, val_left_out)


# ---- 3. training ------------------------------------------------------------------------------------------------
def initial_model(args: argparse.Namespace) -> tuple[EffNetArtifactNet, Path]:
    """The network, its backbone filled from the ImageNet checkpoint, channels-last; and the checkpoint's path."""
    model = build_model(args.input, seed=args.seed)
    imagenet_path = load_imagenet_backbone(
        model, IMAGENET_SOURCE.location, IMAGENET_SOURCE.sha256, IMAGENET_SOURCE.archive_sha256
    )
    return model.to(memory_format=torch.channels_last), imagenet_path


def make_optimiser(args: argparse.Namespace, model: EffNetArtifactNet) -> torch.optim.AdamW:
    """AdamW: the backbone at ``--lr`` x ``--backbone-lr-factor``, the new head at ``--lr``."""
    head = list(model.backbone.get_classifier().parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    return torch.optim.AdamW(
        [{"params": body, "lr": args.lr * args.backbone_lr_factor}, {"params": head, "lr": args.lr}],
        weight_decay=args.weight_decay,
    )


@dataclass
class Schedule:
    """Linear warm-up, then cosine decay over ``progress``: max(step / planned, elapsed / time limit)."""

    optimiser: torch.optim.Optimizer
    base_lrs: list[float]
    planned: int  # steps: batches per epoch x epochs
    warmup_steps: int
    budget_s: float  # --time-limit-min in seconds
    started: float  # time.perf_counter() when training started

    def progress(self, step: int) -> float:
        return max(step / self.planned, (time.perf_counter() - self.started) / self.budget_s)

    def set_lr(self, step: int, progress: float) -> None:
        warm = min(1.0, (step + 1) / self.warmup_steps)
        for group, base in zip(self.optimiser.param_groups, self.base_lrs):
            group["lr"] = base * warm * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainingRun:
    """What training did: one history entry per validated epoch, the best epoch (with its weights), steps taken."""

    planned: int  # steps: batches per epoch x epochs
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    step: int = 0
    out_of_time: bool = False


def train(
    args: argparse.Namespace, model: EffNetArtifactNet, prepared: Prepared, started: float
) -> tuple[EffNetArtifactNet, TrainingRun]:
    """Step 3: train until the planned epochs or the time limit end, validating after each epoch; the model comes
    back with the best epoch's weights, in the contiguous memory format."""
    pool = prepared.pool
    optimiser = make_optimiser(args, model)
    base_lrs = [group["lr"] for group in optimiser.param_groups]
    planned = math.ceil(len(pool.labels) / args.batch_size) * args.epochs
    schedule = Schedule(optimiser, base_lrs, planned, args.warmup_steps, args.time_limit_min * 60, time.perf_counter())
    generator = torch.Generator().manual_seed(args.seed)
    run = TrainingRun(planned)
    for epoch in range(1, args.epochs + 1):
        losses = train_one_epoch(model, schedule, pool, args.batch_size, generator, run, epoch, started)
        if not losses:
            break
        validate_epoch(model, prepared.val_tiled, schedule, run, epoch, losses, started)
        if run.out_of_time:
            log(started, "time limit reached")
            break
    model.load_state_dict(run.best["state"])
    return model.to(memory_format=torch.contiguous_format), run


def train_one_epoch(
    model: EffNetArtifactNet,
    schedule: Schedule,
    pool: PatchPool,
    batch_size: int,
    generator: torch.Generator,
    run: TrainingRun,
    epoch: int,
    started: float,
) -> list[float]:
    """One pass over the shuffled pool, stopped early when the schedule's progress reaches 1 (``run.out_of_time``);
    the batch losses. Counts the steps in ``run.step``."""
    n_ai = float(pool.labels.sum())
    class_weight = (len(pool.labels) / (2 * n_ai), len(pool.labels) / (2 * (len(pool.labels) - n_ai)))
    model.train()
    order = torch.randperm(len(pool.labels), generator=generator).numpy()
    losses = []
    for start in range(0, len(order), batch_size):
        progress = schedule.progress(run.step)
        if progress >= 1.0:
            run.out_of_time = True
            break
        schedule.set_lr(run.step, progress)
        index = order[start : start + batch_size]
        losses.append(train_step(model, schedule.optimiser, pool, index, generator, class_weight))
        run.step += 1
        if run.step % 10 == 0:
            log(
                started,
                f"epoch {epoch} step {run.step}/{run.planned}: loss(last 10) {np.mean(losses[-10:]):.4f} "
                f"progress {progress:.2f} load {os.getloadavg()[0]:.1f}",
            )
    return losses


def train_step(
    model: EffNetArtifactNet,
    optimiser: torch.optim.Optimizer,
    pool: PatchPool,
    index: np.ndarray,
    generator: torch.Generator,
    class_weight: tuple[float, float],
) -> float:
    """One batch of the pool with random flips and class-balanced BCE (``class_weight``: ai, real); its loss."""
    x = patches_to_tensor(pool.patches[index], "cpu", torch.float32)
    flips = torch.rand(2, len(index), generator=generator) < 0.5
    x = torch.where(flips[0, :, None, None, None], x.flip(3), x)
    x = torch.where(flips[1, :, None, None, None], x.flip(2), x)
    y = torch.from_numpy(pool.labels[index])
    weight = torch.where(y > 0.5, class_weight[0], class_weight[1])
    loss = F.binary_cross_entropy_with_logits(model(x.contiguous(memory_format=torch.channels_last)), y, weight=weight)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return loss.item()


def validate_epoch(
    model: EffNetArtifactNet,
    val_tiled: list[TiledImage],
    schedule: Schedule,
    run: TrainingRun,
    epoch: int,
    losses: list[float],
    started: float,
) -> None:
    """The epoch's image-level val AUC into ``run.history`` (and the log); its weights kept if the AUC is the best."""
    val_labels = tiled_labels(val_tiled)
    val_mean = image_logits(model, val_tiled)
    val_auc = auc(val_labels, val_mean)
    run.history.append(
        {
            "epoch": epoch,
            "steps": run.step,
            "complete": not run.out_of_time,
            "train_loss": round(float(np.mean(losses)), 4),
            "last_batches_loss": round(float(np.mean(losses[-10:])), 4),
            "val_auc_reencoded": summary_auc(val_labels, val_mean, tiled_sources(val_tiled)),
            "elapsed_s": round(time.perf_counter() - schedule.started, 1),
        }
    )
    log(started, f"epoch {epoch}: {run.history[-1]}")
    if run.best is None or val_auc > run.best["val_auc"]:
        run.best = {
            "epoch": epoch,
            "val_auc": val_auc,
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        }


# ---- 4. calibration ---------------------------------------------------------------------------------------------
def calibrate_and_save(
    args: argparse.Namespace, model: EffNetArtifactNet, val_tiled: list[TiledImage]
) -> tuple[dict, np.ndarray]:
    """Step 4: Platt calibration on the re-encoded validation images, written into the model and its weights file;
    with the val images' mean logits."""
    val_mean = image_logits(model, val_tiled)
    calibration = fit_platt(val_mean, tiled_labels(val_tiled))
    model.calibration_scale.fill_(calibration["scale"])
    model.calibration_bias.fill_(calibration["bias"])
    save_weights(model, args.out, {"patch": str(args.patch), "max_patches": str(args.max_patches)})
    return calibration, val_mean


# ---- 5. validation through the detector -------------------------------------------------------------------------
@dataclass
class Validation:
    """The written file scored through the detector on the val images."""

    metrics: dict  # "reencoded" (as in training) and "as_is" (as stored): per_source metrics
    fp16_diff: float  # largest change of a val image's mean logit from storing the weights in fp16
    as_is_left_out: int  # val images as stored that are smaller than a patch


def validate_written(
    args: argparse.Namespace, val: list[Item], val_tiled: list[TiledImage], val_mean: np.ndarray, started: float
) -> Validation:
    """Step 5: the written file, loaded through ``create_detector``, on the val images re-encoded and as stored."""
    from models.registry import create_detector

    detector = create_detector(
        "effnet_artifact",
        {"weights": str(args.out), "input": args.input, "patch": args.patch, "max_patches": args.max_patches},
    )
    fp16_diff = float(np.abs(image_logits(detector.model, val_tiled) - val_mean).max())
    detector.model = detector.model.to(memory_format=torch.channels_last)
    reencoded_prob = np.asarray([detector.score(v) for v in val_mean])
    metrics = {"reencoded": per_source(tiled_labels(val_tiled), reencoded_prob, tiled_sources(val_tiled))}
    as_is, as_is_left_out = tiled_images(val, args.patch, args.max_patches, args.source_cap, args.seed, False)
    as_is_prob = np.asarray([detector.score(v) for v in image_logits(detector.model, as_is)])
    metrics["as_is"] = per_source(tiled_labels(as_is), as_is_prob, tiled_sources(as_is))
    for condition, m in metrics.items():
        log(
            started,
            f"val {condition}: all AUC {m['all']['auc']}, {MODERN_MATCHED} AUC {m.get(MODERN_MATCHED, {}).get('auc')}",
        )
    return Validation(metrics, fp16_diff, as_is_left_out)


# ---- the model card ---------------------------------------------------------------------------------------------
def model_card(
    args: argparse.Namespace,
    argv: list[str],
    splits: Splits,
    prepared: Prepared,
    model: EffNetArtifactNet,
    imagenet_path: Path,
    run: TrainingRun,
    calibration: dict,
    validation: Validation,
    training_wall_s: float,
) -> dict:
    """The card written beside the weights: what was trained, on what, how, and how well (on validation)."""
    return {
        "name": "effnet_artifact",
        "detector": "effnet_artifact (models/effnet_artifact.py), feature effnet_artifact_prob",
        "weights": card_weights(args, validation.fp16_diff),
        "architecture": card_architecture(args, model, imagenet_path),
        "calibration": {
            **calibration,
            "method": "Platt (logistic on the image-level mean logit), class-balanced",
            "fitted_on": "validation split, each image processed once like training (seeded)",
        },
        "training": card_training(args, argv, training_wall_s, run, prepared.pool),
        "data": card_data(args, splits, prepared.val_left_out, validation.as_is_left_out),
        "metrics": {
            "val": validation.metrics,
            "val_auc": {
                c: {"all": m["all"]["auc"], MODERN_MATCHED: m.get(MODERN_MATCHED, {}).get("auc")}
                for c, m in validation.metrics.items()
            },
        },
        "notes": [
            "Validation numbers only: the same small val split chose the epoch and fitted the calibration, so they "
            "are optimistic; the test split was not read by this script.",
            "Outside modern-matched, sources hold mostly one class and differ in content as well as generator, so "
            "the overall AUC mixes artifact evidence with content and source differences.",
        ],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "timm_version": timm_version(),
        "python": platform.python_version(),
    }


def card_weights(args: argparse.Namespace, fp16_diff: float) -> dict:
    """The card's ``weights``: the written file and what storing it in fp16 changed."""
    return {
        "file": args.out.name,
        "sha256": file_sha256(args.out),
        "bytes": args.out.stat().st_size,
        "dtype": "float16 weights; float32 BatchNorm statistics and calibration",
        "fp16_max_abs_val_logit_change": round(fp16_diff, 5),
    }


def card_architecture(args: argparse.Namespace, model: EffNetArtifactNet, imagenet_path: Path) -> dict:
    """The card's ``architecture``: network, input, tiling, aggregation and the checkpoint it started from."""
    return {
        "variant": VARIANT,
        "input": args.input,
        "patch": args.patch,
        "max_patches": args.max_patches,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "tiling": "models.ghostnet.tile_grid, offsets rounded down to even; native resolution, never resized; "
        "images with a side < patch are skipped",
        "aggregate": "mean of patch logits, then Platt calibration",
        "initialised_from": {
            "location": IMAGENET_SOURCE.location,
            "sha256": IMAGENET_SOURCE.sha256,
            "wheel_sha256": IMAGENET_SOURCE.archive_sha256,
            "license": "Apache-2.0",
            "path_at_training": str(imagenet_path),
        },
    }


def card_training(
    args: argparse.Namespace, argv: list[str], training_wall_s: float, run: TrainingRun, pool: PatchPool
) -> dict:
    """The card's ``training``: command, settings, schedule, history and the patch pool."""
    return {
        "command": "python -m training.train_effnet_artifact " + " ".join(argv),
        "wall_s": round(training_wall_s, 1),
        "wall_s_covers": "manifest, patch pool, training, validation, calibration",
        "threads": args.threads,
        "seed": args.seed,
        "epochs_planned": args.epochs,
        "epochs_run": len(run.history),
        "steps_run": run.step,
        "steps_planned": run.planned,
        "stopped_by_time_limit": run.out_of_time,
        "time_limit_min": args.time_limit_min,
        "best_epoch": run.best["epoch"],
        "history": run.history,
        "rounds": args.rounds,
        "patches_per_image": args.patches_per_image,
        "source_cap": args.source_cap,
        "batch_size": args.batch_size,
        "lr_head": args.lr,
        "lr_backbone": args.lr * args.backbone_lr_factor,
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "schedule": "linear warm-up, cosine decay over max(step / planned, elapsed / time limit)",
        "train_patches": len(pool.labels),
        "train_patches_ai": int(pool.labels.sum()),
        "train_patches_per_source": {s: pool.sources.count(s) for s in sorted(set(pool.sources))},
        "processing": "native window <= source_cap px; training.augment.Reencode with FUSION_PROCESSING's formats "
        "(JPEG q65-97 0.6, PNG 0.2, WEBP 0.2), crop 0.6-1.0 of the window; even rounds keep the "
        "native scale, odd rounds resize 0.5-1.0; identical for both classes; random flips",
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
    }


def card_data(args: argparse.Namespace, splits: Splits, val_left_out: int, as_is_left_out: int) -> dict:
    """The card's ``data``: the manifest, the items used and their hash, cross-fitting, and what was left out."""
    return {
        "manifest": str(args.manifest),
        "manifest_sha256": file_sha256(args.manifest),
        "items_sha256": items_hash(splits.train + splits.val),
        "items_sha256_of": "sorted lines 'key<TAB>label<TAB>split' of the train and val items used",
        "train": split_counts(splits.train),
        "train_usable_before_limit": splits.train_usable,
        "train_limit": args.train_limit,
        "cross_fit": None if args.hold_out_fold is None else {"folds": args.folds, "held_out": args.hold_out_fold},
        "held_out_source": args.hold_out_source,
        "val": split_counts(splits.val),
        "val_left_out_after_processing": val_left_out,
        "val_left_out_as_is": as_is_left_out,
        "test": "not read",
        "dropped_by_clean_manifest": splits.dropped,
        "left_out_smaller_than_patch": splits.too_small,
    }


def split_counts(split: list[Item]) -> dict:
    """Items per class, overall and per source."""
    out: dict = {}
    for item in split:
        out.setdefault(item.source, {"ai": 0, "real": 0})["ai" if item.label else "real"] += 1
    return {"ai": sum(i.label for i in split), "real": sum(1 - i.label for i in split), "per_source": out}


def write_card(args: argparse.Namespace, card: dict, started: float) -> None:
    """The card as ``.json`` beside the weights."""
    card_path = args.out.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    log(started, f"wrote {args.out} ({args.out.stat().st_size} bytes) and {card_path}")


if __name__ == "__main__":
    raise SystemExit(main())
