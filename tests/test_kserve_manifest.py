"""`kserve`: the InferenceService manifest round-trips through KServe's own model classes and its predictor
runs a `serve` command line our parser accepts.

KServe runs in subprocesses here: it and `tritonclient.grpc` (imported by the serving tests of this same pytest
process) both register the protocol's `inference.*` protobuf messages, and one process cannot hold both.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from perceiver_export.cli.main import build_parser

# Reads a manifest back into KServe's model classes, as KServe's ApiClient reads a cluster's answer (Kubernetes
# types — metadata, the container — through the Kubernetes client: KServe's ApiClient knows only its own), and
# prints the fields the test checks plus whether serializing the objects gives the document back unchanged.
READ_BACK = r"""
import copy, json, sys, yaml
from kserve import ApiClient
from kubernetes.client import V1Container, V1ObjectMeta

document = yaml.safe_load(open(sys.argv[1]))
rest = copy.deepcopy(document)
containers = rest["spec"]["predictor"].pop("containers")
metadata = rest.pop("metadata")

class Response:
    data = json.dumps(rest)

isvc = ApiClient().deserialize(Response(), "V1beta1InferenceService")
isvc.spec.predictor.containers = [V1Container.from_dict(c) for c in containers]
isvc.metadata = V1ObjectMeta.from_dict(metadata)
p, (c,) = isvc.spec.predictor, isvc.spec.predictor.containers
print(json.dumps({
    "kind": [isvc.api_version, isvc.kind, isvc.metadata.name],
    "replicas": [p.min_replicas, p.max_replicas, p.termination_grace_period_seconds],
    "image": c.image, "limits": c.resources.limits, "env": [[e.name, e.value] for e in c.env or []],
    "ports": [port.container_port for port in c.ports], "probe": c.readiness_probe.http_get.path,
    "command": c.command, "args": c.args, "annotations": isvc.metadata.annotations,
    "round_trip": ApiClient().sanitize_for_serialization(isvc) == document,
}))
"""


def kserve_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perceiver_export", "kserve", *args], capture_output=True, text=True,
                          timeout=120)


def test_manifest_is_a_valid_inference_service_running_serve(tiny_fp32, tmp_path):
    out = tmp_path / "isvc.yaml"
    result = kserve_cli(str(tiny_fp32.directory), "--image", "registry.example/pe:0.1", "--min-replicas", "0",
                        "--max-replicas", "4", "--cpu", "1500m", "--memory", "3Gi", "--gpu", "1",
                        "--storage-uri", "s3://models/perceiver-tiny", "--serve-args", "--max-batch-size 4 --timeout-ms 250",
                        "--out", str(out))
    assert result.returncode == 0, result.stderr
    read = subprocess.run([sys.executable, "-c", READ_BACK, str(out)], capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr
    isvc = json.loads(read.stdout.strip().splitlines()[-1])
    assert isvc["round_trip"]  # nothing in the document that KServe's classes do not know
    assert isvc["kind"] == ["serving.kserve.io/v1beta1", "InferenceService", "perceiver-tiny"]
    assert isvc["replicas"] == [0, 4, 40]
    assert isvc["image"] == "registry.example/pe:0.1"
    assert isvc["limits"] == {"cpu": "1500m", "memory": "3Gi", "nvidia.com/gpu": "1"}
    assert isvc["env"] == [["STORAGE_URI", "s3://models/perceiver-tiny"]]
    assert isvc["ports"] == [8080] and isvc["probe"] == "/v2/health/ready"
    assert isvc["command"] == ["python"] and isvc["args"][:3] == ["-m", "perceiver_export", "serve"]
    args = build_parser().parse_args(isvc["args"][2:])
    assert (args.command, str(args.dir), args.host, args.http_port, args.grpc_port) == ("serve", "/mnt/models", "0.0.0.0", 8080, 8081)
    assert (args.max_batch_size, args.timeout_ms, args.name, args.grace_s) == (4, 250.0, "perceiver-tiny", 30.0)
    assert isvc["annotations"]["perceiver-export/model-onnx-sha256"] == tiny_fp32.manifest.data["files"]["model.onnx"]["sha256"]


def test_grpc_protocol_exposes_the_h2c_port(tiny_fp32, tmp_path):
    out = tmp_path / "isvc.yaml"
    assert kserve_cli(str(tiny_fp32.directory), "--image", "x/y:1", "--protocol", "grpc", "--out", str(out)).returncode == 0
    (port,) = yaml.safe_load(out.read_text())["spec"]["predictor"]["containers"][0]["ports"]
    assert port == {"containerPort": 8081, "name": "h2c", "protocol": "TCP"}


@pytest.mark.parametrize("options,message", [
    (["--image", " "], "--image: give the container image"),
    (["--image", "x", "--name", "Perceiver_Base"], "an InferenceService name must be a DNS label"),
    (["--image", "x", "--min-replicas", "3", "--max-replicas", "2"], "replicas must satisfy 0 <= min <= max"),
    (["--image", "x", "--memory", "four gigs"], "--memory: 'four gigs' is not a Kubernetes quantity"),
    (["--image", "x", "--gpu", "-1"], "--gpu must be 0 or more"),
])
def test_bad_options_are_config_errors_exit_3(tiny_fp32, tmp_path, options, message):
    result = kserve_cli(str(tiny_fp32.directory), *options, "--out", str(tmp_path / "isvc.yaml"))
    assert result.returncode == 3
    assert "error (ConfigError):" in result.stderr and message in " ".join(result.stderr.split())
    assert not (tmp_path / "isvc.yaml").exists()
