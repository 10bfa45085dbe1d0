"""``imgverify deploy kuberay``: a KubeRay RayService manifest generated from a Serve config file.

    imgverify deploy kuberay --config serve_config.yaml --out deploy/kuberay/rayservice.yaml [--image ...]

One source of truth: the manifest's ``serveConfigV2`` is the Serve config file's text, verbatim (comments
included), so a change to ``serve_config.yaml`` is a regeneration, never a hand edit (``tests/test_kuberay.py``
fails when the committed manifest differs from what this command writes).

The worker groups are sized from the same file: every deployment's ``ray_actor_options`` (``num_cpus``,
``num_gpus``) times its replicas (``num_replicas``, or ``autoscaling_config.min_replicas`` / ``max_replicas``) is
packed, first-fit decreasing, onto nodes of the given shape: GPU deployments onto the GPU group (a fractional
``num_gpus`` must fit on one GPU, as Ray schedules it), the rest onto the CPU group. The group's ``minReplicas`` /
``maxReplicas`` are the node counts that hold the minimum / maximum replicas; the computation is written into
the manifest's header. The head runs no replicas (``num-cpus: 0``).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deployments.config import DEFAULT_DETECTOR_CPUS

RAY_VERSION = "2.60.0"  # pyproject.toml's ray pin; the image must carry the same
UNIT = 10_000  # Ray accounts resources in 1/10000 units: 0.15 + 0.85 GPU is exactly one GPU
INGRESS_DEFAULT_CPUS = 0.25  # serve_app.app.FusionIngress's @serve.deployment default
SERVE_PORT = 8000
METRICS_PORT = 8080


@dataclass(frozen=True)
class Demand:
    """One deployment's per-replica resources and its replica range."""

    name: str
    num_cpus: float
    num_gpus: float
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True)
class NodeShape:
    """What one worker pod offers Ray (and requests from Kubernetes)."""

    cpus: int
    gpus: int
    memory: str


@dataclass(eq=False)  # compared by identity: two nodes with the same load are still two nodes
class _Node:
    cpu_free: int
    gpu_free: list[int] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Packing:
    """Nodes needed for one set of replicas, and what is placed on each."""

    nodes: int
    per_node: list[list[str]]


def _units(value: float) -> int:
    return round(value * UNIT)


def demands(config: dict[str, Any]) -> list[Demand]:
    """Per-deployment resources and replica range of every application in a Serve config (as data)."""
    out: list[Demand] = []
    for app in config.get("applications", []):
        listed = {d["name"]: d for d in app.get("deployments", [])}
        detectors = [d["name"] for d in (app.get("args") or {}).get("detectors", [])]
        names = ["FusionIngress"] + [n for n in detectors if n != "FusionIngress"]
        names += [n for n in listed if n not in names]
        for name in names:
            deployment = listed.get(name, {})
            actor = deployment.get("ray_actor_options") or {}
            default_cpus = INGRESS_DEFAULT_CPUS if name == "FusionIngress" else DEFAULT_DETECTOR_CPUS
            autoscaling = deployment.get("autoscaling_config")
            replicas = deployment.get("num_replicas", 1)
            if autoscaling:
                low, high = int(autoscaling.get("min_replicas", 1)), int(autoscaling.get("max_replicas", 1))
            elif isinstance(replicas, int):
                low = high = replicas
            else:
                raise ValueError(f"{name}: num_replicas {replicas!r} has no upper bound; give autoscaling_config")
            out.append(
                Demand(name, float(actor.get("num_cpus", default_cpus)), float(actor.get("num_gpus", 0)), low, high)
            )
    return out


def pack(items: list[tuple[str, float, float]], shape: NodeShape) -> Packing:
    """First-fit decreasing of (name, cpus, gpus) replicas onto nodes of ``shape``; raises if one cannot fit."""
    nodes: list[_Node] = []
    ordered = sorted(items, key=lambda item: (-item[2], -item[1], item[0]))
    for name, cpus, gpus in ordered:
        cpu, gpu = _units(cpus), _units(gpus)
        if cpu > shape.cpus * UNIT or gpu > shape.gpus * UNIT or (gpu > UNIT and gpu % UNIT):
            raise ValueError(f"a {name} replica ({cpus} CPU, {gpus} GPU) does not fit a node of {shape}")
        for node in nodes + [_Node(shape.cpus * UNIT, [UNIT] * shape.gpus)]:
            if node.cpu_free < cpu:
                continue
            if gpu <= UNIT:
                slot = next((i for i, free in enumerate(node.gpu_free) if free >= gpu), None) if gpu else -1
                if slot is None:
                    continue
                if slot >= 0:
                    node.gpu_free[slot] -= gpu
            else:  # whole GPUs
                whole = [i for i, free in enumerate(node.gpu_free) if free == UNIT][: gpu // UNIT]
                if len(whole) < gpu // UNIT:
                    continue
                for i in whole:
                    node.gpu_free[i] = 0
            node.cpu_free -= cpu
            node.replicas.append(name)
            if node not in nodes:
                nodes.append(node)
            break
    return Packing(len(nodes), [node.replicas for node in nodes])


@dataclass(frozen=True)
class GroupPlan:
    """One worker group: its node shape and the packings of the minimum and maximum replicas."""

    name: str
    shape: NodeShape
    deployments: list[Demand]
    low: Packing
    high: Packing

    def total(self, attr: str, bound: str) -> float:
        return sum(getattr(d, attr) * getattr(d, f"{bound}_replicas") for d in self.deployments)


def plan(config: dict[str, Any], cpu_shape: NodeShape, gpu_shape: NodeShape) -> list[GroupPlan]:
    """The CPU and GPU worker groups that hold every deployment of ``config`` at its minimum and maximum."""
    groups = []
    for name, shape, selected in (
        ("cpu", cpu_shape, [d for d in demands(config) if d.num_gpus == 0]),
        ("gpu", gpu_shape, [d for d in demands(config) if d.num_gpus > 0]),
    ):
        if not selected:
            continue
        low = pack([(d.name, d.num_cpus, d.num_gpus) for d in selected for _ in range(d.min_replicas)], shape)
        high = pack([(d.name, d.num_cpus, d.num_gpus) for d in selected for _ in range(d.max_replicas)], shape)
        groups.append(GroupPlan(name, shape, selected, low, high))
    return groups


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks, so serveConfigV2 reads like the file it came from; no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def _pod_template(image: str, shape: NodeShape, *, head: bool, fetch_config: str | None, gpu: bool) -> dict[str, Any]:
    """A Ray pod: the image, the resources Ray sees (KubeRay reads num-cpus/num-gpus from the limits), env, volumes."""
    resources: dict[str, Any] = {"cpu": str(shape.cpus), "memory": shape.memory}
    if gpu:
        resources["nvidia.com/gpu"] = str(shape.gpus)
    ports = [{"containerPort": SERVE_PORT, "name": "serve"}, {"containerPort": METRICS_PORT, "name": "metrics"}]
    if head:
        ports = [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
        ] + ports
    env = [
        # Weights: the init container fills these, the replicas read them (an emptyDir per pod).
        {"name": "IMGVERIFY_CACHE", "value": "/cache/imgverify"},
        {"name": "HF_HOME", "value": "/cache/hf"},
        # The production profile loads open_clip tags through the hub at replica start: online.
        {"name": "HF_HUB_OFFLINE", "value": "0"},
        # Serve's ingress is HAProxy (bundled with ray[serve]) in front of the ingress replicas, not the Python
        # proxy: read by Ray at start on every node (docs/operations.md, "HAProxy ingress").
        {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"},
    ]
    mounts = [{"name": "weights-cache", "mountPath": "/cache"}]
    volumes: list[dict[str, Any]] = [{"name": "weights-cache", "emptyDir": {}}]
    if not head:
        # The production profile names files under /models (dino head, FatFormer checkpoint, a trained fusion
        # model): a ReadOnlyMany volume that the operator fills. The head loads no weights.
        mounts.append({"name": "models", "mountPath": "/models", "readOnly": True})
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": "imgverify-models", "readOnly": True}})
    container = {
        "name": "ray-head" if head else "ray-worker",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"limits": dict(resources), "requests": dict(resources)},
        "ports": ports,
        "env": env,
        "volumeMounts": mounts,
    }
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
    }
    if fetch_config:
        # Every weights file of the profile, fetched and checked against its pins before Ray starts here; a
        # failure keeps the pod from starting and says which file (kubectl logs POD -c fetch-weights).
        spec["initContainers"] = [
            {
                "name": "fetch-weights",
                "image": image,
                "command": ["imgverify", "weights", "fetch", "--config", fetch_config],
                "env": env,
                "volumeMounts": mounts,
            }
        ]
    if gpu:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"spec": spec}


def render(
    config_path: Path,
    *,
    name: str,
    image: str,
    gpu_image: str,
    cpu_shape: NodeShape,
    gpu_shape: NodeShape,
    head_shape: NodeShape,
    command: str,
) -> str:
    """The RayService manifest's text for ``config_path`` (deterministic: same inputs, same bytes)."""
    text = config_path.read_text()
    config = yaml.safe_load(text)
    groups = plan(config, cpu_shape, gpu_shape)
    workers = []
    for group in groups:
        gpu = group.name == "gpu"
        workers.append(
            {
                "groupName": group.name,
                "replicas": group.low.nodes,
                "minReplicas": group.low.nodes,
                "maxReplicas": group.high.nodes,
                "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
                "template": _pod_template(
                    gpu_image if gpu else image,
                    group.shape,
                    head=False,
                    fetch_config=f"/app/{config_path.name}" if gpu else None,
                    gpu=gpu,
                ),
            }
        )
    manifest = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "imgverify"},
            "annotations": {"imgverify/generated-by": command},
        },
        "spec": {
            "serveConfigV2": text,
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                # Ray's autoscaler adds worker pods when Serve's autoscaling asks for replicas that do not fit.
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 300},
                "headGroupSpec": {
                    # The head runs the GCS, the Serve controller and a proxy, never a replica.
                    "rayStartParams": {
                        "num-cpus": "0",
                        "dashboard-host": "0.0.0.0",
                        "metrics-export-port": str(METRICS_PORT),
                    },
                    "template": _pod_template(image, head_shape, head=True, fetch_config=None, gpu=False),
                },
                "workerGroupSpecs": workers,
            },
        },
    }
    body = yaml.dump(manifest, Dumper=_LiteralDumper, sort_keys=False, width=1000, allow_unicode=True)
    return _header(config_path, groups, head_shape, command) + body


def _fmt(value: float) -> str:
    return f"{value:g}"


def _header(config_path: Path, groups: list[GroupPlan], head_shape: NodeShape, command: str) -> str:
    lines = [
        f"# GENERATED from {config_path.name} by: {command}",
        f"# Do not edit by hand: change {config_path.name} and regenerate (tests/test_kuberay.py checks they match).",
        "#",
        "# kubectl apply -f deploy/kuberay/rayservice.yaml   (needs the KubeRay operator, ray.io/v1 CRDs)",
        "# Images: the repository's Dockerfile, VARIANT=cpu for the head and CPU workers, VARIANT=cuda for GPU",
        "# workers; both carry /app/serve_config*.yaml from the same commit as this manifest.",
        "#",
        f"# Head: {head_shape.cpus} CPU, {head_shape.memory}, num-cpus 0 (no replicas).",
        "# Worker groups, sized from each deployment's ray_actor_options x replicas (first-fit decreasing packing;",
        "# a fractional num_gpus must fit on one GPU; GPU fractions are scheduling shares, not memory limits):",
    ]
    for group in groups:
        shape = group.shape
        lines.append("#")
        lines.append(
            f"# group {group.name}: nodes of {shape.cpus} CPU, {shape.gpus} GPU, {shape.memory}; "
            f"minReplicas {group.low.nodes}, maxReplicas {group.high.nodes}"
        )
        lines.append(f"#   {'deployment':<14} {'CPU':>5} {'GPU':>5} {'replicas':>9} {'CPU(max)':>9} {'GPU(max)':>9}")
        for d in group.deployments:
            lines.append(
                f"#   {d.name:<14} {_fmt(d.num_cpus):>5} {_fmt(d.num_gpus):>5} "
                f"{f'{d.min_replicas}-{d.max_replicas}':>9} {_fmt(d.num_cpus * d.max_replicas):>9} "
                f"{_fmt(round(d.num_gpus * d.max_replicas, 4)):>9}"
            )
        for bound, packing in (("min", group.low), ("max", group.high)):
            cpus, gpus = group.total("num_cpus", bound), round(group.total("num_gpus", bound), 4)
            lines.append(
                f"#   at {bound}: {_fmt(cpus)} CPU, {_fmt(gpus)} GPU -> {packing.nodes} node(s) = "
                f"{packing.nodes * shape.cpus} CPU, {packing.nodes * shape.gpus} GPU "
                f"(lower bound {max(math.ceil(cpus / shape.cpus), math.ceil(gpus / shape.gpus) if shape.gpus else 0)})"
            )
    return "\n".join(lines) + "\n"


def _shape(text: str) -> NodeShape:
    """``CPUS,GPUS,MEMORY`` (e.g. ``8,1,48Gi``) as a node shape."""
    try:
        cpus, gpus, memory = text.split(",")
        return NodeShape(int(cpus), int(gpus), memory.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: expected CPUS,GPUS,MEMORY such as 8,1,48Gi") from err


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgverify deploy kuberay", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=Path("serve_config.yaml"), help="the Serve config to embed")
    p.add_argument("--out", type=Path, default=None, help="write here (default: stdout)")
    p.add_argument("--name", default="imgverify", help="the RayService's name")
    p.add_argument("--image", default="imgverify:0.1.0-cpu", help="head and CPU workers (Dockerfile, VARIANT=cpu)")
    p.add_argument("--gpu-image", default="imgverify:0.1.0-cuda", help="GPU workers (Dockerfile, VARIANT=cuda)")
    p.add_argument("--cpu-node", type=_shape, default=_shape("8,0,16Gi"), help="CPU worker pod: CPUS,GPUS,MEMORY")
    p.add_argument("--gpu-node", type=_shape, default=_shape("8,1,64Gi"), help="GPU worker pod: CPUS,GPUS,MEMORY")
    p.add_argument("--head-node", type=_shape, default=_shape("4,0,16Gi"), help="head pod: CPUS,GPUS,MEMORY")
    return p


def command_line(argv: list[str]) -> str:
    """The command as recorded in the manifest (``--out`` left out: it does not change the text)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--out":
            skip = True
            continue
        if arg.startswith("--out="):
            continue
        kept.append(arg)
    return " ".join(["imgverify", "deploy", "kuberay", *map(shlex.quote, kept)])


def render_from_argv(argv: list[str]) -> tuple[str, Path | None]:
    """Parse the command's arguments and render; the manifest records the command that made it."""
    args = parser().parse_args(argv)
    text = render(
        args.config,
        name=args.name,
        image=args.image,
        gpu_image=args.gpu_image,
        cpu_shape=args.cpu_node,
        gpu_shape=args.gpu_node,
        head_shape=args.head_node,
        command=command_line(argv),
    )
    return text, args.out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        text, out = render_from_argv(argv)
    except (OSError, ValueError) as err:
        print(f"imgverify deploy kuberay: {err}", file=sys.stderr)
        return 1
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
