"""A Ray cluster of several nodes on this machine, in a process of its own, driven over a pipe (issue 26).

One Python process holds one Ray connection, and the test session's own Ray (``conftest.ray_session``) is one
node. So :class:`ClusterProcess` runs this file as a subprocess that starts Ray's ``ray.cluster_utils.Cluster``
(a head with 0 CPUs and workers with their own CPUs and custom resources), connects to it as a driver (on the
head), starts Serve with its proxy on the head, and then answers one JSON command a line: add or remove a node,
deploy applications, where Serve's replicas and Ray's actors run, a batch job in a thread. HTTP load and the
assertions stay in the tests (``tests/test_cluster.py``): the service is reached at the head's URL like any other.

The subprocess gets a private ``RAY_TMPDIR``: ``Cluster`` writes its address to ``$RAY_TMPDIR/ray/ray_current_cluster``,
where a bare ``ray.init()`` of any other Ray session on this machine would find it and connect.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CALL_TIMEOUT_S = 300  # a command that takes longer fails the test instead of hanging the session


# ---- the test side -------------------------------------------------------------------------------------------
class ClusterProcess:
    """The cluster subprocess and its pipe: ``call(op, **args)`` sends a command and returns its result."""

    def __init__(self, workers: int, worker_cpus: int):
        self.tmp = Path(tempfile.mkdtemp(prefix="ivc-", dir="/tmp"))  # short: Ray's socket paths must stay < 108
        self.log = self.tmp / "cluster.log"
        env = {**os.environ, "RAY_TMPDIR": str(self.tmp), "PYTHONPATH": str(REPO)}
        env.pop("RAY_ADDRESS", None)
        # A Ray call from a library's background thread after ray.shutdown() would otherwise connect again, and
        # Cluster refuses to remove the head while this process is connected to it.
        env["RAY_ENABLE_AUTO_CONNECT"] = "0"
        for name in [n for n in env if n.startswith(("RAY_SERVE_HAPROXY_", "RAY_SERVE_FALLBACK_PROXY_"))]:
            del env[name]  # the session's own Ray has these ports; the cluster picks its own (isolate_haproxy_ports)
        command = [sys.executable, __file__, str(workers), str(worker_cpus)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
        self.replies: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        began = time.monotonic()
        try:
            self.started = self._reply(CALL_TIMEOUT_S)  # {"url", "address", "nodes"} once the cluster is up
        except BaseException:
            self._end()
            raise
        self.start_s = time.monotonic() - began

    def _read(self) -> None:
        for line in self.process.stdout:
            self.replies.put(line.decode())
        self.replies.put("")  # the process ended

    def _reply(self, timeout_s: float) -> Any:
        try:
            line = self.replies.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"the cluster process gave no answer in {timeout_s} s; {self.log_tail()}") from None
        if not line:
            raise RuntimeError(f"the cluster process ended (rc {self.process.wait()}); {self.log_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"in the cluster process: {reply['error']}")
        return reply["result"]

    def call(self, op: str, timeout_s: float = CALL_TIMEOUT_S, **args: Any) -> Any:
        self.process.stdin.write((json.dumps({"op": op, "args": args}) + "\n").encode())
        self.process.stdin.flush()
        return self._reply(timeout_s)

    def log_tail(self, chars: int = 4000) -> str:
        return f"its log ({self.log}) ends:\n{self.log.read_text(errors='replace')[-chars:]}"

    def close(self) -> None:
        """Shut the cluster down (by the subprocess's own ``cluster.shutdown()``) and remove its files."""
        try:
            self.call("shutdown", timeout_s=120)
        finally:
            self._end()

    def _end(self) -> None:
        """Wait for the subprocess to exit; kill it if it does not (the reaper Ray's ``Cluster`` spawns for each node
        then ends that node's processes), and remove its files."""
        try:
            self.process.stdin.close()  # an idle server shuts its cluster down at the end of its input
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- the cluster side --------------------------------------------------------------------------------------
class Server:
    """The cluster and this process's Ray connection; each public method is a command."""

    def __init__(self, workers: int, worker_cpus: int):
        import ray
        from ray.cluster_utils import Cluster

        from serve_app.local import free_port, start_serve

        self.worker_cpus = worker_cpus
        # A head with no CPUs, as Ray advises for a real cluster: only what asks for {"head": ...} (the ingress) or
        # for nothing (Serve's controller and proxy) runs there; detectors and batch work go to the workers.
        self.cluster = Cluster(
            initialize_head=True,
            # No dashboard: it takes ~10 s to start here and nothing needs it (replica and actor nodes are read
            # from Serve's controller and the GCS). Its port is still set: the default one may be another session's.
            head_node_args={
                "num_cpus": 0,
                "resources": {"head": 100},
                "include_dashboard": False,
                "dashboard_port": free_port(),
            },
        )
        self.names = {self.cluster.head_node.node_id: "head"}
        for n in range(1, workers + 1):
            self.add_node(f"w{n}", wait=False)  # the workers start side by side
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, log_to_driver=False, configure_logging=False)
        os.environ["RAY_ADDRESS"] = self.cluster.address  # for anything here that looks the cluster up
        self.url = start_serve(proxy_location="HeadOnly")  # one proxy: each node's would bind the same port
        self.batch: dict[str, Any] = {}

    def hello(self) -> dict[str, Any]:
        return {"url": self.url, "address": self.cluster.address, "nodes": self.nodes()}

    def nodes(self) -> dict[str, dict[str, Any]]:
        """name -> node id, alive and resources, for every node this cluster ever had."""
        import ray

        return {
            self.names.get(n["NodeID"], n["NodeID"]): {
                "node_id": n["NodeID"],
                "alive": n["Alive"],
                "resources": n["Resources"],
            }
            for n in ray.nodes()
        }

    def add_node(self, name: str, wait: bool = True) -> str:
        """A worker node with ``worker_cpus`` CPUs and the custom resources ``worker`` and ``<name>``."""
        node = self.cluster.add_node(wait=wait, num_cpus=self.worker_cpus, resources={"worker": 100, name: 100})
        self.names[node.node_id] = name
        return node.node_id

    def remove_node(self, name: str, graceful: bool = False) -> float:
        """Remove a worker node; not graceful (the default): SIGKILL to its raylet, its worker processes (replicas,
        pool actors) and the rest at once, like a machine that dies. Returns the time it happened (``time.time()``,
        for the test's clocks)."""
        # isort: off
        import ray  # noqa: F401 - first: it puts its own copy of psutil (ray/thirdparty_files) on the path
        import psutil
        from ray._private import ray_constants

        # isort: on

        node = next(n for n in self.cluster.worker_nodes if self.names[n.node_id] == name)
        # Ray's remove_node kills the node's own processes only; its workers (the raylet's children) notice their
        # raylet is gone and exit up to ~2 s later, finishing what they run meanwhile: not a machine that dies.
        raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        workers = [] if graceful else psutil.Process(raylet).children(recursive=True)
        removed_at = time.time()
        for worker in workers:
            worker.kill()
        self.cluster.remove_node(node, allow_graceful=graceful)
        return removed_at

    def deploy(self, applications: list[dict[str, Any]]) -> None:
        from serve_app.local import deploy_apps

        deploy_apps(applications, timeout_s=240)

    def replicas(self, app: str) -> dict[str, list[dict[str, Any]]]:
        """deployment -> its replicas as Serve's controller reports them: state and node (name and id)."""
        from ray import serve

        # Serve's instance details (what `serve status` and the dashboard show) carry each replica's node id.
        details = serve.context._get_global_client().get_serve_details()
        deployments = details["applications"][app]["deployments"]
        return {
            name: [
                {"state": r["state"], "node": self.names.get(r.get("node_id"), r.get("node_id"))}
                for r in deployment["replicas"]
            ]
            for name, deployment in deployments.items()
        }

    def ongoing(self, app: str, deployment: str) -> dict[str, int]:
        """node -> requests its RUNNING replicas of ``deployment`` hold now (running or waiting in the replica)."""
        import ray
        from ray import serve

        details = serve.context._get_global_client().get_serve_details()
        replicas = details["applications"][app]["deployments"][deployment]["replicas"]
        running = [r for r in replicas if r["state"] == "RUNNING"]
        counts = ray.get(
            [ray.get_actor(r["actor_name"], namespace="serve").get_num_ongoing_requests.remote() for r in running]
        )
        return {self.names.get(r["node_id"], r["node_id"]): n for r, n in zip(running, counts, strict=True)}

    def actors(self, class_prefix: str) -> list[dict[str, Any]]:
        """Every actor whose class name starts so, dead ones included: class, state, node, restarts."""
        import ray

        # Ray's state API (ray.util.state) goes through the dashboard, which this cluster runs without (it takes
        # ~10 s to start here); the GCS actor table is what the dashboard reads.
        table = ray._private.state.actors()
        return [
            {
                "class": a["ActorClassName"],
                "state": a["State"],
                "node": self.names.get(a["Address"]["NodeID"], a["Address"]["NodeID"]),
                "restarts": a["NumRestarts"],
            }
            for a in table.values()
            if a["ActorClassName"].startswith(class_prefix)
        ]

    def batch_start(self, **kwargs: Any) -> None:
        """``run_batch(**kwargs)`` in a thread of this driver; ``batch_wait`` returns its summary or error."""
        from serve_app.batch import run_batch

        def run() -> None:
            try:
                summary = run_batch(progress=False, **kwargs)
                self.batch["result"] = {"scored": summary.scored, "failed": summary.failed, "files": summary.files}
            except Exception as err:  # noqa: BLE001 - reported to the test, which decides
                self.batch["result"] = {"error": f"{type(err).__name__}: {err}"[:2000]}

        self.batch = {"thread": threading.Thread(target=run, daemon=True)}
        self.batch["thread"].start()

    def batch_wait(self, wait_s: float) -> dict[str, Any]:
        self.batch["thread"].join(wait_s)
        if self.batch["thread"].is_alive():
            raise TimeoutError(f"the batch job did not end in {wait_s} s")
        return self.batch["result"]

    def shutdown(self) -> None:
        """Every node killed at once (Serve's and the nodes' graceful shutdowns take ~30 s here, and nothing on
        this cluster outlives it), then ``cluster.shutdown()`` for the head and Ray's address records."""
        import ray

        ray.shutdown()
        for node in list(self.cluster.worker_nodes):
            self.cluster.remove_node(node, allow_graceful=False)
        self.cluster.shutdown()


def serve_commands(workers: int, worker_cpus: int) -> None:
    """Start the cluster, then answer commands from stdin until ``shutdown`` or the end of stdin."""
    from serve_app.local import isolate_haproxy_ports

    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever Ray or a library prints goes to the log, never into the replies
    server = None

    def reply(**body: Any) -> None:
        replies.write(json.dumps(body, default=str) + "\n")
        replies.flush()

    try:
        isolate_haproxy_ports()  # before the cluster starts: Serve's processes read them
        server = Server(workers, worker_cpus)
        reply(result=server.hello())
        for line in sys.stdin:
            command = json.loads(line)
            try:
                reply(result=getattr(server, command["op"])(**command["args"]))
            except Exception:  # noqa: BLE001 - the test sees the traceback
                reply(error=traceback.format_exc())
            if command["op"] == "shutdown":
                return
    except Exception:  # noqa: BLE001
        reply(error=traceback.format_exc())
    if server is not None:  # stdin closed without a shutdown: the test process went away
        server.shutdown()


if __name__ == "__main__":
    serve_commands(int(sys.argv[1]), int(sys.argv[2]))
