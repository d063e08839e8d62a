"""A stand-in for Triton's `triton_python_backend_utils` (it lives in Triton's C++ stub and cannot be imported
outside Triton): what model.py touches — tensors, requests, responses, errors — with the stub's method names.
`Request` is the tests' own: Triton builds its requests itself. tests/test_triton_server.py runs a real Triton."""

import numpy as np


class Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class TritonError:
    def __init__(self, message):
        self._message = message

    def message(self):
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors=(), error=None):
        self.output_tensors, self.error = list(output_tensors), error

    def has_error(self):
        return self.error is not None


class Request:
    def __init__(self, **inputs):
        self.inputs = {name: Tensor(name, value) for name, value in inputs.items()}


def get_input_tensor_by_name(request, name):
    return request.inputs.get(name)
