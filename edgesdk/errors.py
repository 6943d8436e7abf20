"""Every exception edgesdk raises on purpose, in one hierarchy under EdgeSDKError.

Messages carry the numbers and names a user needs to act (field and byte
offset, bytes needed and available, the id that was out of range).
"""
from __future__ import annotations


class EdgeSDKError(Exception):
    """Base class of every error edgesdk raises on purpose."""


class InvalidArgumentError(EdgeSDKError, ValueError):
    """An argument has the wrong type, shape, dtype or value; the message names it."""


class ModelFormatError(EdgeSDKError):
    """The file is not a model we can read safely; the message names the field and byte offset."""


class UnsupportedModelError(EdgeSDKError):
    """A valid model we cannot run: unknown architecture, tensor type or layout."""


class ModelNotFoundError(EdgeSDKError):
    """Neither a registry name nor an existing .gguf path."""


class RegistryError(EdgeSDKError):
    """The model registry file cannot be read or breaks its schema; the message names the entry and field."""


class PullError(EdgeSDKError):
    """Fetching a model failed (network, package index, disk); nothing half-written is left."""


class IntegrityError(PullError):
    """Downloaded bytes do not match the registry's sha256."""


class NativeBuildError(EdgeSDKError):
    """The native library is missing or was built for another platform."""


class NativeError(EdgeSDKError):
    """The native layer reported a failure it should not have reached."""


class NativeMemoryError(EdgeSDKError, MemoryError):
    """The native layer could not allocate the memory it was asked to build (malloc failed)."""


class ThreadStartError(EdgeSDKError, RuntimeError):
    """The OS refused to start the native thread pool's workers; fewer threads may still work."""


class UnsupportedISAError(EdgeSDKError):
    """The requested instruction-set path is unknown or the CPU lacks it."""


class NumericError(EdgeSDKError):
    """The model computed non-finite values (NaN, infinity): its weights or hyperparameters are broken."""


class TokenizerError(EdgeSDKError):
    """The vocabulary is inconsistent, or text/ids cannot be converted."""


class MemoryBudgetError(EdgeSDKError, MemoryError):
    """The model does not fit the memory available; the message gives the plan and ways out."""


class ContextOverflowError(EdgeSDKError):
    """More tokens than the context (KV cache) can hold."""


class CancelledError(EdgeSDKError):
    """An evaluation was stopped by Backend.abort() before it finished; the cache past its start is gone."""


class TemplateError(EdgeSDKError):
    """A chat template failed, timed out, or tried to escape its sandbox."""


class ChatFormatError(InvalidArgumentError):
    """Messages are not well-formed OpenAI-style chat messages."""


class SessionFileError(EdgeSDKError):
    """A saved chat session is truncated, corrupt, or belongs to another model."""


class BackendUnavailableError(EdgeSDKError):
    """The requested backend's library is not installed or cannot run here."""


class MissingDependencyError(EdgeSDKError, ImportError):
    """An optional part of edgesdk needs a package that is not installed; the message names the pip extra."""


class WorkerError(EdgeSDKError):
    """An RPC worker (`edgesdk worker`) of a split model failed; `endpoint` names it (None: not known which)."""

    def __init__(self, message: str, endpoint: "str | None" = None):
        super().__init__(message)
        self.endpoint = endpoint

    def __reduce__(self):   # the split model's child process sends these to the host
        return type(self), (self.args[0], self.endpoint)


class WorkerUnreachableError(WorkerError):
    """A worker does not answer at load time: nothing listens there, or it is not an edgesdk/llama.cpp worker."""


class WorkerLostError(WorkerError):
    """A worker stopped while the model was loaded; the split model is closed and must be loaded again."""


class WorkerMemoryError(WorkerError, MemoryBudgetError):
    """A worker refused the share of the model it was given (its --mem limit, or its device is full)."""


class ProviderUnavailableError(BackendUnavailableError):
    """The ONNX Runtime execution provider asked for is not in this onnxruntime build; the message lists those that are."""


class ExportError(EdgeSDKError):
    """An ONNX export could not be written (disk full, no permission); nothing half-written is left under its name."""


class CorruptExportError(ExportError):
    """A cached ONNX export does not match its manifest (truncated, changed, or unreadable); the message names it."""


class OutputWriteError(EdgeSDKError, OSError):
    """Writing an output file failed (full disk, no permission); the partial file was removed."""


class QuantizeError(EdgeSDKError):
    """A model cannot be quantized as asked: a tensor type we cannot read, a shape that does not
    divide into the blocks asked for, or an already quantized source without allow_requantize."""


class NonFiniteRowError(QuantizeError):
    """A matrix to be quantized holds NaN or infinity; `row` is the first such row and `tensor`
    the matrix's name (None where the caller did not give one)."""

    def __init__(self, message: str, tensor: "str | None" = None, row: "int | None" = None):
        super().__init__(message)
        self.tensor = tensor
        self.row = row


class ConversionError(EdgeSDKError):
    """A Hugging Face model folder cannot be converted: a missing or malformed file, config key
    or tensor, or a shape that does not fit the configuration; the message names it."""


class QueueFullError(EdgeSDKError):
    """Every sequence is busy and the wait queue is full; retry after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SchedulerClosedError(EdgeSDKError):
    """The batching scheduler was closed (the server is stopping): the request was not answered."""


class ApiRequestError(InvalidArgumentError):
    """An HTTP API request we refuse: `status` is the HTTP status, `param` the field at fault (or None),
    `code` OpenAI's error code string (or None)."""

    def __init__(self, message: str, param: "str | None" = None, status: int = 400, code: "str | None" = None):
        super().__init__(message)
        self.param = param
        self.status = status
        self.code = code
