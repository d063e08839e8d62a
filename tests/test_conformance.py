"""`serve` against the Open Inference Protocol's own OpenAPI document: schemathesis generates requests for every
operation of tests/data/open_inference_rest.yaml (random path parameters and this server's real ones, valid and
invalid data) and checks each answer: never a 5xx, the body the spec gives its status, errors as `{"error": "..."}`."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance  # noqa: E402

from .served import Served  # noqa: E402
from .test_serve import MODEL, feeds_of  # noqa: E402

SPEC = Path(__file__).parent / "data" / "open_inference_rest.yaml"
REAL = {"MODEL_NAME": MODEL, "MODEL_VERSION": "1"}
EXAMPLES = 75  # per operation, path-parameter kind and generation mode: ~450 requests in all (~30 s)
BUDGET_S = 90


def open_inference_spec() -> dict:
    """The spec as an OpenAPI document schemathesis can template.

    Its paths are written `/v2/models/${MODEL_NAME}/...`: a literal `$` before OpenAPI's `{}` templating (the
    notation of the protocol's prose). Read as written, every request path would carry a `$` the protocol does
    not mean, so the `$` is dropped here, in memory; the file stays as its source has it.
    """
    raw = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    raw["paths"] = {re.sub(r"\$\{(\w+)\}", r"{\1}", path): item for path, item in raw["paths"].items()}
    return raw


@schemathesis.check
def errors_are_error_objects(ctx, response, case):
    """The protocol's error bodies (every `*_error_response` schema): a JSON object with an `error` string."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from None
    if not (isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]):
        raise AssertionError(f"{response.status_code} body is not an {{'error': '...'}} object: {body!r:.200}")
    return None


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, errors_are_error_objects]


@pytest.fixture(scope="module")
def served(tiny_fp32):
    with Served(tiny_fp32.directory) as s:
        yield s


def test_every_operation_of_the_spec_answers_by_the_spec(served):
    schema = schemathesis.openapi.from_dict(open_inference_spec())
    base_url = f"http://{served.http}"
    session = requests.Session()
    statuses: Counter = Counter()
    per_operation: Counter = Counter()
    failures: list[str] = []
    deadline = time.monotonic() + BUDGET_S
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6, [op.label for op in operations]

    for operation in operations:
        templated = "{" in operation.path
        for path_parameters in ([None, REAL] if templated else [None]):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

                @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
                @given(case=strategy)
                def exercise(case):
                    if time.monotonic() > deadline:
                        return
                    response = case.call(base_url=base_url, session=session, timeout=10)
                    statuses[response.status_code] += 1
                    per_operation[operation.label] += 1
                    try:
                        case.validate_response(response, checks=CHECKS)
                    except FailureGroup as e:  # the checks that failed: collected, reported below
                        if len(failures) < 20:
                            failures.append(f"{case.method} {case.formatted_path} body={getattr(case, 'body', None)!r:.300}"
                                            f" -> {response.status_code} {response.content[:300]!r}\n   {e!s:.600}")

                try:
                    exercise()
                except Unsatisfiable:  # e.g. no invalid value of a string path parameter survives URL encoding
                    pass

    # The happy paths, explicitly: every GET with this server's real model name and version, then well-formed
    # inference requests (the spec's inference_request object).
    for operation in operations:
        if operation.method.upper() == "GET":
            case = operation.Case(path_parameters=REAL if "{" in operation.path else None)
            response = case.call(base_url=base_url, session=session, timeout=10)
            statuses[response.status_code] += 1
            per_operation[operation.label + " (real)"] += 1
            case.validate_response(response, checks=CHECKS)
            assert response.status_code == 200, (case.formatted_path, response.status_code, response.text[:300])
    infer = next(op for op in operations if op.method.upper() == "POST")
    rng = np.random.default_rng(0)
    for batch, q, k, v, mask in ((1, 8, 8, 8, False), (2, 16, 5, 24, True), (1, 1, 1, 1, True)):
        feeds = feeds_of(rng, batch=batch, q=q, k=k, v=v, mask=mask)
        body = {"id": f"req-{batch}-{q}", "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "BOOL" if a.dtype == bool else "FP32", "data": a.ravel().tolist()}
            for n, a in feeds.items()], "outputs": [{"name": "out"}]}
        case = infer.Case(path_parameters=REAL, body=body, media_type="application/json")
        response = case.call(base_url=base_url, session=session, timeout=30)
        statuses[response.status_code] += 1
        per_operation[infer.label + " (well-formed)"] += 1
        case.validate_response(response, checks=CHECKS)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["id"] == body["id"] and answer["model_name"] == MODEL
        assert answer["outputs"][0]["shape"] == [batch, q, 32] and len(answer["outputs"][0]["data"]) == batch * q * 32

    print(f"\nconformance: {len(operations)} operations, {sum(statuses.values())} requests, statuses "
          + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
    for label, n in per_operation.items():
        print(f"  {label}: {n}")
    assert not [s for s in statuses if s >= 500], "\n".join(failures)
    assert failures == [], f"{len(failures)}+ responses break the spec:\n" + "\n".join(failures)
    assert requests.get(f"{base_url}/v2/health/live", timeout=5).status_code == 200
