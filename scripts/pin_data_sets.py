"""Write ``training/data_registry/NAME.csv.gz`` for each fetchable set from the shared copies.

    python scripts/pin_data_sets.py [--data ../shared/data] [NAME...]

A registry is the set's ``labels.csv`` plus ``sha256`` (of the shared copy, which the set's MANIFEST.md calls
byte-identical to its source) and ``source`` (``owner/repo@commit:path``, from labels.csv or the MANIFEST's
commit). Run where the shared data is; the fetch (``imgverify data fetch``) then needs only the registry.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.data_sources import PIN_COLUMNS, REGISTRY_DIR  # noqa: E402 (after the sys.path line above)

# (set) -> row -> owner/repo@commit:path; the commits are the ones each MANIFEST.md names.
Source = Callable[[dict[str, str]], str]
SOURCES: dict[str, Source] = {
    "c2pa": lambda r: f"{r['source_repo']}@{r['commit']}:{r['source_path']}",
    "camera-models": lambda r: (
        f"drewnoakes/metadata-extractor-images@4beba640487802442bc9931fb01274e908102d3a:{r['source_path']}"
    ),
    "cifake-32px": lambda r: f"2spi/ai-v-real@46e5837e0c72e04458f9c1dee0c919bfd0dfbd61:{r['source_path']}",
    "exif-samples": lambda r: (
        f"ianare/exif-samples@5332a9cf0220e9c6c93f88a187daa90808051e10:{r['file'].removeprefix('real/')}"
    ),
    "generator-metadata": lambda r: f"d3x-at/sd-parsers@0949676c24a5bbaf26ef0aa8c362132b7b27cb5b:{r['source_path']}",
    "imagenet-real": lambda r: (
        f"EliSchwartz/imagenet-sample-images@bc69043e2862758a1906c6a24a792bb28c6bb2ff:{r['source_path']}"
    ),
    "modern-generators-ai": lambda r: (
        f"comfyanonymous/ComfyUI_examples@f9431bb000ce792094ff345446e22cac1ea6cef3:{r['source_path']}"
    ),
    "modern-matched": lambda r: f"TeenBiscuits/RealOrAI@7e84faec19eff5804d0031ecd7e272aa6f6cf0de:{r['source_path']}",
    "modern-web-samples": lambda r: r["source_path"],
    "sd15-grids": lambda r: (
        f"SupaGruen/StableDiffusion-CheatSheet@169c57dce400ed000520c1c40a12731eecca1370:{r['source_path']}"
    ),
}
# Sets without labels.csv: (file in the set) -> owner/repo@commit:path.
PLAIN: dict[str, dict[str, str]] = {
    "c2pa-trust": {
        name: f"c2pa-org/conformance-public@7dbff513b66e36184619286fe734beea32f2e6db:trust-list/{name}"
        for name in (
            "C2PA-TRUST-LIST.json",
            "C2PA-TRUST-LIST.pem",
            "C2PA-TSA-TRUST-LIST.json",
            "C2PA-TSA-TRUST-LIST.pem",
        )
    },
    "detector-heads": {
        "universalfakedetect/fc_weights.pth": "WisconsinAIVision/UniversalFakeDetect@"
        "76a0e3e60a8a06458707a625d269ba815a2e5919:pretrained_weights/fc_weights.pth",
        "rine/model_2class_trainable.pth": "mever-team/rine@9b7fd5857cc205d0412be6aeee0d7611b95bd620:"
        "ckpt/model_2class_trainable.pth",
        "clip-cues/antonyms.csv": "marco-willi/clip-cues@ad9eea9a0f287ab8869e7f16aeef4a6878d1059d:"
        "data/vocabularies/antonyms.csv",
        **{
            f"clip-cues/checkpoints/{kind}_{data}.ckpt": "marco-willi/clip-cues@"
            "ad9eea9a0f287ab8869e7f16aeef4a6878d1059d:"
            f"data/checkpoints/{kind}_{data}.ckpt"
            for kind in ("linear_probe", "clip_orthogonal", "cm_antonyms")
            for data in ("cnnspot", "synthbuster", "synthclic", "combined")
        },
    },
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pin(data: Path, name: str) -> Path:
    """Write the registry of set ``name``; every file named must exist and have no whitespace in its name."""
    folder = data / name
    if name in PLAIN:
        rows = [{"file": f, "sha256": sha256(folder / f), "source": s} for f, s in PLAIN[name].items()]
        columns = ["file", *PIN_COLUMNS]
    else:
        with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = [*reader.fieldnames, *PIN_COLUMNS]
            rows = [{**r, "sha256": sha256(folder / r["file"]), "source": SOURCES[name](r)} for r in reader]
    spaced = [row["file"] for row in rows if any(c.isspace() for c in row["file"])]
    if spaced:
        raise SystemExit(f"{name}: file names with whitespace: {spaced[:3]}")
    out = REGISTRY_DIR / f"{name}.csv.gz"
    out.parent.mkdir(exist_ok=True)
    with gzip.GzipFile(out, "wb", mtime=0) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("names", nargs="*", default=[*SOURCES, *PLAIN])
    args = parser.parse_args()
    for name in args.names:
        out = pin(args.data, name)
        print(f"{name}: {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
