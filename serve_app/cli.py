"""The ``imgverify`` command.

    imgverify score IMAGE... [--url http://127.0.0.1:8000] [--artifacts]   post to a running service
                   [--api-key K | $IMGVERIFY_API_KEY] [--retries 3]     (waits out 429/503 Retry-After)
    imgverify batch INPUT --out OUT [--config serve_config.local.yaml]      Ray Data batch scoring
    imgverify dataset build ROOT... --out M.parquet | dataset clean M --out C.parquet
    imgverify features extract MANIFEST --out DIR [--config ...]
    imgverify train fusion|dino-svm|clip-head|ghostnet|effnet-artifact|cross-fit|leave-out-policy ...
    imgverify evaluate ...
    imgverify weights fetch [--config serve_config.local.yaml] [--dir DIR]  fetch and verify the config's weights
    imgverify deploy kuberay [--config serve_config.yaml] [--out FILE]      KubeRay RayService from a Serve config
    imgverify deploy sync [--from serve_config.local.yaml] [--to serve_config.yaml] [--check]
                                                   copy the trained detector settings and fusion into the GPU profile
    imgverify trust update [--dir DIR]                                      refresh the C2PA trust lists (online)

Each training step is also ``python -m training.<step>``; this file only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

# (command words) -> "module:function" taking argv; imported only when used, so `score` stays light.
COMMANDS: dict[tuple[str, ...], str] = {
    ("batch",): "serve_app.batch:main",
    ("dataset", "build"): "training.dataset:main_build",
    ("dataset", "clean"): "training.dataset:main_clean",
    ("features", "extract"): "training.features:main",
    ("train", "fusion"): "training.train_fusion:main",
    ("train", "dino-svm"): "training.train_dino_svm:main",
    ("train", "clip-head"): "training.train_clip_head:main",
    ("train", "ghostnet"): "training.train_ghostnet:main",
    ("train", "effnet-artifact"): "training.train_effnet_artifact:main",
    ("train", "cross-fit"): "training.cross_fit:main",
    ("train", "leave-out-policy"): "training.leave_out:main_policy",
    ("evaluate",): "training.evaluate:main",
    ("weights", "fetch"): "serve_app.weights_cli:main",
    ("deploy", "kuberay"): "serve_app.kuberay:main",  # RayService manifest from a Serve config
    ("deploy", "sync"): "serve_app.profile_sync:main",  # serve_config.yaml follows serve_config.local.yaml
    ("trust", "update"): "models.provenance_trust:update",
    ("data",): "training.data_sources:main",  # data fetch NAME... | data list
}


RETRY_STATUSES = (429, 503)
MAX_RETRY_WAIT_S = 30.0


def retry_after_s(response) -> float | None:
    """Seconds the service asked us to wait: a 429, or a 503 that carries ``Retry-After`` (``overloaded``, or
    Serve's own backpressure answer); None for every other answer (a 503 ``UNKNOWN`` verdict is final)."""
    if response.status_code not in RETRY_STATUSES:
        return None
    header = response.headers.get("retry-after")
    if header is None:
        return 1.0 if response.status_code == 429 else None
    try:
        seconds = float(header)
    except ValueError:  # Retry-After may also be an HTTP date (RFC 9110)
        seconds = seconds_until(header)
    return min(MAX_RETRY_WAIT_S, max(0.0, seconds))


def seconds_until(http_date: str) -> float:
    """Seconds from now until an HTTP date; 1 s (a short, polite back-off) when the date cannot be read."""
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return 1.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - datetime.now(timezone.utc)).total_seconds()


def post_politely(client, path: str, retries: int, sleep=None, **request):
    """POST, and on 429/503 with ``Retry-After`` wait that long (at most 30 s, plus up to 10% jitter) and try
    again, at most ``retries`` more times. Returns the last response."""
    import random
    import time

    sleep = sleep or time.sleep
    for attempt in range(retries + 1):
        response = client.post(path, **request)
        wait = retry_after_s(response)
        if wait is None or attempt == retries:
            return response
        sleep(wait * (1.0 + 0.1 * random.random()))
    return response


def score(argv: list[str]) -> int:
    """POST each image to ``/v1/detect`` and print the JSON answers (one object per line)."""
    import httpx

    parser = argparse.ArgumentParser(prog="imgverify score", description="Score images with a running service.")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    parser.add_argument("--artifacts", action="store_true", help="ask for heatmaps (base64 PNG)")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--indent", type=int, default=None)
    parser.add_argument("--retries", type=int, default=3, help="retries on 429/503 with Retry-After (default 3)")
    parser.add_argument(
        "--api-key", default=os.environ.get("IMGVERIFY_API_KEY"), help="Bearer key (default: $IMGVERIFY_API_KEY)"
    )
    args = parser.parse_args(argv)
    failures = 0
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.url, timeout=args.timeout, headers=headers) as client:
        for path in args.images:
            try:
                data = path.read_bytes()
            except OSError as err:
                print(json.dumps({"path": str(path), "error": "unreadable_file", "detail": str(err)}))
                failures += 1
                continue
            try:
                response = post_politely(
                    client,
                    "/v1/detect",
                    args.retries,
                    params={"artifacts": str(args.artifacts).lower()},
                    files={"file": (path.name, data)},
                )
            except httpx.TransportError as err:  # no service there: say so, once, and stop
                print(json.dumps({"path": str(path), "error": "service_unreachable", "detail": f"{args.url}: {err}"}))
                return 2
            try:
                body = response.json()
            except ValueError:
                body = {"error": "not_json", "detail": response.text[:500]}
            failures += response.status_code != 200
            print(json.dumps({"path": str(path), "status": response.status_code, **body}, indent=args.indent))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["score"]:
        return score(argv[1:])
    for words, target in sorted(COMMANDS.items(), key=lambda kv: -len(kv[0])):
        if tuple(argv[: len(words)]) == words:
            module, function = target.split(":")
            return int(getattr(importlib.import_module(module), function)(argv[len(words) :]) or 0)
    usage = ["score"] + [" ".join(words) for words in COMMANDS]
    print(f"usage: imgverify {{{' | '.join(usage)}}} ...\n\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
