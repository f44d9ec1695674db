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
    FluxReduxTimeoutError,
    FluxReduxTransportError,
)
from airflow_flux_redux.hooks.flux_redux import FluxReduxAsyncHook
from airflow_flux_redux.models import QueueHandle, QueueStatus
from airflow_flux_redux.triggers._gc import out_of_collection
from airflow_flux_redux.wait import (
    DEFAULT_MAX_POLL_INTERVAL,
    StatusReporter,
    WaitMode,
    WaitPolicy,
    raise_if_failed,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

EventStatus = Literal["success", "failed", "cancelled", "timeout", "error"]
# A result this large stays out of the event (it is stored in the metadata DB); the worker fetches it.
MAX_EVENT_RESULT_BYTES = 64 * 1024
# on_kill's work outlives a re-cancelled on_kill; keep a reference so it is not garbage-collected.
_KILL_TASKS: set[asyncio.Future[None]] = set()


def _event_status(error: FluxReduxError | None) -> EventStatus:
    if error is None:
        return "success"
    if isinstance(error, FluxReduxCancelledError):
        return "cancelled"
    if isinstance(error, FluxReduxJobFailedError):
        return "failed"
    if isinstance(error, FluxReduxTimeoutError):
        return "timeout"
    return "error"


def event_payload(
    handle: QueueHandle,
    message: str = "",
    *,
    error: FluxReduxError | None = None,
    metrics: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    input_reference: str | None = None,
) -> dict[str, Any]:
    """The one shape of every event: all the resume needs, since ``airflow dags test`` drops defer kwargs.

    ``handle`` is the queue handle's one dict shape; ``error`` is the error's ``to_dict()``, which the
    operator raises again as the same class with the same fields; ``input`` is the task's input reference.
    """
    return {
        "status": _event_status(error),
        "handle": handle.to_dict(),
        "message": str(error) if error is not None else message,
        "error": error.to_dict() if error is not None else None,
        "metrics": metrics or {},
        "result": result,
        "input": input_reference,
    }


class FluxReduxTrigger(BaseTrigger):
    """Wait for one fal queue request to finish and fire exactly one event.

    Its kwargs are JSON primitives with no secret (they are stored in plain text); the key is read from
    the connection inside the triggerer. Re-created after a triggerer restart, it resumes the same request
    with the same absolute deadline.

    :param handle: The queue handle (``QueueHandle.to_dict()``: request id and the URLs to call).
    :param deadline: Absolute wall-clock deadline (epoch seconds); the job is cancelled when it passes.
    :param flux_redux_conn_id: The Airflow connection to use.
    :param poll_interval: Seconds between status polls of a running job (the shortest delay).
    :param max_poll_interval: The longest delay between two looks at a job waiting in fal's queue: a queued
        job is looked at less often the further back it is (``airflow_flux_redux.wait``). Default 60 s.
    :param wait_mode: ``auto`` (the default: polling while the job waits deep in fal's queue, the status
        stream once it is near the head or running, where the stream is served and a connection is free),
        ``stream`` (Server-Sent Events only, for the whole wait) or ``poll``. The stream sees a change within
        milliseconds (see benchmarks/README.md).
    :param forward_logs: Log queue position changes and fal's log lines (they show in the task log).
    :param cancel_on_kill: Cancel the remote job when a user marks the deferred task failed/success or clears it.
    :param max_consecutive_errors: Transient failures (after the hook's own retries) tolerated in a row.
    :param not_before: Absolute (epoch) time before which no event fires (held, not lost): works around
        Airflow's race between a fast trigger event and the deferring worker's exit report
        (apache/airflow#72716, #71580); see ``version_compat.DEFER_EVENT_HOLD``.
    :param input_reference: The task's input as its XCom result names it (``_output.input_reference``: a
        ``data:`` URI shortened to its header), echoed in the event: a ``@task.flux_redux`` task learns its
        input from its function, which the resumed instance does not run again.
    :param queue_position: The job's position in fal's queue at the deferring worker's last look, and
    :param position_at: when (epoch seconds): the trigger's first look is planned from them (a deep-queued
        job is not polled at once), and they count as its first look at the queue's pace.
    """

    def __init__(
        self,
        *,
        handle: dict[str, Any],
        deadline: float,
        flux_redux_conn_id: str = "flux_redux_default",
        poll_interval: float = 1.0,
        wait_mode: WaitMode = "auto",
        forward_logs: bool = True,
        cancel_on_kill: bool = True,
        max_consecutive_errors: int = 5,
        not_before: float | None = None,
        input_reference: str | None = None,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        queue_position: int | None = None,
        position_at: float | None = None,
    ) -> None:
        super().__init__()
        self.handle = QueueHandle.from_dict(handle)
        self.deadline = float(deadline)
        self.flux_redux_conn_id = flux_redux_conn_id
        self.poll_interval = float(poll_interval)
        self.wait_mode: WaitMode = wait_mode
        self.forward_logs = forward_logs
        self.cancel_on_kill = cancel_on_kill
        self.max_consecutive_errors = max_consecutive_errors
        self.not_before = None if not_before is None else float(not_before)
        self.input_reference = input_reference
        self.max_poll_interval = float(max_poll_interval)
        self.queue_position = queue_position
        self.position_at = None if position_at is None else float(position_at)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "handle": self.handle.to_dict(),
                "deadline": self.deadline,
                "flux_redux_conn_id": self.flux_redux_conn_id,
                "poll_interval": self.poll_interval,
                "wait_mode": self.wait_mode,
                "forward_logs": self.forward_logs,
                "cancel_on_kill": self.cancel_on_kill,
                "max_consecutive_errors": self.max_consecutive_errors,
                "not_before": self.not_before,
                "input_reference": self.input_reference,
                "max_poll_interval": self.max_poll_interval,
                "queue_position": self.queue_position,
                "position_at": self.position_at,
            },
        )

    def _hook(self) -> FluxReduxAsyncHook:
        return FluxReduxAsyncHook(flux_redux_conn_id=self.flux_redux_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Both end before the event: the runner may leave the generator suspended. The loop's clients stay
        # open from the first look to the result, and close when the loop's last Redux trigger ends.
        async with FluxReduxAsyncHook.loop_clients_in_use():
            with out_of_collection():
                event = await self._wait()
        yield TriggerEvent(event)

    async def _wait(self) -> dict[str, Any]:
        handle = self.handle
        hook = self._hook()
        policy = WaitPolicy(
            request_id=handle.request_id,
            status_url=handle.status_url,
            deadline=self.deadline,
            poll_interval=self.poll_interval,
            mode=self.wait_mode,
            max_consecutive_errors=self.max_consecutive_errors,
            # The class's logger, not the instance's: Airflow's structlog caches an assembled logger on its first
            # use, per logger object, so thousands of waits share one instead of each assembling its own
            # (~0.1 ms, as much as a status poll). Records still reach each trigger's log (routed by context).
            on_status=StatusReporter(self.logger(), handle.request_id, forward_logs=self.forward_logs),
            logs=self.forward_logs,
            max_poll_interval=self.max_poll_interval,
        )
        if self.queue_position is not None and self.position_at is not None:
            policy.saw_before(self.queue_position, self.position_at)  # a stale one (a restarted triggerer): a look now
        try:
            final = await hook.follow(handle, policy)
            assert final is not None  # no window: a status or an error
            event = await self._finish(hook, handle, final)
        except FluxReduxError as err:
            event = event_payload(handle, error=err, input_reference=self.input_reference)
        except Exception as err:
            # Never die without an event: the task would wait for nothing until someone notices.
            self.log.exception("Unexpected error waiting on %s", handle.request_id)
            error = FluxReduxError(f"{type(err).__name__} while waiting: {err}", request_id=handle.request_id)
            event = event_payload(handle, error=error, input_reference=self.input_reference)
        await self._hold()
        return event

    async def _hold(self) -> None:
        """Fire no earlier than ``not_before`` (apache/airflow#72716): the event waits, the job is done."""
        delay = 0.0 if self.not_before is None else self.not_before - time.time()
        if delay > 0:
            self.log.info(
                "Request %s finished soon after the task deferred; holding the event %.1fs so the deferring worker "
                "has surely reported its exit first (apache/airflow#72716).",
                self.handle.request_id,
                delay,
            )
            await asyncio.sleep(delay)

    async def _finish(self, hook: FluxReduxAsyncHook, handle: QueueHandle, final: QueueStatus) -> dict[str, Any]:
        """Turn the COMPLETED status into the event; fetch the result now, since it may expire in minutes."""
        try:
            raise_if_failed(final, handle.request_id)
            result = await hook.result(handle)
        except FluxReduxTransportError as err:
            # The job succeeded; the worker fetches the result itself rather than failing a paid job.
            message = f"Request {handle.request_id} completed; its result could not be fetched here ({err})."
            return event_payload(handle, message, metrics=final.metrics, input_reference=self.input_reference)
        except FluxReduxError as err:
            return event_payload(handle, error=err, metrics=final.metrics, input_reference=self.input_reference)
        body = result.model_dump(mode="json")
        fits = len(json.dumps(body)) <= MAX_EVENT_RESULT_BYTES
        message = f"Request {handle.request_id} completed with {len(result.images)} image(s)."
        return event_payload(
            handle,
            message,
            metrics=final.metrics,
            result=body if fits else None,
            input_reference=self.input_reference,
        )

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
            self.log.info("The task is still deferred elsewhere; not cancelling %s.", self.handle.request_id)
            return
        try:
            outcome = await self._hook().cancel(self.handle)
        except FluxReduxError as err:
            self.log.warning("Could not cancel %s: %s", self.handle.request_id, err)
            return
        self.log.info("Cancelled fal request %s on task kill: %s", self.handle.request_id, outcome)

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
            self.log.warning("Could not read the task's state (%s); not cancelling %s.", err, self.handle.request_id)
            return False
        return state != "deferred"
