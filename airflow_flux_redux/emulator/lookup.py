"""The start of every route under ``requests/{id}``: check the key, fire faults, find the job or answer 404."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_flux_redux.emulator import faults
from airflow_flux_redux.emulator.auth import gate
from airflow_flux_redux.emulator.jobs import NOT_FOUND

if TYPE_CHECKING:
    from collections.abc import Collection

    from airflow_flux_redux.emulator.call import Call
    from airflow_flux_redux.emulator.jobs import Job
    from airflow_flux_redux.emulator.state import EmulatorState


async def job_for(
    state: EmulatorState,
    call: Call,
    route: str,
    prefix: str,
    job_id: str,
    kinds: Collection[str] = faults.ANYWHERE,
    not_found: bytes = NOT_FOUND,
) -> Job | None:
    """The job the request is about, or None once the request has been answered (401, a fault, 404)."""
    if not await gate(state, call, route, job_id):
        return None
    if await faults.fire(state, call, route, kinds, job_id):
        return None
    job = state.find(prefix, job_id)
    if job is None:
        await call.reply(404, not_found)
    return job
