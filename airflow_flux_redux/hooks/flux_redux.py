"""FluxReduxHook and FluxReduxAsyncHook: an Airflow connection turned into fal-queue calls, sync and async.

The two twins have the same methods: ``submit``, ``status``, ``result``, ``cancel``, ``follow`` and
``wait`` (and ``stream`` on the async one). What they share lives in modules of its own: the settings
(``_settings``), reading answers (``_answers``), the retry policy (``_retry``), the status stream
(``_stream``), image downloads (``_downloads``), the async transport (``_transport``) and the wait policy
(``airflow_flux_redux.wait``). The operator and the trigger compose these calls; they never build URLs or
parse JSON themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any, BinaryIO

import httpx
from airflow.providers.common.compat.sdk import BaseHook, mask_secret

from airflow_flux_redux.connection_form import HIDDEN_FIELDS, PLACEHOLDERS, RELABELING, form_widgets
from airflow_flux_redux.exceptions import (
    FluxReduxAuthError,
    FluxReduxConfigError,
    FluxReduxError,
    FluxReduxProtocolError,
    FluxReduxRequestRejectedError,
    FluxReduxTransportError,
)
from airflow_flux_redux.hooks._answers import (
    billable_units,
    cancel_outcome,
    cancel_status,
    raise_for_status,
    read_model,
    transport_error,
    with_logs,
)
from airflow_flux_redux.hooks._downloads import DownloadCheck, ImageDownload
from airflow_flux_redux.hooks._proxy import proxy_password
from airflow_flux_redux.hooks._retry import acall_with_retries, call_with_retries
from airflow_flux_redux.hooks._settings import _SETTINGS_CACHE, SETTINGS_TTL, FluxReduxSettings
from airflow_flux_redux.hooks._settings import DEFAULT_BASE_URL as DEFAULT_BASE_URL
from airflow_flux_redux.hooks._stream import open_stream, read_statuses, settle_probe, stream_probe, stream_url
from airflow_flux_redux.hooks._transport import (
    ASYNC_CLIENTS,
    TRANSPORT_ERRORS,
    Reply,
    files_client,
    send_within,
    sync_client,
)
from airflow_flux_redux.models import (
    FluxReduxRequest,
    QueueHandle,
    QueueStatus,
    ReduxResult,
    validate_request,
)
from airflow_flux_redux.wait import TOLERATED, StreamUnsupportedError, WaitMode, WaitPolicy, raise_if_failed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractAsyncContextManager

    from airflow.providers.common.compat.sdk import Connection

    from airflow_flux_redux.hooks._answers import Answer

__all__ = ["DEFAULT_BASE_URL", "FluxReduxAsyncHook", "FluxReduxHook", "FluxReduxSettings"]


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

    def use_settings(self, settings: FluxReduxSettings) -> FluxReduxSettings:
        """Use these settings instead of reading the connection (a worker's async wait reuses its sync hook's)."""
        mask_secret(settings.api_key)
        for url in (settings.proxy, *dict(settings.environment_proxies).values()):
            if password := proxy_password(url):
                mask_secret(password)
        self._settings = settings
        return settings

    def _no_connection(self, err: Exception) -> Connection | None:
        """Without the connection, ``FAL_KEY`` alone means fal.ai (default conn id only); else say both ways."""
        if os.environ.get("FAL_KEY") and self.flux_redux_conn_id == self.default_conn_name:
            return None
        raise FluxReduxConfigError(
            f"No Airflow connection {self.flux_redux_conn_id!r} ({type(err).__name__}). Create it with type "
            f"flux_redux (host = your gateway's base URL, empty for fal.ai; password = the key). Without any "
            f"connection, the FAL_KEY environment variable alone also works, for the default conn id "
            f"{self.default_conn_name!r} only, and then every job goes to fal.ai ({DEFAULT_BASE_URL})."
        ) from err

    def _submit_call(
        self, settings: FluxReduxSettings, request: FluxReduxRequest | dict[str, Any], webhook_url: str | None
    ) -> dict[str, Any]:
        """Validate (before any network call) and shape the submit call: body, fal's headers and query options."""
        valid = validate_request(request)
        if valid.sync_mode and settings.store_io_off:
            self.log.warning(
                "sync_mode puts the images inside the result, and with store_io off fal may keep a result that "
                "large only minutes: fetch it promptly, or turn store_io on (connection extra) or sync_mode off."
            )
        params = dict(settings.submit_params)
        if webhook_url:
            params["fal_webhook"] = webhook_url
        return {"json": valid.to_payload(), "params": params or None, "headers": dict(settings.headers)}

    def _handle(self, settings: FluxReduxSettings, response: Answer) -> QueueHandle:
        """The submit answer as the handle to follow, its URLs as they will really be called."""
        handle = read_model(QueueHandle, response, "submit", None)
        return handle.model_copy(
            update={
                "status_url": settings.queue_url(handle.status_url),
                "response_url": settings.queue_url(handle.response_url),
                "cancel_url": settings.queue_url(handle.cancel_url),
            }
        )

    @staticmethod
    def _result(response: Answer, request_id: str) -> ReduxResult:
        result = read_model(ReduxResult, response, "result", request_id)
        result.billable_units = billable_units(response)
        return result

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
            conn: Connection | None
            try:
                conn = self.get_connection(self.flux_redux_conn_id)
            except Exception as err:
                conn = self._no_connection(err)
            self.use_settings(FluxReduxSettings.from_connection(conn))
        assert self._settings is not None
        return self._settings

    def get_conn(self) -> httpx.Client:
        """The hook's one pooled client (keep-alive across submit, polls and result)."""
        if self._client is None or self._client.is_closed:
            self._client = sync_client(self.settings)
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
                response = send_within(client, client.build_request(method, url, **kwargs), settings.timeout)
            except httpx.HTTPError as err:
                raise transport_error(err, op, url, request_id) from None
            raise_for_status(response, op, request_id)
            return response

        return call_with_retries(settings, op, self.log, attempt)

    def submit(self, request: FluxReduxRequest | dict[str, Any], *, webhook_url: str | None = None) -> QueueHandle:
        """Queue one job; at most once (see ``_retry``). Returns the handle to follow."""
        settings = self.settings
        call = self._submit_call(settings, request, webhook_url)
        return self._handle(settings, self._call("submit", "POST", settings.submit_url, None, **call))

    def status(self, handle: QueueHandle, *, logs: bool = True) -> QueueStatus:
        response = self._call("status", "GET", with_logs(handle.status_url, logs), handle.request_id)
        return read_model(QueueStatus, response, "status", handle.request_id)

    def result(self, handle: QueueHandle) -> ReduxResult:
        return self._result(self._call("result", "GET", handle.response_url, handle.request_id), handle.request_id)

    def cancel(self, handle: QueueHandle) -> str:
        """Ask the queue to cancel; returns CANCELLATION_REQUESTED, ALREADY_COMPLETED or NOT_FOUND."""
        try:
            return cancel_status(self._call("cancel", "PUT", handle.cancel_url, handle.request_id), handle.request_id)
        except FluxReduxRequestRejectedError as err:
            return cancel_outcome(err)

    def follow(self, handle: QueueHandle, policy: WaitPolicy) -> QueueStatus | None:
        """Poll until the job completes (its status) or the policy's window ends (None).

        Past the policy's deadline the job is cancelled; a job that completed meanwhile is returned, else
        ``FluxReduxTimeoutError`` is raised.
        """
        try:
            return self._poll_until_stop(handle, policy)
        finally:
            policy.stopped()

    def _poll_until_stop(self, handle: QueueHandle, policy: WaitPolicy) -> QueueStatus | None:
        time.sleep(policy.sleep_for(policy.first_delay()))
        while True:
            stop = policy.stop_at
            if stop is not None and time.time() >= stop:
                if policy.window_over():
                    return None
                outcome = self.cancel(handle)
                if policy.after_cancel(outcome):
                    status = self.status(handle, logs=False)
                    if policy.seen(status):
                        return status
                raise policy.timeout_error(outcome)
            try:
                status = self.status(handle, logs=policy.logs)
                if policy.seen(status):
                    return status
                delay = policy.next_delay(status)
            except TOLERATED as err:
                delay = policy.failed(err)
            time.sleep(policy.sleep_for(delay))

    def wait(
        self,
        handle: QueueHandle,
        *,
        poll_interval: float = 1.0,
        deadline: float | None = None,
        on_status: Callable[[QueueStatus], None] | None = None,
    ) -> ReduxResult:
        """Poll until the job completes and return its result (fal's error for a failed job).

        :param deadline: Absolute (epoch) time; past it the job is cancelled and ``FluxReduxTimeoutError`` raised.
        """
        policy = _wait_policy(handle, "poll", poll_interval, deadline, on_status)
        status = self.follow(handle, policy)
        assert status is not None  # no window: follow returns a status or raises
        raise_if_failed(status, handle.request_id)
        return self.result(handle)

    def download(self, url: str, sink: BinaryIO, *, max_bytes: int) -> ImageDownload:
        """Stream one output image into ``sink``, never holding it whole; no credential is ever sent."""
        if self._files is None:
            self._files = files_client(self.settings)
        try:
            with self._files.stream("GET", url) as response:
                check = DownloadCheck(response, max_bytes)
                for chunk in response.iter_bytes():
                    sink.write(check.chunk(chunk))
                return check.done()
        except httpx.HTTPError as err:
            raise FluxReduxTransportError(f"download of {httpx.URL(url).host} image failed: {err}") from None

    def test_connection(self) -> tuple[bool, str]:
        """Check key and host without a billable job: cancel a request id that cannot exist, no retries."""
        try:
            settings = self.use_settings(dataclasses.replace(self.settings, max_retries=0))
            outcome = self.cancel(_probe_handle(settings))
        except FluxReduxAuthError as err:
            return False, f"The key was refused: {err}"
        except FluxReduxError as err:
            return False, str(err)
        return True, f"Connected to {settings.base_url}: the queue answered ({outcome}) and accepted the key."


class FluxReduxAsyncHook(_FluxReduxHookBase):
    """The async twin for triggers: same methods, awaited; clients shared per event loop and connection."""

    @staticmethod
    async def aclose_loop_clients() -> None:
        """Close the running loop's pooled clients now; they also close by themselves when their last user
        (a call, a wait, a trigger's run: ``loop_clients_in_use``) is done."""
        await ASYNC_CLIENTS.aclose()

    @staticmethod
    def loop_clients_in_use() -> AbstractAsyncContextManager[None]:
        """Keep the running loop's pooled clients open for a stretch of work (a trigger's run); they close
        when the loop's last user leaves."""
        return ASYNC_CLIENTS.in_use()

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
            settings = self.use_settings(FluxReduxSettings.from_connection(await self._aconnection()))
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
        except Exception as err:
            return self._no_connection(err)

    async def _call(self, op: str, method: str, url: str, request_id: str | None, **kwargs: Any) -> httpx.Response:
        settings = self._settings or await self.aget_settings()
        settings.require_trusted(url, op, request_id)

        async def attempt() -> httpx.Response:
            client, in_flight = ASYNC_CLIENTS.get(settings)
            try:
                async with in_flight, asyncio.timeout(settings.timeout):
                    response = await client.request(method, url, **kwargs)
            except (httpx.HTTPError, TimeoutError) as err:
                raise transport_error(err, op, url, request_id) from None
            raise_for_status(response, op, request_id)
            return response

        async with ASYNC_CLIENTS.in_use():
            return await acall_with_retries(settings, op, self.log, attempt)

    async def _get(self, op: str, url: str, request_id: str | None) -> httpx.Response | Reply:
        """A GET on the waits' session when ``url`` is on the connection's own origin, else through the client."""
        settings = self._settings or await self.aget_settings()
        settings.require_trusted(url, op, request_id)
        if not settings.same_origin(url):
            return await self._call(op, "GET", url, request_id)

        async def attempt() -> Reply:
            try:
                reply = await ASYNC_CLIENTS.entry(settings).waits.get(url)
            except TRANSPORT_ERRORS as err:
                raise transport_error(err, op, url, request_id) from None
            raise_for_status(reply, op, request_id)
            return reply

        async with ASYNC_CLIENTS.in_use():
            return await acall_with_retries(settings, op, self.log, attempt)

    async def submit(
        self, request: FluxReduxRequest | dict[str, Any], *, webhook_url: str | None = None
    ) -> QueueHandle:
        settings = await self.aget_settings()
        call = self._submit_call(settings, request, webhook_url)
        return self._handle(settings, await self._call("submit", "POST", settings.submit_url, None, **call))

    async def status(self, handle: QueueHandle, *, logs: bool = True) -> QueueStatus:
        response = await self._get("status", with_logs(handle.status_url, logs), handle.request_id)
        return read_model(QueueStatus, response, "status", handle.request_id)

    async def result(self, handle: QueueHandle) -> ReduxResult:
        response = await self._get("result", handle.response_url, handle.request_id)
        return self._result(response, handle.request_id)

    async def cancel(self, handle: QueueHandle) -> str:
        try:
            response = await self._call("cancel", "PUT", handle.cancel_url, handle.request_id)
        except FluxReduxRequestRejectedError as err:
            return cancel_outcome(err)
        return cancel_status(response, handle.request_id)

    async def stream(
        self, handle: QueueHandle, *, logs: bool = True, fallback_when_busy: bool = False
    ) -> AsyncIterator[QueueStatus]:
        """Status updates from ``{status_url}/stream`` (Server-Sent Events), ending after COMPLETED.

        Raises :class:`~airflow_flux_redux.wait.StreamUnsupportedError` when the server does not serve the
        stream, so the caller can fall back to polling; with ``fallback_when_busy`` also when the stream
        would need one more HTTP/1.1 connection past ``MAX_STREAMS`` (HTTP/2 streams share connections).
        """
        settings = self._settings or await self.aget_settings()
        url = stream_url(handle.status_url)
        settings.require_trusted(url, "status stream", handle.request_id)
        try:
            async with (
                ASYNC_CLIENTS.in_use(),
                open_stream(settings, with_logs(url, logs), fallback_when_busy) as response,
            ):
                async for status in read_statuses(response, handle.request_id):
                    yield status
        except TRANSPORT_ERRORS as err:
            raise transport_error(err, "status stream", url, handle.request_id) from None

    async def follow(self, handle: QueueHandle, policy: WaitPolicy) -> QueueStatus | None:
        """Follow the job (the status stream or polling, per the policy) until it completes or the window ends.

        Returns the COMPLETED status, or None when the policy's window ended first. Past the deadline the job
        is cancelled; a job that completed meanwhile is returned, else ``FluxReduxTimeoutError`` is raised.
        """
        try:
            async with ASYNC_CLIENTS.in_use():  # the pool stays open between the polls
                return await self._follow_until_stop(handle, policy)
        finally:
            policy.stopped()

    async def _follow_until_stop(self, handle: QueueHandle, policy: WaitPolicy) -> QueueStatus | None:
        stop = policy.stop_at
        try:
            async with asyncio.timeout(None if stop is None else max(0.0, stop - time.time())):
                return await self._follow(handle, policy)
        except TimeoutError:
            if stop is None or time.time() < stop:
                raise
        if policy.window_over():
            return None
        outcome = await self.cancel(handle)
        if policy.after_cancel(outcome):
            status = await self.status(handle, logs=False)
            if policy.seen(status):
                return status
        raise policy.timeout_error(outcome)

    async def _follow(self, handle: QueueHandle, policy: WaitPolicy) -> QueueStatus | None:
        """Polls, and the stream once the policy says the job is near the head of its queue or running."""
        await asyncio.sleep(policy.sleep_for(policy.first_delay()))
        while True:
            try:
                if policy.stream_now():
                    probe = await stream_probe(policy)
                    if policy.use_stream:
                        return await self._follow_stream(handle, policy, probe)
                    delay = 0.0  # another wait found no stream here: poll now, at this wait's own pace
                else:
                    status = await self.status(handle, logs=policy.logs)
                    if policy.seen(status):
                        return status
                    if policy.window_over():
                        return None  # the queue says the job cannot end within the window: leave now
                    delay = policy.next_delay(status)
            except TOLERATED as err:
                delay = policy.failed(err)
            await asyncio.sleep(policy.sleep_for(delay))

    async def _follow_stream(
        self, handle: QueueHandle, policy: WaitPolicy, probe: asyncio.Future[bool | None] | None
    ) -> QueueStatus | None:
        """The stream until COMPLETED; when this wait probes its origin, tell the others what it found."""
        try:
            async for status in self.stream(handle, logs=policy.logs, fallback_when_busy=policy.mode == "auto"):
                if probe is not None and not probe.done():
                    policy.stream_served()
                    settle_probe(policy.origin, probe, True)
                if policy.seen(status):
                    return status
                if policy.window_over():
                    return None
            raise FluxReduxProtocolError("status stream closed before COMPLETED", request_id=handle.request_id)
        except StreamUnsupportedError as err:
            if probe is not None and not err.busy:
                settle_probe(policy.origin, probe, False)
            raise
        finally:
            if probe is not None:
                settle_probe(policy.origin, probe, None)  # nothing learnt (an error, a cancel): the next wait probes

    async def wait(
        self,
        handle: QueueHandle,
        *,
        poll_interval: float = 1.0,
        deadline: float | None = None,
        on_status: Callable[[QueueStatus], None] | None = None,
        mode: WaitMode = "auto",
    ) -> ReduxResult:
        policy = _wait_policy(handle, mode, poll_interval, deadline, on_status)
        status = await self.follow(handle, policy)
        assert status is not None  # no window: follow returns a status or raises
        raise_if_failed(status, handle.request_id)
        return await self.result(handle)


def _wait_policy(
    handle: QueueHandle,
    mode: WaitMode,
    poll_interval: float,
    deadline: float | None,
    on_status: Callable[[QueueStatus], None] | None,
) -> WaitPolicy:
    return WaitPolicy(
        request_id=handle.request_id,
        status_url=handle.status_url,
        deadline=deadline,
        poll_interval=poll_interval,
        mode=mode,
        on_status=on_status,
    )


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


_PROBE_ID = "00000000-0000-0000-0000-airflow-probe"


def _probe_handle(settings: FluxReduxSettings) -> QueueHandle:
    """A request id that cannot exist, under the configured app: cancelling it costs nothing."""
    app = "/".join(settings.endpoint.split("/")[:2])
    base = f"{settings.base_url}/{app}/requests/{_PROBE_ID}"
    return QueueHandle(
        request_id=_PROBE_ID, status_url=f"{base}/status", response_url=base, cancel_url=f"{base}/cancel"
    )
