"""deploy/kuberay/rayservice.yaml: generated from serve_config.yaml, and big enough for it. No Ray, no Kubernetes."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest
import yaml

from serve_app import cli
from serve_app.kuberay import NodeShape, demands, pack, render_from_argv

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
SERVE_CONFIG = ROOT / "serve_config.yaml"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def _recorded_argv(manifest: dict) -> list[str]:
    command = shlex.split(manifest["metadata"]["annotations"]["imgverify/generated-by"])
    assert command[:3] == ["imgverify", "deploy", "kuberay"]
    return command[3:]


def _quantity(value: str) -> float:
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def test_manifest_is_a_rayservice(manifest: dict) -> None:
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    cluster = manifest["spec"]["rayClusterConfig"]
    assert f'"ray[serve,data]=={cluster["rayVersion"]}"' in (ROOT / "pyproject.toml").read_text()
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert {g["groupName"] for g in cluster["workerGroupSpecs"]} == {"cpu", "gpu"}


def test_rays_autoscaler_is_on_with_room_for_serves_max_replicas(manifest: dict) -> None:
    """Serve's autoscaling asks for replicas; Ray's autoscaler adds worker pods when they do not fit, within each
    group's minReplicas..maxReplicas, and lets idle ones go."""
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    bounds = {g["groupName"]: (g["minReplicas"], g["maxReplicas"]) for g in cluster["workerGroupSpecs"]}
    assert all(1 <= low <= high for low, high in bounds.values())
    growing = [d for d in demands(yaml.safe_load(SERVE_CONFIG.read_text())) if d.max_replicas > d.min_replicas]
    assert any(d.num_gpus for d in growing) and bounds["gpu"][0] < bounds["gpu"][1]


def test_serve_config_v2_is_serve_config_yaml(manifest: dict) -> None:
    embedded = manifest["spec"]["serveConfigV2"]
    assert yaml.safe_load(embedded) == yaml.safe_load(SERVE_CONFIG.read_text())
    assert embedded == SERVE_CONFIG.read_text()  # verbatim, comments included


def test_committed_manifest_is_the_generators_output(manifest: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    text, _ = render_from_argv(_recorded_argv(manifest))
    assert text == MANIFEST.read_text(), (
        "deploy/kuberay/rayservice.yaml is stale: run `imgverify deploy kuberay --config serve_config.yaml "
        "--out deploy/kuberay/rayservice.yaml`"
    )


def test_a_config_change_changes_the_manifest(manifest: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    changed = tmp_path / "serve_config.yaml"
    changed.write_text(SERVE_CONFIG.read_text().replace("num_gpus: 0.5", "num_gpus: 0.6"))
    monkeypatch.chdir(ROOT)
    argv = _recorded_argv(manifest)
    argv[argv.index("--config") + 1] = str(changed)
    text, _ = render_from_argv(argv)
    assert yaml.safe_load(yaml.safe_load(text)["spec"]["serveConfigV2"]) != yaml.safe_load(SERVE_CONFIG.read_text())


def test_resources_add_up(manifest: dict) -> None:
    """Read from the manifest, independently of the packer: each deployment fits a group's pod, and the groups at
    maxReplicas (minReplicas) hold the deployments at max_replicas (min_replicas)."""
    groups = {}
    for group in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus, gpus = _quantity(limits["cpu"]), float(limits.get("nvidia.com/gpu", 0))
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        groups[group["groupName"]] = (cpus, gpus, group["minReplicas"], group["maxReplicas"])
    wanted = demands(yaml.safe_load(SERVE_CONFIG.read_text()))
    assert {d.name for d in wanted} >= {"FusionIngress", "provenance", "clip_bigg", "mantranet"}
    for d in wanted:
        group = "gpu" if d.num_gpus else "cpu"
        cpus, gpus, _, _ = groups[group]
        assert d.num_cpus <= cpus and (d.num_gpus <= 1 <= gpus if d.num_gpus else True), d
    for group, selected in (("cpu", [d for d in wanted if not d.num_gpus]), ("gpu", [d for d in wanted if d.num_gpus])):
        cpus, gpus, low, high = groups[group]
        for bound, nodes in (("min", low), ("max", high)):
            need_cpu = sum(d.num_cpus * getattr(d, f"{bound}_replicas") for d in selected)
            need_gpu = sum(d.num_gpus * getattr(d, f"{bound}_replicas") for d in selected)
            assert need_cpu <= nodes * cpus + 1e-9, (group, bound, need_cpu, nodes * cpus)
            assert need_gpu <= nodes * gpus + 1e-9, (group, bound, need_gpu, nodes * gpus)
    # the production profile at max (50 images/s, docs/cluster.md): 10.2 GPU in fractions, on 11 one-GPU nodes
    total_gpu = sum(d.num_gpus * d.max_replicas for d in wanted)
    assert math.isclose(total_gpu, 10.2) and groups["gpu"][3] * groups["gpu"][1] >= math.ceil(total_gpu)


def test_manifest_header_states_the_sums() -> None:
    header = [line for line in MANIFEST.read_text().splitlines() if line.startswith("#")]
    assert any("at max: 56 CPU, 10.2 GPU -> 11 node(s)" in line for line in header), header
    assert any("at max: 7 CPU, 0 GPU -> 1 node(s)" in line for line in header), header


def test_gpu_workers_fetch_weights_before_ray_starts(manifest: dict) -> None:
    groups = {g["groupName"]: g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    init = groups["gpu"]["template"]["spec"]["initContainers"][0]
    assert init["command"] == ["imgverify", "weights", "fetch", "--config", "/app/serve_config.yaml"]
    assert init["image"] == groups["gpu"]["template"]["spec"]["containers"][0]["image"]


def test_pack_fractions_exactly() -> None:
    """Ray's 1/10000 units: six 0.15 and one 0.1 fill one GPU exactly; a fraction never spans two GPUs."""
    one_gpu = NodeShape(cpus=8, gpus=1, memory="1Gi")
    assert pack([("a", 1, 0.15)] * 6 + [("b", 1, 0.1)], one_gpu).nodes == 1
    assert pack([("a", 1, 0.6)] * 2, NodeShape(cpus=8, gpus=2, memory="1Gi")).nodes == 1
    assert pack([("a", 1, 0.6)] * 2, one_gpu).nodes == 2
    assert pack([("a", 3, 0)] * 3, NodeShape(cpus=8, gpus=0, memory="1Gi")).nodes == 2  # CPU-bound too
    with pytest.raises(ValueError, match="does not fit"):
        pack([("big", 16, 0)], one_gpu)
    with pytest.raises(ValueError, match="does not fit"):
        pack([("split", 1, 1.5)], NodeShape(cpus=8, gpus=2, memory="1Gi"))


def test_unbounded_replicas_are_refused() -> None:
    config = {"applications": [{"deployments": [{"name": "x", "num_replicas": "auto"}]}]}
    with pytest.raises(ValueError, match="no upper bound"):
        demands(config)


def test_cli_writes_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "rayservice.yaml"
    assert cli.main(["deploy", "kuberay", "--config", "serve_config.yaml", "--out", str(out)]) == 0
    assert out.read_text() == MANIFEST.read_text()
