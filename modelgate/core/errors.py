"""Domain errors shared by gateway and worker. They carry no HTTP codes: the gateway maps them
in one table (modelgate/gateway/errors.py). Every message says what is wrong and how to fix it."""

from __future__ import annotations


class ModelgateError(Exception):
    """Base of every error a caller may see."""


class InvalidInput(ModelgateError):
    """The request does not fit the model's signature or the protocol."""


class ModelNotFound(ModelgateError):
    """No such model, or no such version of it, in the repository."""


class NoLiveWorker(ModelgateError):
    """The model is known but no worker serving it is alive."""


class BackendUnavailable(ModelgateError):
    """Redis cannot be reached; the request was not queued."""


class DeadlineExceeded(ModelgateError):
    """No answer arrived before the request's deadline."""


class ModelFailed(ModelgateError):
    """The runtime failed on input it accepted (or the entry was parked as a poison pill)."""


class Overloaded(ModelgateError):
    """Admission control refused the request; ``retry_after_s`` says when to try again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(ModelgateError):
    """The request did not arrive (its headers or its body) within the gateway's deadline."""


class PayloadTooLarge(ModelgateError):
    """The request body is over the gateway's size limit."""


class UnsupportedMediaType(ModelgateError):
    """The request body is in a content type the endpoint does not take."""


class Unauthorized(ModelgateError):
    """API keys are on and the request carries none that matches."""


class Forbidden(ModelgateError):
    """The call names something it may not reach (a path outside the jobs folder)."""


class Conflict(ModelgateError):
    """The call conflicts with the state of what it names (a job already finished, a version
    that running jobs still use)."""
