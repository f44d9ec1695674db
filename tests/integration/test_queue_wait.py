"""Waits against an emulator that queues like fal's account limit: deep-queued jobs, the window, the stream.

The emulator runs 2 jobs at once per key (a new fal account's limit); the jobs over it wait IN_QUEUE.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
from airflow_flux_redux.hooks.flux_redux import ASYNC_CLIENTS, FluxReduxHook
from airflow_flux_redux.operators.flux_redux import FluxReduxOperator
from airflow_flux_redux.triggers.flux_redux import FluxReduxTrigger
from airflow_flux_redux.wait import LOOK_FRACTION, fastest_start
from tests.conftest import API_KEY, connection_json, context

if TYPE_CHECKING:
    from collections.abc import Iterator

LIMIT = 2


@pytest.fixture(scope="module")
def fal_queue() -> Iterator[EmulatorServer]:
    config = EmulatorConfig(key=API_KEY, concurrency_limit=LIMIT, queue_seconds=0.0, run_seconds=1.5, log_lines=2)
    with EmulatorServer(config) as server:
        yield server


@pytest.fixture
def queue_conn(fal_queue: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    fal_queue.reset()
    fal_queue.configure(run_seconds=1.5)
    monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(fal_queue.url))
    monkeypatch.delenv("FAL_KEY", raising=False)
    return fal_queue


def fill_queue(emu: EmulatorServer, jobs: int, image_uri: str) -> None:
    """Jobs of the same account (key) submitted first: ours queues behind them."""
    with httpx.Client(base_url=emu.url, headers={"Authorization": f"Key {API_KEY}"}, timeout=10) as http:
        for _ in range(jobs):
            http.post("/fal-ai/flux-1/schnell/redux", json={"image_url": image_uri}).raise_for_status()


def test_a_deep_queued_task_defers_at_once_instead_of_holding_its_worker_slot(queue_conn, image_uri, logs) -> None:
    fill_queue(queue_conn, 60, image_uri)  # 58 queued ahead at 1.33 jobs/s: ~45 s before ours can start
    started = time.monotonic()
    with pytest.raises(TaskDeferred) as deferred:
        FluxReduxOperator(task_id="deep", image_url=image_uri).execute(context())  # defaults: defer_after=10
    held = time.monotonic() - started
    assert held <= 4.0, f"held the worker slot {held:.1f} s for a job that cannot start within the window"
    assert "deep in fal's queue (queue position" in logs()
    assert queue_conn.stats()["submissions"] == 61
    # The worker's last look goes to the trigger (its kwargs, stored in the metadata DB): the triggerer plans
    # its first look from it instead of polling the job at once.
    _, kwargs = deferred.value.trigger.serialize()
    assert 50 <= kwargs["queue_position"] <= 60
    assert time.time() - 5 <= kwargs["position_at"] <= time.time()


async def test_a_trigger_handed_a_deep_position_does_not_poll_at_once(queue_conn, image_uri) -> None:
    # 10,000 deep-queued tasks that defer together must not all poll in the triggerer's first second: the
    # deferring worker saw this job 3,000 places back, so even at the fastest pace it is a minute away.
    handle = FluxReduxHook().submit({"image_url": image_uri})
    kwargs = {"handle": handle.to_dict(), "deadline": time.time() + 120}
    deep = FluxReduxTrigger(**kwargs, queue_position=3000, position_at=time.time())
    fresh = FluxReduxTrigger(**{**kwargs, "handle": FluxReduxHook().submit({"image_url": image_uri}).to_dict()})

    async def first_event(trigger: FluxReduxTrigger) -> None:
        async for _ in trigger.run():
            return

    try:
        _, pending = await asyncio.wait([asyncio.ensure_future(first_event(t)) for t in (deep, fresh)], timeout=3.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await ASYNC_CLIENTS.aclose()
    polls = {rid: job["status_polls"] for rid, job in queue_conn.stats()["requests"].items()}
    assert polls[deep.handle.request_id] == 0
    assert polls[fresh.handle.request_id] >= 1  # no position handed on: it looks within the interval


def test_the_submits_queue_position_is_the_first_look_so_one_poll_tells_the_pace(
    queue_conn, image_uri, monkeypatch
) -> None:
    # A fresh worker knows no drain rate. Its first poll comes a whole interval after the submit (no random
    # spread here), when the queue has surely moved (0.5 s jobs, 2 at a time): with the submit's position
    # as a look, that one poll shows the pace and the job, ~100 places back (~25 s), leaves the window.
    queue_conn.configure(run_seconds=0.5)
    fill_queue(queue_conn, 100, image_uri)
    monkeypatch.setattr("airflow_flux_redux.wait.PollSchedule.first_delay", lambda self: self.interval)
    monkeypatch.setattr("airflow_flux_redux.wait._DRAIN", {})  # a fresh worker process: no pace learnt yet
    with pytest.raises(TaskDeferred) as deferred:
        FluxReduxOperator(task_id="deep", image_url=image_uri).execute(context())
    request_id = deferred.value.trigger.handle.request_id
    assert queue_conn.stats()["requests"][request_id]["status_polls"] == 1


def test_a_fresh_worker_defers_a_deep_job_before_the_look_its_position_would_plan(
    queue_conn, image_uri, monkeypatch
) -> None:
    # A busy new account (C = 2, real 1.5 s jobs) with 450 jobs queued ahead: at the fastest plausible pace the
    # job could still end within the 10 s window, so the submit's answer alone does not close it, and the
    # triggerer would first look only after half that start (~4.5 s). In the window the worker looks every
    # poll_interval instead, learns the pace and frees its slot well before that look.
    fill_queue(queue_conn, 450, image_uri)
    monkeypatch.setattr("airflow_flux_redux.wait._DRAIN", {})  # a fresh worker process: no pace learnt yet
    started = time.monotonic()
    with pytest.raises(TaskDeferred) as deferred:
        FluxReduxOperator(task_id="deep", image_url=image_uri).execute(context())
    held = time.monotonic() - started
    _, kwargs = deferred.value.trigger.serialize()
    # The last look's position is at most the submit's, so the look planned from the submit came later still.
    planned = LOOK_FRACTION * fastest_start(kwargs["queue_position"])
    assert held < planned, f"held {held:.1f} s: the window waited the queue-planned first look ({planned:.1f} s)"


def test_a_job_near_the_head_of_the_queue_still_finishes_in_the_worker(queue_conn, image_uri) -> None:
    fill_queue(queue_conn, 3, image_uri)  # one ahead in the queue: ours starts in ~1.5 s, ends in ~3 s
    result = FluxReduxOperator(task_id="near", image_url=image_uri).execute(context())
    assert result["images"]


async def test_many_triggers_on_one_account_hold_streams_only_near_the_head(queue_conn, image_uri) -> None:
    queue_conn.configure(run_seconds=0.5)
    handles = [FluxReduxHook().submit({"image_url": image_uri}) for _ in range(24)]  # ~6 s to drain at C = 2
    deadline = time.time() + 120
    triggers = [FluxReduxTrigger(handle=h.to_dict(), deadline=deadline, poll_interval=0.5) for h in handles]

    async def event(trigger: FluxReduxTrigger) -> dict[str, Any]:
        async for fired in trigger.run():
            return fired.payload
        raise AssertionError("no event")

    try:
        payloads = await asyncio.gather(*(event(trigger) for trigger in triggers))
    finally:
        await ASYNC_CLIENTS.aclose()
    assert [payload["status"] for payload in payloads] == ["success"] * len(handles)
    stats = queue_conn.stats()
    per_job = stats["requests"]
    assert all(job["stream_opens"] <= 1 for job in per_job.values())
    # The 2 running and the few about to start stream; the ones deep in the queue hold no connection.
    assert stats["streams_open_peak"] <= 10, stats["streams_open_peak"]
    # Polling every 0.5 s for the ~6 s the last jobs wait would cost ~12 looks each; these look a few times.
    polls = sorted(job["status_polls"] for job in per_job.values())
    assert polls[-1] <= 8, polls
