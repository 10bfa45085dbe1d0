"""Running Serve applications from a config in this process's Ray: for tests and benchmarks.

``deploy_apps`` goes through the same path as ``serve deploy``: the controller imports each
application by its ``import_path``, calls the builder with the config's ``args`` and applies the
``deployments`` options (replicas, resources, user_config).
"""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

import yaml

# Ray hands its worker processes ports from 10002-19999 (``min_worker_port`` / ``max_worker_port``), and every
# process that binds port 0 (Ray's GCS, raylets, core workers, HAProxy's helpers) gets one from the kernel's
# ephemeral range. A port chosen by binding 0 ourselves can be handed to one of them before the server we chose it
# for binds it: a cluster test failed so ("Failed to bind to address '127.0.0.1:43299'", Serve's fallback proxy,
# whose port is chosen before Ray starts). Ports above Ray's range and outside the ephemeral one are never handed out.
RAY_WORKER_PORTS = range(10002, 20000)
_handed_out: set[int] = set()  # two calls in one process never give the same port


def ephemeral_ports() -> range:
    """The kernel's range for port 0 (Linux's ``ip_local_port_range``; IANA's 49152-65535 elsewhere)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 49152, 65535
    return range(low, high + 1)


def free_port() -> int:
    """A port on 127.0.0.1 that is free now and that neither the kernel nor Ray hands to another process meanwhile."""
    ephemeral = ephemeral_ports()
    candidates = [p for p in range(RAY_WORKER_PORTS.stop, 65536) if p not in ephemeral and p not in _handed_out]
    for port in random.sample(candidates, min(len(candidates), 256)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken
        _handed_out.add(port)
        return port
    raise RuntimeError(
        f"no free port on 127.0.0.1 above {RAY_WORKER_PORTS.stop - 1} outside the ephemeral range "
        f"{ephemeral.start}-{ephemeral.stop - 1} (256 tried)"
    )


def config_applications(path: str | Path) -> list[dict]:
    """The ``applications`` of a Serve config file."""
    return yaml.safe_load(Path(path).read_text())["applications"]


def isolate_haproxy_ports() -> None:
    """Give this process' Ray session free ports for the fixed ones of Serve's HAProxy ingress (metrics 9101,
    stats 8404, the fallback proxy 8500 / 9500), so a test or bench session can run beside a service already
    listening on them. Call before ``ray.init``; settings already in the environment are kept."""
    for name in (
        "RAY_SERVE_HAPROXY_METRICS_PORT",
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
    ):
        os.environ.setdefault(name, str(free_port()))


def start_serve(port: int | None = None, logging_config: dict | None = None, proxy_location: str | None = None) -> str:
    """Start Serve's HTTP proxy on 127.0.0.1 (a free port by default); return its base URL. ``proxy_location``
    "HeadOnly" for several Ray nodes on one machine: a proxy per node would bind the same port on each."""
    from ray import serve

    port = port or free_port()
    serve.start(
        http_options={"host": "127.0.0.1", "port": port}, logging_config=logging_config, proxy_location=proxy_location
    )
    return f"http://127.0.0.1:{port}"


def deploy_apps(applications: list[dict], timeout_s: float = 600) -> None:
    """Deploy ``applications`` (replacing what runs) and wait until every one is RUNNING."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    # Private on purpose: Serve's public API deploys Application objects (serve.run) or a config file through
    # the dashboard's REST API (`serve deploy`), which tests and this quickstart run without. This is the call
    # `serve deploy` ends in, with the same ServeDeploySchema, so a config deploys here exactly as in production.
    serve.context._get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": applications}))
    deadline = time.time() + timeout_s
    statuses: dict = {}
    while time.time() < deadline:
        apps = serve.status().applications
        failed = {name: app.message for name, app in apps.items() if app.status == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError(f"Serve applications failed to deploy: {failed}")
        statuses = {name: app.status for name, app in apps.items()}
        if len(statuses) == len(applications) and all(status == "RUNNING" for status in statuses.values()):
            return
        time.sleep(1)
    raise TimeoutError(f"Serve applications not running after {timeout_s} s: {statuses}")
