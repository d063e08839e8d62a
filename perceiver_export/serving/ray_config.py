"""Ray Serve's config file for `serve deploy` / `serve run FILE`: the application builder (ray_serve.py) with the
arguments `RayServeOptions.to_args()` gives, so the file, `serve run … key=value` and the builder share one parse.
Checked with Ray's own `ServeDeploySchema` where Ray is installed; written without Ray elsewhere (and says so)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..artifact.atomic import atomic_write_text
from ..errors import ArtifactError, ConfigError
from .ray_options import GRPC_SERVICER_FUNCTION, IMPORT_PATH, RayServeOptions

HTTP_PORT, GRPC_PORT = 8000, 9000  # Ray Serve's defaults, and the ports KubeRay's Serve service expects
NOT_VALIDATED = "not validated: Ray is not installed here (`pip install 'ray[serve]'` checks it with Ray's ServeDeploySchema)"


def app_name_for(directory: str | Path) -> str:
    """The artifact's model name from its manifest when it can be read here, else a DNS-safe name from the path."""
    from ..artifact.manifest import read_manifest

    try:
        return read_manifest(directory).data["name"]
    except (ArtifactError, OSError, KeyError):
        return dns_label(Path(str(directory).rstrip("/")).name)


def dns_label(text: str) -> str:
    """`text` as a DNS label (lower case, digits, '-', at most 63): what Kubernetes names and Ray apps both accept."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    if not label or not label[0].isalpha():
        label = ("model-" + label).strip("-")[:63]
    return label


def serve_config(options: RayServeOptions, *, app_name: str | None = None, route_prefix: str = "/",
                 http_host: str = "0.0.0.0", http_port: int = HTTP_PORT, grpc_port: int = GRPC_PORT) -> dict[str, Any]:
    """Ray Serve's config (the document `serve deploy` takes) for one application running this artifact; raises a
    ConfigError where Ray's ServeDeploySchema refuses it."""
    return checked_serve_config(options, app_name=app_name, route_prefix=route_prefix, http_host=http_host,
                                http_port=http_port, grpc_port=grpc_port)[0]


def checked_serve_config(options: RayServeOptions, *, app_name: str | None = None, route_prefix: str = "/",
                         http_host: str = "0.0.0.0", http_port: int = HTTP_PORT,
                         grpc_port: int = GRPC_PORT) -> tuple[dict[str, Any], str | None]:
    """serve_config's document, and the Ray version whose ServeDeploySchema accepted it (None: Ray is not installed
    here, so nothing checked it)."""
    for flag, port in (("http_port", http_port), ("grpc_port", grpc_port)):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"Ray Serve config {flag}: expected a port 1..65535, got {port!r}")
    if http_port == grpc_port:
        raise ConfigError(f"Ray Serve config: the HTTP and gRPC ports are both {http_port}")
    if not route_prefix.startswith("/"):
        raise ConfigError(f"Ray Serve config route_prefix: expected a path starting with '/', got {route_prefix!r}")
    config = {
        # A proxy on every node: any node's 8000/9000 reaches the replicas (KubeRay's Serve service relies on it).
        "proxy_location": "EveryNode",
        "http_options": {"host": http_host, "port": http_port},
        "grpc_options": {"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER_FUNCTION]},
        "applications": [{
            "name": app_name or app_name_for(options.artifact),
            "route_prefix": route_prefix,
            "import_path": IMPORT_PATH,
            "args": options.to_args(),
        }],
    }
    return config, validate_serve_config(config)


def validate_serve_config(config: dict[str, Any]) -> str | None:
    """Check `config` with Ray's ServeDeploySchema: the Ray version that accepted it, or None where Ray is not
    installed. Refused: a ConfigError listing Ray's complaints."""
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        return None
    import ray

    try:
        ServeDeploySchema.parse_obj(config)
    except ValueError as e:  # pydantic's ValidationError: one line per field Ray refuses, made one message
        problems = [f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in e.errors()] if hasattr(e, "errors") else [str(e)]
        raise ConfigError(f"Ray Serve's ServeDeploySchema refuses the config: {'; '.join(problems)}") from None
    return ray.__version__


def ray_installed_version() -> str | None:
    """The installed Ray's version, read without importing Ray."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return None


@dataclass(frozen=True)
class WrittenServeConfig:
    path: Path
    app_name: str
    validated_with: str | None  # the Ray version whose ServeDeploySchema accepted it; None: Ray is not installed


def serve_config_yaml(config: dict[str, Any], *, validated_with: str | None) -> str:
    import yaml

    checked = (f"checked with Ray {validated_with}'s ServeDeploySchema" if validated_with else NOT_VALIDATED)
    header = (f"# Ray Serve config for {config['applications'][0]['name']}, written by perceiver-export {__version__}; "
              f"{checked}.\n"
              f"# Run it with `serve deploy FILE` (a running cluster) or `serve run FILE`; every node needs "
              f"perceiver-export[serve] and ray[serve], and the artifact at args.artifact.\n")
    return header + yaml.safe_dump(config, sort_keys=False)


def write_serve_config(options: RayServeOptions, out: str | Path, **config_options: Any) -> WrittenServeConfig:
    """Write the config `serve_config` gives as YAML, atomically."""
    config, validated_with = checked_serve_config(options, **config_options)
    out = Path(out)
    atomic_write_text(out, serve_config_yaml(config, validated_with=validated_with))
    return WrittenServeConfig(out, config["applications"][0]["name"], validated_with)


__all__ = ["GRPC_PORT", "HTTP_PORT", "WrittenServeConfig", "app_name_for", "checked_serve_config", "dns_label", "serve_config",
           "serve_config_yaml", "validate_serve_config", "write_serve_config"]
