"""The container and observability files, checked as text: no Docker engine, no Grafana, no Ray started here."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = ROOT / "deploy" / "grafana" / "imgverify.json"
ALERTS = ROOT / "docs" / "alerts.md"
PINNED_IMAGE = re.compile(r"^[\w./-]+:[\w.-]*\d+\.\d+\.\d+[\w.-]*@sha256:[0-9a-f]{64}$")  # exact tag + digest
METRIC = re.compile(r"\bray_(?:imgverify|serve)_[a-z0-9_]+")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.startswith("#"))
    )
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def test_base_images_pinned_by_exact_tag_and_digest() -> None:
    froms = [args.split()[0] for word, args in _instructions() if word == "FROM"]
    assert froms, "no FROM"
    for image in froms:
        assert PINNED_IMAGE.match(image), f"{image}: pin an exact tag and its sha256 digest"
        assert image.startswith("python:3.11."), image  # the Python the project is tested with


def test_runs_as_a_non_root_user() -> None:
    users = [args.strip() for word, args in _instructions() if word == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:"), users
    assert "useradd" in DOCKERFILE.read_text()


def test_installs_the_project_with_its_torch_pins() -> None:
    runs = " ".join(args for word, args in _instructions() if word == "RUN")
    assert "pip install /src" in runs
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package in ("torch", "torchvision"):
        pin = re.search(rf'"{package}==([^"]+)"', pyproject).group(1)
        found = set(re.findall(rf"\b{package}==([\w.+-]+)", runs))
        assert found == {pin}, f"Dockerfile installs {package} {found}, pyproject.toml pins {pin}"
    assert "cpu)" in runs and "cuda)" in runs  # both variants of the VARIANT build argument


def test_local_weights_fetched_at_build_as_the_service_user() -> None:
    instructions = _instructions()
    fetch = [i for i, (word, args) in enumerate(instructions) if word == "RUN" and "imgverify weights fetch" in args]
    assert fetch, "no `imgverify weights fetch` at build time"
    assert "--config serve_config.local.yaml" in instructions[fetch[0]][1]
    last_user = max(i for i, (word, _) in enumerate(instructions) if word == "USER")
    assert last_user < fetch[0], "fetch after USER, so the cache belongs to the service's user"


def test_healthcheck_and_entry() -> None:
    instructions = dict(_instructions())
    assert "/healthz" in instructions["HEALTHCHECK"]
    command = json.loads(instructions["CMD"])
    assert command[command.index("serve") :][:2] == ["serve", "run"]
    assert "RAY_AUTH_MODE" not in " ".join(args for word, args in _instructions() if word == "ENV")  # not for clusters
    assert json.loads(instructions["ENTRYPOINT"]) == ["imgverify-entrypoint"]


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
@pytest.mark.parametrize("fetch", ["", "serve_config.yaml"])
def test_entrypoint_fetches_weights_only_when_asked(tmp_path: Path, fetch: str) -> None:
    """Run docker/entrypoint.sh with a stand-in `imgverify` that records its arguments."""
    script = ROOT / "docker" / "entrypoint.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    log = tmp_path / "calls"
    stub = tmp_path / "imgverify"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "IMGVERIFY_FETCH_WEIGHTS": fetch}
    command = ["sh", str(script), "echo", "started"]
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "started", result
    calls = log.read_text().splitlines() if log.exists() else []
    assert calls == ([f"weights fetch --config {fetch}"] if fetch else [])


def test_dockerignore_keeps_what_the_build_copies() -> None:
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    packages = re.search(r"packages = \[([^\]]*)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    # A package's top folder is what the build copies (data folders are listed as sub-packages: models.weights).
    needed = {name.split(".")[0] for p in packages.split(",") if (name := p.strip().strip('"'))}
    needed |= {"pyproject.toml", "README.md", "serve_config.yaml", "serve_config.local.yaml", "docker/entrypoint.sh"}
    assert needed <= allowed, needed - allowed
    assert ".venv" not in allowed and ".git" not in allowed


# ---- observability ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _source_metric_names() -> set[str]:
    """Metric names defined in this repository's code (the first argument of Counter/Histogram/Gauge)."""
    names = set()
    for folder in ("serve_app", "deployments", "models"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r'(?:Counter|Histogram|Gauge)\(\s*"([a-z0-9_]+)"', path.read_text()))
    return names


@lru_cache(maxsize=1)
def _ray_serve_sources() -> str:
    spec = importlib.util.find_spec("ray")  # locates the package without importing Ray
    assert spec is not None and spec.submodule_search_locations
    serve = Path(next(iter(spec.submodule_search_locations))) / "serve"
    return "\n".join(p.read_text() for p in serve.rglob("*.py") if "tests" not in p.parts)


def _ray_serve_defines(base: str) -> bool:
    """Ray Serve defines metric ``base``, literally or as an f-string such as
    ``f"serve_num_{protocol_name}_requests"``."""
    source = _ray_serve_sources()
    if f'"{base}"' in source:
        return True
    for template in re.findall(r'f"(serve_[a-z0-9_{}]+)"', source):
        if re.fullmatch(re.sub(r"\{[a-z_]+\}", "[a-z]+", template), base):
            return True
    return False


def _exported_to_defined(name: str) -> list[str]:
    """Candidate names in code for a Prometheus name: ``ray_`` prefix off, a histogram or counter suffix off."""
    base = name.removeprefix("ray_")
    candidates = [base]
    for suffix in ("_bucket", "_sum", "_count"):
        if base.endswith(suffix):
            candidates.append(base.removesuffix(suffix))
    if base.endswith("_total"):
        candidates.append(base.removesuffix("_total"))  # Ray's counters gain _total unless they end in it
    return candidates


def _check_metric(name: str) -> None:
    candidates = _exported_to_defined(name)
    if name.startswith("ray_imgverify_"):
        assert any(c in _source_metric_names() for c in candidates), (
            f"{name}: no such metric in serve_app/ deployments/"
        )
    else:
        assert any(_ray_serve_defines(c) for c in candidates), f"{name}: Ray Serve defines none of {candidates}"


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def test_dashboard_parses_and_is_complete() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "imgverify"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    for expr in _dashboard_exprs():  # no PromQL parser here: at least the brackets pair up
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_dashboard_metrics_exist_in_the_code() -> None:
    used = {m for expr in _dashboard_exprs() for m in METRIC.findall(expr)}
    assert any(m.startswith("ray_imgverify_") for m in used) and any(m.startswith("ray_serve_") for m in used)
    for name in sorted(used):
        _check_metric(name)


def test_dashboard_shows_every_imgverify_metric() -> None:
    used = {c for expr in _dashboard_exprs() for m in METRIC.findall(expr) for c in _exported_to_defined(m)}
    assert {"imgverify_detector_latency_ms", "imgverify_verdicts_total"} <= _source_metric_names()
    assert _source_metric_names() <= used, _source_metric_names() - used


def test_alerts_name_existing_metrics() -> None:
    blocks = re.findall(r"```promql\n(.*?)```", ALERTS.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 8
    for block in blocks:
        assert block.count("(") == block.count(")"), block
    for name in sorted({m for m in METRIC.findall(ALERTS.read_text())}):
        _check_metric(name)


def test_metric_name_check_rejects_a_made_up_name() -> None:
    with pytest.raises(AssertionError):
        _check_metric("ray_imgverify_no_such_metric_total")
    with pytest.raises(AssertionError):
        _check_metric("ray_serve_no_such_metric")
