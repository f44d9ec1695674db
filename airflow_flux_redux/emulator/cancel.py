"""``PUT .../requests/{id}/cancel``: 202 CANCELLATION_REQUESTED, 400 ALREADY_COMPLETED or 404 NOT_FOUND."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from airflow_flux_redux.emulator.jobs import CANCELLED, dumps
from airflow_flux_redux.emulator.lookup import job_for
from airflow_flux_redux.models import QueueState

if TYPE_CHECKING:
    from airflow_flux_redux.emulator.call import Call
    from airflow_flux_redux.emulator.state import EmulatorState


async def cancel(state: EmulatorState, call: Call, prefix: str, job_id: str) -> None:
    job = await job_for(state, call, "cancel", prefix, job_id, not_found=dumps({"status": "NOT_FOUND"}))
    if job is None:
        return
    job.cancels += 1
    now = time.monotonic()
    if job.state(now) is QueueState.COMPLETED:
        await call.json(400, {"status": "ALREADY_COMPLETED"})
        return
    queued_from = job.start_at
    job.end_now(now, CANCELLED)
    state.table.ended_early(job, now, queued_from, state.config.concurrency_limit)
    await call.json(202, {"status": "CANCELLATION_REQUESTED"})
