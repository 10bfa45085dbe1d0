"""``imgverify weights fetch``: fetch ahead of time every weights file the detectors of a Serve config would load.

    imgverify weights fetch [--config serve_config.local.yaml] [--dir DIR] [--app NAME]

Each enabled detector's config (its ``user_config.detector`` over the class's ``default_config``) gives its
``weight_sources``; each is resolved through :func:`models.weights.fetch_weights`, pins checked. One line per
source: detector, location, local path, short sha256, and ``fetched`` / ``cached`` / ``local`` / ``FAILED: reason``.
A file a detector derives from a source (``WeightSource.derived``: clip_b16's fp32 export of its INT8 ONNX file) is
made here too, one line each (``LOCATION => RECIPE``, ``made`` or ``cached``), so the service's first load does not
make it. Exit 0 only when every source resolved. Idempotent: a second run finds everything cached and downloads
nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from deployments.config import Profile, load_profile
from models.weights import (
    Derivation,
    WeightSource,
    WeightsUnavailable,
    cache_dir,
    derive_weights,
    fetch_weights,
    file_sha256,
)


@dataclass(frozen=True)
class Outcome:
    """What became of one source (or of a detector whose sources could not even be listed: ``source`` None)."""

    detector: str
    source: WeightSource | None
    path: Path | None = None
    sha256: str | None = None
    status: str = ""  # "fetched", "cached" or "local" when resolved; a derived file "made" or "cached"
    error: str | None = None
    derivation: Derivation | None = None  # set for a file derived from ``source``

    @property
    def ok(self) -> bool:
        return self.error is None


def detector_sources(profile: Profile) -> tuple[list[tuple[str, WeightSource]], list[Outcome]]:
    """Each enabled detector's weight sources; a detector whose config is refused becomes a failed outcome."""
    import models

    sources: list[tuple[str, WeightSource]] = []
    refused: list[Outcome] = []
    for name, detector in profile.detectors.items():
        cls = models.get_detector_class(name)
        try:
            # merged_config is what Detector.__init__ runs with: the same keys, the same refusal of unknown ones.
            config = cls.merged_config(detector.user_config.detector)
            sources += [(name, source) for source in cls.weight_sources(config)]
        except Exception as err:  # noqa: BLE001 - reported as this detector's failure; the others still fetch
            refused.append(Outcome(name, None, error=f"config: {type(err).__name__}: {err}"))
    return sources, refused


def fetch_source(detector: str, source: WeightSource) -> Outcome:
    """Resolve one source; a failure is an outcome with the reason, never an exception."""
    try:
        resolved = fetch_weights(source.location, source.sha256, source.archive_sha256)
    except WeightsUnavailable as err:
        return Outcome(detector, source, error=str(err))
    sha256 = source.sha256 or (file_sha256(resolved.path) if resolved.path.is_file() else None)
    return Outcome(detector, source, resolved.path, sha256, resolved.status)


def derive_source(fetched: Outcome, derivation: Derivation) -> Outcome:
    """Make (or find) one file derived from a resolved source (``fetched``: its path and sha256 known); a failure
    is an outcome with the reason, never an exception."""
    failed = Outcome(fetched.detector, fetched.source, derivation=derivation)
    if fetched.path is None or fetched.sha256 is None:
        return replace(failed, error="its source did not resolve to a file")
    try:
        resolved = derive_weights(fetched.path, fetched.sha256, derivation)
    except Exception as err:  # noqa: BLE001 - an export can fail many ways; reported as this file's failure
        return replace(failed, error=f"{type(err).__name__}: {err}")
    return replace(failed, path=resolved.path, sha256=file_sha256(resolved.path), status=resolved.status)


def fetch_all(sources: list[tuple[str, WeightSource]]) -> list[Outcome]:
    """Resolve every source in order, then make what is derived from it, printing each line as soon as it is known
    (fetches and exports can take minutes)."""
    outcomes = []
    for detector, source in sources:
        outcome = fetch_source(detector, source)
        print(format_outcome(outcome), flush=True)
        outcomes.append(outcome)
        for derivation in source.derived if outcome.ok else ():
            derived = derive_source(outcome, derivation)
            print(format_outcome(derived), flush=True)
            outcomes.append(derived)
    return outcomes


def format_outcome(outcome: Outcome) -> str:
    location = outcome.source.location if outcome.source else "-"
    if outcome.derivation is not None:
        location += f" => {outcome.derivation.name}"
    if not outcome.ok:
        return f"{outcome.detector}  {location}  FAILED: {outcome.error}"
    sha = f"sha256:{outcome.sha256[:12]}" if outcome.sha256 else "sha256:-"
    return f"{outcome.detector}  {location}  {outcome.path}  {sha}  {outcome.status}"


def summary(outcomes: list[Outcome]) -> str:
    """The closing line(s): counts per status, then each failure's first line again."""
    counts = {s: sum(o.status == s for o in outcomes if o.ok) for s in ("fetched", "cached", "local", "made")}
    if not any(o.derivation for o in outcomes):
        del counts["made"]  # the line other configs have always had
    failed = [o for o in outcomes if not o.ok]
    text = f"{len(outcomes)} sources: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f", {len(failed)} failed"
    for outcome in failed:
        location = outcome.source.location if outcome.source else "(no sources listed)"
        if outcome.derivation is not None:
            location += f" => {outcome.derivation.name}"
        text += f"\n  FAILED {outcome.detector} {location}: {(outcome.error or '').splitlines()[0]}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgverify weights fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("serve_config.local.yaml"), help="a Serve config file")
    parser.add_argument("--app", default=None, help="the application's name, when the config has several")
    parser.add_argument(
        "--dir", type=Path, default=None, help="cache folder (sets IMGVERIFY_CACHE for this run; hf:// stays in HF's)"
    )
    args = parser.parse_args(argv)
    if args.dir is not None:
        os.environ["IMGVERIFY_CACHE"] = str(args.dir.expanduser().resolve())
        print(f"cache folder: {cache_dir()} (IMGVERIFY_CACHE set by --dir for this run)")
    else:
        print(f"cache folder: {cache_dir()}")
    try:
        profile = load_profile(args.config, args.app)
    except (OSError, ValueError) as err:  # a missing file, bad YAML or invalid args: say which, no traceback
        print(f"cannot read {args.config}: {err}", file=sys.stderr)
        return 1
    sources, refused = detector_sources(profile)
    for outcome in refused:
        print(format_outcome(outcome))
    outcomes = refused + fetch_all(sources)
    print(summary(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
