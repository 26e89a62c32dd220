"""One error tree; each error carries the HTTP status and a machine-readable code for its response."""

from __future__ import annotations


class BatcheryError(Exception):
    """Base of every error batchery raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def describe(exc: BaseException) -> str:
    """A deliberate error's own message, else the exception's repr (its type says what went wrong)."""
    return exc.message if isinstance(exc, BatcheryError) else repr(exc)


class BadRequest(BatcheryError):
    """The request body cannot be read (malformed JSON, wrong shape)."""

    status = 400
    code = "bad_request"


class InvalidInput(BatcheryError):
    """The body parsed, but an input is of the wrong type or value."""

    status = 422
    code = "invalid_input"


class PayloadTooLarge(BatcheryError):
    """The body, an input or the number of inputs is above a configured limit."""

    status = 413
    code = "payload_too_large"


class ModelNotFound(BatcheryError):
    """No model of that name is served."""

    status = 404
    code = "model_not_found"


class Conflict(BatcheryError):
    """The request cannot be done in the current state (e.g. no previous version to roll back to)."""

    status = 409
    code = "conflict"


class Overloaded(BatcheryError):
    """The model's queue is full; the client should retry after `retry_after` seconds."""

    status = 503
    code = "overloaded"


class ClientOverloaded(Overloaded):
    """Refused for this client's own share of a full queue: shed as the newest input of the longest backlog, or
    refused because this client's queued inputs have waited too long. Another client's request may be admitted."""


class NotReady(BatcheryError):
    """The server is starting up or draining."""

    status = 503
    code = "not_ready"


class BackendUnavailable(BatcheryError):
    """A backend the request needs (Redis, for an admin action on the shared cache) cannot be reached."""

    status = 503
    code = "backend_unavailable"


class DeadlineExceeded(BatcheryError):
    """The request's deadline passed before its batch could run."""

    status = 504
    code = "deadline_exceeded"


class PredictError(BatcheryError):
    """The model raised while computing a batch, or returned the wrong number of outputs."""

    status = 500
    code = "predict_failed"


class DecodeError(BatcheryError):
    """`decode_request` raised something other than ValueError, TypeError or KeyError (its way to refuse an input)."""

    status = 500
    code = "decode_failed"


class ModelLoadError(BatcheryError):
    """A model could not be loaded or warmed up at start-up."""

    status = 500
    code = "model_load_failed"


class ConfigError(BatcheryError):
    """A setting is invalid; raised before anything starts."""

    status = 500
    code = "config_error"


class UnsupportedMediaType(BatcheryError):
    """The body or an uploaded file is of a type the model cannot read (an image format it does not take)."""

    status = 415
    code = "unsupported_media_type"


class RemoteError(BatcheryError):
    """A remote service called by an async pipeline stage failed or answered with an error."""

    status = 502
    code = "bad_gateway"


class RemoteTimeout(BatcheryError):
    """A remote service called by an async pipeline stage did not answer in time."""

    status = 504
    code = "gateway_timeout"
