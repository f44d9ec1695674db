"""DAGs of real-speed jobs (tests/e2e/test_fast_jobs.py, benchmarks/bench_fast_jobs.py).

Each DAG maps ``FluxReduxOperator`` over its own seed range: the emulator gives jobs their length by seed
(``EmulatorConfig.timings``), so one deployment serves every case. ``FAST_JOB_SEEDS`` is the one table of
those ranges; the test and the benchmark import it.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG

from airflow_flux_redux.operators.flux_redux import FluxReduxOperator

INPUT_IMAGE = os.environ.get("FLUX_REDUX_EXAMPLE_IMAGE", "/tmp/flux-redux-input.png")
OUTPUT_DIR = os.environ.get("FLUX_REDUX_EXAMPLE_OUTPUT", "/tmp/flux-redux-output")
MAPPED = 24
# Worker slots, as in issue 10's setup (parallelism 8); counts running and queued tasks, not deferred ones.
SLOTS = 8
RUN_FOLDER = "{{ run_id | replace(':', '_') | replace('+', '_') }}"
HOLD_ENV = "AIRFLOW__FLUX_REDUX__DEFER_EVENT_HOLD"
BENCH_DEFER_AFTER = (0, 5, 10, 20)

# dag_id -> first seed; task i of the DAG submits seed first + i.
FAST_JOB_SEEDS: dict[str, int] = {
    "e2e_fast_defaults": 7000,
    "e2e_fast_late": 7100,
    "e2e_fast_race": 7200,
    **{f"bench_fast_d{d}_hold_{h}": 8000 + 100 * i + 50 * (h == "off") for i, d in enumerate(BENCH_DEFER_AFTER)
       for h in ("on", "off")},
}  # fmt: skip


def _hold_off(context: Any) -> None:
    """No event hold for this task's deferrals: the deferring worker reads the setting when it defers."""
    os.environ[HOLD_ENV] = "0"


def fast_dag(dag_id: str, *, hold: bool = True, retries: int = 0, **operator: Any) -> DAG:
    """``MAPPED`` mapped tasks on consecutive seeds; ``operator`` overrides FluxReduxOperator's defaults."""
    first = FAST_JOB_SEEDS[dag_id]
    with DAG(
        dag_id=dag_id,
        start_date=datetime(2026, 1, 1),
        schedule=None,
        catchup=False,
        max_active_tasks=SLOTS,
        tags=["e2e", "fast-jobs"],
    ) as dag:
        FluxReduxOperator.partial(
            task_id="vary",
            image_url=INPUT_IMAGE,
            image_size="square",
            output_path=f"file://{OUTPUT_DIR}/{RUN_FOLDER}",
            retries=retries,
            retry_delay=timedelta(seconds=1),
            **({} if hold else {"pre_execute": _hold_off}),
            **operator,
        ).expand(seed=list(range(first, first + MAPPED)))
    return dag


# (a) All defaults: deferrable, default defer_after and hold, no retries.
fast_dag("e2e_fast_defaults")
# (b) A short window, so jobs of 3-8 s end 0-5 s after the task deferred (the event hold's case).
fast_dag("e2e_fast_late", defer_after=3.0)
# (c) Airflow's race left open (defer at once, no hold): a task it fails must reconnect on retry.
fast_dag("e2e_fast_race", hold=False, retries=1, defer_after=0)
for _defer_after in BENCH_DEFER_AFTER:
    for _hold in (True, False):
        fast_dag(f"bench_fast_d{_defer_after}_hold_{'on' if _hold else 'off'}", hold=_hold, defer_after=_defer_after)
