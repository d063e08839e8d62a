"""The package's exception types: every failure a user can cause gets one of these, never a backend's raw error."""


class PerceiverExportError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(PerceiverExportError, ValueError):
    """An input given to a runner does not match the artifact's I/O contract.

    Raised before any backend sees the input; the message names the input, what was
    expected and what came.
    """


class ConfigError(PerceiverExportError, ValueError):
    """A model spec, a range option or a checkpoint does not make sense."""


class ArtifactError(PerceiverExportError):
    """An artifact directory is missing a file, is damaged, or its manifest is invalid."""


class ArtifactDamagedError(ArtifactError):
    """A file the manifest lists is missing, or its size or sha256 is not the recorded one: for `verify` a failed
    verification (exit 1, like a parity failure), for every other command an error (exit 3)."""


class BackendUnavailableError(PerceiverExportError):
    """The requested backend is not installed here or cannot run this artifact."""


class ParityError(PerceiverExportError):
    """An exported model disagrees with eager PyTorch beyond the tolerance (`.report` holds the details)."""

    report = None


class EngineBuildError(PerceiverExportError):
    """TensorRT could not parse the ONNX file or build an engine from it."""


class DynamicAxisError(ConfigError):
    """torch.export cannot keep a declared axis dynamic over its range: the module specialises it to a
    constant, narrows its range, or ties it to another axis (`.problems` lists each, by input and axis)."""

    problems: list = []


class ServingError(PerceiverExportError):
    """A request that was valid but could not be answered by the server or the batcher."""


class OverloadedError(ServingError):
    """The request queue is full or the server is shutting down (HTTP 503 / gRPC UNAVAILABLE)."""


class DeadlineExceededError(ServingError):
    """The request was not answered within its timeout (HTTP 504 / gRPC DEADLINE_EXCEEDED)."""


class BatchFailedError(ServingError):
    """The backend failed on the batch that carried this request (HTTP 500 / gRPC INTERNAL)."""


class ModelNotFoundError(ServingError):
    """No model of that name (or version) is served here (HTTP 404 / gRPC NOT_FOUND)."""


class ModelControlError(ServingError):
    """A load or unload the server's model control mode does not allow (HTTP 400 / gRPC FAILED_PRECONDITION)."""


class RequestTooLargeError(ServingError):
    """The request is larger than the server's request size limit (HTTP 413 / gRPC RESOURCE_EXHAUSTED)."""
