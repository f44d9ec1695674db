"""What can go wrong, as a small hierarchy; every message names the request id when there is one.

No Airflow import here: the emulator and the models use these without loading Airflow.
"""

from __future__ import annotations

import inspect
from typing import Any


class FluxReduxError(Exception):
    """Base of every error this provider raises.

    An error crosses a boundary (the trigger's event, stored in the metadata DB) as ``to_dict()``: its class
    name and the fields it was built with; ``error_from_dict`` raises the same error on the other side.
    """

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        if request_id and request_id not in message:
            message = f"{message} (request id {request_id})"
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        """``{"class", "message", "fields"}``: JSON primitives, enough to build the same error again."""
        params = list(inspect.signature(type(self).__init__).parameters.values())[1:]
        fields = {
            p.name: getattr(self, p.name, None) for p in params if p.name != "message" and p.kind is not p.VAR_KEYWORD
        }
        return {"class": type(self).__name__, "message": str(self), "fields": fields}


class InvalidRequestError(FluxReduxError, ValueError):
    """A request field has a value the spec does not allow; raised before any network call."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid FLUX Redux request:\n  " + "\n  ".join(problems))


class FluxReduxConfigError(FluxReduxError):
    """The connection is incomplete or inconsistent (no key, bad extra)."""


class FluxReduxUntrustedUrlError(FluxReduxError):
    """A URL the server returned points to an origin the connection does not trust; nothing was sent."""


class FluxReduxRequestRejectedError(FluxReduxError):
    """The server refused the request (4xx other than 408/429): retrying the same request cannot help."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.error_type = error_type
        super().__init__(message, request_id=request_id)


class FluxReduxAuthError(FluxReduxRequestRejectedError):
    """401/403: the API key is missing, wrong, or not allowed to use this model."""


class FluxReduxResultExpiredError(FluxReduxRequestRejectedError):
    """The job completed but its result is gone (fal keeps large results only minutes)."""


class FluxReduxJobFailedError(FluxReduxError):
    """The job ran and failed: COMPLETED with an error, or its result is a model error."""

    def __init__(self, message: str, *, error_type: str | None = None, request_id: str | None = None) -> None:
        self.error_type = error_type
        super().__init__(message, request_id=request_id)


class FluxReduxCancelledError(FluxReduxJobFailedError):
    """The job was cancelled before it produced a result."""


class FluxReduxTimeoutError(FluxReduxError):
    """The wait passed its deadline; the remote job was asked to cancel."""


class FluxReduxTransportError(FluxReduxError):
    """The network or the server's infrastructure failed (connection errors, 429, 5xx), after retries."""

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        status_code: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(message, request_id=request_id)


class FluxReduxSubmitUncertainError(FluxReduxTransportError):
    """The submit body was sent but no answer came: the job may exist and be billed; not resubmitted."""


class FluxReduxProtocolError(FluxReduxError):
    """The server answered something that is not the fal queue protocol (bad JSON, missing fields)."""


def error_from_dict(data: dict[str, Any]) -> FluxReduxError:
    """The error ``FluxReduxError.to_dict`` described (the base class for a name this version does not know)."""
    classes = {cls.__name__: cls for cls in _subclasses(FluxReduxError)}
    cls = classes.get(str(data.get("class")), FluxReduxError)
    fields = data.get("fields") or {}
    message = str(data.get("message") or cls.__name__)
    if cls is InvalidRequestError:
        return InvalidRequestError(list(fields.get("problems") or [message]))
    known = inspect.signature(cls.__init__).parameters
    return cls(message, **{name: value for name, value in fields.items() if name in known})


def _subclasses(cls: type[FluxReduxError]) -> list[type[FluxReduxError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found
