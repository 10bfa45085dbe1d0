"""Step 1 and 2 of training: scan labelled folders into a manifest, then clean it.

Manifest columns (Parquet, with a CSV copy for eyes)::

    filepath, label, split, source, generator, width, height, format, sha256, crop, key, phash, cluster

``crop`` is empty or ``"x0,y0,x1,y1"`` (grids are expanded into their quadrants); ``key`` identifies the
item (``sha256`` or ``sha256@crop``) and keys the feature cache. Splits are assigned per source and per
near-duplicate cluster (and per grid file), so no duplicate crosses splits.

Run as ``imgverify dataset build ROOT... --out manifest.parquet`` and ``imgverify dataset clean``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from models.image_input import DecodedImage, ImageInputError, InputLimits, decode_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
LABELS = ("real", "ai")
SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}
# Columns of a labels.csv that name the generator, most specific first.
GENERATOR_COLUMNS = ("generator_prefix", "tool", "checkpoint", "model_files", "generator", "generator_or_camera")
# Training data may be big photos; the service's limits are for untrusted uploads.
DATASET_LIMITS = InputLimits(max_bytes=256 * 1024 * 1024, max_pixels=200_000_000)
MIN_SIDE = 64
NEAR_DUPLICATE_BITS = 4  # Hamming distance of 64-bit perceptual hashes at or under which two images are one cluster

MANIFEST_SCHEMA = pa.schema(
    [
        ("filepath", pa.string()),
        ("label", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("generator", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("sha256", pa.string()),
        ("crop", pa.string()),
        ("key", pa.string()),
        ("phash", pa.string()),
        ("cluster", pa.string()),
        ("error", pa.string()),
    ]
)


@dataclass
class Item:
    filepath: str
    label: str
    source: str
    generator: str
    layout: str = ""


# ---- scanning ---------------------------------------------------------------------------------------
def scan(root: Path) -> list[Item]:
    """Items under ``root``: a folder with ``labels.csv``, a folder of such folders, or ``real/`` + ``ai/``."""
    root = root.resolve()
    if (root / "labels.csv").exists():
        return _scan_labels_csv(root)
    if (root / "real").is_dir() or (root / "ai").is_dir():
        return _scan_class_folders(root)
    items = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if (child / "labels.csv").exists() or (child / "real").is_dir() or (child / "ai").is_dir():
            items.extend(scan(child))
    if not items:
        raise ValueError(f"{root} has no labels.csv, no real/ or ai/ folder, and no sub-folder with either")
    return items


def _scan_labels_csv(folder: Path) -> list[Item]:
    items = []
    with open(folder / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            label = row["label"].strip().lower()
            if label not in LABELS:
                raise ValueError(f"{folder / 'labels.csv'}: label {row['label']!r} is not one of {LABELS}")
            generator = (
                "camera"
                if label == "real"
                else next((row[c].strip() for c in GENERATOR_COLUMNS if row.get(c, "").strip()), "unknown")
            )
            items.append(Item(str(folder / row["file"]), label, folder.name, generator, row.get("layout", "")))
    return items


def _scan_class_folders(folder: Path) -> list[Item]:
    items = []
    for label in LABELS:
        for path in sorted((folder / label).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                items.append(Item(str(path), label, folder.name, "camera" if label == "real" else "unknown"))
    return items


# ---- reading one item ----------------------------------------------------------------------------------
def item_bytes(filepath: str, crop: str = "") -> bytes:
    """The bytes of one manifest item: the file, or its crop re-encoded losslessly (grid quadrants)."""
    data = Path(filepath).read_bytes()
    if not crop:
        return data
    box = tuple(int(v) for v in crop.split(","))
    with Image.open(io.BytesIO(data)) as image:
        fmt = "WEBP" if image.format == "WEBP" else "PNG"
        tile = image.convert("RGB").crop(box)
    out = io.BytesIO()
    tile.save(out, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return out.getvalue()


def phash(image: DecodedImage) -> int:
    """64-bit perceptual hash (DCT of the 32x32 grey image, low 8x8 frequencies against their median).

    Robust to re-encoding and resizing; the median split keeps flat or smooth images from all hashing
    to the same value (a weakness of difference hashes).
    """
    from scipy.fft import dctn

    grey = Image.fromarray(image.rgb).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    low = dctn(np.asarray(grey, dtype=np.float64), norm="ortho")[:8, :8].flatten()[1:]  # drop the DC term
    bits = low > np.median(low)
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def _quadrants(width: int, height: int) -> list[str]:
    w, h = width // 2, height // 2
    return [f"{x},{y},{x + w},{y + h}" for y in (0, h) for x in (0, w)]


# ---- building --------------------------------------------------------------------------------------------
def build_manifest(roots: list[Path], seed: int = 0) -> pa.Table:
    """Scan, decode once to read size/format/hash, expand grids, cluster near-duplicates, assign splits."""
    rows = []
    for item in (item for root in roots for item in scan(Path(root))):
        try:
            data = Path(item.filepath).read_bytes()
            whole = decode_image(data, DATASET_LIMITS)
        except (OSError, ImageInputError) as err:
            # Kept with its error so `dataset clean` can report it; never aborts the scan.
            rows.append(_row(item, "", None, hashlib.sha256(b"").hexdigest(), error=str(err)))
            continue
        crops = _quadrants(whole.width, whole.height) if item.layout == "grid_2x2" else [""]
        for crop in crops:
            image = decode_image(item_bytes(item.filepath, crop), DATASET_LIMITS) if crop else whole
            rows.append(_row(item, crop, image, whole.sha256))
    _assign_clusters(rows)
    _assign_splits(rows, seed)
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def _row(item: Item, crop: str, image: DecodedImage | None, sha256: str, error: str = "") -> dict:
    return {
        "filepath": item.filepath,
        "label": item.label,
        "split": "",
        "source": item.source,
        "generator": item.generator,
        "width": image.width if image else 0,
        "height": image.height if image else 0,
        "format": image.format if image else "",
        "sha256": sha256,
        "crop": crop,
        "key": f"{sha256}@{crop}" if crop else sha256,
        "phash": f"{phash(image):016x}" if image else "",
        "cluster": "",
        "error": error,
    }


def _assign_clusters(rows: list[dict]) -> None:
    """Union near-duplicates (pHash within NEAR_DUPLICATE_BITS) and the quadrants of one grid file."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    by_file: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row["crop"]:
            union(i, by_file.setdefault(row["sha256"], i))
    hashed = [(i, int(row["phash"], 16)) for i, row in enumerate(rows) if row["phash"]]
    # Pigeonhole: two hashes within k bits agree exactly on at least one of k + 1 bands.
    bands = NEAR_DUPLICATE_BITS + 1
    width = 64 // bands
    for band in range(bands):
        buckets: dict[int, list[tuple[int, int]]] = {}
        for i, value in hashed:
            buckets.setdefault((value >> (band * width)) & ((1 << width) - 1), []).append((i, value))
        for members in buckets.values():
            for a in range(len(members)):
                for b in range(a + 1, len(members)):
                    (i, x), (j, y) = members[a], members[b]
                    if (x ^ y).bit_count() <= NEAR_DUPLICATE_BITS:
                        union(i, j)
    for i, row in enumerate(rows):
        row["cluster"] = rows[find(i)]["key"]


def _assign_splits(rows: list[dict], seed: int) -> None:
    """Each cluster goes to train/val/test by a seeded hash of its id: reproducible, and a cluster (a grid
    file's quadrants, near-duplicates, even across sources) never straddles two splits. Hashing spreads
    every source over the three splits in the SPLITS proportions."""
    for row in rows:
        digest = hashlib.sha256(f"{seed}:{row['cluster']}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        row["split"] = "train" if u < SPLITS["train"] else "val" if u < SPLITS["train"] + SPLITS["val"] else "test"


# ---- cleaning ---------------------------------------------------------------------------------------------
def clean_manifest(table: pa.Table, min_side: int = MIN_SIDE) -> tuple[pa.Table, pa.Table]:
    """Drop unreadable, tiny, exact-duplicate and near-duplicate items. Returns (kept, dropped with reason)."""
    kept, dropped = [], []
    seen_keys: set[str] = set()
    seen_clusters: set[str] = set()
    for row in table.to_pylist():
        reason = ""
        if row["error"]:
            reason = f"unreadable: {row['error']}"
        elif min(row["width"], row["height"]) < min_side:
            reason = f"tiny: {row['width']}x{row['height']} < {min_side}"
        elif row["key"] in seen_keys:
            reason = "exact duplicate"
        elif row["cluster"] in seen_clusters and not row["crop"]:
            reason = f"near duplicate of cluster {row['cluster'][:12]}"
        if reason:
            dropped.append({**row, "reason": reason})
        else:
            seen_keys.add(row["key"])
            seen_clusters.add(row["cluster"])
            kept.append(row)
    dropped_schema = MANIFEST_SCHEMA.append(pa.field("reason", pa.string()))
    return pa.Table.from_pylist(kept, schema=MANIFEST_SCHEMA), pa.Table.from_pylist(dropped, schema=dropped_schema)


# ---- files ---------------------------------------------------------------------------------------------------
def write_manifest(table: pa.Table, out: Path) -> None:
    """Write ``out`` (Parquet) and the same table as CSV beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    import pyarrow.csv as pacsv

    pacsv.write_csv(table, out.with_suffix(".csv"))


def load_manifest(path: Path, check_files: bool = True) -> pa.Table:
    """Read a manifest (Parquet or CSV). With ``check_files``, one error lists every missing file."""
    path = Path(path)
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    else:
        table = pq.read_table(path)
    for column in ("filepath", "label"):
        if column not in table.column_names:
            raise ValueError(f"manifest {path} has no {column!r} column")
    if check_files:
        missing = sorted({p for p in table.column("filepath").to_pylist() if not Path(p).exists()})
        if missing:
            listed = "\n  ".join(missing[:50]) + (f"\n  ... and {len(missing) - 50} more" if len(missing) > 50 else "")
            raise FileNotFoundError(f"manifest {path} names {len(missing)} missing files:\n  {listed}")
    return table


def training_data_hash(table: pa.Table) -> str:
    """sha256 over the sorted (key, label, split) of every row used."""
    triples = sorted(zip(*(table.column(c).to_pylist() for c in ("key", "label", "split"))))
    return hashlib.sha256("\n".join("|".join(t) for t in triples).encode()).hexdigest()


def check_two_classes(table: pa.Table, what: str) -> None:
    """Refuse a split that cannot train or evaluate a detector: an empty or single-class table."""
    labels = set(table.column("label").to_pylist())
    if labels != set(LABELS):
        raise ValueError(f"{what} has labels {sorted(labels) or 'none'}; it needs both 'real' and 'ai' images")


# ---- command line -------------------------------------------------------------------------------------------
def main_build(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgverify dataset build", description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders with labels.csv, or with real/ and ai/")
    parser.add_argument("--out", type=Path, required=True, help="manifest .parquet (a .csv is written beside it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table = build_manifest(args.roots, seed=args.seed)
    write_manifest(table, args.out)
    counts = {s: table.filter(pa.compute.equal(table["split"], s)).num_rows for s in SPLITS}
    unreadable = sum(bool(e) for e in table["error"].to_pylist())
    print(f"{table.num_rows} items -> {args.out} (splits {counts}; unreadable {unreadable})")
    return 0


def main_clean(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgverify dataset clean")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="cleaned manifest .parquet")
    parser.add_argument("--min-side", type=int, default=MIN_SIDE)
    args = parser.parse_args(argv)
    kept, dropped = clean_manifest(load_manifest(args.manifest), args.min_side)
    write_manifest(kept, args.out)
    write_manifest(dropped, args.out.with_name(args.out.stem + ".dropped.parquet"))
    reasons: dict[str, int] = {}
    for reason in dropped.column("reason").to_pylist():
        reasons[reason.split(":")[0]] = reasons.get(reason.split(":")[0], 0) + 1
    print(f"kept {kept.num_rows}, dropped {dropped.num_rows} {reasons} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_build())
