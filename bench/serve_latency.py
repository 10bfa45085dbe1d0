"""Serving latency and throughput of the ingress against the same detectors in one process.

    python bench/serve_latency.py [--config serve_config.local.yaml] [--images 24] [--requests 96]
        [--jpeg-size 1280x720] [--bodies multipart,raw] [--variants configured]

Measured in one run, on the same images and the same machine:

1. in-process (before Ray starts, so nothing competes):
   - every detector of the config alone on decoded images (ms per image), and the seed's design: decode +
     every detector one after another + the verdict (the sequential pipeline);
   - decode_image with Pillow only vs. with the libjpeg-turbo fast path (simplejpeg), and whether the pixels
     are identical;
   - the answer's JSON rendering (a verdict, and one the size of ?artifacts=true): Starlette's JSONResponse
     (json.dumps) vs. serve_app.fast_json.FastJSONResponse (orjson), and whether the JSON is the same;
   - reading the upload in Starlette: multipart form parsing vs. the raw body;
2. the Serve application from the config (started here on a free port), over HTTP, at concurrency 1, 8 and
   32, for each request body kind (multipart field "file", or the raw image body with Content-Type image/jpeg)
   and each variant (``--variants``): p50 / p99 latency, images/s, and the server's own median decode and
   detector fan-out times from the answers' ``timings``.

Variants (deployed one after another in the same Ray session; comma-separated):
    configured   the config as it is
    pillow       the config, with IMGVERIFY_FAST_JPEG=0 in the application's runtime_env (Pillow decodes)
    ingress1     the config with FusionIngress num_replicas: 1
    ingress2     the config with FusionIngress num_replicas: 2
    one_loop     the config, with Serve's user code and its router on each replica's main event loop
                 (RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0, RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0 in the
                 application's runtime_env): two fewer thread hops per call

``--no-access-log`` turns off Serve's per-request access log line in the proxy and in every replica
(``logging_config.enable_access_log: false``); the ingress still logs its own verdict line per request.

``--haproxy`` runs everything behind Ray's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``, which turns on direct
ingress; HAProxy listens on the proxy's port and balances over the ingress replicas), and ``--throughput-optimized``
sets ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (gRPC between deployments, Serve's user code and router on each replica's
main loop, no log copy to stderr): the two switches of Ray's documented high-throughput mode.

``--direct-ingress`` runs everything with Ray Serve's experimental direct ingress (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``
for the whole Ray session): no proxy actor, the ingress replica serves HTTP itself on a port from 30000 up, found
here by probing. One variant per run then (each ingress replica would get its own port).

Targets (issue 14): ingress p50 at concurrency 1 <= slowest detector alone + 20 ms; images/s at
concurrency 32 >= 3 x the sequential pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from deployments.config import load_profile  # noqa: E402
from models import image_input  # noqa: E402
from models.fusion import DetectorOutcome, json_safe  # noqa: E402
from models.image_input import decode_image  # noqa: E402

LEVELS = (1, 8, 32)
ONE_LOOP_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def sample_images(data: Path, count: int) -> list[bytes]:
    """Photos and generated images of the sizes people upload (0.3-1.3 MP)."""
    folders = ["modern-matched/real", "modern-matched/ai", "camera-models/real", "early-generators-ai/ai/dal2"]
    files = [p for folder in folders for p in sorted((data / folder).glob("*"))[: count // len(folders) + 1]]
    return [p.read_bytes() for p in files[:count]]


def sized_jpeg(data: Path, size: str) -> list[bytes]:
    """One real photo, cropped and resized to WxH, saved as a quality-90 JPEG (the issue's 1280x720 upload)."""
    from PIL import Image, ImageOps

    width, height = (int(v) for v in size.lower().split("x"))
    photo = Image.open(sorted((data / "camera-models" / "real").glob("*.jpg"))[0]).convert("RGB")
    buffer = io.BytesIO()
    ImageOps.fit(photo, (width, height), Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=90)
    return [buffer.getvalue()]


def timed_median_ms(fn, items, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        for item in items:
            started = time.perf_counter()
            fn(item)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def decode_lever(images: list[bytes], limits, repeat: int = 5) -> dict:
    """decode_image with Pillow only vs. with the fast JPEG path on the bench's images, timed alternately (so
    that anything else on the machine weighs on both alike); the two results compared field by field."""

    def decode(data: bytes, fast: bool):
        saved, image_input.FAST_JPEG = image_input.FAST_JPEG, fast
        try:
            return decode_image(data, limits)
        finally:
            image_input.FAST_JPEG = saved

    if image_input.simplejpeg is None:
        return {"pillow_ms": timed_median_ms(lambda d: decode(d, False), images), "fast_ms": None, "identical": None}
    identical = True
    for data in images:
        a, b = decode(data, False), decode(data, True)
        identical &= np.array_equal(a.rgb, b.rgb) and all(
            getattr(a, f) == getattr(b, f) for f in ("format", "source_mode", "sha256", "orientation", "notes")
        )
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeat):
        for data in images:
            for fast in (False, True):
                started = time.perf_counter()
                decode(data, fast)
                times[fast].append((time.perf_counter() - started) * 1000)
    return {
        "pillow_ms": statistics.median(times[False]),
        "fast_ms": statistics.median(times[True]),
        "identical": identical,
    }


def body_lever(images: list[bytes], repeat: int = 20) -> dict:
    """What the ingress spends reading one upload, in-process (Starlette, 64 KiB chunks as the proxy sends them):
    multipart form parsing + reading the part vs the raw body (Content-Type image/jpeg); timed alternately."""
    import httpx
    from starlette.requests import Request

    def request(body: bytes, content_type: str) -> Request:
        chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
        position = iter(range(len(chunks)))

        async def receive() -> dict:
            i = next(position, None)
            if i is None:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": chunks[i], "more_body": i < len(chunks) - 1}

        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        return Request(
            {"type": "http", "method": "POST", "path": "/v1/detect", "headers": headers, "query_string": b""}, receive
        )

    async def multipart(data: bytes, encoded: httpx.Request) -> None:
        form = await request(encoded.read(), encoded.headers["content-type"]).form(max_files=1, max_fields=16)
        assert await form["file"].read() == data
        await form.close()

    async def raw(data: bytes) -> None:
        assert await request(data, "image/jpeg").body() == data

    async def run() -> dict:
        times: dict[str, list[float]] = {"multipart_ms": [], "raw_ms": []}
        encoded = [httpx.Request("POST", "http://x/v1/detect", files={"file": ("image", d)}) for d in images]
        for _ in range(repeat):
            for data, form in zip(images, encoded):
                for key, call in (("multipart_ms", multipart(data, form)), ("raw_ms", raw(data))):
                    started = time.perf_counter()
                    await call
                    times[key].append((time.perf_counter() - started) * 1000)
        return {key: statistics.median(values) for key, values in times.items()}

    result = asyncio.run(run())
    result["kb"] = statistics.median(len(d) for d in images) / 1000
    return result


def artifacts_body(body: dict, image) -> dict:
    """``body`` plus an ``artifacts`` entry the size ?artifacts=true gives: the image at <= 1024 px as a PNG (the
    overlay) and a grey heatmap PNG, base64, for two heatmap detectors."""
    import base64

    def png(picture) -> str:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", optimize=False)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    overlay = image.to_pil()
    overlay.thumbnail((1024, 1024))
    grey = png(overlay.convert("L"))
    entry = {
        "width": overlay.width,
        "height": overlay.height,
        "heatmap_png_base64": grey,
        "overlay_png_base64": png(overlay),
    }
    return {
        **body,
        "artifacts": {"ela": {"detector": "forensics", **entry}, "mantranet": {"detector": "mantranet", **entry}},
    }


def json_lever(bodies: list[dict]) -> dict:
    """The ingress's JSON rendering of answer bodies: Starlette's JSONResponse vs. serve_app.fast_json (orjson)."""
    from fastapi.responses import JSONResponse

    try:
        from serve_app.fast_json import FastJSONResponse
    except ImportError:  # orjson not installed
        return {}
    result = {}
    for kind, items in (("verdict", bodies[:-1]), ("artifacts", bodies[-1:])):
        repeat = 20 if kind == "verdict" else 5
        a = [JSONResponse(json_safe(b)).body for b in items]
        b = [FastJSONResponse(json_safe(x)).body for x in items]
        result[kind] = {
            "json_ms": timed_median_ms(lambda x: JSONResponse(json_safe(x)).body, items, repeat),
            "orjson_ms": timed_median_ms(lambda x: FastJSONResponse(json_safe(x)).body, items, repeat),
            "same_json": all(json.loads(x) == json.loads(y) for x, y in zip(a, b)),
            "same_bytes": a == b,
            "bytes": statistics.median(len(x) for x in a),
        }
    return result


def in_process(config: Path, images: list[bytes]) -> dict:
    profile = load_profile(config)
    detectors = {name: models.create_detector(name, d.user_config.detector) for name, d in profile.detectors.items()}
    verdict = profile.args.verdict()
    limits = profile.args.input.limits()
    decoded = [decode_image(data, limits) for data in images]
    for detector in detectors.values():  # warm-up: first calls pay for lazy initialisation
        detector.predict(decoded[:2])
    alone = {}
    for name, detector in detectors.items():
        times = []
        for image in decoded:
            started = time.perf_counter()
            detector.predict([image])
            times.append((time.perf_counter() - started) * 1000)
        alone[name] = statistics.median(times)
    sequential, bodies = [], []
    for data in images:
        started = time.perf_counter()
        image = decode_image(data, limits)
        outcomes = []
        for name, detector in detectors.items():
            t0 = time.perf_counter()
            (result,) = detector.predict([image])
            ms = (time.perf_counter() - t0) * 1000
            outcomes.append(DetectorOutcome.from_result(name, result, detector.version, ms))
        body = verdict.decide(outcomes)
        sequential.append(time.perf_counter() - started)
        timings = {k: 12.34 for k in ("decode_ms", "detectors_ms", "fusion_ms", "artifacts_ms", "total_ms")}
        body.update({"request_id": "0" * 32, "image": image.summary(), "timings": timings})
        bodies.append(body)
    bodies.append(artifacts_body(bodies[0], decoded[0]))
    return {
        "alone_ms": alone,
        "sequential_p50_ms": statistics.median(sequential) * 1000,
        "sequential_ips": len(sequential) / sum(sequential),
        "decode": decode_lever(images, limits),
        "json": json_lever(bodies),
        "body": body_lever(images),
    }


async def load(url: str, images: list[bytes], concurrency: int, requests: int, body: str) -> dict:
    """``requests`` POST /v1/detect from ``concurrency`` clients. A 503 ``overloaded`` (the ingress' admission) is
    counted and retried after its Retry-After; its latency counts from the first attempt."""
    import httpx

    latencies: list[float] = []
    server: dict[str, list[float]] = {"decode_ms": [], "detectors_ms": [], "total_ms": []}
    overloaded = 0
    counter = iter(range(requests))

    async def post(client: httpx.AsyncClient, data: bytes) -> httpx.Response:
        if body == "raw":
            return await client.post("/v1/detect", content=data, headers={"content-type": "image/jpeg"})
        return await client.post("/v1/detect", files={"file": ("image", data)})

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal overloaded
        for i in counter:
            data = images[i % len(images)]
            started = time.perf_counter()
            response = await post(client, data)
            while response.status_code == 503 and "overloaded" in response.text[:200]:
                overloaded += 1  # a polite client: back off as told (Retry-After), as `imgverify score` does
                await asyncio.sleep(float(response.headers.get("retry-after", 1)))
                response = await post(client, data)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            timings = response.json().get("timings", {})
            for key, values in server.items():
                if key in timings:
                    values.append(timings[key])

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "p50_ms": float(np.percentile(latencies, 50)) * 1000,
        "p99_ms": float(np.percentile(latencies, 99)) * 1000,
        "ips": len(latencies) / wall,
        "overloaded": overloaded,
        **{f"server_{k}": statistics.median(v) for k, v in server.items() if v},
    }


def direct_ingress_url(first_port: int = 30000, ports: int = 100) -> str:
    """The ingress replica's own HTTP address under direct ingress (Serve gives it the first free port from 30000)."""
    import httpx

    for port in range(first_port, first_port + ports):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            continue
    raise RuntimeError(f"no ingress replica answers /healthz on ports {first_port}-{first_port + ports - 1}")


def variant_applications(config: Path, variant: str) -> list[dict]:
    from serve_app.local import config_applications

    apps = copy.deepcopy(config_applications(config))
    for app in apps:
        if variant == "pillow":
            env = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
            env["IMGVERIFY_FAST_JPEG"] = "0"
        elif variant == "one_loop":
            env = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
            env.update(ONE_LOOP_ENV)
        elif variant.startswith("ingress"):
            replicas = int(variant.removeprefix("ingress"))
            deployments = app.setdefault("deployments", [])
            ingress = next((d for d in deployments if d.get("name") == "FusionIngress"), None)
            if ingress is None:
                ingress = {"name": "FusionIngress"}
                deployments.append(ingress)
            ingress.pop("autoscaling_config", None)
            ingress["num_replicas"] = replicas
        elif variant != "configured":
            raise SystemExit(f"unknown variant {variant!r}")
    return apps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.local.yaml")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--jpeg-size", help="instead of --images: one real photo as a WxH JPEG, e.g. 1280x720")
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    parser.add_argument("--bodies", default="multipart", help="comma-separated: multipart, raw")
    parser.add_argument(
        "--variants",
        default="configured",
        help="comma-separated: configured, pillow, ingress1, ingress2, one_loop",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--direct-ingress", action="store_true", help="no proxy: the ingress replica serves HTTP")
    parser.add_argument(
        "--haproxy", action="store_true", help="Ray's HAProxy ingress in front of direct-ingress replicas, on the port"
    )
    parser.add_argument(
        "--throughput-optimized",
        action="store_true",
        help="RAY_SERVE_THROUGHPUT_OPTIMIZED=1: gRPC between deployments, user code and router on the main loop",
    )
    parser.add_argument(
        "--no-access-log", action="store_true", help="Serve's per-request access log off (proxy and replicas)"
    )
    args = parser.parse_args()
    if args.direct_ingress and "," in args.variants:
        parser.error("--direct-ingress runs one variant (each ingress replica would listen on its own port)")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    images = sized_jpeg(args.data, args.jpeg_size) if args.jpeg_size else sample_images(args.data, args.images)
    bodies = args.bodies.split(",")
    base = in_process(args.config, images)

    import ray

    from serve_app.local import deploy_apps, start_serve

    # Read by Serve's controller, proxies and replicas at import, which inherit this process' environment.
    if args.direct_ingress:
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    if args.haproxy:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    if args.throughput_optimized:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    quiet = {"enable_access_log": False} if args.no_access_log else None
    url = start_serve(logging_config=quiet)
    runs: dict[str, dict[str, dict[int, dict]]] = {}
    for variant in args.variants.split(","):
        applications = variant_applications(args.config, variant)
        for app in applications if quiet else []:
            app["logging_config"] = {**app.get("logging_config", {}), **quiet}
        deploy_apps(applications)
        if args.direct_ingress and not args.haproxy:  # HAProxy listens on the proxy's port itself
            url = direct_ingress_url()
        asyncio.run(load(url, images, 4, 8, bodies[0]))  # warm-up
        runs[variant] = {
            body: {
                c: asyncio.run(load(url, images, c, args.requests if c > 1 else args.requests // 2, body))
                for c in LEVELS
            }
            for body in bodies
        }
    ray.shutdown()

    slowest = max(base["alone_ms"], key=base["alone_ms"].get)
    what = f"one {args.jpeg_size} JPEG" if args.jpeg_size else f"{len(images)} images"
    via = "HAProxy" if args.haproxy else "direct ingress (no proxy)" if args.direct_ingress else "Serve's HTTP proxy"
    via += ", throughput-optimized" if args.throughput_optimized else ""
    logs = "access log off" if args.no_access_log else "access log on"
    print(f"\n{what}, config {args.config.name}, {os.cpu_count()} CPUs, HTTP via {via}, {logs}\n")
    print("in-process, ms per image (median):")
    for name, ms in base["alone_ms"].items():
        print(f"  {name:<12} alone {ms:8.1f}")
    print(
        f"  sequential pipeline (decode + all detectors + verdict): p50 {base['sequential_p50_ms']:.1f} ms, "
        f"{base['sequential_ips']:.2f} images/s"
    )
    d = base["decode"]
    fast = "n/a (simplejpeg not installed)" if d["fast_ms"] is None else f"{d['fast_ms']:.2f} ms"
    print(f"  decode_image: Pillow {d['pillow_ms']:.2f} ms, fast JPEG path {fast}; identical: {d['identical']}")
    b = base["body"]
    print(
        f"  reading the upload ({b['kb']:.0f} kB median): multipart {b['multipart_ms']:.3f} ms, "
        f"raw body {b['raw_ms']:.3f} ms"
    )
    for kind, j in base["json"].items():
        print(
            f"  {kind} answer JSON ({j['bytes'] / 1000:.0f} kB): JSONResponse {j['json_ms']:.3f} ms, "
            f"FastJSONResponse (orjson) {j['orjson_ms']:.3f} ms; same JSON: {j['same_json']}, "
            f"same bytes: {j['same_bytes']}"
        )
    print(
        "\n| variant | body | concurrency | p50 ms | p99 ms | images/s | 503 retried "
        "| server decode ms | server detectors ms | server total ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for variant, by_body in runs.items():
        for body, levels in by_body.items():
            for c, r in levels.items():
                print(
                    f"| {variant} | {body} | {c} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['ips']:.2f} "
                    f"| {r['overloaded']} | {r.get('server_decode_ms', nan):.1f} "
                    f"| {r.get('server_detectors_ms', nan):.1f} | {r.get('server_total_ms', nan):.1f} |"
                )
    bound = base["alone_ms"][slowest] + 20
    print(
        f"\ntargets: p50 at c=1 <= slowest alone ({slowest}, {base['alone_ms'][slowest]:.1f} ms) + 20 ms = "
        f"{bound:.1f} ms; images/s at c=32 >= 3 x sequential ({base['sequential_ips']:.2f}) = "
        f"{3 * base['sequential_ips']:.2f}"
    )
    for variant, by_body in runs.items():
        for body, levels in by_body.items():
            p50, ratio = levels[1]["p50_ms"], levels[32]["ips"] / base["sequential_ips"]
            print(
                f"  {variant:<10} {body:<9} c=1 p50 {p50:6.1f} ms -> {'met' if p50 <= bound else 'NOT met'};"
                f"  c=32 {ratio:.2f}x sequential -> {'met' if ratio >= 3 else 'NOT met'}"
            )
    if args.json:
        result = {"config": str(args.config), "images": what, "in_process": base, "runs": runs}
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
