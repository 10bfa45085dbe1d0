#!/usr/bin/env bash
# Reproduce the local offline default: manifest -> clean -> features -> fusion model -> evaluation.
#   scripts/train_local_default.sh [DATA=../shared/data]
# Writes models/weights/fusion_local.json and reports/local/ (the evaluation report).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
export RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1
IMGVERIFY=.venv/bin/imgverify

# cifake-32px is left out (32 px images: below every pixel detector's working size); the 1x1
# generator-metadata fixtures are dropped by `clean` as tiny.
$IMGVERIFY dataset build "$DATA"/{imagenet-real,camera-models,exif-samples,modern-matched,early-generators-ai,modern-generators-ai,sd15-grids,c2pa,generator-metadata} \
  --out runs/manifest_all.parquet
$IMGVERIFY dataset clean runs/manifest_all.parquet --out runs/manifest_local.parquet
# Both classes through the same random crop / resize / JPEG re-encode, two copies per item.
$IMGVERIFY features extract runs/manifest_local.parquet --variant reencode --copies 2 \
  --config serve_config.local.yaml --out runs/features_local_reencode.parquet
$IMGVERIFY train fusion runs/features_local_reencode.parquet --model logistic \
  --config serve_config.local.yaml --out models/weights/fusion_local.json
$IMGVERIFY evaluate runs/manifest_local.parquet --config serve_config.local.yaml --split test --robustness \
  --out reports/local
