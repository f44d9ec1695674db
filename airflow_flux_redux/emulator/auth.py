"""The queue routes' key check: ``Authorization: Key <k>`` and/or ``Bearer <k>``, per the config."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_flux_redux.emulator.call import Call
    from airflow_flux_redux.emulator.state import EmulatorState


def authorized(state: EmulatorState, call: Call) -> bool:
    config = state.config
    scheme, _, key = call.headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    allowed = ("key", "bearer") if config.auth_scheme == "any" else (config.auth_scheme.lower(),)
    key = key.strip()
    if scheme.lower() not in allowed or not key:
        return False
    return config.key is None or hmac.compare_digest(key.encode(), config.key.encode())


def account_of(call: Call) -> str:
    """The account a request belongs to: its key (fal's concurrency limit and queue are per account)."""
    return call.headers.get(b"authorization", b"").decode("latin-1").partition(" ")[2].strip()


async def gate(state: EmulatorState, call: Call, route: str, job_id: str | None = None) -> bool:
    """Count the request and check its key; answers 401 itself and returns False when it is wrong."""
    state.by_route[route] += 1
    if authorized(state, call):
        return True
    state.auth_failures[route] += 1
    job = state.table.jobs.get(job_id) if job_id else None
    if job is not None:
        job.auth_failures += 1
    scheme = "Key or Bearer" if state.config.auth_scheme == "any" else state.config.auth_scheme
    await call.json(401, {"detail": f"Missing or invalid credentials: send 'Authorization: {scheme} <key>'"})
    return False
