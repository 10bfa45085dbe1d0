"""FastJSONResponse (orjson) gives the same JSON as Starlette's JSONResponse for the ingress's answers."""

from __future__ import annotations

import json
import math

import numpy as np
from fastapi.responses import JSONResponse

from models.fusion import json_safe
from serve_app.fast_json import FastJSONResponse


def body() -> dict:
    return {
        "noise_log_variance": 3.214159,
        "tiny": round(1e-06, 6),
        "big": 1e16,
        "fusion_prob": np.float64(0.812345),
        "count": 3,
        "label": "NON-AI",
        "uncertain": False,
        "missing": [],
        "nothing": None,
        "reasoning": ["EXIF looks camera-made: Canon EOS 7D — ünïcode ✓", 'quotes " and \\ and \n'],
        "detectors": {"provenance": {"status": "ok", "latency_ms": 41.2, "range": (0.0, 1.0)}},
        "bad": math.nan,
        "image": {"width": 1280, "height": 720, "sha256": "ab" * 32},
        "artifacts": {"ela": {"heatmap_png_base64": "iVBORw0KGgo" * 1000}},
    }


def test_same_json_as_starlette():
    safe = json_safe(body())
    fast, slow = FastJSONResponse(safe).body, JSONResponse(safe).body
    assert json.loads(fast) == json.loads(slow)
    assert json.loads(fast)["bad"] is None and json.loads(fast)["count"] == 3


def test_same_bytes_for_a_typical_verdict():
    typical = {k: v for k, v in json_safe(body()).items() if k not in ("tiny", "big")}  # float spelling aside
    assert FastJSONResponse(typical).body == JSONResponse(typical).body


def test_numpy_scalars_render_where_json_dumps_would_fail():
    assert json.loads(FastJSONResponse({"n": np.int64(3), "p": np.float32(0.5)}).body) == {"n": 3, "p": 0.5}


def test_status_and_media_type_kept():
    response = FastJSONResponse({"error": "too_large", "detail": "x"}, status_code=413)
    assert response.status_code == 413 and response.media_type == "application/json"
    assert response.headers["content-length"] == str(len(response.body))
