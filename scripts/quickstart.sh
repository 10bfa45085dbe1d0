#!/usr/bin/env bash
# Install imgverify into .venv, fetch its weights, start the local offline profile (serve_config.local.yaml) in the
# background, wait until every detector is ready, and score one image.
#   scripts/quickstart.sh [IMAGE]        stop the service with: kill -TERM "$(cat .serve.pid)"
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
# The local profile's weights, fetched and checked against their pins now (the only online step after pip):
# the service below runs with HF_HUB_OFFLINE=1 and finds them in the cache. A second run fetches nothing.
.venv/bin/imgverify weights fetch --config serve_config.local.yaml

# Local Ray without token auth (the serve CLI would lack the token), and never a model hub. HAProxy in front of
# the ingress replicas instead of Serve's Python proxy (Ray's documented high-throughput ingress; docs/operations.md).
export RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 RAY_SERVE_ENABLE_HA_PROXY=1
if [ -f .serve.pid ] && kill -0 "$(cat .serve.pid)" 2>/dev/null; then
  echo "service already running (pid $(cat .serve.pid))"
else
  setsid .venv/bin/serve run serve_config.local.yaml >serve.log 2>&1 &
  echo $! >.serve.pid
fi

echo -n "waiting for http://127.0.0.1:8000/healthz "
for _ in $(seq 1 300); do
  if curl -sf http://127.0.0.1:8000/healthz >/dev/null; then echo " ready"; break; fi
  if ! kill -0 "$(cat .serve.pid)" 2>/dev/null; then echo; echo "service exited; see serve.log"; tail -20 serve.log; exit 1; fi
  echo -n "."; sleep 2
done
curl -sf http://127.0.0.1:8000/healthz >/dev/null || { echo "not ready after 600 s; see serve.log"; exit 1; }

IMAGE="${1:-tests/fixtures/c2pa/ai/DALL-E_cloud_surfing_puppy.webp}"
if [ ! -f "$IMAGE" ]; then  # no sample data on this machine: score a generated image instead
  IMAGE=/tmp/imgverify-sample.png
  .venv/bin/python -c "from PIL import Image; Image.effect_mandelbrot((512, 512), (-2, -1.5, 1, 1.5), 100).convert('RGB').save('$IMAGE')"
fi
.venv/bin/imgverify score "$IMAGE" --indent 2
echo "service running (pid $(cat .serve.pid)); logs in serve.log; stop with: kill -TERM \"\$(cat .serve.pid)\""
