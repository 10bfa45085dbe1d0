#!/bin/sh
# The image's entrypoint: optionally fetch a Serve config's weights, then run the command (`serve run ...` by default).
#   IMGVERIFY_FETCH_WEIGHTS=serve_config.yaml   fetch and verify that profile's weights first; exit non-zero if any fails
set -eu
if [ -n "${IMGVERIFY_FETCH_WEIGHTS:-}" ]; then
  imgverify weights fetch --config "$IMGVERIFY_FETCH_WEIGHTS"
fi
exec "$@"
