"""FluxReduxHook: an Airflow connection turned into fal-queue calls over httpx, sync and async.

One module owns the calls, the retry policy and the reading of responses; the connection's settings live
in ``_settings`` and the async transport (pooled clients, the waits' lane) in ``_transport``. The operator
and the trigger compose these calls; they never build URLs or parse JSON themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import httpx
from airflow.providers.common.compat.sdk import BaseHook, mask_secret
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from airflow_flux_redux.connection_form import HIDDEN_FIELDS, PLACEHOLDERS, RELABELING, form_widgets
from airflow_flux_redux.exceptions import (
    FluxReduxAuthError,
    FluxReduxCancelledError,
    FluxReduxConfigError,
    FluxReduxError,
    FluxReduxJobFailedError,
    FluxReduxProtocolError,
    FluxReduxRequestRejectedError,
    FluxReduxResultExpiredError,
    FluxReduxSubmitUncertainError,
    FluxReduxTimeoutError,
    FluxReduxTransportError,
)
from airflow_flux_redux.hooks._settings import _SETTINGS_CACHE, SETTINGS_TTL, FluxReduxSettings
from airflow_flux_redux.hooks._settings import DEFAULT_BASE_URL as DEFAULT_BASE_URL
from airflow_flux_redux.hooks._settings import DEFAULT_ENDPOINT as DEFAULT_ENDPOINT
from airflow_flux_redux.hooks._settings import OPTIONAL_HEADERS as OPTIONAL_HEADERS
from airflow_flux_redux.hooks._transport import (
    ASYNC_CLIENTS,
    StreamsBusyError,
    _client_kwargs,
    _Reply,
    _ssl_context,
)
from airflow_flux_redux.models import (
    FluxReduxRequest,
    QueueHandle,
    QueueState,
    QueueStatus,
    ReduxResult,
    parse_error_body,
    validate_request,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from typing import Protocol

    from airflow.providers.common.compat.sdk import Connection
    from pydantic import BaseModel

    class _Answer(Protocol):
        """What the error and model readers use of an answer: an ``httpx.Response`` or a lane ``_Reply``."""

        @property
        def status_code(self) -> int: ...
        @property
        def content(self) -> bytes: ...
        @property
        def headers(self) -> httpx.Headers: ...
        @property
        def text(self) -> str: ...


RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})
# Submit is at-most-once: only answers that prove the job was not taken may be retried.
SUBMIT_RETRYABLE_STATUS = frozenset({429, 503})

ModelT = TypeVar("ModelT", bound="BaseModel")


# -- reading answers: written once, used by the sync and async twins ------------------------------------


def _retry_after(response: _Answer) -> float | None:
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


def _json(response: _Answer, what: str, request_id: str | None) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        raise FluxReduxProtocolError(
            f"The {what} answer (HTTP {response.status_code}) is not JSON: {response.text[:200]!r}",
            request_id=request_id,
        ) from None


def _model(model: type[ModelT], response: _Answer, what: str, request_id: str | None) -> ModelT:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors()[:5])
        raise FluxReduxProtocolError(
            f"The {what} answer (HTTP {response.status_code}) is not what the fal queue protocol sends: {problems}",
            request_id=request_id,
        ) from None


def _raise_for_status(response: _Answer, op: str, request_id: str | None) -> None:
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
    user_timeout = code == 504 and response.headers.get("X-Fal-Request-Timeout-Type", "").lower() == "user"
    if user_timeout:
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
    retry_header = response.headers.get("X-Fal-Retryable", "").lower()
    allowed = SUBMIT_RETRYABLE_STATUS if op == "submit" else RETRYABLE_STATUS
    retryable = code in allowed and retry_header != "false"
    if op != "submit" and retry_header == "true":
        retryable = True
    if op == "submit" and code >= 500 and not retryable:
        raise FluxReduxSubmitUncertainError(
            f"{what}. The gateway failed after the request was sent, so the job may exist and be billed; "
            "it was not resubmitted. Check your fal dashboard's request list before running again.",
            status_code=code,
        )
    if code >= 500 or retryable:
        raise FluxReduxTransportError(
            what, request_id=request_id, status_code=code, retryable=retryable, retry_after=_retry_after(response)
        )
    raise FluxReduxRequestRejectedError(what, status_code=code, error_type=error_type, request_id=request_id)


def _transport_error(err: httpx.HTTPError, op: str, url: str, request_id: str | None) -> FluxReduxError:
    """A network failure. For submit only a failure before the body left is safe to retry."""
    name = type(err).__name__
    never_sent = isinstance(err, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    host = httpx.URL(url).host
    if op == "submit" and not never_sent:
        return FluxReduxSubmitUncertainError(
            f"submit to {host} failed with {name} after the request was sent: the job may exist and be "
            "billed, so it was not resubmitted. Check your fal dashboard's request list before running "
            "again.",
        )
    return FluxReduxTransportError(f"{op} to {host} failed: {name}: {err}", request_id=request_id, retryable=True)


class _Backoff:
    """Capped exponential backoff with full jitter; a server's ``Retry-After`` wins (capped too)."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, FluxReduxTransportError) and error.retry_after is not None:
            return min(self.cap, error.retry_after)
        ceiling = min(self.cap, self.initial * 2 ** (state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)


def _retry_policy(settings: FluxReduxSettings, op: str, request_id: str | None, log: Any) -> dict[str, Any]:
    """The one retry policy: which errors, how often, how long between tries."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "fal %s failed (%s); try %d of %d in %.1fs",
            op,
            error,
            state.attempt_number + 1,
            settings.max_retries + 1,
            state.next_action.sleep if state.next_action else 0.0,
        )

    return {
        "retry": retry_if_exception(lambda e: isinstance(e, FluxReduxTransportError) and e.retryable),
        "stop": stop_after_attempt(settings.max_retries + 1),
        "wait": _Backoff(settings.retry_initial_wait, settings.retry_max_wait),
        "before_sleep": before_sleep,
        "reraise": True,
    }


def _gave_up(error: FluxReduxError, settings: FluxReduxSettings) -> FluxReduxError:
    if isinstance(error, FluxReduxTransportError) and error.retryable and settings.max_retries > 0:
        return FluxReduxTransportError(
            f"gave up after {settings.max_retries + 1} tries: {error}",
            request_id=error.request_id,
            status_code=error.status_code,
        )
    return error


class _FluxReduxHookBase(BaseHook):
    """Connection handling shared by the sync and the async hook."""

    conn_name_attr = "flux_redux_conn_id"
    default_conn_name = "flux_redux_default"
    conn_type = "flux_redux"
    hook_name = "FLUX Redux (fal.ai)"

    def __init__(self, flux_redux_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flux_redux_conn_id = flux_redux_conn_id
        self._settings: FluxReduxSettings | None = None

    def _use_settings(self, settings: FluxReduxSettings) -> FluxReduxSettings:
        mask_secret(settings.api_key)
        self._settings = settings
        return settings

    @staticmethod
    def _submit_request(
        settings: FluxReduxSettings, request: FluxReduxRequest | dict[str, Any], webhook_url: str | None
    ) -> dict[str, Any]:
        """Validate (before any network call) and shape the submit call."""
        payload = validate_request(request).to_payload()
        params = {"fal_webhook": webhook_url} if webhook_url else None
        return {"json": payload, "params": params, "headers": dict(settings.headers)}

    def _require_settings(self) -> FluxReduxSettings:
        if self._settings is None:
            raise FluxReduxConfigError("connection settings not loaded")
        return self._settings

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Labels for Airflow 2's connection form; Airflow 3 reads them from provider info."""
        return {"hidden_fields": HIDDEN_FIELDS, "relabeling": RELABELING, "placeholders": PLACEHOLDERS}

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Our extra fields in Airflow 2's connection form."""
        return form_widgets()


class FluxReduxHook(_FluxReduxHookBase):
    """Synchronous fal-queue calls for the worker; one pooled ``httpx.Client`` per hook.

    :param flux_redux_conn_id: The Airflow connection (type ``flux_redux``) with the base URL and key.
    """

    # Airflow 2 reads the connection form only from the registered hook class's own __dict__, not its bases'.
    get_ui_field_behaviour = _FluxReduxHookBase.__dict__["get_ui_field_behaviour"]
    get_connection_form_widgets = _FluxReduxHookBase.__dict__["get_connection_form_widgets"]

    def __init__(self, flux_redux_conn_id: str = _FluxReduxHookBase.default_conn_name, **kwargs: Any) -> None:
        super().__init__(flux_redux_conn_id=flux_redux_conn_id, **kwargs)
        self._client: httpx.Client | None = None
        self._files: httpx.Client | None = None

    @property
    def settings(self) -> FluxReduxSettings:
        if self._settings is None:
            self._use_settings(FluxReduxSettings.from_connection(self._connection()))
        return self._require_settings()

    def _connection(self) -> Connection | None:
        try:
            return self.get_connection(self.flux_redux_conn_id)
        except Exception:
            if os.environ.get("FAL_KEY") and self.flux_redux_conn_id == self.default_conn_name:
                return None
            raise

    def get_conn(self) -> httpx.Client:
        """The hook's one pooled client (keep-alive across submit, polls and result)."""
        if self._client is None or self._client.is_closed:
            self._client = httpx.Client(**_client_kwargs(self.settings))
        return self._client

    def close(self) -> None:
        for client in (self._client, self._files):
            if client is not None:
                client.close()

    def _call(self, op: str, method: str, url: str, request_id: str | None, **kwargs: Any) -> httpx.Response:
        settings = self.settings
        settings.require_trusted(url, op, request_id)
        client = self.get_conn()

        def attempt() -> httpx.Response:
            try:
                response = client.request(method, url, **kwargs)
            except httpx.HTTPError as err:
                raise _transport_error(err, op, url, request_id) from None
            _raise_for_status(response, op, request_id)
            return response

        try:
            return Retrying(**_retry_policy(settings, op, request_id, self.log))(attempt)
        except FluxReduxError as err:
            raise _gave_up(err, settings) from None

    def submit(self, request: FluxReduxRequest | dict[str, Any], *, webhook_url: str | None = None) -> QueueHandle:
        """Queue one job; at most once (see the module's retry policy). Returns the handle to follow."""
        validate_request(request)
        settings = self.settings
        call = self._submit_request(settings, request, webhook_url)
        response = self._call("submit", "POST", settings.submit_url, None, **call)
        return _model(QueueHandle, response, "submit", None)

    def status(self, handle: QueueHandle, *, logs: bool = True) -> QueueStatus:
        response = self._call("status", "GET", handle.status_url, handle.request_id, params=_logs(logs))
        return _model(QueueStatus, response, "status", handle.request_id)

    def result(self, handle: QueueHandle) -> ReduxResult:
        response = self._call("result", "GET", handle.response_url, handle.request_id)
        return _model(ReduxResult, response, "result", handle.request_id)

    def cancel(self, handle: QueueHandle) -> str:
        """Ask the queue to cancel; returns CANCELLATION_REQUESTED, ALREADY_COMPLETED or NOT_FOUND."""
        try:
            response = self._call("cancel", "PUT", handle.cancel_url, handle.request_id)
        except FluxReduxRequestRejectedError as err:
            return _cancel_outcome(err)
        return str(_json(response, "cancel", handle.request_id).get("status", "CANCELLATION_REQUESTED"))

    def wait(
        self,
        handle: QueueHandle,
        *,
        poll_interval: float = 1.0,
        deadline: float | None = None,
        on_status: Callable[[QueueStatus], None] | None = None,
    ) -> ReduxResult:
        """Poll until the job completes and return its result; cancel the job if ``deadline`` passes."""
        schedule = PollSchedule(poll_interval)
        while True:
            status = self.status(handle)
            if on_status is not None:
                on_status(status)
            if status.status is QueueState.COMPLETED:
                raise_if_failed(status, handle.request_id)
                return self.result(handle)
            delay = schedule.next_delay(status)
            if deadline is not None and time.time() + delay >= deadline:
                outcome = self.cancel(handle)
                raise FluxReduxTimeoutError(
                    f"The job did not complete before the deadline; cancel answered {outcome}.",
                    request_id=handle.request_id,
                )
            time.sleep(delay)

    def download(self, url: str, sink: BinaryIO, *, max_bytes: int) -> ImageDownload:
        """Stream one output image into ``sink``, never holding it whole; no credential is ever sent."""
        if self._files is None:
            self._files = httpx.Client(**_file_client_kwargs(self.settings))
        try:
            with self._files.stream("GET", url) as response:
                check = _DownloadCheck(url, response, max_bytes)
                for chunk in response.iter_bytes():
                    sink.write(check.chunk(chunk))
                return check.done()
        except httpx.HTTPError as err:
            raise FluxReduxTransportError(f"download of {httpx.URL(url).host} image failed: {err}") from None

    def test_connection(self) -> tuple[bool, str]:
        """Check key and host without a billable job: cancel a request id that cannot exist, no retries."""
        try:
            settings = self._use_settings(dataclasses.replace(self.settings, max_retries=0))
            outcome = self.cancel(_probe_handle(settings))
        except FluxReduxAuthError as err:
            return False, f"The key was refused: {err}"
        except FluxReduxError as err:
            return False, str(err)
        return True, f"Connected to {settings.base_url}: the queue answered ({outcome}) and accepted the key."


class FluxReduxAsyncHook(_FluxReduxHookBase):
    """The async twin for triggers: same methods, awaited; clients shared per event loop and connection."""

    async def aget_settings(self) -> FluxReduxSettings:
        if self._settings is None:
            self._settings = await self._shared_settings()
        return self._settings

    async def _shared_settings(self) -> FluxReduxSettings:
        """The connection's settings, looked up once per loop and ``SETTINGS_TTL`` for all hooks on it."""
        loop = asyncio.get_running_loop()
        per_loop = _SETTINGS_CACHE.get(loop)
        if per_loop is None:
            per_loop = _SETTINGS_CACHE[loop] = {}
        while True:
            now = time.monotonic()
            cached = per_loop.get(self.flux_redux_conn_id)
            if cached is None or cached[0] <= now:
                break
            try:
                return await asyncio.shield(cached[1])
            except asyncio.CancelledError:
                # The hook that was loading got cancelled, not this one: load again ourselves.
                if not cached[1].cancelled() or _being_cancelled():
                    raise
        future: asyncio.Future[FluxReduxSettings] = loop.create_future()
        per_loop[self.flux_redux_conn_id] = (now + SETTINGS_TTL, future)
        try:
            settings = self._use_settings(FluxReduxSettings.from_connection(await self._aconnection()))
        except asyncio.CancelledError:
            per_loop.pop(self.flux_redux_conn_id, None)
            future.cancel()
            raise
        except Exception as err:
            per_loop.pop(self.flux_redux_conn_id, None)
            future.set_exception(err)
            future.exception()  # marks it retrieved; hooks waiting on it get it through their own await
            raise
        future.set_result(settings)
        return settings

    async def _aconnection(self) -> Connection | None:
        from airflow.providers.common.compat.connection import get_async_connection

        try:
            return await get_async_connection(self.flux_redux_conn_id, hook=self)
        except Exception:
            if not (os.environ.get("FAL_KEY") and self.flux_redux_conn_id == self.default_conn_name):
                raise
            return None

    async def _call(self, op: str, method: str, url: str, request_id: str | None, **kwargs: Any) -> httpx.Response:
        settings = self._settings or await self.aget_settings()
        settings.require_trusted(url, op, request_id)
        client, in_flight = ASYNC_CLIENTS.get(settings)

        async def attempt() -> httpx.Response:
            try:
                async with in_flight:
                    response = await client.request(method, url, **kwargs)
            except httpx.HTTPError as err:
                raise _transport_error(err, op, url, request_id) from None
            _raise_for_status(response, op, request_id)
            return response

        response: httpx.Response = await self._with_retries(settings, op, request_id, attempt)
        return response

    async def _get(self, op: str, url: str, request_id: str | None) -> httpx.Response | _Reply:
        """A GET on the poll lane when ``url`` is on the connection's own origin, else through the client."""
        settings = self._settings or await self.aget_settings()
        settings.require_trusted(url, op, request_id)
        if not settings.same_origin(url):
            return await self._call(op, "GET", url, request_id)
        lane = ASYNC_CLIENTS.entry(settings).lane

        async def attempt() -> _Reply:
            try:
                reply = await lane.get(url)
            except httpx.HTTPError as err:
                raise _transport_error(err, op, url, request_id) from None
            _raise_for_status(reply, op, request_id)
            return reply

        reply: _Reply = await self._with_retries(settings, op, request_id, attempt)
        return reply

    async def _with_retries(
        self, settings: FluxReduxSettings, op: str, request_id: str | None, attempt: Callable[[], Awaitable[Any]]
    ) -> Any:
        """The first try runs bare (the common case: no retry machinery per poll); a failure replays into it."""
        try:
            return await attempt()
        except FluxReduxTransportError as err:
            if not err.retryable or settings.max_retries <= 0:
                raise _gave_up(err, settings) from None
            first: FluxReduxError | None = err
        except FluxReduxError as err:
            raise _gave_up(err, settings) from None

        async def replay() -> Any:
            nonlocal first
            if first is not None:
                error, first = first, None
                raise error
            return await attempt()

        try:
            return await AsyncRetrying(**_retry_policy(settings, op, request_id, self.log))(replay)
        except FluxReduxError as err:
            raise _gave_up(err, settings) from None

    async def submit(
        self, request: FluxReduxRequest | dict[str, Any], *, webhook_url: str | None = None
    ) -> QueueHandle:
        validate_request(request)
        settings = await self.aget_settings()
        call = self._submit_request(settings, request, webhook_url)
        response = await self._call("submit", "POST", settings.submit_url, None, **call)
        return _model(QueueHandle, response, "submit", None)

    async def status(self, handle: QueueHandle, *, logs: bool = True) -> QueueStatus:
        response = await self._get("status", _with_logs(handle.status_url, logs), handle.request_id)
        return _model(QueueStatus, response, "status", handle.request_id)

    async def result(self, handle: QueueHandle) -> ReduxResult:
        response = await self._get("result", handle.response_url, handle.request_id)
        return _model(ReduxResult, response, "result", handle.request_id)

    async def cancel(self, handle: QueueHandle) -> str:
        try:
            response = await self._call("cancel", "PUT", handle.cancel_url, handle.request_id)
        except FluxReduxRequestRejectedError as err:
            return _cancel_outcome(err)
        return str(_json(response, "cancel", handle.request_id).get("status", "CANCELLATION_REQUESTED"))

    async def stream(
        self, handle: QueueHandle, *, logs: bool = True, fallback_when_busy: bool = False
    ) -> AsyncIterator[QueueStatus]:
        """Status updates from ``{status_url}/stream`` (Server-Sent Events), ending after COMPLETED.

        Raises :class:`StreamUnsupportedError` when the server does not serve the stream, so the
        caller can fall back to polling; with ``fallback_when_busy`` also when the stream would need one more
        HTTP/1.1 connection past ``MAX_HTTP1_STREAMS`` (HTTP/2 streams share connections and never are).
        """
        from httpx_sse import EventSource

        settings = self._settings or await self.aget_settings()
        url = f"{handle.status_url.split('?')[0].rstrip('/')}/stream"
        settings.require_trusted(url, "status stream", handle.request_id)
        try:
            async with self._open_stream(settings, _with_logs(url, logs), fallback_when_busy) as response:
                code = response.status_code
                # A gateway without the stream answers some 4xx or 501; 401 and 429 mean what they say.
                if (
                    (400 <= code < 500 and code not in (401, 403, 408, 429))
                    or code == 501
                    or (
                        response.status_code < 300
                        and "text/event-stream" not in response.headers.get("content-type", "")
                    )
                ):
                    raise StreamUnsupportedError(f"HTTP {response.status_code}", request_id=handle.request_id)
                if response.status_code >= 300:
                    await response.aread()
                    _raise_for_status(response, "status stream", handle.request_id)
                async for event in EventSource(response).aiter_sse():
                    if not event.data:
                        continue
                    try:
                        status = QueueStatus.model_validate_json(event.data)
                    except ValidationError as err:
                        raise FluxReduxProtocolError(
                            f"status stream sent an event that is not a queue status: {err.errors()[0]['msg']}",
                            request_id=handle.request_id,
                        ) from None
                    yield status
                    if status.status is QueueState.COMPLETED:
                        return
        except httpx.HTTPError as err:
            raise _transport_error(err, "status stream", url, handle.request_id) from None

    @contextlib.asynccontextmanager
    async def _open_stream(
        self, settings: FluxReduxSettings, url: str, fallback_when_busy: bool = False
    ) -> AsyncIterator[httpx.Response]:
        """The stream's response, on a connection of its own to our origin (else through the client).

        A stream holds its HTTP/1.1 connection for the whole wait: through the client's pool, the streams
        past its connection limit would queue behind the others for the length of a job.
        """
        if not settings.same_origin(url):
            client, _ = ASYNC_CLIENTS.get(settings)
            timeout = httpx.Timeout(settings.timeout, read=max(60.0, settings.timeout))
            async with client.stream("GET", url, headers={"Accept": "text/event-stream"}, timeout=timeout) as response:
                yield response
            return
        lane = ASYNC_CLIENTS.entry(settings).lane
        try:
            async with lane.stream(url, max(60.0, settings.timeout), limit_http1=fallback_when_busy) as response:
                yield response
        except StreamsBusyError as err:
            raise StreamUnsupportedError(f'{err}; the connection extra "http2": true multiplexes streams') from None

    async def wait(
        self,
        handle: QueueHandle,
        *,
        poll_interval: float = 1.0,
        deadline: float | None = None,
        on_status: Callable[[QueueStatus], None] | None = None,
    ) -> ReduxResult:
        schedule = PollSchedule(poll_interval)
        while True:
            status = await self.status(handle)
            if on_status is not None:
                on_status(status)
            if status.status is QueueState.COMPLETED:
                raise_if_failed(status, handle.request_id)
                return await self.result(handle)
            delay = schedule.next_delay(status)
            if deadline is not None and time.time() + delay >= deadline:
                outcome = await self.cancel(handle)
                raise FluxReduxTimeoutError(
                    f"The job did not complete before the deadline; cancel answered {outcome}.",
                    request_id=handle.request_id,
                )
            await asyncio.sleep(delay)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class StreamUnsupportedError(FluxReduxError):
    """The server does not serve the status stream; poll instead."""


# -- helpers shared by both twins -----------------------------------------------------------------------


def _logs(logs: bool) -> dict[str, str] | None:
    return {"logs": "1"} if logs else None


def _with_logs(url: str, logs: bool) -> str:
    if not logs:
        return url
    return f"{url}&logs=1" if "?" in url else f"{url}?logs=1"


def _cancel_outcome(err: FluxReduxRequestRejectedError) -> str:
    if err.status_code == 400:
        return "ALREADY_COMPLETED"
    if err.status_code == 404:
        return "NOT_FOUND"
    raise err


def raise_if_failed(status: QueueStatus, request_id: str) -> None:
    """A COMPLETED status with an error is a failed job: raise with fal's error type and message."""
    if status.failed:
        error_class = FluxReduxCancelledError if status.error_type == "client_cancelled" else FluxReduxJobFailedError
        raise error_class(
            f"The job failed: {status.error_type or 'error'}: {status.error or 'no detail'}",
            error_type=status.error_type,
            request_id=request_id,
        )


class PollSchedule:
    """Adaptive polling: fast at first, slower while far back in the queue, reset on a state change."""

    def __init__(self, interval: float) -> None:
        self.interval = max(0.05, interval)
        self._state: QueueState | None = None
        self._polls_in_state = 0

    def next_delay(self, status: QueueStatus) -> float:
        if status.status is not self._state:
            self._state = status.status
            self._polls_in_state = 0
        self._polls_in_state += 1
        delay = self.interval
        if status.status is QueueState.IN_QUEUE and (status.queue_position or 0) > 10:
            delay = min(self.interval * 4, self.interval + 0.5 * (status.queue_position or 0))
        elif self._polls_in_state <= 2:
            delay = min(self.interval, 0.25)
        # Jitter only shortens the wait: waiters started together drift apart instead of polling in bursts,
        # and the interval stays an upper bound on how late a change is seen.
        return delay * random.uniform(0.9, 1.0)


@dataclass
class ImageDownload:
    bytes_written: int
    content_type: str


_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


class _DownloadCheck:
    """Caps the size and checks the type of a downloaded image while it streams."""

    def __init__(self, url: str, response: httpx.Response, max_bytes: int) -> None:
        self.url = url
        self.max_bytes = max_bytes
        self.written = 0
        self.content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.status_code != 200:
            raise FluxReduxTransportError(
                f"image download from {response.url.host} answered HTTP {response.status_code}"
            )
        if self.content_type not in _IMAGE_TYPES:
            raise FluxReduxProtocolError(
                f"image download from {response.url.host} sent Content-Type {self.content_type or 'none'!r}; "
                f"expected one of {', '.join(_IMAGE_TYPES)}"
            )
        try:
            declared = int(response.headers.get("content-length") or 0)
        except ValueError:
            declared = 0  # a bad header; the streamed byte count still enforces the cap
        if declared > max_bytes:
            raise FluxReduxProtocolError(f"image at {response.url.host} is {declared} bytes; the cap is {max_bytes}")

    def chunk(self, data: bytes) -> bytes:
        self.written += len(data)
        if self.written > self.max_bytes:
            raise FluxReduxProtocolError(f"image download passed the cap of {self.max_bytes} bytes; stopped")
        return data

    def done(self) -> ImageDownload:
        return ImageDownload(bytes_written=self.written, content_type=self.content_type)


def _file_client_kwargs(settings: FluxReduxSettings) -> dict[str, Any]:
    # No auth at all: images live on a CDN; redirects are followed and carry nothing secret.
    return {
        "timeout": httpx.Timeout(max(60.0, settings.timeout), connect=10.0),
        "follow_redirects": True,
        "max_redirects": 5,
        "verify": _ssl_context(),
        "headers": {"User-Agent": "airflow-flux-redux"},
    }


_PROBE_ID = "00000000-0000-0000-0000-airflow-probe"


def _probe_handle(settings: FluxReduxSettings) -> QueueHandle:
    """A request id that cannot exist, under the configured app: cancelling it costs nothing."""
    app = "/".join(settings.endpoint.split("/")[:2])
    base = f"{settings.base_url}/{app}/requests/{_PROBE_ID}"
    return QueueHandle(
        request_id=_PROBE_ID, status_url=f"{base}/status", response_url=base, cancel_url=f"{base}/cancel"
    )


POSITION_LOG_INTERVAL = 10.0


class StatusReporter:
    """Log what changed between statuses: state, queue position, and fal's new log lines.

    Logs only on change (the queue position at most every POSITION_LOG_INTERVAL seconds), so thousands of
    waits do not flood the triggerer's log.
    """

    def __init__(self, log: Any, request_id: str, *, forward_logs: bool = True) -> None:
        self.log = log
        self.request_id = request_id
        self.forward_logs = forward_logs
        self._state: QueueState | None = None
        self._position: int | None = None
        self._position_logged = 0.0
        self._seen_logs = 0

    def __call__(self, status: QueueStatus) -> None:
        if status.status is not self._state:
            self._state = status.status
            self.log.info("fal request %s is %s", self.request_id, status.status.value)
        if (
            status.status is QueueState.IN_QUEUE
            and status.queue_position != self._position
            and (self._position is None or time.monotonic() >= self._position_logged + POSITION_LOG_INTERVAL)
        ):
            # In a long queue the position changes at every poll: one line per interval, not one per poll.
            self._position = status.queue_position
            self._position_logged = time.monotonic()
            self.log.info("fal request %s: queue position %s", self.request_id, status.queue_position)
        if self.forward_logs and status.logs and len(status.logs) > self._seen_logs:
            for entry in status.logs[self._seen_logs :]:
                self.log.info("fal: %s", entry.message)
            self._seen_logs = len(status.logs)
