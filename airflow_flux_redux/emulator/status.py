"""``GET .../requests/{id}/status`` and its SSE twin ``/status/stream``: the hot path of the benchmarks.

The status route does no validation and mostly concatenates precomputed bytes (``Job.status_body``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from airflow_flux_redux.emulator import faults
from airflow_flux_redux.emulator.lookup import job_for
from airflow_flux_redux.emulator.results import resolve
from airflow_flux_redux.models import QueueState

if TYPE_CHECKING:
    from airflow_flux_redux.emulator.call import Call
    from airflow_flux_redux.emulator.jobs import Job
    from airflow_flux_redux.emulator.state import EmulatorState


async def _status_of(state: EmulatorState, job: Job, logs: bool) -> tuple[int, bytes]:
    now = time.monotonic()
    current = job.state(now)
    if current is QueueState.IN_QUEUE:
        return job.status_body(now, logs, state.table.queue_position(job, now))
    await resolve(state, job, wait=current is QueueState.COMPLETED)
    return job.status_body(now, logs, 0)


async def status(state: EmulatorState, call: Call, prefix: str, job_id: str) -> None:
    job = await job_for(state, call, "status", prefix, job_id, faults.STATUS_KINDS)
    if job is None:
        return
    job.status_polls += 1
    code, body = await _status_of(state, job, call.flag("logs"))
    await call.reply(code, body)


async def stream(state: EmulatorState, call: Call, prefix: str, job_id: str) -> None:
    if state.config.relay:  # relays do not serve fal's status stream
        await call.json(404, {"detail": "Not Found"})
        return
    job = await job_for(state, call, "stream", prefix, job_id, faults.STATUS_KINDS)
    if job is None:
        return
    job.stream_opens += 1
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await call.send({"type": "http.response.start", "status": 200, "headers": headers})
    if job.wakeup is None:
        job.wakeup = asyncio.Event()
    disconnected = asyncio.ensure_future(call.wait_for_disconnect())
    state.streams_open += 1
    state.streams_open_peak = max(state.streams_open_peak, state.streams_open)
    try:
        await _events(state, call, job, disconnected)
    finally:
        state.streams_open -= 1
        disconnected.cancel()


async def _events(state: EmulatorState, call: Call, job: Job, disconnected: asyncio.Future[None]) -> None:
    """Send an event per change and a keep-alive comment when idle; sleep until the next known change.

    A cancel (of this job, or of one ahead of it that moves it up) wakes the stream early.
    """
    logs, keepalive = call.flag("logs"), state.config.keepalive_seconds
    last, keepalive_at = b"", time.monotonic() + keepalive
    assert job.wakeup is not None
    while True:
        code, body = await _status_of(state, job, logs)
        if body != last:
            await call.send({"type": "http.response.body", "body": b"data: %s\n\n" % body, "more_body": True})
            last = body
        if code == 200:
            await call.send({"type": "http.response.body", "body": b""})
            return
        now = time.monotonic()
        if now >= keepalive_at:
            await call.send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
            keepalive_at = now + keepalive
        wake_at = min(job.next_change(now, logs, state.table.next_start(job, now)), keepalive_at)
        woken = asyncio.ensure_future(job.wakeup.wait())
        waiters: set[asyncio.Future[Any]] = {disconnected, woken}
        try:
            done, _ = await asyncio.wait(waiters, timeout=max(0.0, wake_at - now), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if disconnected in done:
            return
        job.wakeup.clear()  # every stream's waiter was woken when it was set; wait for the next change
