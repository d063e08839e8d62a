"""`kserve`: the InferenceService manifest round-trips through KServe's own model classes and its predictor
runs a `serve` command line our parser accepts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from perceiver_export.cli.main import build_parser
from perceiver_export.errors import ConfigError
from perceiver_export.serving.kserve_manifest import KServeOptions, inference_service_yaml


def deserialize(document: dict):
    """The document read back into KServe's model classes, as KServe's ApiClient reads a cluster's answer, with the
    Kubernetes types (metadata, the predictor's container) read by the Kubernetes client (KServe's ApiClient knows only its own)."""
    import copy

    from kserve import ApiClient
    from kubernetes.client import V1Container, V1ObjectMeta

    document = copy.deepcopy(document)
    containers = document["spec"]["predictor"].pop("containers")
    metadata = document.pop("metadata")

    class Response:
        data = json.dumps(document)

    isvc = ApiClient().deserialize(Response(), "V1beta1InferenceService")
    isvc.spec.predictor.containers = [V1Container.from_dict(c) for c in containers]
    isvc.metadata = V1ObjectMeta.from_dict(metadata)
    return isvc


def test_manifest_is_a_valid_inference_service_running_serve(tiny_fp32, tmp_path):
    out = tmp_path / "isvc.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "perceiver_export", "kserve", str(tiny_fp32.directory), "--image", "registry.example/pe:0.1",
         "--min-replicas", "0", "--max-replicas", "4", "--cpu", "1500m", "--memory", "3Gi", "--gpu", "1",
         "--storage-uri", "s3://models/perceiver-tiny", "--serve-args", "--max-batch-size 4 --timeout-ms 250", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(out.read_text())
    isvc = deserialize(document)
    assert (isvc.api_version, isvc.kind, isvc.metadata.name) == ("serving.kserve.io/v1beta1", "InferenceService", "perceiver-tiny")
    predictor = isvc.spec.predictor
    assert (predictor.min_replicas, predictor.max_replicas, predictor.termination_grace_period_seconds) == (0, 4, 40)
    (container,) = predictor.containers
    assert container.image == "registry.example/pe:0.1"
    assert container.resources.limits == {"cpu": "1500m", "memory": "3Gi", "nvidia.com/gpu": "1"}
    assert [(e.name, e.value) for e in container.env] == [("STORAGE_URI", "s3://models/perceiver-tiny")]
    assert [p.container_port for p in container.ports] == [8080]
    assert container.readiness_probe.http_get.path == "/v2/health/ready"
    assert container.command == ["python"] and container.args[:3] == ["-m", "perceiver_export", "serve"]
    args = build_parser().parse_args(container.args[2:])
    assert (args.command, str(args.dir), args.host, args.http_port, args.grpc_port) == ("serve", "/mnt/models", "0.0.0.0", 8080, 8081)
    assert (args.max_batch_size, args.timeout_ms, args.name) == (4, 250.0, "perceiver-tiny")
    assert isvc.metadata.annotations["perceiver-export/model-onnx-sha256"] == tiny_fp32.manifest.data["files"]["model.onnx"]["sha256"]
    from kserve import ApiClient

    assert ApiClient().sanitize_for_serialization(isvc) == document  # nothing KServe does not know


def test_grpc_protocol_exposes_the_h2c_port(tiny_fp32):
    document = yaml.safe_load(inference_service_yaml(tiny_fp32.directory, KServeOptions(image="x/y:1", protocol="grpc")))
    (port,) = document["spec"]["predictor"]["containers"][0]["ports"]
    assert port == {"containerPort": 8081, "name": "h2c", "protocol": "TCP"}


@pytest.mark.parametrize("options,message", [
    (dict(image=""), "--image: give the container image"),
    (dict(image="x", name="Perceiver_Base"), "an InferenceService name must be a DNS label"),
    (dict(image="x", min_replicas=3, max_replicas=2), "replicas must satisfy 0 <= min <= max"),
    (dict(image="x", memory="four gigs"), "--memory: 'four gigs' is not a Kubernetes quantity"),
    (dict(image="x", gpu=-1), "--gpu must be 0 or more"),
])
def test_bad_options_are_config_errors(tiny_fp32, options, message):
    with pytest.raises(ConfigError, match=message):
        inference_service_yaml(tiny_fp32.directory, KServeOptions(**options))
