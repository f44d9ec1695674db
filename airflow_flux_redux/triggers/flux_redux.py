"""FluxReduxTrigger: waits for a queued Redux job in the triggerer, so no worker slot is held."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, Literal

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_flux_redux.exceptions import (
    FluxReduxCancelledError,
    FluxReduxError,
    FluxReduxJobFailedError,
    FluxReduxProtocolError,
    FluxReduxTimeoutError,
    FluxReduxTransportError,
)
from airflow_flux_redux.hooks.flux_redux import (
    FluxReduxAsyncHook,
    PollSchedule,
    StatusReporter,
    StreamUnsupportedError,
    raise_if_failed,
)
from airflow_flux_redux.models import QueueHandle, QueueState, QueueStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WaitMode = Literal["poll", "stream", "auto"]
EventStatus = Literal["success", "failed", "cancelled", "timeout", "error"]
# A result this large stays out of the event (it is stored in the metadata DB); the worker fetches it.
MAX_EVENT_RESULT_BYTES = 64 * 1024
# on_kill's work outlives a re-cancelled on_kill; keep a reference so it is not garbage-collected.
_KILL_TASKS: set[asyncio.Future[None]] = set()


def event_payload(
    status: EventStatus,
    handle: QueueHandle,
    message: str,
    *,
    error_type: str | None = None,
    metrics: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one shape of every event: all the resume needs, since ``airflow dags test`` drops defer kwargs."""
    return {
        "status": status,
        "request_id": handle.request_id,
        "status_url": handle.status_url,
        "response_url": handle.response_url,
        "cancel_url": handle.cancel_url,
        "message": message,
        "error_type": error_type,
        "metrics": metrics or {},
        "result": result,
    }


class FluxReduxTrigger(BaseTrigger):
    """Wait for one fal queue request to finish and fire exactly one event.

    Its kwargs are JSON primitives with no secret (they are stored in plain text); the key is read from
    the connection inside the triggerer. Re-created after a triggerer restart, it resumes the same request
    with the same absolute deadline.

    :param request_id: The fal request id.
    :param status_url: The status URL submit returned.
    :param response_url: The result URL submit returned.
    :param cancel_url: The cancel URL submit returned.
    :param deadline: Absolute wall-clock deadline (epoch seconds); the job is cancelled when it passes.
    :param flux_redux_conn_id: The Airflow connection to use.
    :param poll_interval: Seconds between status polls (adaptive around this value).
    :param wait_mode: ``auto`` (the default: the status stream, polling where it is not served or where it
        would need one more HTTP/1.1 connection past ``MAX_HTTP1_STREAMS``), ``stream`` (Server-Sent Events
        only) or ``poll``. The stream sees a change within milliseconds and costs less per job than polling
        (see benchmarks/README.md).
    :param forward_logs: Log queue position changes and fal's log lines (they show in the task log).
    :param cancel_on_kill: Cancel the remote job when a user marks the deferred task failed/success or clears it.
    :param max_consecutive_errors: Transient failures (after the hook's own retries) tolerated in a row.
    """

    def __init__(
        self,
        *,
        request_id: str,
        status_url: str,
        response_url: str,
        cancel_url: str,
        deadline: float,
        flux_redux_conn_id: str = "flux_redux_default",
        poll_interval: float = 1.0,
        wait_mode: WaitMode = "auto",
        forward_logs: bool = True,
        cancel_on_kill: bool = True,
        max_consecutive_errors: int = 5,
    ) -> None:
        super().__init__()
        self.request_id = request_id
        self.status_url = status_url
        self.response_url = response_url
        self.cancel_url = cancel_url
        self.deadline = float(deadline)
        self.flux_redux_conn_id = flux_redux_conn_id
        self.poll_interval = float(poll_interval)
        self.wait_mode: WaitMode = wait_mode
        self.forward_logs = forward_logs
        self.cancel_on_kill = cancel_on_kill
        self.max_consecutive_errors = max_consecutive_errors

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "request_id": self.request_id,
                "status_url": self.status_url,
                "response_url": self.response_url,
                "cancel_url": self.cancel_url,
                "deadline": self.deadline,
                "flux_redux_conn_id": self.flux_redux_conn_id,
                "poll_interval": self.poll_interval,
                "wait_mode": self.wait_mode,
                "forward_logs": self.forward_logs,
                "cancel_on_kill": self.cancel_on_kill,
                "max_consecutive_errors": self.max_consecutive_errors,
            },
        )

    @property
    def handle(self) -> QueueHandle:
        return QueueHandle(
            request_id=self.request_id,
            status_url=self.status_url,
            response_url=self.response_url,
            cancel_url=self.cancel_url,
        )

    def _hook(self) -> FluxReduxAsyncHook:
        return FluxReduxAsyncHook(flux_redux_conn_id=self.flux_redux_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        handle = self.handle
        hook = self._hook()
        try:
            final = await asyncio.wait_for(self._until_completed(hook, handle), self.deadline - time.time())
        except TimeoutError:
            yield TriggerEvent(await self._expire(hook, handle))
            return
        except FluxReduxError as err:
            yield TriggerEvent(event_payload("error", handle, str(err)))
            return
        except Exception as err:
            # Never die without an event: the task would wait for nothing until someone notices.
            self.log.exception("Unexpected error waiting on %s", handle.request_id)
            yield TriggerEvent(event_payload("error", handle, f"{type(err).__name__} while waiting: {err}"))
            return
        yield TriggerEvent(await self._finish(hook, handle, final))

    async def _until_completed(self, hook: FluxReduxAsyncHook, handle: QueueHandle) -> QueueStatus:
        """The COMPLETED status, by stream or by polling; transient failures tolerated up to a bound."""
        report = StatusReporter(self.log, handle.request_id, forward_logs=self.forward_logs)
        errors = 0
        use_stream = self.wait_mode in ("stream", "auto")
        schedule = PollSchedule(self.poll_interval)
        while True:
            try:
                if use_stream:
                    stream = hook.stream(handle, logs=self.forward_logs, fallback_when_busy=self.wait_mode == "auto")
                    async for status in stream:
                        errors = 0
                        report(status)
                        if status.status is QueueState.COMPLETED:
                            return status
                    raise FluxReduxProtocolError("status stream closed before COMPLETED", request_id=handle.request_id)
                status = await hook.status(handle, logs=self.forward_logs)
                errors = 0
                report(status)
                if status.status is QueueState.COMPLETED:
                    return status
                await asyncio.sleep(schedule.next_delay(status))
            except (FluxReduxTransportError, FluxReduxProtocolError, StreamUnsupportedError) as err:
                if isinstance(err, StreamUnsupportedError) and self.wait_mode == "auto":
                    self.log.info("Not streaming the status (%s); polling instead.", err)
                    use_stream = False
                    continue
                errors += 1
                if errors > self.max_consecutive_errors:
                    raise
                self.log.warning(
                    "Waiting on %s: %s (%d of %d tolerated)",
                    handle.request_id,
                    err,
                    errors,
                    self.max_consecutive_errors,
                )
                await asyncio.sleep(min(30.0, self.poll_interval * 2**errors))

    async def _finish(self, hook: FluxReduxAsyncHook, handle: QueueHandle, final: QueueStatus) -> dict[str, Any]:
        """Turn the COMPLETED status into the event; fetch the result now, since it may expire in minutes."""
        try:
            raise_if_failed(final, handle.request_id)
            result = await hook.result(handle)
        except FluxReduxCancelledError as err:
            return event_payload("cancelled", handle, str(err), error_type=err.error_type, metrics=final.metrics)
        except FluxReduxJobFailedError as err:
            return event_payload("failed", handle, str(err), error_type=err.error_type, metrics=final.metrics)
        except FluxReduxTransportError as err:
            # The job succeeded; the worker fetches the result itself rather than failing a paid job.
            message = f"Request {handle.request_id} completed; its result could not be fetched here ({err})."
            return event_payload("success", handle, message, metrics=final.metrics)
        except FluxReduxError as err:
            return event_payload("error", handle, str(err), metrics=final.metrics)
        body = result.model_dump(mode="json")
        fits = len(json.dumps(body)) <= MAX_EVENT_RESULT_BYTES
        message = f"Request {handle.request_id} completed with {len(result.images)} image(s)."
        return event_payload("success", handle, message, metrics=final.metrics, result=body if fits else None)

    async def _expire(self, hook: FluxReduxAsyncHook, handle: QueueHandle) -> dict[str, Any]:
        try:
            outcome = await hook.cancel(handle)
            if outcome == "ALREADY_COMPLETED":
                # It finished as the deadline passed: a paid result, not a timeout.
                status = await hook.status(handle, logs=False)
                if status.status is QueueState.COMPLETED:
                    return await self._finish(hook, handle, status)
        except FluxReduxError as err:
            outcome = f"cancel failed: {err}"
        error = FluxReduxTimeoutError(
            f"The job did not complete before the deadline; the remote job was asked to cancel ({outcome}).",
            request_id=handle.request_id,
        )
        self.log.warning("%s", error)
        return event_payload("timeout", handle, str(error))

    async def on_kill(self) -> None:
        """Cancel the remote job when a user really stopped the task (not when a stale triggerer woke up).

        Airflow 3.3 cancels the trigger again on every runner loop (about 1 s) until it has finished, which
        also interrupts ``on_kill`` (Airflow swallows that): the work runs as its own task, shielded.
        """
        if not self.cancel_on_kill:
            return
        work = asyncio.ensure_future(self._cancel_unless_still_deferred())
        _KILL_TASKS.add(work)
        work.add_done_callback(_KILL_TASKS.discard)
        await asyncio.shield(work)

    async def _cancel_unless_still_deferred(self) -> None:
        if not await self._task_left_deferred():
            self.log.info("The task is still deferred elsewhere; not cancelling %s.", self.request_id)
            return
        try:
            outcome = await self._hook().cancel(self.handle)
        except FluxReduxError as err:
            self.log.warning("Could not cancel %s: %s", self.request_id, err)
            return
        self.log.info("Cancelled fal request %s on task kill: %s", self.request_id, outcome)

    async def _task_left_deferred(self) -> bool:
        """True unless the task instance is still ``deferred`` (then another triggerer runs this trigger)."""
        ti = self.task_instance
        if ti is None:
            return True
        from asgiref.sync import sync_to_async

        from airflow_flux_redux.version_compat import task_state

        try:
            state = await sync_to_async(task_state)(ti)
        except Exception as err:
            self.log.warning("Could not read the task's state (%s); not cancelling %s.", err, self.request_id)
            return False
        return state != "deferred"
