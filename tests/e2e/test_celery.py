"""A distributed deployment: CeleryExecutor on Redis, PostgreSQL, two workers, two triggerers; one worker dies.

40 mapped FluxReduxOperator tasks in one run against the emulator (in a process of its own, as fal is):
half the jobs take 1.5 s and finish while the worker follows them, half take 27-37 s and defer to the
triggerers. While tasks run on it, one Celery worker is SIGKILLed with all its task processes, as when its
machine dies. Every task must still succeed, those that were on the dead worker by a retry on the other
one, with exactly one fal submission per task (a retry reconnects to the job it had submitted) and every
image saved. The connection comes from a secrets backend every component reads, not from one host's
environment. The test prints the wall time and each task's figures (with ``-s``); the README's "Running
at scale" quotes them. Run it alone with: ``flock /tmp/heavy.lock .venv/bin/python -m pytest -s
tests/e2e/test_celery.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import API_KEY, connection_json
from tests.e2e.celery_deployment import CeleryDeployment
from tests.e2e.standalone import E2E_DAGS, DeploymentError, check_images, first_time, log_events, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from airflow_flux_redux.emulator import EmulatorServer

pytestmark = pytest.mark.airflow
DAG_ID, TASK_ID = "e2e_flux_redux_celery", "vary_spread"
TASKS = 40
SHORT_SEEDS = list(range(TASKS // 2))  # 0.2 s queued + 1.3 s running: done before the operator would defer
LONG_SEEDS = list(range(1000, 1000 + TASKS // 2))  # 2 s queued + 25..34.5 s running: deferred to a triggerer
TIMINGS = [
    {"seeds": [SHORT_SEEDS[0], SHORT_SEEDS[-1]], "queue_seconds": 0.2, "run_seconds": 1.3, "run_step": 0.0},
    {"seeds": [LONG_SEEDS[0], LONG_SEEDS[-1]], "queue_seconds": 2.0, "run_seconds": 25.0, "run_step": 0.5},
]
SLOTS_PER_WORKER = 6
REDIS_DB = int(os.environ.get("FLUX_REDUX_E2E_REDIS_DB", "11"))  # the broker's database, flushed by the test


@pytest.fixture(scope="module")
def celery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CeleryDeployment, EmulatorServer, Path]]:
    from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
    from airflow_flux_redux.emulator.images import sample_image

    root = tmp_path_factory.mktemp("celery")
    image, output = root / "input.png", root / "out"
    image.write_bytes(sample_image(96, 64))
    emulator = EmulatorServer(EmulatorConfig(key=API_KEY, log_lines=3, timings=TIMINGS), in_process=False).start()
    # The connection lives in a secrets backend that every component reads (a file here; Vault, AWS Secrets
    # Manager, ... on real machines), not in one host's environment.
    connections = root / "connections.json"
    connections.write_text(json.dumps({"flux_redux_default": json.loads(connection_json(emulator.url))}))
    # Interleaved, so both kinds of job run side by side on both workers.
    seeds = [seed for pair in zip(SHORT_SEEDS, LONG_SEEDS, strict=True) for seed in pair]
    deployment = CeleryDeployment(
        root / "deployment",
        dag_files=[E2E_DAGS / "flux_redux_celery.py"],
        env={
            "AIRFLOW__SECRETS__BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"connections_file_path": str(connections)}),
            "FLUX_REDUX_EXAMPLE_IMAGE": str(image),
            "FLUX_REDUX_EXAMPLE_OUTPUT": str(output),
            "FLUX_REDUX_E2E_SEEDS": json.dumps(seeds),
            "FLUX_REDUX_E2E_SLOTS": str(2 * SLOTS_PER_WORKER),
        },
        dag_ids=[DAG_ID],
        redis_db=REDIS_DB,
        concurrency=SLOTS_PER_WORKER,
    )
    try:
        deployment.start()
        yield deployment, emulator, root
    finally:
        try:
            deployment.stop()
        finally:
            emulator.stop()


def _epoch(value: str | None) -> float | None:
    return None if not value else datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_celery_workers_one_killed_every_task_succeeds_once(
    celery: tuple[CeleryDeployment, EmulatorServer, Path],
) -> None:
    d, emulator, root = celery
    started = time.monotonic()
    run_id = d.trigger(DAG_ID)

    def mapped() -> list[dict[str, Any]]:
        return [t for t in d.task_instances(DAG_ID, run_id) if t["task_id"] == TASK_ID]

    def failed_early() -> None:
        if d.dag_run(DAG_ID, run_id)["state"] == "failed":
            raise DeploymentError(f"run {run_id} failed\n{d.diagnostics(DAG_ID, run_id)}")

    # Kill a worker in the thick of it: tasks running on it, others already deferred to the triggerers.
    def victim_busy() -> tuple[str, list[int]] | None:
        failed_early()
        tis = mapped()
        if not any(t["state"] == "deferred" for t in tis):
            return None
        running: dict[str, list[int]] = {}
        for t in tis:
            if t["state"] == "running" and t["hostname"]:
                running.setdefault(t["hostname"], []).append(t["map_index"])
        busiest = max(running.items(), key=lambda item: len(item[1]), default=None)
        return busiest if busiest and len(busiest[1]) >= 2 else None

    victim_name, lost = wait_for(
        "a worker running two tasks while others are deferred",
        victim_busy,
        180,
        0.3,
        lambda: d.diagnostics(DAG_ID, run_id),
    )
    (victim,) = [w for w in d.workers if w.name == victim_name]
    killed_at = time.monotonic() - started
    pids = d.kill_worker(victim)
    print(f"\nSIGKILLed {victim_name} ({len(pids)} processes) at {killed_at:.1f} s; its running tasks: {lost}")

    def finished() -> bool:
        failed_early()
        return d.dag_run(DAG_ID, run_id)["state"] == "success"

    wait_for(f"{TASKS} mapped tasks to succeed", finished, 420, 1.0, lambda: d.diagnostics(DAG_ID, run_id))
    wall = time.monotonic() - started

    tis = sorted(mapped(), key=lambda t: t["map_index"])
    assert len(tis) == TASKS and all(t["state"] == "success" for t in tis), [(t["map_index"], t["state"]) for t in tis]
    stats = emulator.stats()
    assert stats["submissions"] == TASKS, f"{stats['submissions']} submissions for {TASKS} tasks"

    survivor = next(w.name for w in d.workers if w is not victim)
    rows, request_ids = [], set()
    for t in tis:
        result = d.xcom(DAG_ID, run_id, TASK_ID, map_index=t["map_index"])
        request_ids.add(result["request_id"])
        assert result["request_id"] in stats["requests"], result
        check_images(result, count=1)
        tries = d.tries(DAG_ID, run_id, TASK_ID, t["map_index"])
        logs = [log_events(d.task_log(DAG_ID, run_id, TASK_ID, n["try_number"], t["map_index"])) for n in tries]
        submitted = next((s for entries in logs if (s := first_time(entries, "Submitted fal request"))), None)
        end = _epoch(t["end_date"])
        rows.append(
            {
                "map_index": t["map_index"],
                "seed": result["seed"],
                "job": "long" if result["seed"] in LONG_SEEDS else "short",
                "tries": t["try_number"],
                "workers": [n["hostname"] for n in tries],
                "deferred": any(first_time(entries, "Pausing task as DEFERRED") for entries in logs),
                "submit_to_end_s": None if submitted is None or end is None else round(end - submitted, 2),
            }
        )
    assert len(request_ids) == TASKS, "two tasks returned the same request"

    by_index = {row["map_index"]: row for row in rows}
    for index in lost:
        row = by_index[index]
        # The lost try failed on the heartbeat timeout; a later try on the surviving worker finished it.
        assert row["tries"] >= 2 and row["workers"][0] == victim_name, row
        assert row["workers"][-1] == survivor, row
    long_rows = [r for r in rows if r["job"] == "long"]
    assert all(r["deferred"] for r in long_rows), [r for r in long_rows if not r["deferred"]]

    print(f"\nCeleryExecutor run: {TASKS} tasks, 2 workers x {SLOTS_PER_WORKER} slots, 2 triggerers")
    print(f"wall {wall:.1f} s from trigger to run success (deployment startup {d.startup_seconds:.1f} s)")
    for row in rows:
        print(json.dumps(row))
    for kind in ("short", "long"):
        spans = [r["submit_to_end_s"] for r in rows if r["job"] == kind and r["submit_to_end_s"] is not None]
        deferred = sum(r["deferred"] for r in rows if r["job"] == kind)
        print(
            f"{kind} jobs: submit->end median {statistics.median(spans):.1f} s, max {max(spans):.1f} s; "
            f"deferred {deferred}/{TASKS // 2}"
        )
    retried = [r["map_index"] for r in rows if r["tries"] > 1]
    print(f"retried: {retried}; emulator submissions {stats['submissions']}; images under {root / 'out'}")
