"""DAGs for the standalone fault tests (tests/e2e/test_faults_airflow.py); inputs come from the environment."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG

from airflow_flux_redux.operators.flux_redux import FluxReduxOperator

INPUT_IMAGE = os.environ.get("FLUX_REDUX_EXAMPLE_IMAGE", "/tmp/flux-redux-input.png")
OUTPUT_DIR = os.environ.get("FLUX_REDUX_EXAMPLE_OUTPUT", "/tmp/flux-redux-output")
MAPPED = int(os.environ.get("FLUX_REDUX_E2E_MAPPED", "20"))
# Worker slots for the mapped DAG (max_active_tasks counts running and queued tasks, not deferred ones).
MAPPED_SLOTS = 8
RUN_FOLDER = "{{ run_id | replace(':', '_') | replace('+', '_') }}"

with DAG(
    dag_id="e2e_flux_redux_sync_retry",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["e2e"],
):
    # Waits in the worker, so a killed worker loses the wait: the retry must reconnect, not resubmit.
    FluxReduxOperator(
        task_id="vary_in_worker",
        image_url=INPUT_IMAGE,
        image_size="square",
        output_format="png",
        output_path=f"file://{OUTPUT_DIR}/{RUN_FOLDER}",
        deferrable=False,
        poll_interval=0.5,
        retries=1,
        retry_delay=timedelta(seconds=1),
        timeout=300,
    )

with DAG(
    dag_id="e2e_flux_redux_mapped",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    max_active_tasks=MAPPED_SLOTS,
    tags=["e2e"],
):
    # More jobs than worker slots: they can all wait at once only because a deferred task frees its slot.
    FluxReduxOperator.partial(
        task_id="vary_many",
        image_url=INPUT_IMAGE,
        image_size="square",
        output_path=f"file://{OUTPUT_DIR}/{RUN_FOLDER}",
        poll_interval=0.5,
        timeout=300,
        defer_after=2,  # defer soon: this DAG tests many deferred waits at once (the window: test_fast_jobs.py)
    ).expand(seed=list(range(MAPPED)))
