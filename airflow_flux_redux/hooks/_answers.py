"""Reading the queue's answers: JSON into models, HTTP codes and network failures into our errors.

Written once for the sync and the async hook. Whether an error may be retried is decided here (the
retry policy in ``_retry`` only counts and waits).
"""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx
from pydantic import ValidationError

from airflow_flux_redux.exceptions import (
    FluxReduxAuthError,
    FluxReduxCancelledError,
    FluxReduxError,
    FluxReduxJobFailedError,
    FluxReduxProtocolError,
    FluxReduxRequestRejectedError,
    FluxReduxResultExpiredError,
    FluxReduxSubmitUncertainError,
    FluxReduxTimeoutError,
    FluxReduxTransportError,
)
from airflow_flux_redux.models import parse_error_body

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic import BaseModel

RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})
# Submit is at-most-once: only answers that prove the job was not taken may be retried.
SUBMIT_RETRYABLE_STATUS = frozenset({429, 503})
# fal's retry hint; its newer error page names it X-Fal-Needs-Retry. Both are read.
RETRY_HINT_HEADERS = ("X-Fal-Retryable", "X-Fal-Needs-Retry")

ModelT = TypeVar("ModelT", bound="BaseModel")


class Answer(Protocol):
    """What the readers use of an answer: an ``httpx.Response`` or the waits' ``Reply`` (aiohttp's headers)."""

    @property
    def status_code(self) -> int: ...
    @property
    def content(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...


def retry_after(response: Answer) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def retry_hint(response: Answer) -> bool | None:
    """fal's own word on retrying (``X-Fal-Retryable`` or ``X-Fal-Needs-Retry``), or None when it gave none."""
    for name in RETRY_HINT_HEADERS:
        value = response.headers.get(name, "").strip().lower()
        if value in ("true", "1", "yes"):
            return True
        if value in ("false", "0", "no"):
            return False
    return None


def read_json(response: Answer, what: str, request_id: str | None) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        raise FluxReduxProtocolError(
            f"The {what} answer (HTTP {response.status_code}) is not JSON: {response.text[:200]!r}",
            request_id=request_id,
        ) from None


def read_model(model: type[ModelT], response: Answer, what: str, request_id: str | None) -> ModelT:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors()[:5])
        raise FluxReduxProtocolError(
            f"The {what} answer (HTTP {response.status_code}) is not what the fal queue protocol sends: {problems}",
            request_id=request_id,
        ) from None


def raise_for_status(response: Answer, op: str, request_id: str | None) -> None:
    """Turn a non-2xx answer into the error that says what to do; decide here whether it may be retried."""
    code = response.status_code
    if code < 300:
        return
    try:
        body: Any = json.loads(response.content) if response.content else None
    except ValueError:
        body = response.text[:200]
    error_type, detail = parse_error_body(body)
    error_type = error_type or response.headers.get("X-Fal-Error-Type")
    what = f"{op} answered HTTP {code}" + (f" {error_type}" if error_type else "") + (f": {detail}" if detail else "")
    if 300 <= code < 400:
        raise FluxReduxProtocolError(
            f"{what}; redirects are not followed on the queue API (the key would travel with them)",
            request_id=request_id,
        )
    if code in (401, 403):
        raise FluxReduxAuthError(
            f"{what}. Check the API key in the connection's password (or FAL_KEY) and the auth_scheme "
            "extra (Key for fal.ai, Bearer for most gateways).",
            status_code=code,
            error_type=error_type,
            request_id=request_id,
        )
    if code == 504 and response.headers.get("X-Fal-Request-Timeout-Type", "").lower() == "user":
        raise FluxReduxTimeoutError(
            f"{what}: the job did not start within the request_timeout you set (X-Fal-Request-Timeout); "
            "not retried. Raise request_timeout in the connection extra or try later.",
            request_id=request_id,
        )
    if op == "result" and code == 404:
        raise FluxReduxResultExpiredError(
            f"{what}: the result is gone. fal keeps results about an hour, large ones only minutes; fetch "
            "promptly (the trigger does) or enable payload storage.",
            status_code=code,
            error_type=error_type,
            request_id=request_id,
        )
    if op == "result" and code < 500 and code not in RETRYABLE_STATUS:
        error_class = FluxReduxCancelledError if error_type == "client_cancelled" else FluxReduxJobFailedError
        raise error_class(f"The job failed: {what}", error_type=error_type, request_id=request_id)
    hint = retry_hint(response)
    allowed = SUBMIT_RETRYABLE_STATUS if op == "submit" else RETRYABLE_STATUS
    retryable = code in allowed and hint is not False
    if op != "submit" and hint is True:
        retryable = True
    if op == "submit" and code >= 500 and not retryable:
        raise FluxReduxSubmitUncertainError(
            f"{what}. The gateway failed after the request was sent, so the job may exist and be billed; "
            "it was not resubmitted. Check your fal dashboard's request list before running again.",
            status_code=code,
        )
    if code >= 500 or retryable:
        raise FluxReduxTransportError(
            what, request_id=request_id, status_code=code, retryable=retryable, retry_after=retry_after(response)
        )
    raise FluxReduxRequestRejectedError(what, status_code=code, error_type=error_type, request_id=request_id)


def transport_error(err: BaseException, op: str, url: str, request_id: str | None) -> FluxReduxError:
    """A network failure or an answer the client refused. For submit only a failure before the body left is
    safe to retry."""
    name = type(err).__name__
    never_sent = isinstance(err, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    host = httpx.URL(url).host
    if isinstance(err, TimeoutError) and not str(err):
        err = TimeoutError("no complete answer within the call's timeout (the connection extra timeout)")
    if op == "submit" and not never_sent:
        return FluxReduxSubmitUncertainError(
            f"submit to {host} failed with {name} after the request was sent: the job may exist and be "
            "billed, so it was not resubmitted. Check your fal dashboard's request list before running "
            "again.",
        )
    return FluxReduxTransportError(f"{op} to {host} failed: {name}: {err}", request_id=request_id, retryable=True)


def cancel_outcome(err: FluxReduxRequestRejectedError) -> str:
    """A cancel's 400 and 404 are answers, not failures: the job already finished, or never existed."""
    if err.status_code == 400:
        return "ALREADY_COMPLETED"
    if err.status_code == 404:
        return "NOT_FOUND"
    raise err


def cancel_status(response: Answer, request_id: str | None) -> str:
    return str(read_json(response, "cancel", request_id).get("status", "CANCELLATION_REQUESTED"))


def billable_units(response: Answer) -> float | None:
    """fal's ``X-Fal-Billable-Units`` header, where the server sends it."""
    value = response.headers.get("X-Fal-Billable-Units")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def with_logs(url: str, logs: bool) -> str:
    if not logs:
        return url
    return f"{url}&logs=1" if "?" in url else f"{url}?logs=1"
