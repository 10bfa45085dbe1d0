"""The local profile's recipe choices, each measured by the leave-one-source-out yardstick (training/leave_out.py).

    python bench/leave_out_choices.py [--config serve_config.local.yaml] [--manifest runs/manifest_local.parquet]

Every row refits the clip head and the fusion without each source in turn, exactly as `imgverify evaluate --leave-out`
does, with one part of the shipped recipe changed; side by side in one run, on the same cached rows:

* shipped: the head on stored, re-encoded and laundered copies; the fusion on ``clip_b16_prob`` alone;
* no laundering in the head's training (stored and re-encoded copies only);
* the fusion also reading the published CLIP probe and the forensics features (every fusion input of the profile).

Prints the means over the held-out sources, clean and laundered (every source counts once). Needs the feature cache
that `scripts/train_local_default.sh` fills (a cold run extracts everything first: about an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import models
from deployments.config import load_profile
from training.clip_embeddings import clip_detector
from training.dataset import load_manifest
from training.features import DEFAULT_CACHE
from training.leave_out import EVALUATION_VARIANTS, MIN_ITEMS, Recipe, load_rows, run_folds, summary

COLUMNS = ("auc", "ai_labelled_ai", "ai_confidently_non_ai", "real_labelled_ai", "real_confidently_ai", "uncertain")


def candidates(shipped: Recipe, detectors: list[str]) -> dict[str, Recipe]:
    """The shipped recipe and its variations, by name."""
    inputs = tuple(name for name, spec in models.feature_schema(detectors).items() if spec.fusion_input)
    return {
        "shipped": shipped,
        "head without laundered copies": dataclasses.replace(
            shipped, head_variants=[v for v in shipped.head_variants if not v.startswith("launder")]
        ),
        "fusion on every input (+ published probe, forensics)": dataclasses.replace(
            shipped, fusion=dataclasses.replace(shipped.fusion, features=inputs)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("serve_config.local.yaml"))
    parser.add_argument("--manifest", type=Path, default=Path("runs/manifest_local.parquet"))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    profile = load_profile(args.config)
    detectors = profile.args.detector_names()
    shipped = Recipe.of_shipped(profile)
    manifest = load_manifest(args.manifest, check_files=False)
    sources = manifest.column("source").to_pylist()
    held_out = sorted(s for s in set(sources) if sources.count(s) >= MIN_ITEMS)
    recipes = candidates(shipped, detectors)
    wanted = sorted({*EVALUATION_VARIANTS, *shipped.head_variants, *shipped.fusion_variants})
    rows = load_rows(manifest, args.config, wanted, args.cache)
    clip = clip_detector(args.config)
    print(f"{len(held_out)} sources held out in turn: {', '.join(held_out)}")
    print(f"{'recipe':<55} {'variant':<11} " + " ".join(f"{c:>22}" for c in COLUMNS))
    for name, recipe in recipes.items():
        started = time.perf_counter()
        per_source, _, _ = run_folds(rows, held_out, recipe, detectors, clip, EVALUATION_VARIANTS)
        for variant in ("clean", "laundered"):
            means = _laundered_mean(per_source) if variant == "laundered" else summary(per_source, "clean")
            print(f"{name:<55} {variant:<11} " + " ".join(f"{means[c]:>22.3f}" for c in COLUMNS))
        print(f"{'':<55} ({time.perf_counter() - started:.0f} s)")


def _laundered_mean(per_source: dict) -> dict[str, float]:
    """The means of the four laundering routes, averaged."""
    routes = [summary(per_source, v) for v in EVALUATION_VARIANTS if v != "clean"]
    return {c: sum(r[c] for r in routes) / len(routes) for c in COLUMNS}


if __name__ == "__main__":
    main()
