"""`inspect DIR`: what an artifact holds — I/O contract, ONNX op histogram, engines and their profiles."""

from __future__ import annotations

import json
from collections import Counter

import onnx
from rich.console import Console
from rich.table import Table

from ..artifact.manifest import Manifest
from ..engines.commands import polygraphy_convert_command, trtexec_command
from ..errors import PerceiverExportError
from ..export.graph_choice import describe


def op_histogram(manifest: Manifest) -> Counter:
    model = onnx.load(str(manifest.onnx_path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def engine_layers(manifest: Manifest, name: str) -> list | str:
    """Per-layer information from TensorRT's engine inspector, or why it is not available here."""
    from ..runtime import load

    try:
        runner = load(manifest, backend="tensorrt", check_files=False, engine=name)
    except PerceiverExportError as e:
        return f"per-layer information needs the engine deserialized: {e}"
    trt = runner.flavor.trt
    info = runner.engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return json.loads(info).get("Layers", [])


def print_inspect(manifest: Manifest, console: Console, layers: bool = True) -> None:
    d = manifest.data
    contract = manifest.contract
    console.print(f"[bold]{d['name']}[/] — {manifest.directory}  ({d['dtype']}, opset {d['opset']}, schema {d['schema_version']})")
    made_by = (d.get("versions") or {}).get("perceiver-export")
    console.print(f"made by perceiver-export {made_by or '(unknown version)'} on {d.get('created', '?')}")
    console.print(f"model: {manifest.model_class}({', '.join(f'{k}={v!r}' for k, v in manifest.model_config.items())})")
    io = Table(title="inputs and outputs", title_justify="left")
    for col in ("name", "kind", "dtype", "dims", "min", "opt", "max"):
        io.add_column(col, overflow="fold")  # wraps in a narrow terminal, never cut to "…"
    for kind, specs in (("input", contract.inputs), ("output", contract.outputs)):
        for t in specs:
            io.add_row(t.name, kind + (" (optional)" if t.optional else ""), t.dtype, ", ".join(map(str, t.dims)),
                       *(str(list(contract.shape(t.name, w))) for w in ("min", "opt", "max")))
    console.print(io)
    ops = Table(title=f"ONNX ops ({manifest.onnx_path.name})", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in op_histogram(manifest).most_common():
        ops.add_row(op, str(n))
    console.print(ops)
    parity = d.get("parity")
    if parity is None:
        console.print("parity: not verified (run `python -m perceiver_export verify`)")
    else:
        console.print(f"parity: {'passed' if parity['passed'] else 'FAILED'} on {', '.join(parity['backends'])}, "
                      f"worst max abs {parity['worst_max_abs']:.2e}")
    graphs = [f"plain ({manifest.onnx_path.name})"] + [
        f"{n} ({g['file']}{', route ' + g['route'] if g.get('route') else ''})" for n, g in manifest.graphs.items()]
    console.print(f"graphs: {', '.join(graphs)}", highlight=False)
    console.print(f"default graph: {describe(d['default_graph'])}", highlight=False)
    if not manifest.engines:
        console.print("engines: none (build with `python -m perceiver_export trt DIR`)")
    for name, e in manifest.engines.items():
        console.print(
            f"[bold]engine {name}[/]: {e['flavor']} {e['version']}, targets {', '.join(e['compute_capabilities'] or ['the build GPU'])}, "
            f"{e['precision']}, TF32 {'allowed' if e['tf32'] else 'off'}, {e['build']['bytes']:,} bytes, built in {e['build']['seconds']} s"
        )
        prof = Table(title_justify="left")
        for col in ("#", "profile", "batch", "q_len", "k_len", "v_len"):
            prof.add_column(col)
        for i, p in enumerate(e["profiles"]):
            prof.add_row(str(i), p["name"], *(f"{r['min']}/{r['opt']}/{r['max']}" for r in p["axes"].values()))
        console.print(prof)
        console.print("  the same engine from NVIDIA's tools (same ONNX, profiles, precision, TF32, workspace, targets):")
        for command in (trtexec_command(manifest, name), polygraphy_convert_command(manifest, name)):
            console.print(f"    {command}", markup=False, highlight=False, soft_wrap=True)
        if layers:
            info = engine_layers(manifest, name)
            if isinstance(info, str):
                console.print(f"  {info}")
            else:
                console.print(f"  {len(info)} layers")
                for layer in info[:50]:
                    console.print(f"  - {layer.get('Name', layer) if isinstance(layer, dict) else layer}")
