"""`rayserve` and `rayservice`: the Ray Serve config passes Ray's own ServeDeploySchema and its args parse back to the
same RayServeOptions; the RayService passes KubeRay's CRD schema (tests/data/kuberay_rayservice_crd.yaml, checked
as `kubectl apply`'s strict field validation would: unknown fields refused) and its pod templates read back into
the Kubernetes client's classes unchanged."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from perceiver_export.errors import ConfigError
from perceiver_export.serving.ray_config import app_name_for, dns_label, serve_config
from perceiver_export.serving.ray_options import GRPC_SERVICER_FUNCTION, IMPORT_PATH, RayServeOptions
from tests.conftest import REPO
from tests.test_cli_startup import HEAVY, run_cli

CRD = Path(__file__).parent / "data" / "kuberay_rayservice_crd.yaml"


def strict(schema):
    """The CRD schema with unknown fields refused wherever it lists the fields (not under preserve-unknown-fields or
    a map's additionalProperties): the API server's strict field validation, kubectl's default."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


@pytest.fixture(scope="module")
def crd_validator():
    schema = strict(yaml.safe_load(CRD.read_text())["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perceiver_export", *args], capture_output=True, text=True,
                          timeout=180, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


def parsed_by_ray(config: dict) -> dict:
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.parse_obj(config).dict(exclude_unset=True)


# ---- the Serve config --------------------------------------------------------------------------------------
def test_rayserve_writes_a_config_ray_accepts_and_whose_args_parse_back(tiny_fp32, tmp_path):
    out = tmp_path / "serve.yaml"
    result = cli("rayserve", str(tiny_fp32.directory), "--out", str(out), "--threads", "2", "--max-batch-size", "4",
                 "--max-queue-delay-ms", "2.5", "--timeout-ms", "750", "--max-replicas", "6", "--min-replicas", "0",
                 "--target-ongoing-requests", "8", "--num-cpus", "1.5", "--http-port", "8100", "--grpc-port", "9100")
    assert result.returncode == 0, result.stderr
    stdout = " ".join(result.stdout.split())
    assert f"wrote {out} (application perceiver-tiny, artifact {tiny_fp32.directory.resolve()}; validated with Ray " in stdout
    assert f"serve deploy {out}" in stdout and f"serve run {out}" in stdout
    config = yaml.safe_load(out.read_text())
    assert out.read_text().startswith("# Ray Serve config for perceiver-tiny, written by perceiver-export")
    assert config["proxy_location"] == "EveryNode"
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8100}
    assert config["grpc_options"] == {"port": 9100, "grpc_servicer_functions": [GRPC_SERVICER_FUNCTION]}
    (app,) = config["applications"]
    assert (app["name"], app["route_prefix"], app["import_path"]) == ("perceiver-tiny", "/", IMPORT_PATH)
    ray_view = parsed_by_ray(config)
    assert ray_view["applications"][0]["args"] == app["args"]
    expected = RayServeOptions(artifact=str(tiny_fp32.directory.resolve()), threads=2, max_batch_size=4,
                               max_queue_delay_ms=2.5, timeout_ms=750.0, max_replicas=6, min_replicas=0,
                               target_ongoing_requests=8.0, num_cpus=1.5)
    assert RayServeOptions.from_args(app["args"]) == expected
    # What `serve run` would hand the builder as strings parses the same.
    assert RayServeOptions.from_args({k: str(v) for k, v in app["args"].items()}) == expected
    assert expected.deployment_options()["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 6,
                                                                   "target_ongoing_requests": 8.0}


def test_serve_config_names_the_app_and_refuses_what_ray_would(tiny_fp32, tmp_path):
    options = RayServeOptions(artifact=str(tiny_fp32.directory))
    config = serve_config(options)
    assert config["applications"][0]["name"] == "perceiver-tiny"  # from the manifest
    assert config["applications"][0]["args"] == {"artifact": str(tiny_fp32.directory)}
    assert app_name_for(tmp_path / "My_Model.v2") == "my-model-v2"  # no manifest here: from the directory's name
    assert dns_label("2024 run") == "model-2024-run"
    with pytest.raises(ConfigError, match="the HTTP and gRPC ports are both 8000"):
        serve_config(options, grpc_port=8000)
    with pytest.raises(ConfigError, match=r"route_prefix: expected a path starting with '/', got 'v2'"):
        serve_config(options, route_prefix="v2")
    with pytest.raises(ConfigError, match=r"Ray Serve's ServeDeploySchema refuses the config: http_options.host: Input should be a valid string$"):
        serve_config(options, http_host=["not", "a", "host"])


def test_rayserve_without_ray_writes_the_config_and_says_it_was_not_validated(tiny_fp32, tmp_path):
    out = tmp_path / "serve.yaml"
    hide_ray = ("import sys; sys.modules['ray'] = None; sys.modules['ray.serve'] = None; "
                "sys.modules['ray.serve.schema'] = None\nfrom perceiver_export.cli.main import main\n"
                f"sys.exit(main(['rayserve', {str(tiny_fp32.directory)!r}, '--out', {str(out)!r}]))")
    result = subprocess.run([sys.executable, "-c", hide_ray], capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "not validated: Ray is not installed here" in " ".join(result.stdout.split())
    assert "not validated: Ray is not installed here" in out.read_text().splitlines()[0]
    assert parsed_by_ray(yaml.safe_load(out.read_text()))["applications"][0]["import_path"] == IMPORT_PATH


# ---- the RayService ----------------------------------------------------------------------------------------
def write_rayservice(tiny_fp32, tmp_path, *args: str) -> dict:
    out = tmp_path / "rayservice.yaml"
    result = cli("rayservice", str(tiny_fp32.directory), "--image", "registry.example/pe:0.1", "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(out.read_text())


def test_rayservice_validates_against_kuberays_crd_and_carries_the_serve_config(tiny_fp32, tmp_path, crd_validator):
    document = write_rayservice(tiny_fp32, tmp_path, "--max-replicas", "5", "--min-replicas", "2", "--workers", "2",
                                "--threads", "2", "--num-gpus", "0.5", "--memory", "6Gi", "--artifact-pvc", "models",
                                "--artifact-path", "/models/tiny", "--namespace", "ml", "--max-batch-size", "8")
    errors = [e.message for e in crd_validator.iter_errors(document)]
    assert errors == []
    assert (document["apiVersion"], document["kind"], document["metadata"]["name"]) == ("ray.io/v1", "RayService", "perceiver-tiny")
    assert document["metadata"]["namespace"] == "ml"
    spec = document["spec"]
    assert isinstance(spec["serveConfigV2"], str)
    config = yaml.safe_load(spec["serveConfigV2"])
    assert parsed_by_ray(config)["applications"][0]["import_path"] == IMPORT_PATH
    assert config["grpc_options"]["port"] == 9000 and config["http_options"]["port"] == 8000
    serve = RayServeOptions.from_args(config["applications"][0]["args"])
    assert serve == RayServeOptions(artifact="/models/tiny", threads=2, num_gpus=0.5, max_replicas=5, min_replicas=2,
                                    max_batch_size=8)
    cluster = spec["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"] == {"dashboard-host": "0.0.0.0", "num-cpus": "0"}
    (group,) = cluster["workerGroupSpecs"]
    # 5 replicas on 2 workers: 3 per worker pod, each 2 CPUs and half a GPU; at least 2 replicas: one pod.
    assert (group["groupName"], group["minReplicas"], group["replicas"], group["maxReplicas"]) == ("replicas", 1, 1, 2)
    (worker,) = group["template"]["spec"]["containers"]
    assert worker["resources"]["requests"] == {"cpu": "6", "memory": "6Gi"}
    assert worker["resources"]["limits"] == {"cpu": "6", "memory": "6Gi", "nvidia.com/gpu": "2"}
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in head["ports"]} == {"gcs-server": 6379, "dashboard": 8265,
                                                                      "serve": 8000, "grpc": 9000}
    for pod in (cluster["headGroupSpec"]["template"], group["template"]):
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "registry.example/pe:0.1"
        assert container["volumeMounts"] == [{"mountPath": "/models/tiny", "name": "artifact", "readOnly": True}]
        assert pod["spec"]["volumes"] == [{"name": "artifact", "persistentVolumeClaim": {"claimName": "models",
                                                                                         "readOnly": True}}]


def test_rayservice_pod_templates_read_back_into_the_kubernetes_classes(tiny_fp32, tmp_path):
    from kubernetes.client import ApiClient

    document = write_rayservice(tiny_fp32, tmp_path, "--replicas", "3", "--num-cpus", "0.5")
    cluster = document["spec"]["rayClusterConfig"]
    (group,) = cluster["workerGroupSpecs"]
    assert (cluster["enableInTreeAutoscaling"], group["minReplicas"], group["replicas"], group["maxReplicas"]) == (False, 1, 1, 1)
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "1500m", "memory": "4Gi"}
    assert "volumes" not in group["template"]["spec"]  # no --artifact-pvc: the image holds /mnt/models
    client = ApiClient()
    for template in (cluster["headGroupSpec"]["template"], group["template"]):
        pod = client.deserialize(json.dumps(template), "V1PodTemplateSpec", "application/json")
        assert client.sanitize_for_serialization(pod) == template  # nothing the Kubernetes classes do not know


@pytest.mark.parametrize("break_it, message", [
    (lambda d: d["spec"].__setitem__("serveConfigV2", yaml.safe_load(d["spec"]["serveConfigV2"])), "is not of type 'string'"),
    (lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required property"),
    (lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].__setitem__("replicas", "2"), "'2' is not of type 'integer'"),
    (lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"].pop("rayStartParams"), "'rayStartParams' is a required property"),
    (lambda d: d["spec"]["rayClusterConfig"].__setitem__("workerGroupSpec", []), "Additional properties are not allowed ('workerGroupSpec'"),
    (lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0), "0 is not of type 'string'"),
    (lambda d: d["spec"]["rayClusterConfig"].__setitem__("autoscalerOptions", {"upscalingMode": "Fast"}), "'Fast' is not one of"),
])
def test_broken_rayservice_fails_the_crd_schema(tiny_fp32, tmp_path, crd_validator, break_it, message):
    document = write_rayservice(tiny_fp32, tmp_path)
    assert list(crd_validator.iter_errors(document)) == []
    break_it(document)
    errors = [e.message for e in crd_validator.iter_errors(document)]
    assert len(errors) == 1 and message in errors[0], errors


# ---- the command line --------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, args, message", [
    ("rayserve", ["--min-replicas", "3", "--max-replicas", "2"], "Ray Serve options: min_replicas 3 is above max_replicas 2"),
    ("rayservice", ["--min-replicas", "3", "--max-replicas", "2"], "Ray Serve options: min_replicas 3 is above max_replicas 2"),
    ("rayserve", ["--min-replicas", "1"], "Ray Serve options min_replicas and target_ongoing_requests need max_replicas"),
    ("rayserve", ["--threads", "0"], "Ray Serve option threads: expected >= 1, got 0"),
    ("rayserve", ["--graph", "int8", "--backend", "torch"], "Ray Serve option graph is an option of the onnxruntime backend, not of torch"),
    ("rayserve", ["--http-port", "9000"], "Ray Serve config: the HTTP and gRPC ports are both 9000"),
    ("rayservice", ["--workers", "0"], "--workers: expected 1 or more worker pods, got 0"),
    ("rayservice", ["--memory", "4 GB"], "--memory: '4 GB' is not a Kubernetes quantity"),
    ("rayservice", ["--artifact-path", "models/tiny"], "--artifact-path 'models/tiny': expected an absolute path inside the container"),
    ("rayservice", ["--service-name", "Perceiver_Tiny"], "the RayService name 'Perceiver_Tiny' (--service-name; default: the application's) must be a DNS label"),
])
def test_bad_options_exit_3_with_the_config_error(tiny_fp32, tmp_path, command, args, message):
    image = ["--image", "registry.example/pe:0.1"] if command == "rayservice" else []
    out = tmp_path / "out.yaml"
    result = cli(command, str(tiny_fp32.directory), *image, "--out", str(out), *args)
    assert result.returncode == 3 and result.stdout == ""
    assert f"error (ConfigError): {message}" in " ".join(result.stderr.split())
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("args, message", [
    (["rayserve", "x", "--backend", "nope"], "argument --backend: invalid choice: 'nope'"),
    (["rayservice", "x"], "the following arguments are required: --image"),
    (["rayserve", "x", "--max-replicas", "many"], "argument --max-replicas: invalid int value: 'many'"),
])
def test_usage_errors_exit_2_without_heavy_imports(args, message):
    code, out, err, imported = run_cli(*args)
    assert code == 2 and out == "" and message in err
    assert not imported & (HEAVY | {"rich", "ray", "kubernetes", "yaml"})


@pytest.mark.parametrize("command, option", [("rayserve", "--target-ongoing-requests"), ("rayservice", "--artifact-pvc")])
def test_help_without_heavy_imports(command, option):
    code, out, _, imported = run_cli(command, "--help")
    assert code == 0 and f"usage: python -m perceiver_export {command}" in out and option in out
    assert not imported & (HEAVY | {"rich", "ray", "kubernetes", "yaml"})


def test_every_flag_is_an_option_and_the_backends_are_the_options():
    import dataclasses

    from perceiver_export.cli.main import SERVE_BACKENDS as CLI_BACKENDS
    from perceiver_export.cli.ray_commands import OPTION_FLAGS
    from perceiver_export.serving.ray_options import BACKENDS

    fields = {f.name for f in dataclasses.fields(RayServeOptions)}
    flagged = {field for _, field, _, _ in OPTION_FLAGS} | {"artifact", "allow_non_finite"}
    assert flagged == fields  # a new option without a flag (or a flag without an option) fails here
    assert tuple(CLI_BACKENDS) == BACKENDS
