"""The GPU check (issue 24): the GPU profile's verdicts against the CPU profile's on the same images, and its speed.

    bench/gpu_check.sh [ITEMS] [OPTIONS]                      on a machine with a GPU (checks CUDA, then runs this)
    python bench/gpu_check.py [--items ITEMS] [--limit N] [--fetch] [--json OUT] [--cpu-only]

ITEMS: a manifest (.parquet / .csv; its ``test`` split, the shared test items) or a folder of images (recursive).
Default: runs/manifest_local.parquet. In one run, in this order (so that no step competes with another for the CPUs):

1. the CPU profile (serve_config.local.yaml) in this process on the CPU: every detector built once with its
   configured settings, each image scored in batches of the detector's max_batch_size, then the profile's Verdict:
   the service's answer without Serve (the reference);
2. the GPU profile (serve_config.yaml) served by Ray Serve on this machine, behind the shipped HAProxy ingress, with
   raw image bodies: every item once at concurrency 1 (its verdicts, compared with the reference, and images/s),
   then ``--requests`` at concurrency 64 (images/s; 503 overloaded answers are retried after Retry-After, as a
   polite client does, and counted). Detectors the fusion does not read ("context": CLIP H/14, bigG, DINOv2,
   FatFormer, ManTra-Net, ghostnet until a fusion trained with them exists) cannot change a verdict and need weights
   from the hub or /models; they are left out unless ``--all-detectors``, and the report names them;
3. per-detector batch throughput: each GPU-profile detector in this process on CUDA, at batch 1 and its configured
   max_batch_size (images/s after a warm-up).

``--cpu-only`` (the CI half, ``tests/test_gpu_check.py``): step 1, then the GPU profile's detectors and Verdict in
this process on the CPU (the same product, so the same verdicts are expected), and step 3 on the CPU. Nothing is
asserted on time here; the report states what was measured, on what.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from deployments.config import Profile, load_profile  # noqa: E402
from models.fusion import DetectorOutcome  # noqa: E402
from models.image_input import DecodedImage, ImageInputError, decode_image  # noqa: E402
from models.verdict import CONTEXT, Verdict  # noqa: E402

LOCAL_CONFIG = REPO / "serve_config.local.yaml"
GPU_CONFIG = REPO / "serve_config.yaml"
DEFAULT_ITEMS = REPO / "runs" / "manifest_local.parquet"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
HIGH_CONCURRENCY = 64


@dataclass(frozen=True)
class Item:
    name: str
    data: bytes


# ---- inputs ------------------------------------------------------------------------------------------------------
def load_items(source: Path, limit: int | None = None) -> list[Item]:
    """A manifest's test split (every row when it has no ``split`` column; grid quadrants cut as training does), or
    every image file under a folder, sorted by path."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        items = [Item(str(p.relative_to(source)), p.read_bytes()) for p in files]
    else:
        from training.dataset import item_bytes, load_manifest

        rows = load_manifest(source).to_pylist()
        if rows and "split" in rows[0]:
            rows = [r for r in rows if r["split"] == "test"]
        items = [Item(r.get("key") or r["filepath"], item_bytes(r["filepath"], r.get("crop") or "")) for r in rows]
    if not items:
        raise ValueError(f"{source}: no images (a folder of images, or a manifest with a test split)")
    return items[:limit] if limit else items


def without_context(profile: Profile) -> tuple[Profile, list[str]]:
    """The profile without the detectors its fusion does not read nor lets decide ("context"), and their names."""
    roles = profile.args.verdict().roles
    kept = [name for name in profile.args.detector_names() if roles[name] != CONTEXT]
    args = profile.args.model_copy(update={"detectors": [d for d in profile.args.detectors if d.name in kept]})
    detectors = {name: profile.detectors[name] for name in kept}
    return Profile(args=args, detectors=detectors), [n for n in roles if n not in kept]


def gpu_application(config: Path, keep: list[str], on_cpu: bool = False) -> dict[str, Any]:
    """The config's application with only the ``keep`` detectors (and the ingress), at route ``/``. ``on_cpu``: one
    replica each, no GPU, a tenth of a CPU (a dry run of the GPU half on a small machine; its speed means nothing)."""
    from serve_app.local import config_applications

    (app,) = copy.deepcopy(config_applications(config))
    app["args"]["detectors"] = [d for d in app["args"]["detectors"] if d["name"] in keep]
    app["deployments"] = [d for d in app["deployments"] if d["name"] in keep or d["name"] == "FusionIngress"]
    app["route_prefix"] = "/"
    for deployment in app["deployments"] if on_cpu else ():
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 1
        deployment["ray_actor_options"] = {"num_cpus": 0.1}
    return app


# ---- the service's answer, in this process -----------------------------------------------------------------------
class InProcessProfile:
    """A profile's detectors built once in this process on one device, and its Verdict. ``shared`` maps
    (detector, settings, device) to a built detector, so two profiles with the same settings load it once."""

    def __init__(self, profile: Profile, device: str, shared: dict[tuple[str, str, str], Any] | None = None):
        self.profile, self.device = profile, device
        self.verdict: Verdict = profile.args.verdict()
        self.limits = profile.args.input.limits()
        self.detectors: dict[str, Any] = {}
        self.load_errors: dict[str, str] = {}
        shared = {} if shared is None else shared
        for name, detector in profile.detectors.items():
            key = (name, json.dumps(detector.user_config.detector, sort_keys=True), device)
            try:
                if key not in shared:
                    shared[key] = models.create_detector(name, detector.user_config.detector, device=device)
                self.detectors[name] = shared[key]
            except Exception as err:  # noqa: BLE001 - reported, and scored as the service would: a failed detector
                self.load_errors[name] = f"{type(err).__name__}: {err}"[:300]

    def decode(self, items: list[Item]) -> list[DecodedImage | None]:
        decoded = []
        for item in items:
            try:
                decoded.append(decode_image(item.data, self.limits))
            except ImageInputError:
                decoded.append(None)
        return decoded

    def score(self, items: list[Item]) -> list[dict[str, Any] | None]:
        """One verdict body per item (None: the image did not decode), detectors in batches of their batch size."""
        images = self.decode(items)
        todo = [i for i, image in enumerate(images) if image is not None]
        outcomes: dict[int, list[DetectorOutcome]] = {i: [] for i in todo}
        for name in self.profile.args.detector_names():
            detector = self.detectors.get(name)
            if detector is None:
                for i in todo:
                    outcomes[i].append(DetectorOutcome(name, "failed", 0.0, error=f"load: {self.load_errors[name]}"))
                continue
            size = self.profile.detectors[name].user_config.max_batch_size
            for start in range(0, len(todo), size):
                chunk = todo[start : start + size]
                started = time.perf_counter()
                results = detector.predict([images[i] for i in chunk])
                ms = (time.perf_counter() - started) * 1000 / len(chunk)
                for i, result in zip(chunk, results):
                    outcomes[i].append(DetectorOutcome.from_result(name, result, detector.version, ms))
        return [self.verdict.decide(outcomes[i]) if i in outcomes else None for i in range(len(items))]


def batch_throughput(scorer: InProcessProfile, items: list[Item], repeat: int = 3) -> dict[str, dict[int, float]]:
    """Images/s of each loaded detector alone at batch 1 and at its max_batch_size (the items cycled to fill a batch),
    after one warm-up batch: the median of ``repeat`` timed batches."""
    images = [image for image in scorer.decode(items) if image is not None]
    result: dict[str, dict[int, float]] = {}
    for name, detector in scorer.detectors.items():
        result[name] = {}
        for size in sorted({1, scorer.profile.detectors[name].user_config.max_batch_size}):
            batch = [images[i % len(images)] for i in range(size)]
            detector.predict(batch)  # warm-up: lazy initialisation, CUDA kernels, cuDNN autotuning
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                detector.predict(batch)  # results come back to the CPU: the GPU work is done when it returns
                times.append(time.perf_counter() - started)
            result[name][size] = size / statistics.median(times)
    return result


# ---- comparing verdicts ------------------------------------------------------------------------------------------
def _p(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def compare(reference: list[dict | None], other: list[dict | None], names: list[str], features: list[str]) -> dict:
    """Per item, the other verdict against the reference: label agreement, |delta fusion_prob| (p50, p95, max),
    p95 |delta| of each feature the fusion reads, and the items whose labels differ."""
    pairs = [(n, a, b) for n, a, b in zip(names, reference, other) if a is not None and b is not None]
    probs = [
        abs(a["fusion_prob"] - b["fusion_prob"])
        for _, a, b in pairs
        if None not in (a["fusion_prob"], b["fusion_prob"])
    ]
    per_feature = {}
    for feature in features:
        deltas = [abs(a[feature] - b[feature]) for _, a, b in pairs if feature in a and feature in b]
        per_feature[feature] = _p(deltas, 95)
    differ = [
        {"item": n, "reference": [a["label"], a["fusion_prob"]], "other": [b["label"], b["fusion_prob"]]}
        for n, a, b in pairs
        if a["label"] != b["label"]
    ]
    count = len(pairs)
    return {
        "compared": count,
        "unscored": len(names) - count,
        "labels_agree": (count - len(differ)) / count if count else None,
        "uncertain_agree": sum(a["uncertain"] == b["uncertain"] for _, a, b in pairs) / count if count else None,
        "decided_by_agree": sum(a["decided_by"] == b["decided_by"] for _, a, b in pairs) / count if count else None,
        "fusion_prob_delta": {"p50": _p(probs, 50), "p95": _p(probs, 95), "max": max(probs) if probs else None},
        "feature_delta_p95": per_feature,
        "label_differs": differ,
        "missing": {
            "reference": sum(bool(a["missing"]) for _, a, _ in pairs),
            "other": sum(bool(b["missing"]) for _, _, b in pairs),
        },
    }


# ---- the GPU profile over HTTP -----------------------------------------------------------------------------------
def start_gpu_profile(app: dict[str, Any], timeout_s: float) -> str:
    """Ray on this machine (every CPU and GPU), Serve behind the shipped HAProxy ingress, the application deployed
    and healthy; the base URL."""
    import ray

    from serve_app.local import deploy_apps, isolate_haproxy_ports, start_serve

    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")  # read by Ray's processes at start
    isolate_haproxy_ports()
    ray.init(include_dashboard=False, log_to_driver=False)
    url = start_serve()
    try:
        deploy_apps([app], timeout_s=timeout_s)
    except (RuntimeError, TimeoutError) as err:  # say which detector, and why (its replicas' own error)
        from ray import serve

        status = serve.status().applications.get(app["name"])
        reasons = {n: d.message for n, d in (status.deployments if status else {}).items() if d.status != "HEALTHY"}
        raise RuntimeError(f"the GPU profile did not start: {err}; " + json.dumps(reasons)[:3000]) from None
    return url


async def http_load(url: str, items: list[Item], concurrency: int, requests: int) -> dict[str, Any]:
    """``requests`` POST /v1/detect (raw bodies, items in order, cycled) from ``concurrency`` clients: each answer's
    body by request index, latencies, images/s, and the 503 overloaded answers retried after their Retry-After."""
    import httpx

    bodies: dict[int, dict | None] = {}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    retried = 0
    counter = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal retried
        for i in counter:
            data = items[i % len(items)].data
            started = time.perf_counter()
            while True:
                response = await client.post(
                    "/v1/detect", content=data, headers={"content-type": "application/octet-stream"}
                )
                if response.status_code != 503 or "overloaded" not in response.text[:200]:
                    break
                retried += 1
                await asyncio.sleep(float(response.headers.get("retry-after", 1)))
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            answer = response.json()
            bodies[i] = answer if "label" in answer else None  # a 4xx error body: the image was refused

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "bodies": bodies,
        "requests": requests,
        "concurrency": concurrency,
        "images_per_s": requests / wall,
        "p50_ms": _p(latencies, 50) * 1000,
        "p95_ms": _p(latencies, 95) * 1000,
        "statuses": statuses,
        "overloaded_retried": retried,
    }


def gpu_half(items: list[Item], gpu: Profile, args: argparse.Namespace) -> dict[str, Any]:
    """Serve the GPU profile: verdicts at c=1, images/s at c=1 and c=64; then per-detector batch throughput on CUDA
    (on the CPU with ``--serve-on-cpu``)."""
    import ray

    app = gpu_application(args.gpu_config, list(gpu.detectors), on_cpu=args.serve_on_cpu)
    started = time.perf_counter()
    url = start_gpu_profile(app, args.deploy_timeout)
    ready_s = time.perf_counter() - started
    print(f"GPU profile serving at {url} after {ready_s:.0f} s", flush=True)
    asyncio.run(http_load(url, items, 8, 16))  # warm-up: first CUDA calls, autoscaling's first replicas
    one = asyncio.run(http_load(url, items, 1, len(items)))
    many = asyncio.run(http_load(url, items, HIGH_CONCURRENCY, max(args.requests, len(items))))
    ray.shutdown()  # frees the replicas' GPU memory before the detectors are built again in this process
    verdicts = [one["bodies"].get(i) for i in range(len(items))]
    for run in (one, many):
        del run["bodies"]
    scorer = InProcessProfile(gpu, "cpu" if args.serve_on_cpu else "cuda")
    return {
        "verdicts": verdicts,
        "deploy_s": ready_s,
        "http": {"c1": one, f"c{HIGH_CONCURRENCY}": many},
        "batch_throughput": batch_throughput(scorer, items),
        "load_errors": scorer.load_errors,
    }


def fetch_weights(profiles: dict[str, Profile]) -> bool:
    """Every weights file of the profiles' detectors, fetched and checked (``imgverify weights fetch``)."""
    from serve_app.weights_cli import detector_sources, fetch_all, format_outcome, summary

    outcomes = []
    for name, profile in profiles.items():
        print(f"weights of the {name} profile:", flush=True)
        sources, refused = detector_sources(profile)
        for outcome in refused:
            print(format_outcome(outcome))
        outcomes += refused + fetch_all(sources)
    print(summary(outcomes), flush=True)
    return all(o.ok for o in outcomes)


# ---- the report --------------------------------------------------------------------------------------------------
def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(result: dict[str, Any]) -> str:
    """What was measured, on what, in words and numbers."""
    c, other = result["comparison"], result["other"]
    where = "in this process on the CPU" if result["cpu_only"] else f"served by Ray Serve ({result['serve_device']})"
    lines = [
        f"GPU check on {result['machine']}",
        f"items: {len(result['items'])} from {result['source']}",
        f"reference: the CPU profile ({result['cpu_config']}) in this process on the CPU: "
        f"{len(result['items']) / result['cpu_s']:.2f} images/s one process, detectors one after another",
        f"compared: the GPU profile ({result['gpu_config']}) {where}, detectors {', '.join(result['gpu_detectors'])}",
    ]
    if result["left_out"]:
        lines.append(f"  left out (context: the fusion does not read them): {', '.join(result['left_out'])}")
    for side, errors in (("CPU profile", result["cpu_load_errors"]), ("GPU profile", other["load_errors"])):
        for name, error in errors.items():
            lines.append(f"  {side}: {name} did not load ({error}); its verdicts lack it")
    delta = c["fusion_prob_delta"]
    lines += [
        f"verdicts: {c['compared']} compared ({c['unscored']} not scored on one side); labels agree "
        f"{_f(c['labels_agree'], 3)}, uncertain agrees {_f(c['uncertain_agree'], 3)}, decided_by agrees "
        f"{_f(c['decided_by_agree'], 3)}",
        f"  |delta fusion_prob|: p50 {_f(delta['p50'], 6)}, p95 {_f(delta['p95'], 6)}, max {_f(delta['max'], 6)}",
        "  p95 |delta| per fusion feature: "
        + ", ".join(f"{name} {_f(value, 6)}" for name, value in c["feature_delta_p95"].items()),
        f"  issue-24 bounds (labels agree >= 0.99, p95 |delta| <= 0.02): "
        f"{'met' if (c['labels_agree'] or 0) >= 0.99 and (delta['p95'] or 0) <= 0.02 else 'NOT met'}",
    ]
    for differ in c["label_differs"][:10]:
        lines.append(f"  label differs: {differ['item']}: CPU {differ['reference']}, GPU {differ['other']}")
    for level, run in other.get("http", {}).items():
        lines.append(
            f"HTTP {level} ({run['requests']} requests, raw bodies): {run['images_per_s']:.2f} images/s, "
            f"p50 {run['p50_ms']:.1f} ms, p95 {run['p95_ms']:.1f} ms, statuses {run['statuses']}, "
            f"503 overloaded retried {run['overloaded_retried']}"
        )
    lines.append(f"per-detector batch throughput ({result['throughput_device']}, images/s, in this process):")
    for name, by_size in other["batch_throughput"].items():
        lines.append(f"  {name:<16} " + ", ".join(f"batch {size}: {ips:.1f}" for size, ips in by_size.items()))
    lines.append(f"wall time {result['wall_s']:.0f} s")
    return "\n".join(lines)


def machine() -> tuple[str, bool]:
    """A one-line description of this machine, and whether torch sees a CUDA device."""
    import torch

    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
    return f"{gpu}, {os.cpu_count()} CPUs, torch {torch.__version__}", cuda


# ---- the command -------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=Path, default=DEFAULT_ITEMS, help="a manifest (its test split) or a folder")
    parser.add_argument("--limit", type=int, default=None, help="only the first N items")
    parser.add_argument("--cpu-config", type=Path, default=LOCAL_CONFIG)
    parser.add_argument("--gpu-config", type=Path, default=GPU_CONFIG)
    parser.add_argument("--requests", type=int, default=512, help=f"requests at concurrency {HIGH_CONCURRENCY}")
    parser.add_argument("--all-detectors", action="store_true", help="serve the context detectors too")
    parser.add_argument("--fetch", action="store_true", help="first fetch and check both profiles' weights")
    parser.add_argument("--cpu-only", action="store_true", help="the CI half: both profiles in this process on CPU")
    parser.add_argument(
        "--serve-on-cpu", action="store_true", help="a dry run of the GPU half without a GPU (its speed means nothing)"
    )
    parser.add_argument("--deploy-timeout", type=float, default=300.0, help="seconds for the GPU profile to start")
    parser.add_argument("--json", type=Path, help="also write the results (and each item's two verdicts) here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    description, cuda = machine()
    if not (cuda or args.cpu_only or args.serve_on_cpu):
        print(f"no CUDA device here ({description}): run with --cpu-only for the CPU half", file=sys.stderr)
        return 2
    items = load_items(args.items, args.limit)
    local, full = load_profile(args.cpu_config), load_profile(args.gpu_config)
    gpu, left_out = (full, []) if args.all_detectors else without_context(full)
    if args.fetch and not fetch_weights({"CPU": local, "GPU": gpu}):
        return 1
    shared: dict[tuple[str, str, str], Any] = {}
    cpu = InProcessProfile(local, "cpu", shared)
    cpu_started = time.perf_counter()
    reference = cpu.score(items)
    cpu_s = time.perf_counter() - cpu_started
    if args.cpu_only:
        same = InProcessProfile(gpu, "cpu", shared)
        other = {"verdicts": same.score(items), "batch_throughput": batch_throughput(cpu, items, repeat=1)}
        other["load_errors"] = same.load_errors
    else:
        shared.clear()
        cpu.detectors.clear()  # the CPU models go before Serve's replicas start
        other = gpu_half(items, gpu, args)
    names = [item.name for item in items]
    device = "cpu" if args.serve_on_cpu else "cuda"
    result = {
        "machine": description,
        "cpu_only": args.cpu_only,
        "source": str(args.items),
        "items": names,
        "cpu_config": args.cpu_config.name,
        "gpu_config": args.gpu_config.name,
        "gpu_detectors": list(gpu.detectors),
        "left_out": left_out,
        "cpu_load_errors": cpu.load_errors,
        "cpu_s": cpu_s,
        "serve_device": "dry run on the CPU, one replica each" if args.serve_on_cpu else "GPU fractions as configured",
        "throughput_device": "cpu, CPU profile" if args.cpu_only else f"{device}, GPU profile",
        "comparison": compare(reference, other["verdicts"], names, gpu.args.verdict().fusion.features),
        "other": {k: v for k, v in other.items() if k != "verdicts"},
    }
    result["wall_s"] = time.perf_counter() - started
    print(report(result), flush=True)
    if args.json:
        pairs = [[n, *_label_prob(a), *_label_prob(b)] for n, a, b in zip(names, reference, other["verdicts"])]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result, "verdicts": pairs}, indent=1, default=str))
    return 0


def _label_prob(body: dict | None) -> list[Any]:
    return [None, None] if body is None else [body["label"], body["fusion_prob"]]


if __name__ == "__main__":
    raise SystemExit(main())
