"""Real-ESRGAN x4plus run on real photos (training.upscaled_reals): a real forward pass of the network on CPU."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from training import upscaled_reals
from training.dataset import MANIFEST_SCHEMA, load_manifest, write_manifest


def photo_like(width: int, height: int, seed: int) -> bytes:
    """A JPEG with edges and fine texture (a flat image would come back flat from any upscaler)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 0.7) % 255, (y * 1.3) % 255, ((x + y) // 16 % 2) * 200], axis=-1)
    rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def row(path: Path, label: str, split: str, width: int, height: int, key: str) -> dict:
    return {
        "filepath": str(path),
        "label": label,
        "split": split,
        "source": "camera-test",
        "generator": "camera",
        "width": width,
        "height": height,
        "format": "JPEG",
        "sha256": key,
        "crop": "",
        "key": key,
        "phash": "0" * 16,
        "cluster": f"cluster-{key}",
        "error": "",
    }


def test_upscaled_copies_of_train_reals_are_ai_rows_in_their_parents_split(tmp_path: Path) -> None:
    sizes = {"a" * 64: (300, 260, "train"), "b" * 64: (240, 232, "val"), "c" * 64: (280, 250, "test")}
    rows = []
    for key, (width, height, split) in sizes.items():
        path = tmp_path / f"{key[0]}.jpg"
        path.write_bytes(photo_like(width, height, seed=ord(key[0])))
        rows.append(row(path, "real", split, width, height, key))
    rows.append(row(tmp_path / "a.jpg", "ai", "train", 300, 260, "d" * 64))  # AI items are not parents
    write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), tmp_path / "manifest.parquet")

    out, manifest_out = tmp_path / "made", tmp_path / "with_upscaled.parquet"
    args = [str(tmp_path / "manifest.parquet"), "--out", str(out), "--manifest-out", str(manifest_out)]
    assert upscaled_reals.main(args) == 0
    table = load_manifest(manifest_out).to_pylist()
    made = [r for r in table if r["source"] == upscaled_reals.SOURCE]
    assert len(table) == 4 + 2 and len(made) == 2  # the train and val reals; the test split is never used
    parents = {r["cluster"]: r for r in rows}
    for r in made:
        parent = parents[r["cluster"].removesuffix(f"+{upscaled_reals.SOURCE}")]
        assert (r["label"], r["split"], r["format"]) == ("ai", parent["split"], "PNG")
        # The whole window (both sides under WINDOW), rounded down to the 4x scale.
        assert (r["width"], r["height"]) == (parent["width"] // 4 * 4, parent["height"] // 4 * 4)

    # The network ran: its output is not the plain bicubic upscale of the same small image (18.8 grey levels apart
    # on average here; two bicubic resamplers of the same image differ by a few).
    made_rgb = np.asarray(Image.open(made[0]["filepath"]).convert("RGB"), dtype=np.float32)
    width, height = made[0]["width"], made[0]["height"]
    parent_path = parents[made[0]["cluster"].removesuffix(f"+{upscaled_reals.SOURCE}")]["filepath"]
    small = Image.open(parent_path).convert("RGB").crop((0, 0, width, height)).resize((width // 4, height // 4))
    bicubic = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    assert np.abs(made_rgb - bicubic).mean() > 8.0

    # A second run reuses the cached images instead of making them again.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert upscaled_reals.main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
