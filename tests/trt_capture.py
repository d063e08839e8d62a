"""What a TensorRT builder was asked to build: I/O names and dtypes, every profile's min/opt/max, flags and targets.

Engines cannot be deserialized without a GPU, so on CPU the comparison of two builds is made at the one point
where a network and a builder config become the engine: `Builder.build_serialized_network`. The engine declares
exactly the network's I/O and the config's profiles.

In-process: `with capture("tensorrt_rtx") as builds: ...`. Around Polygraphy's command line, in a subprocess:
`python -m tests.trt_capture OUT.json polygraphy convert ...` (the flavor follows POLYGRAPHY_USE_TENSORRT_RTX).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys


@contextlib.contextmanager
def capture(module: str):
    trt = importlib.import_module(module)
    builds: list[dict] = []
    profiles: dict[int, list] = {}
    add, build = trt.IBuilderConfig.add_optimization_profile, trt.Builder.build_serialized_network

    def add_profile(config, profile):
        profiles.setdefault(id(config), []).append(profile)
        return add(config, profile)

    def build_network(builder, network, config):
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        builds.append({
            "inputs": [[t.name, t.dtype.name] for t in inputs],
            "outputs": [[t.name, t.dtype.name] for t in (network.get_output(i) for i in range(network.num_outputs))],
            "profiles": [{t.name: [list(s) for s in p.get_shape(t.name)] for t in inputs} for p in profiles.get(id(config), [])],
            "compute_capabilities": [config.get_compute_capability(i).name for i in range(config.num_compute_capabilities)],
            "tf32": config.get_flag(trt.BuilderFlag.TF32),
            "strongly_typed": network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED),
            "optimization_level": config.builder_optimization_level,
            "workspace": config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE),
        })
        return build(builder, network, config)

    trt.IBuilderConfig.add_optimization_profile = add_profile
    trt.Builder.build_serialized_network = build_network
    try:
        yield builds
    finally:
        trt.IBuilderConfig.add_optimization_profile, trt.Builder.build_serialized_network = add, build


if __name__ == "__main__":
    out, argv = sys.argv[1], sys.argv[2:]
    assert argv[0] == "polygraphy", argv
    module = "tensorrt_rtx" if os.environ.get("POLYGRAPHY_USE_TENSORRT_RTX", "0") != "0" else "tensorrt"
    from polygraphy.tools import main

    with capture(module) as builds:
        sys.argv = argv
        code = main()
    with open(out, "w") as f:
        json.dump(builds, f)
    sys.exit(code)
