"""The Ray Serve application on a real two-node Ray cluster (tests/ray_cluster.py: head and worker in network
namespaces made here): the unchanged tritonclient code over HTTP and gRPC through the cluster, replicas on both
nodes, `serve`'s messages for bad input, exact batching of variable lengths, a killed replica and a redeploy with
nothing lost. Every load is bounded in count and time; every process started is stopped by its PID."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from perceiver_export import runtime

from .ray_cluster import DASHBOARD, RayCluster, host_listeners, netns_available, ray_listeners_on_host
from .served import REPO, triton_inputs
from .test_serve import BAD, close, feeds_of

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (the `ray` extra)")
why_not = netns_available()
pytestmark = pytest.mark.skipif(why_not is not None, reason=f"no network namespaces here: {why_not}")

MODEL = "perceiver-tiny"
CLIENTS = {"http": thttp, "grpc": tgrpc}
# Ray's proxies answer a request whose replica died under it, or that found no replica, with these; a client
# retries them. Nothing else but 200 may come back under the faults below.
RETRYABLE = {"http": {"503"}, "grpc": {"StatusCode.UNAVAILABLE"}}


def client(protocol: str, cluster: RayCluster):
    return CLIENTS[protocol].InferenceServerClient(cluster.http if protocol == "http" else cluster.grpc)


@pytest.fixture(scope="module")
def artifact(tiny_fp32, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ray") / "tiny"
    shutil.copytree(tiny_fp32.directory, directory)
    return directory


@pytest.fixture(scope="module")
def runner(artifact):
    return runtime.load(artifact)


@pytest.fixture(scope="module")
def cluster(artifact):
    before = host_listeners()
    with RayCluster(head_cpus=1, worker_cpus=1) as c:
        c.config = c.deploy(artifact, "--threads", "1", "--replicas", "2", "--max-queue-delay-ms", "2")
        c.host_listeners_before = before
        yield c
    assert not c.namespace_pids()


def test_the_cluster_has_two_nodes_and_a_replica_on_each(cluster):
    nodes = cluster.driver("nodes", {})
    assert nodes["alive"] == 2
    assert sorted(n["ip"] for n in nodes["nodes"]) == sorted([cluster.head_ip, cluster.worker_ip])
    replicas = cluster.replicas()
    assert sorted(r["deployment"] for r in replicas) == ["ingress", "model", "model"]
    models = [r for r in replicas if r["deployment"] == "model"]
    assert sorted(r["node_ip"] for r in models) == sorted([cluster.head_ip, cluster.worker_ip])


def test_nothing_listens_on_the_host(cluster):
    """Ray binds `*` for many of its ports (Serve's gRPC proxy, the raylets' and GCS's gRPC servers): all of them
    are inside the namespaces; in the host's own namespace no Ray (or other Python) process opened a listening
    socket while the cluster runs."""
    assert len(cluster.namespace_pids()) > 10  # Ray's processes, all inside the namespaces
    assert ray_listeners_on_host(cluster, cluster.host_listeners_before) == {}
    inside = subprocess.run(["ip", "netns", "exec", cluster.head_ns, "ss", "-ltnH"], capture_output=True,
                            text=True).stdout
    assert f":{9000}" in inside and f":{8000}" in inside


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_parity_through_the_cluster(cluster, runner, protocol):
    c = client(protocol, cluster)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
    meta = c.get_model_metadata(MODEL, as_json=True) if protocol == "grpc" else c.get_model_metadata(MODEL)
    assert [t["name"] for t in meta["inputs"]] == ["q", "k", "v", "mask"]
    rng = np.random.default_rng(0)
    for feeds in (feeds_of(rng, batch=2, mask=True), feeds_of(rng, batch=1, k=3, v=17)):
        out = c.infer(MODEL, triton_inputs(CLIENTS[protocol], feeds)).as_numpy("out")
        batch, positions = feeds["q"].shape[0], feeds["k"].shape[1] + feeds["v"].shape[1]
        expected = runner.infer({**feeds, "mask": feeds.get("mask", np.ones((batch, positions), bool))})
        assert out.shape == expected.shape and close(out, expected)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", ["unknown input", "wrong feature dim", "length above the range", "wrong mask length"])
def test_bad_input_gets_serves_message(cluster, protocol, case):
    make, message = BAD[case]
    c = client(protocol, cluster)
    with pytest.raises(InferenceServerException) as e:
        c.infer(MODEL, triton_inputs(CLIENTS[protocol], make(feeds_of(np.random.default_rng(2)))))
    assert message in e.value.message()
    assert str(e.value.status()) == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")


def test_variable_lengths_are_batched_exactly(cluster, runner):
    """24 concurrent requests of k/v lengths 1..24 over gRPC: every answer equals its solo run."""
    rng = np.random.default_rng(5)
    requests = [feeds_of(rng, k=int(rng.integers(1, 25)), v=int(rng.integers(1, 25))) for _ in range(24)]
    answers: dict[int, np.ndarray] = {}

    def one(i):
        c = tgrpc.InferenceServerClient(cluster.grpc)
        answers[i] = c.infer(MODEL, triton_inputs(tgrpc, requests[i]), client_timeout=60).as_numpy("out")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert len(answers) == len(requests)
    for i, feeds in enumerate(requests):
        assert close(answers[i], runner.infer(feeds)), f"request {i}"


def load(cluster: RayCluster, runner, seconds: float, during, clients: int = 4, max_requests: int = 20000) -> Counter:
    """`clients` closed-loop clients (HTTP and gRPC alternating) for at most `seconds` and `max_requests`, calling
    `during()` after a second; every answer is counted by its status, every 200 checked against the runner. The
    load must still be running when `during()` returns (else the fault was not under load)."""
    rng = np.random.default_rng(7)
    feeds = feeds_of(rng, k=5, v=9)
    expected = runner.infer(feeds)
    outcomes: Counter = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    sent = [0]

    def worker(n: int):
        protocol = "http" if n % 2 == 0 else "grpc"
        c = client(protocol, cluster)
        while time.monotonic() < stop:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            try:
                out = c.infer(MODEL, triton_inputs(CLIENTS[protocol], feeds), **(
                    {"client_timeout": 30} if protocol == "grpc" else {})).as_numpy("out")
                status = "200" if close(out, expected) else "wrong answer"
            except InferenceServerException as e:
                status = f"{protocol} {e.status()}: {e.message()[:120]}"
                if str(e.status()) in RETRYABLE[protocol]:
                    status = f"{protocol} {e.status()}"
            with lock:
                outcomes[status] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    during()
    assert time.monotonic() < stop and sent[0] < max_requests, "the load ended before the fault was over"
    for t in threads:
        t.join(seconds + 60)
    assert not any(t.is_alive() for t in threads)
    assert sum(outcomes.values()) == sent[0]  # exactly one answer per request sent
    return outcomes


def resent_count(cluster: RayCluster) -> float:
    """The ingress's count of requests sent again after their model replica stopped (its /metrics)."""
    with urllib.request.urlopen(f"http://{cluster.http}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("perceiver_requests_resent_total{"))


def test_a_killed_replica_loses_nothing_and_comes_back(cluster, runner):
    before = cluster.model_replicas()
    victim = next(r for r in before if r["node_ip"] == cluster.worker_ip)
    outcomes = load(cluster, runner, 12, lambda: os.kill(victim["pid"], signal.SIGKILL))
    resent = resent_count(cluster)
    print("killed replica:", dict(outcomes), "resent:", resent)
    allowed = {"200", "http 503", "grpc StatusCode.UNAVAILABLE"}
    assert set(outcomes) <= allowed, outcomes
    assert outcomes["200"] > 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        after = cluster.model_replicas()
        if len(after) == 2 and victim["pid"] not in {r["pid"] for r in after}:
            break
        time.sleep(2)
    assert len(after) == 2 and victim["pid"] not in {r["pid"] for r in after}, after
    assert client("grpc", cluster).is_model_ready(MODEL)


def test_a_redeploy_with_requests_in_flight_fails_none(cluster, runner, artifact, tmp_path):
    new_version = tmp_path / "tiny-v2"
    shutil.copytree(artifact, new_version)
    before = {r["name"] for r in cluster.model_replicas()}
    done = []

    def redeploy():  # Ray Serve's own command line, the builder's arguments as key=value
        done.append(cluster.serve_cli("run", "--non-blocking", "--name", MODEL,
                                      "perceiver_export.serving.ray_serve:app_builder",
                                      f"artifact={new_version}", "threads=1", "num_replicas=2", "max_queue_delay_ms=2"))

    outcomes = load(cluster, runner, 60, redeploy)
    print("redeploy:", dict(outcomes))
    assert done and done[0].returncode == 0
    assert set(outcomes) == {"200"}, outcomes
    after = {r["name"] for r in cluster.model_replicas()}
    assert len(after) == 2 and not before & after  # every replica replaced


def test_the_docs_client_example_runs_unchanged_through_the_cluster(cluster, tmp_path_factory):
    """docs/serving.md's client example (perceiver-base), only its URL changed, through the cluster's HTTP proxy;
    the tiny application goes first (`serve shutdown`: the redeploy above was `serve run`'s, which a config's
    `serve deploy` does not replace), then `serve deploy` of perceiver-base's config (last test of the module)."""
    from perceiver_export.config import load_spec
    from perceiver_export.export.artifact_builder import export_artifact

    directory = export_artifact(load_spec("perceiver-base"), tmp_path_factory.mktemp("ray-base") / "perceiver-base",
                                verify=False, optimize=False).directory
    cluster.serve_cli("shutdown", "-y", "-a", DASHBOARD)
    cluster.deploy(directory, "--threads", "1", "--replicas", "1")
    page = (REPO / "docs" / "serving.md").read_text()
    example = re.search(r"<!-- client-example -->\n```python\n(.*?)```", page, re.S).group(1)
    scope: dict = {}
    exec(compile(example.replace('"127.0.0.1:8080"', repr(cluster.http)), "docs-serving-client-example", "exec"), scope)
    reference = runtime.load(directory)
    assert scope["out"].shape == (2, 32, 512)
    assert close(scope["out"], reference.infer({n: scope[n] for n in ("q", "k", "v", "mask")}))
