"""Faults on a real Airflow deployment (``airflow standalone`` on PostgreSQL): user kills, stalled and dead
triggerers, a killed worker, and many runs against a flaky server. Each row says what it proves.

They share the session's deployment with test_standalone.py (see ``standalone.py``).
"""

from __future__ import annotations

import signal
import statistics
from typing import Any

import pytest

from tests.e2e.standalone import (
    DeploymentError,
    Session,
    check_images,
    first_time,
    log_events,
    start_deferred_run,
    wait_for,
    wait_trigger_running,
    worker_slot_seconds,
)

pytestmark = pytest.mark.airflow
DAG_ID, TASK_ID = "example_flux_redux", "vary_image"
SYNC_DAG, SYNC_TASK = "e2e_flux_redux_sync_retry", "vary_in_worker"
MAPPED_DAG, MAPPED_TASK = "e2e_flux_redux_mapped", "vary_many"
MAPPED_SLOTS = 8  # max_active_tasks of the mapped DAG (tests/e2e/dags/flux_redux_e2e.py)


def job_stats(session: Session, request_id: str) -> dict:
    return session.emulator.stats()["requests"][request_id]


def waits_seen(session: Session, request_id: str) -> int:
    """Status polls plus status streams opened: a trigger waits either way (wait_mode auto)."""
    job = job_stats(session, request_id)
    return job["status_polls"] + job["stream_opens"]


def test_a_marked_failed_while_deferred_cancels_the_remote_job(e2e: Session) -> None:
    """The user marks the deferred task failed: the trigger's on_kill cancels the fal request."""
    d = e2e.deployment
    e2e.reset_emulator(queue_seconds=2.0, run_seconds=60.0)
    run_id = d.trigger(DAG_ID)
    d.wait_task(DAG_ID, run_id, TASK_ID, ["deferred"], timeout=90)
    request_id = wait_trigger_running(e2e, DAG_ID, run_id, TASK_ID)["kwargs"]["handle"]["request_id"]

    d.set_state(DAG_ID, run_id, TASK_ID, "failed")
    wait_for(
        "the remote job to be cancelled after the task was marked failed",
        lambda: job_stats(e2e, request_id)["cancelled"],
        30,
        0.25,
        lambda: f"{job_stats(e2e, request_id)}\n{d.diagnostics(DAG_ID, run_id, TASK_ID)}",
    )
    assert d.task_instance(DAG_ID, run_id, TASK_ID)["state"] == "failed"
    stats = e2e.emulator.stats()
    assert stats["submissions"] == 1, stats
    assert stats["requests"][request_id]["cancels"] == 1, stats["requests"][request_id]


def test_b_stalled_triggerer_wakes_up_without_cancelling_the_moved_job(e2e: Session) -> None:
    """SIGSTOP the triggerer running the trigger until a second one takes it over, then SIGCONT it.

    Airflow 3.3.2 calls on_kill() on the woken-up stale copy; the trigger must see that the task is still
    deferred (on the other triggerer) and leave the remote job alone. The task then succeeds.
    """
    d = e2e.deployment
    # 40 s: on a loaded 2-core machine the pause, the takeover and the wake-up took longer than a 25 s job,
    # which then ended first, and the stale copy had nothing left to leave alone (seen in a fresh-clone run).
    run_id, row = start_deferred_run(e2e, DAG_ID, TASK_ID, queue_seconds=2.0, run_seconds=40.0, triggerers=2)
    request_id = row["kwargs"]["handle"]["request_id"]
    stalled = d.triggerer_of_job(row["triggerer_id"])
    (healthy,) = [t for t in d.live_triggerers() if t is not stalled]

    d.pause_triggerer(stalled)
    try:
        wait_for(
            f"{healthy.name} to take over the trigger of stalled {stalled.name}",
            lambda: (d.trigger_row(DAG_ID, run_id, TASK_ID) or {}).get("triggerer_id") == healthy.job_id,
            d.health_check_threshold + 40,
            0.25,
            lambda: d.diagnostics(DAG_ID, run_id, TASK_ID),
        )
        before = waits_seen(e2e, request_id)
        wait_for("the new copy to wait on the job", lambda: waits_seen(e2e, request_id) > before, 20, 0.2)
    finally:
        d.resume_triggerer(stalled)

    # The woken copy is cancelled through Airflow's "user action" path, which calls on_kill().
    wait_for(
        "the woken triggerer to run on_kill() on its stale copy and decide not to cancel",
        lambda: "still deferred elsewhere" in d.task_log_text(DAG_ID, run_id, TASK_ID),
        40,
        0.5,
        lambda: d.diagnostics(DAG_ID, run_id, TASK_ID),
    )
    assert d.task_instance(DAG_ID, run_id, TASK_ID)["state"] == "deferred"
    assert not job_stats(e2e, request_id)["cancelled"], job_stats(e2e, request_id)
    assert job_stats(e2e, request_id)["cancels"] == 0, job_stats(e2e, request_id)

    d.wait_task(DAG_ID, run_id, TASK_ID, ["success"], timeout=90)
    stats = e2e.emulator.stats()
    assert stats["submissions"] == 1, stats
    assert not stats["requests"][request_id]["cancelled"], stats["requests"][request_id]
    check_images(d.xcom(DAG_ID, run_id, TASK_ID), count=2)


def test_c_one_of_two_triggerers_killed_the_other_takes_over(e2e: Session) -> None:
    """Two triggerers; SIGKILL the one running the trigger: the other resumes it after the health threshold."""
    d = e2e.deployment
    run_id, row = start_deferred_run(e2e, DAG_ID, TASK_ID, queue_seconds=2.0, run_seconds=14.0, triggerers=2)
    request_id = row["kwargs"]["handle"]["request_id"]
    victim = d.triggerer_of_job(row["triggerer_id"])
    (survivor,) = [t for t in d.live_triggerers() if t is not victim]

    d.kill_triggerer(victim, signal.SIGKILL)
    moved = wait_for(
        f"{survivor.name} to take over the trigger of killed {victim.name}",
        lambda: (r := d.trigger_row(DAG_ID, run_id, TASK_ID)) and r["triggerer_id"] == survivor.job_id and r,
        d.health_check_threshold + 40,
        0.2,
        lambda: d.diagnostics(DAG_ID, run_id, TASK_ID),
    )
    assert moved["kwargs"]["deadline"] == row["kwargs"]["deadline"]

    d.wait_task(DAG_ID, run_id, TASK_ID, ["success"], timeout=90)
    stats = e2e.emulator.stats()
    assert stats["submissions"] == 1, stats
    assert not stats["requests"][request_id]["cancelled"]
    check_images(d.xcom(DAG_ID, run_id, TASK_ID), count=2)


def test_d_worker_killed_after_submit_retry_reconnects(e2e: Session) -> None:
    """A non-deferrable task's worker is SIGKILLed mid-wait: the retry reconnects to the same request."""
    d = e2e.deployment
    e2e.reset_emulator(queue_seconds=2.0, run_seconds=8.0)
    run_id = d.trigger(SYNC_DAG)
    ti = d.wait_task(SYNC_DAG, run_id, SYNC_TASK, ["running"], timeout=90)

    def polled_request() -> str | None:
        # The request id goes to the task_state_store right after submit, before the wait starts (the
        # status stream here, as the emulator serves it).
        for request_id, job in e2e.emulator.stats()["requests"].items():
            if job["status_polls"] + job.get("stream_opens", 0) > 0:
                return request_id
        return None

    request_id = wait_for(
        "the worker to follow its request", polled_request, 60, 0.2, lambda: d.diagnostics(SYNC_DAG, run_id)
    )
    workers = wait_for("the task's worker process", lambda: d.worker_processes(ti["id"]), 20, 0.2)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)

    final = d.wait_task(SYNC_DAG, run_id, SYNC_TASK, ["success"], timeout=120)
    assert final["try_number"] == 2, final
    stats = e2e.emulator.stats()
    assert stats["submissions"] == 1, f"the retry submitted again: {stats}"
    assert not stats["requests"][request_id]["cancelled"]
    retry_log = d.task_log_text(SYNC_DAG, run_id, SYNC_TASK, try_number=2)
    assert "Reconnecting to existing job" in retry_log, retry_log[-3000:]
    assert "Submitted fal request" not in retry_log
    result = d.xcom(SYNC_DAG, run_id, SYNC_TASK)
    assert result and result["request_id"] == request_id, f"the reconnected try returned {result!r}"
    check_images(result, count=1)


def test_e_many_mapped_runs_through_transient_faults(e2e: Session) -> None:
    """Many mapped tasks at once against a server failing ~20% of status/result calls: all succeed, once each."""
    d = e2e.deployment
    count = e2e.mapped
    # About one status or result call in five fails: 429, 503 (each 7%) or a reset connection (6%).
    faults: list[dict[str, Any] | str] = []
    for route in ("status", "result"):
        faults += [
            {"kind": "status", "route": route, "code": code, "probability": 0.07, "times": -1} for code in (429, 503)
        ]
        faults.append({"kind": "reset", "route": route, "probability": 0.06, "times": -1})
    # Jobs of ~12 s, and 8 worker slots: a trigger that fires within seconds of the deferral, while busy
    # cores still finish the deferring worker, meets an Airflow 3.3.2 scheduler race (apache/airflow#72716):
    # the late "success" of the deferring workload fails the resumed try. That is Airflow's bug, not ours.
    e2e.reset_emulator(queue_seconds=2.0, run_seconds=10.0)
    e2e.emulator.set_faults(faults)
    run_id = d.trigger(MAPPED_DAG)
    most_deferred = 0

    def finished() -> bool:
        nonlocal most_deferred
        states = [t["state"] for t in d.task_instances(MAPPED_DAG, run_id) if t["task_id"] == MAPPED_TASK]
        most_deferred = max(most_deferred, states.count("deferred"))
        state = d.dag_run(MAPPED_DAG, run_id)["state"]
        if state == "failed":
            raise DeploymentError(f"run {run_id} failed\n{d.diagnostics(MAPPED_DAG, run_id)}")
        return state == "success"

    wait_for(f"{count} mapped tasks to succeed", finished, 300, 0.5, lambda: d.diagnostics(MAPPED_DAG, run_id))
    # All jobs waited at once on MAPPED_SLOTS worker slots: deferral really freed the slots.
    assert most_deferred > MAPPED_SLOTS, f"at most {most_deferred} tasks were deferred at once"

    tis = [t for t in d.task_instances(MAPPED_DAG, run_id) if t["task_id"] == MAPPED_TASK]
    assert len(tis) == count and all(t["state"] == "success" for t in tis), [(t["map_index"], t["state"]) for t in tis]
    stats = e2e.emulator.stats()
    assert stats["submissions"] == count, stats["submissions"]
    fired = sum(stats["faults_fired"].values())
    assert fired > 0, f"no fault fired: {stats['faults_fired']}"
    request_ids = {d.xcom(MAPPED_DAG, run_id, MAPPED_TASK, map_index=t["map_index"])["request_id"] for t in tis}
    assert len(request_ids) == count

    slots = []
    for t in tis:
        entries = d.task_log(MAPPED_DAG, run_id, MAPPED_TASK, try_number=t["try_number"], map_index=t["map_index"])
        slots.append(worker_slot_seconds(entries, t, d))
        assert first_time(log_events(entries), "Pausing task as DEFERRED") is not None, t["map_index"]
    e2e.record_jobs("mapped", slots)
    summary = {}
    for name in ("defer_workload_s", "ti_start_to_defer_s", "submit_to_defer_s", "resume_workload_s"):
        values = [v for s in slots if (v := s[name]) is not None]
        if values:
            summary[name] = {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}
    e2e.record_jobs("mapped_summary", [summary])
    print(f"{count} mapped jobs, {fired} faults fired {stats['faults_fired']}; worker slot: {summary}")
