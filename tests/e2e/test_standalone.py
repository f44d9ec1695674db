"""The example DAG on a real Airflow deployment (``airflow standalone`` on PostgreSQL), driven over REST.

One deployment serves the session (see ``standalone.py``); each test starts its own DAG run. The wall
time of each test and the time each job held a worker slot go to a JSON file (path printed with ``-s``).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from airflow_flux_redux.operators.flux_redux import DEFAULT_DEFER_AFTER
from tests.conftest import API_KEY
from tests.e2e.standalone import (
    TASKFLOW_PHOTOS,
    Session,
    check_images,
    start_deferred_run,
    wait_for,
    wait_trigger_running,
    worker_slot_seconds,
)

pytestmark = pytest.mark.airflow
DAG_ID, TASK_ID = "example_flux_redux", "vary_image"
TRIGGER_CLASSPATH = "airflow_flux_redux.triggers.flux_redux.FluxReduxTrigger"


def assert_no_secret(session: Session, run_id: str, *texts: str) -> None:
    """The API key is in no log, XCom or trigger text given (and in no XCom of the run)."""
    xcoms = session.deployment.xcoms(DAG_ID, run_id)
    assert xcoms, "the run pushed no XCom"
    values = [session.deployment.xcom(DAG_ID, run_id, x["task_id"], x["key"], x["map_index"]) for x in xcoms]
    for label, text in [("xcoms", json.dumps(values, default=str)), *((f"text {i}", t) for i, t in enumerate(texts))]:
        assert API_KEY not in text, f"the API key leaked into {label}"


def test_example_dag_defers_then_succeeds(e2e: Session) -> None:
    d = e2e.deployment
    # A 14 s job: longer than the operator's in-worker window (defer_after, 10 s), so it defers; it ends
    # within seconds of the deferral, so the trigger holds its event (apache/airflow#72716) and the task
    # must still succeed.
    e2e.reset_emulator(queue_seconds=3.0, run_seconds=11.0)
    run_id = d.trigger(DAG_ID)

    d.wait_task(DAG_ID, run_id, TASK_ID, ["deferred"], timeout=90)
    row = wait_trigger_running(e2e, DAG_ID, run_id, TASK_ID)
    assert row["classpath"] == TRIGGER_CLASSPATH
    all_trigger_rows = json.dumps(d.sql("SELECT classpath, kwargs FROM trigger"), default=str)
    assert API_KEY not in all_trigger_rows, "the API key is stored in the trigger table"
    assert row["kwargs"]["handle"]["request_id"] and row["kwargs"]["deadline"] > time.time()

    ti = d.wait_task(DAG_ID, run_id, TASK_ID, ["success"], timeout=90)
    result = d.xcom(DAG_ID, run_id, TASK_ID)
    assert result["request_id"] == row["kwargs"]["handle"]["request_id"]
    check_images(result, count=2, size=(512, 512))

    entries = d.task_log(DAG_ID, run_id, TASK_ID)
    log = d.task_log_text(DAG_ID, run_id, TASK_ID)
    assert "Submitted fal request" in log and "Pausing task as DEFERRED" in log, log[-3000:]
    assert "queue position" in log and "fal: " in log, log[-3000:]
    assert_no_secret(e2e, run_id, log, row["raw_kwargs"])

    stats = e2e.emulator.stats()
    assert stats["submissions"] == 1, stats
    assert not stats["requests"][result["request_id"]]["cancelled"]
    slot = worker_slot_seconds(entries, ti, d)
    e2e.record_jobs("example_flux_redux", [slot])
    print(f"worker slot: {slot}")
    assert slot["submit_to_defer_s"] is not None and DEFAULT_DEFER_AFTER <= slot["submit_to_defer_s"] < 15, slot
    assert "holding the event" in log, log[-3000:]


def test_triggerer_killed_mid_wait_new_triggerer_resumes(e2e: Session) -> None:
    d = e2e.deployment
    run_id, before = start_deferred_run(e2e, DAG_ID, TASK_ID, queue_seconds=3.0, run_seconds=12.0, triggerers=1)
    request_id = before["kwargs"]["handle"]["request_id"]

    victim = d.triggerer_of_job(before["triggerer_id"])
    d.kill_triggerer(victim, signal.SIGKILL)
    replacement = d.start_triggerer()

    def moved() -> dict | None:
        row = d.trigger_row(DAG_ID, run_id, TASK_ID)
        return row if row is not None and row["triggerer_id"] == replacement.job_id else None

    after = wait_for(
        "the new triggerer to take the trigger over",
        moved,
        d.health_check_threshold + 40,
        0.2,
        lambda: d.diagnostics(DAG_ID, run_id, TASK_ID),
    )
    assert after["id"] == before["id"]
    assert after["kwargs"]["deadline"] == before["kwargs"]["deadline"], "the deadline moved on takeover"
    assert after["kwargs"]["handle"]["request_id"] == request_id

    ti = d.wait_task(DAG_ID, run_id, TASK_ID, ["success"], timeout=90)
    result = d.xcom(DAG_ID, run_id, TASK_ID)
    assert result["request_id"] == request_id
    check_images(result, count=2)
    stats = e2e.emulator.stats()
    assert stats["submissions"] == 1, stats
    assert not stats["requests"][request_id]["cancelled"], stats["requests"][request_id]
    log = d.task_log_text(DAG_ID, run_id, TASK_ID)
    assert API_KEY not in log
    e2e.record_jobs("triggerer_killed", [worker_slot_seconds(d.task_log(DAG_ID, run_id, TASK_ID), ti, d)])


def test_taskflow_example_mapped_tasks_defer_and_resume_on_the_real_triggerer(e2e: Session) -> None:
    """The TaskFlow example on PostgreSQL: four mapped ``@task.flux_redux`` tasks at once, each job longer than the
    in-worker window, so each defers; the triggerer (which, unlike ``dags test``, keeps the defer kwargs) resumes
    each as a fresh instance that does not run the function again; the downstream task reads the saved files."""
    d = e2e.deployment
    dag_id = "example_flux_redux_taskflow"
    e2e.reset_emulator(queue_seconds=3.0, run_seconds=DEFAULT_DEFER_AFTER)
    run_id = d.trigger(dag_id)
    row = wait_trigger_running(e2e, dag_id, run_id, "vary", map_index=0)
    assert row["kwargs"]["input_reference"] == str(e2e.photos / "beach.png")
    assert API_KEY not in row["raw_kwargs"]

    d.wait_run(dag_id, run_id, ["success"], timeout=180)
    expected = {"beach": (1024, 768), "harbour": (1024, 768), "tile": (512, 512), "tower": (768, 1024)}
    for index, name in enumerate(sorted(TASKFLOW_PHOTOS)):
        result = d.xcom(dag_id, run_id, "vary", map_index=index)
        assert result["input"] == str(e2e.photos / f"{name}.png")
        check_images(result, count=1, size=expected[name])
        log = d.task_log_text(dag_id, run_id, "vary", map_index=index)
        assert "Pausing task as DEFERRED" in log, log[-3000:]
        assert log.count(f"{name}.png is ") == 1, log[-3000:]  # the function's line: one run, none on resume
        assert API_KEY not in log
    sheet = d.xcom(dag_id, run_id, "contact_sheet")
    assert sheet["images"] == 4 and Path(sheet["contact_sheet"]).is_file(), sheet
    assert e2e.emulator.stats()["submissions"] == 4
