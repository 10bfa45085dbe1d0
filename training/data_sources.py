"""Where the image sets live, and how to fetch one that is not here.

    imgverify data list                      each set, where it was found, whether it can be fetched
    imgverify data fetch NAME... | --all     fetch sets from their public sources, pinned by commit and sha256

A set (``modern-matched``, ``imagenet-real``, ...; the folders of ``../shared/data``) is looked up in order in

1. ``$IMGVERIFY_DATA`` when it is set (a folder holding the sets), else ``../shared/data`` beside the repository;
2. the fetch cache, ``$IMGVERIFY_CACHE/data`` (default ``~/.cache/imgverify/data``), filled by ``imgverify data fetch``.

Each fetchable set has a registry, ``training/data_registry/NAME.csv.gz``: its ``labels.csv`` rows plus ``sha256``
(of the file) and ``source`` (``owner/repo@commit:path`` on GitHub), made by ``scripts/pin_data_sets.py`` from the
shared copies, which their MANIFEST.md call byte-identical to the sources. A fetch downloads each file with pooch,
checks its sha256, and writes ``labels.csv`` back. A set without a pinned public source (``early-generators-ai``)
is refused with the reason. Light on purpose: no Ray, no torch; pooch is imported only to fetch.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import os
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "IMGVERIFY_DATA"  # a folder holding the sets; replaces ../shared/data
REQUIRE_ENV = "IMGVERIFY_REQUIRE_DATA"  # "1": a test that cannot find its set fails instead of skipping (CI)
REPO = Path(__file__).resolve().parents[1]
REGISTRY_DIR = Path(__file__).resolve().parent / "data_registry"
RAW_GITHUB = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
PIN_COLUMNS = ("sha256", "source")  # added to labels.csv in a registry; dropped again when labels.csv is written


class DataUnavailable(RuntimeError):
    """A set is not here and cannot be fetched; the message says where we looked and what to do."""


@dataclass(frozen=True)
class DataSet:
    """One image set: its name, where it comes from, its license, and why it cannot be fetched (if so)."""

    name: str
    source: str
    license: str
    unfetchable: str = ""  # the reason, for a set without a pinned public source

    @property
    def registry(self) -> Path:
        return REGISTRY_DIR / f"{self.name}.csv.gz"

    @property
    def fetchable(self) -> bool:
        return not self.unfetchable and self.registry.exists()


SETS: dict[str, DataSet] = {
    s.name: s
    for s in [
        DataSet(
            "c2pa",
            "contentauth/c2pa-rs, microsoft/c2pa-extension-validator, c2pa-org/public-testfiles",
            "Apache-2.0 / MIT; camera captures CC BY-SA 4.0",
        ),
        DataSet("c2pa-trust", "c2pa-org/conformance-public@7dbff513", "CC BY 4.0"),
        DataSet("camera-models", "drewnoakes/metadata-extractor-images@4beba640", "free to use (README)"),
        DataSet("cifake-32px", "2spi/ai-v-real@46e5837e", "MIT (CIFAKE, Kaggle); CIFAR-10"),
        DataSet("detector-heads", "UniversalFakeDetect, clip-cues, rine", "MIT / MIT / Apache-2.0"),
        DataSet(
            "early-generators-ai",
            "dcsan/imagen@c6f37ebe",
            "none: internal use only",
            unfetchable="its source has no license (internal use only) and its MANIFEST.md gives no per-file "
            "source path; copy it from ../shared/data into $IMGVERIFY_DATA",
        ),
        DataSet("exif-samples", "ianare/exif-samples@5332a9cf", "CC BY-SA 4.0 (README)"),
        DataSet("generator-metadata", "d3x-at/sd-parsers@0949676c", "MIT"),
        DataSet(
            "imagenet-real",
            "EliSchwartz/imagenet-sample-images@bc69043e",
            "ImageNet terms: non-commercial research only",
        ),
        DataSet("modern-generators-ai", "comfyanonymous/ComfyUI_examples@f9431bb0", "permissive (ISC-style)"),
        DataSet("modern-matched", "TeenBiscuits/RealOrAI@7e84faec", "Apache-2.0; photos Unsplash License"),
        DataSet("modern-web-samples", "five repositories, see its MANIFEST.md", "mixed, per source"),
        DataSet("sd15-grids", "SupaGruen/StableDiffusion-CheatSheet@169c57dc", "MIT"),
    ]
}


def cache_dir() -> Path:
    """Where ``imgverify data fetch`` writes: ``$IMGVERIFY_CACHE/data`` (the weights cache's sibling)."""
    return Path(os.environ.get("IMGVERIFY_CACHE", Path.home() / ".cache" / "imgverify")) / "data"


def search_roots() -> list[Path]:
    """The folders a set is looked up in, in order: ``$IMGVERIFY_DATA`` or ``../shared/data``, then the cache."""
    configured = os.environ.get(DATA_ENV)
    first = Path(configured).expanduser() if configured else REPO.parent / "shared" / "data"
    return [first.resolve(), cache_dir()]


def data_root() -> Path | None:
    """The first search root that exists (the folder tests and scripts name sets under), or None."""
    return next((root for root in search_roots() if root.is_dir()), None)


def locate(name: str) -> Path | None:
    """The folder of set ``name`` in the first root that has it, or None."""
    return next((root / name for root in search_roots() if (root / name).is_dir()), None)


def fetch_command(*names: str) -> str:
    """The command that fetches ``names`` (what a skipped test tells its reader to run)."""
    return "imgverify data fetch " + " ".join(names or ("--all",))


def missing_reason(*names: str) -> str | None:
    """Why the sets ``names`` cannot be used here (None when all are found): where we looked, what to run."""
    missing = [name for name in names if locate(name) is None]
    if not missing:
        return None
    looked = ", ".join(str(root) for root in search_roots())
    reason = f"image set(s) {', '.join(missing)} not found in {looked} (or set ${DATA_ENV})"
    reason += f": run `{fetch_command(*missing)}`"
    refused = [SETS[n].unfetchable for n in missing if n in SETS and SETS[n].unfetchable]
    return reason + ("; " + "; ".join(refused) if refused else "")


def require(name: str) -> Path:
    """The folder of set ``name``; :class:`DataUnavailable` naming the fetch command when it is not here."""
    path = locate(name)
    if path is None:
        raise DataUnavailable(missing_reason(name))
    return path


# ---- fetch -----------------------------------------------------------------------------------------------------------
def read_registry(path: Path) -> list[dict[str, str]]:
    """The rows of a registry (``labels.csv`` columns + ``sha256`` + ``source``)."""
    with gzip.open(path, "rt", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def source_url(source: str) -> str:
    """``owner/repo@commit:path`` (or an http(s) URL, as tests use) -> a download URL pinned to the commit."""
    if source.startswith(("http://", "https://")):
        return source
    repo, _, rest = source.partition("@")
    commit, _, path = rest.partition(":")
    if not (repo and len(commit) == 40 and path):
        raise DataUnavailable(f"source {source!r} is not owner/repo@<40-hex commit>:path")
    return RAW_GITHUB.format(repo=repo, commit=commit, path=urllib.parse.quote(path))


def fetch(name: str, dest: Path | None = None) -> Path:
    """Download set ``name`` into ``dest/name`` (default: the cache), every file checked against its sha256.

    Files already there with the right sha256 are kept; ``labels.csv`` is written once every file verified.
    Raises :class:`DataUnavailable` for an unknown set, one without a pinned source, or a failed download.
    """
    dataset = SETS.get(name)
    if dataset is None:
        raise DataUnavailable(f"unknown image set {name!r}; known: {', '.join(sorted(SETS))}")
    if dataset.unfetchable:
        raise DataUnavailable(f"{name} cannot be fetched: {dataset.unfetchable}")
    if not dataset.registry.exists():
        raise DataUnavailable(f"{name} has no pinned registry ({dataset.registry}); its source is {dataset.source}")
    import pooch  # only a fetch needs it

    rows = read_registry(dataset.registry)
    target = (dest or cache_dir()) / name
    fetcher = pooch.create(
        path=target,
        base_url="",
        registry={row["file"]: f"sha256:{row['sha256']}" for row in rows},
        urls={row["file"]: source_url(row["source"]) for row in rows},
        retry_if_failed=2,
    )
    for row in rows:
        try:
            fetcher.fetch(row["file"])
        except Exception as err:
            raise DataUnavailable(f"{name}: {row['file']} from {fetcher.get_url(row['file'])}: {err}") from err
    _write_labels(target, rows)
    return target


def _write_labels(target: Path, rows: list[dict[str, str]]) -> None:
    """``labels.csv`` as the shared copy has it (a set of plain files such as ``c2pa-trust`` has none)."""
    columns = [c for c in rows[0] if c not in PIN_COLUMNS] if rows else []
    if "label" not in columns:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (target / "labels.csv").write_text(buffer.getvalue(), encoding="utf-8")


def _status(name: str) -> Iterator[str]:
    dataset, where = SETS[name], locate(name)
    fetchable = "fetchable" if dataset.fetchable else f"not fetchable ({dataset.unfetchable or 'no registry'})"
    yield f"{name:22} {str(where) if where else 'not here':50} {fetchable}; {dataset.license}"


def main(argv: list[str] | None = None) -> int:
    """``imgverify data list | fetch NAME... [--all] [--dir DIR]``."""
    parser = argparse.ArgumentParser(prog="imgverify data", description="Locate and fetch the image sets.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="each set, where it was found, whether it can be fetched")
    fetch_parser = sub.add_parser("fetch", help="fetch sets from their pinned public sources")
    fetch_parser.add_argument("names", nargs="*", help="set names (see `imgverify data list`)")
    fetch_parser.add_argument("--all", action="store_true", help="every fetchable set")
    fetch_parser.add_argument("--dir", type=Path, default=None, help=f"where to write (default {cache_dir()})")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in SETS:
            print(*_status(name))
        return 0
    names = [n for n, s in SETS.items() if s.fetchable] if args.all else args.names
    if not names:
        parser.error("name a set, or pass --all")
    failed = 0
    for name in names:
        try:
            print(f"{name}: fetched into {fetch(name, args.dir)}")
        except DataUnavailable as err:
            print(f"{name}: FAILED: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
