"""Triton's Python-backend model of an artifact: this package's runner behind Triton, padding the requests Triton's
dynamic batcher hands `execute()` exactly as `serve`'s DynamicBatcher pads its own (batcher.assemble_batch).

`python -m perceiver_export triton DIR --backend python` copies this file to REPO/<name>/<version>/model.py and
writes what it needs into the config's `parameters`: `site_packages` (paths joined with os.pathsep), `artifact`
(the artifact directory; relative to the model directory when not absolute), `backend` (the runner's), and
`graph`, `threads`, `device`, `engine` where given. Triton's stub runs this file in an isolated interpreter
(PYTHONPATH and PYTHONHOME ignored), so nothing of this package is imported before `initialize` has put
`site_packages` on sys.path.

Triton gives the Python backend one request object per request, ragged inputs (`allow_ragged_batch` on k, v and
mask) included: k and v of different lengths arrive unconcatenated, and this model pads them.
"""

import importlib
import json
import os
import site
import sys
from pathlib import Path


def parameters(model_config: dict) -> dict:
    """The config's `parameters` as plain strings (Triton's JSON form nests each in `string_value`)."""
    return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}


def add_site_packages(paths: str) -> list:
    """Add the environment's site-packages to sys.path as site directories (their .pth files read, so an editable
    install is found too), after the stub's own paths: the numpy the stub already imported, and anything else its
    environment has, stays the one in use. Returns the paths added."""
    added = []
    for path in filter(None, paths.split(os.pathsep)):
        if path not in sys.path:
            site.addsitedir(path)
            added.append(path)
    return added


class TritonPythonModel:
    """Triton's Python backend interface: initialize(args), execute(requests), finalize()."""

    def initialize(self, args: dict) -> None:
        self.pb = importlib.import_module("triton_python_backend_utils")  # Triton's stub provides it
        config = json.loads(args["model_config"])
        params = parameters(config)
        add_site_packages(params.get("site_packages", ""))

        from perceiver_export import runtime
        from perceiver_export.errors import InputError
        from perceiver_export.serving.batcher import assemble_batch, batch_key, pads_exactly, split_batch

        self.InputError = InputError
        self.assemble_batch, self.batch_key, self.split_batch = assemble_batch, batch_key, split_batch
        artifact = Path(params["artifact"])
        if not artifact.is_absolute():
            artifact = Path(args["model_repository"]) / artifact
        backend = params.get("backend") or "onnxruntime"
        options = {k: params[k] for k in ("graph", "engine", "device") if params.get(k)}
        if params.get("threads"):
            if backend == "torch":
                import torch

                torch.set_num_threads(int(params["threads"]))
            else:
                options["threads"] = int(params["threads"])
        if backend == "tensorrt" and "device" in options:
            options["device"] = int(options["device"])
        self.runner = runtime.load(artifact, backend=backend, **options)
        self.contract = self.runner.contract
        self.pad = pads_exactly(self.runner)
        self.output_name = self.contract.outputs[0].name
        # Triton's batcher keeps a batch within max_batch_size; the contract's batch max bounds it here too.
        batch = self.contract.axes.get("batch")
        self.max_rows = batch.max if batch is not None else 1

    def execute(self, requests: list) -> list:
        """One response per request, in order: a bad request gets its own error, the others still run."""
        responses = [None] * len(requests)
        groups: dict = {}
        for i, request in enumerate(requests):
            feeds = {}
            for spec in self.contract.inputs:
                tensor = self.pb.get_input_tensor_by_name(request, spec.name)
                if tensor is not None:
                    feeds[spec.name] = tensor.as_numpy()
            try:
                sizes = self.contract.check_inputs(feeds)
            except self.InputError as e:
                responses[i] = self.error(str(e))
                continue
            groups.setdefault(self.batch_key(self.contract, feeds, sizes, self.pad), []).append((i, feeds, sizes))
        for members in groups.values():
            for chunk in self.chunks(members):
                self.run(chunk, responses)
        return responses

    def chunks(self, members: list) -> list:
        """Requests of one group in order, at most the contract's batch max rows together (one larger runs alone)."""
        out, current, rows = [], [], 0
        for item in members:
            n = item[2]["batch"]
            if current and rows + n > self.max_rows:
                out.append(current)
                current, rows = [], 0
            current.append(item)
            rows += n
        return out + ([current] if current else [])

    def run(self, chunk: list, responses: list) -> None:
        feeds, _ = self.assemble_batch(self.contract, [f for _, f, _ in chunk], [s for _, _, s in chunk], self.pad)
        try:
            out = self.runner.infer(feeds)
        except Exception as e:  # noqa: BLE001 — a backend failure fails this batch's requests only
            message = f"the backend failed on a batch of {len(chunk)} request(s): {type(e).__name__}: {e}"
            for i, _, _ in chunk:
                responses[i] = self.error(message)
            return
        for (i, _, _), part in zip(chunk, self.split_batch(out, [s["batch"] for _, _, s in chunk])):
            responses[i] = self.pb.InferenceResponse(output_tensors=[self.pb.Tensor(self.output_name, part)])

    def error(self, message: str):
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(message))

    def finalize(self) -> None:
        self.runner = None
