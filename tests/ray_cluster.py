"""A real two-node Ray cluster for the tests, on one machine, in network namespaces the test makes itself.

The head and the worker node each run in their own network namespace, joined by a veth pair (10.213.X.1 and
.2), so requests between the proxy and replicas on the other node really cross a network link; the host reaches
the head through a second veth pair (10.214.X.1 on the host, .2 in the head's namespace). Everything Ray binds
(Ray Serve's gRPC proxy binds `[::]`, GCS and raylets their node address) is therefore inside those namespaces;
nothing listens on the host's own interfaces. Drivers (node and replica queries) run inside the head's
namespace (`ip netns exec`) as subprocesses of this module (`python tests/ray_cluster.py COMMAND JSON`).

Every process started is stopped by its PID: the nodes are `ray start --block` processes, whose SIGTERM stops
what they started, and whatever is still in a namespace afterwards (`ip netns pids`) is killed before the
namespaces and links are deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
RAY = str(Path(PY).with_name("ray"))
HTTP_PORT, GRPC_PORT, GCS_PORT = 8000, 9000, 6379
DASHBOARD = "http://127.0.0.1:8265"  # the head's dashboard, inside its namespace (`serve deploy`, `serve status`)


def netns_available() -> str | None:
    """None when this machine can make network namespaces and veth pairs, else why not."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    name = f"pe-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def run(*command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=timeout)


class RayCluster:
    """Head + one worker node in namespaces; `.http` / `.grpc` are the head's proxies as the host reaches them."""

    def __init__(self, head_cpus: int = 1, worker_cpus: int = 1, start_timeout_s: float = 120,
                 pin: tuple[str, str] | None = None):
        tag = os.getpid() % 200 + 20
        self.tag = f"pe{os.getpid()}"
        self.head_ns, self.worker_ns = f"{self.tag}-head", f"{self.tag}-worker"
        self.head_ip, self.worker_ip = f"10.213.{tag}.1", f"10.213.{tag}.2"
        self.host_ip, self.head_host_ip = f"10.214.{tag}.1", f"10.214.{tag}.2"
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.start_timeout_s = start_timeout_s
        # CPU lists (taskset -c) for the head's and the worker's processes, e.g. ("0", "1"): replicas on different
        # nodes then never share a core (the scale measurement, scripts/ray_scale.py).
        self.pin = pin
        self.temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
        self.nodes: list[subprocess.Popen] = []
        self.http = f"{self.head_host_ip}:{HTTP_PORT}"
        self.grpc = f"{self.head_host_ip}:{GRPC_PORT}"

    # ---- the network ----------------------------------------------------------------------------
    def _network(self) -> None:
        hw, wh, xh, hx = f"{self.tag}hw", f"{self.tag}wh", f"{self.tag}xh", f"{self.tag}hx"
        for ns in (self.head_ns, self.worker_ns):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", hw, "type", "veth", "peer", "name", wh)
        run("ip", "link", "set", hw, "netns", self.head_ns)
        run("ip", "link", "set", wh, "netns", self.worker_ns)
        run("ip", "-n", self.head_ns, "addr", "add", f"{self.head_ip}/30", "dev", hw)
        run("ip", "-n", self.worker_ns, "addr", "add", f"{self.worker_ip}/30", "dev", wh)
        run("ip", "-n", self.head_ns, "link", "set", hw, "up")
        run("ip", "-n", self.worker_ns, "link", "set", wh, "up")
        run("ip", "link", "add", xh, "type", "veth", "peer", "name", hx)
        run("ip", "link", "set", hx, "netns", self.head_ns)
        run("ip", "addr", "add", f"{self.host_ip}/30", "dev", xh)
        run("ip", "link", "set", xh, "up")
        run("ip", "-n", self.head_ns, "addr", "add", f"{self.head_host_ip}/30", "dev", hx)
        run("ip", "-n", self.head_ns, "link", "set", hx, "up")
        self._host_link = xh

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_DISABLE_DOCKER_CPU_WARNING="1", OMP_NUM_THREADS="1")
        return env

    # ---- the nodes ---------------------------------------------------------------------------------
    def start(self) -> "RayCluster":
        try:
            self._network()
            logs = self.temp / "logs"
            logs.mkdir()
            self.nodes.append(subprocess.Popen(
                ["ip", "netns", "exec", self.head_ns, *self._taskset(0), RAY, "start", "--head", "--block",
                 "--node-ip-address", self.head_ip,
                 "--port", str(GCS_PORT), "--num-cpus", str(self.head_cpus), "--temp-dir", str(self.temp / "t"),
                 "--dashboard-host", "127.0.0.1", "--disable-usage-stats"],
                stdout=(logs / "head.log").open("wb"), stderr=subprocess.STDOUT, env=self.env()))
            self._wait(lambda: self.driver("nodes", {}, timeout=60)["alive"] >= 1, "the head node")
            self.nodes.append(subprocess.Popen(
                ["ip", "netns", "exec", self.worker_ns, *self._taskset(1), RAY, "start", "--block",
                 "--address", f"{self.head_ip}:{GCS_PORT}",
                 "--node-ip-address", self.worker_ip, "--num-cpus", str(self.worker_cpus), "--disable-usage-stats"],
                stdout=(logs / "worker.log").open("wb"), stderr=subprocess.STDOUT, env=self.env()))
            self._wait(lambda: self.driver("nodes", {}, timeout=60)["alive"] >= 2, "the worker node")
        except BaseException:
            self.stop()
            raise
        return self

    def _taskset(self, node: int) -> list[str]:
        return ["taskset", "-c", self.pin[node]] if self.pin else []

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.poll() is not None:
                    raise RuntimeError(f"a Ray node exited {node.returncode} while waiting for {what}:\n{self.logs()}")
            try:
                if ready():
                    return
            except (subprocess.SubprocessError, RuntimeError, KeyError, ValueError) as e:
                last = e
            time.sleep(1)
        raise RuntimeError(f"{what} did not come up within {self.start_timeout_s:g} s ({last}):\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.temp / "logs").glob("*.log")))

    # ---- drivers inside the head's namespace ---------------------------------------------------------
    def driver(self, command: str, args: dict, timeout: float = 180) -> dict:
        done = subprocess.run(["ip", "netns", "exec", self.head_ns, PY, __file__, command, json.dumps(args),
                               f"{self.head_ip}:{GCS_PORT}", self.head_ip],
                              capture_output=True, text=True, timeout=timeout, env=self.env())
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"driver {command} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-5000:]}")
        return json.loads(lines[-1])

    def deploy(self, artifact: str | Path, *flags: str, timeout: float = 240) -> Path:
        """The artifact deployed as users do: `python -m perceiver_export rayserve ARTIFACT FLAGS --out CONFIG` writes
        Ray Serve's config file (proxies on 0.0.0.0:8000 and :9000 inside the namespaces), `serve deploy CONFIG`
        sends it to the cluster, and this returns once `serve status` says the application is RUNNING."""
        config = self.temp / f"serve-{time.monotonic_ns()}.yaml"
        subprocess.run([PY, "-m", "perceiver_export", "rayserve", str(artifact), *flags, "--http-port", str(HTTP_PORT),
                        "--grpc-port", str(GRPC_PORT), "--out", str(config)],
                       check=True, capture_output=True, env=self.env())
        self.serve_cli("deploy", str(config), "-a", DASHBOARD)
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.serve_cli("status", "-a", DASHBOARD).stdout
            if "DEPLOY_FAILED" in status:
                raise RuntimeError(f"serve deploy failed:\n{status}")
            if "status: RUNNING" in status and "UPDATING" not in status and "DEPLOYING" not in status:
                return config
            time.sleep(1)
        raise RuntimeError(f"the application was not RUNNING within {timeout:g} s:\n{status}\n{self.logs()}")

    def serve_cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        """Ray Serve's own command line (`serve run`, `serve deploy`, `serve status`) inside the head's namespace."""
        serve = str(Path(PY).with_name("serve"))
        env = {**self.env(), "RAY_ADDRESS": f"{self.head_ip}:{GCS_PORT}"}
        done = subprocess.run(["ip", "netns", "exec", self.head_ns, serve, *args], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=self.temp)
        if done.returncode != 0:
            raise RuntimeError(f"serve {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-5000:]}")
        return done

    def replicas(self) -> list[dict]:
        """Every alive Serve replica: pid, node_ip, name, deployment (`ingress` or `model`)."""
        return self.driver("replicas", {})["replicas"]

    def model_replicas(self) -> list[dict]:
        return [r for r in self.replicas() if r["deployment"] == "model"]

    # ---- stopping --------------------------------------------------------------------------------
    def namespace_pids(self) -> list[int]:
        pids = []
        for ns in (self.head_ns, self.worker_ns):
            out = run("ip", "netns", "pids", ns, check=False)
            pids += [int(p) for p in out.stdout.split()]
        return pids

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(10)
        for pid in self.namespace_pids():  # anything `ray start` left behind, by its PID
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self.namespace_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        run("ip", "link", "del", f"{self.tag}xh", check=False)
        for ns in (self.head_ns, self.worker_ns):
            run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> "RayCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def host_listeners() -> dict[str, str]:
    """The listening TCP sockets of the host's own network namespace (`ss -ltnpH`): local address:port -> the
    owning processes' names as ss prints them (e.g. `users:(("raylet",pid=12,fd=5))`)."""
    out = run("ss", "-ltnpH").stdout
    return {line.split()[3]: " ".join(line.split()[5:]) for line in out.splitlines() if line.strip()}


def ray_listeners_on_host(cluster: "RayCluster", before: dict[str, str]) -> dict[str, str]:
    """Listening sockets that appeared on the host since `before` and belong to a process of the cluster (a node's
    `ray start` or anything it started)."""
    import psutil

    ours = set()
    for node in cluster.nodes:
        try:
            parent = psutil.Process(node.pid)
            ours |= {parent.pid, *(p.pid for p in parent.children(recursive=True))}
        except psutil.NoSuchProcess:
            pass
    found = {}
    for addr, users in host_listeners().items():
        pids = {int(p) for p in re.findall(r"pid=(\d+)", users)}
        if addr not in before and pids & ours:
            found[addr] = users
    return found


# ---- driver side (runs inside the head's namespace) -------------------------------------------------------
def _driver_main(command: str, args: dict, address: str, node_ip: str) -> dict:
    import ray

    ray.init(address=address, _node_ip_address=node_ip, logging_level="ERROR", log_to_driver=False)
    if command == "nodes":
        return {"alive": sum(1 for n in ray.nodes() if n["Alive"]),
                "nodes": [{"ip": n["NodeManagerAddress"], "cpus": n["Resources"].get("CPU", 0)}
                          for n in ray.nodes() if n["Alive"]]}
    if command == "replicas":
        from ray.util.state import list_actors

        nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
        actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
        return {"replicas": [{"pid": a.pid, "node_ip": nodes.get(a.node_id), "name": a.name,
                              "deployment": a.class_name.rsplit(":", 1)[-1]}
                             for a in actors if a.class_name.startswith("ServeReplica:")]}
    raise SystemExit(f"unknown driver command {command!r}")


if __name__ == "__main__":
    command, args, address, node_ip = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    print(json.dumps(_driver_main(command, args, address, node_ip)), flush=True)
