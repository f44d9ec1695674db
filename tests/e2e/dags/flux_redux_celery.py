"""The DAG of the distributed (CeleryExecutor) test, tests/e2e/test_celery.py; inputs come from the environment.

One mapped FluxReduxOperator over the seeds the test gives: the emulator picks each job's length by its seed,
so one run mixes jobs that finish while the worker follows them with jobs long enough to defer.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG

from airflow_flux_redux.operators.flux_redux import FluxReduxOperator

INPUT_IMAGE = os.environ.get("FLUX_REDUX_EXAMPLE_IMAGE", "/tmp/flux-redux-input.png")
OUTPUT_DIR = os.environ.get("FLUX_REDUX_EXAMPLE_OUTPUT", "/tmp/flux-redux-output")
SEEDS = json.loads(os.environ.get("FLUX_REDUX_E2E_SEEDS", "[0, 1000]"))
# Running and queued tasks at once: the workers' slots, so no task waits in the broker for a free slot.
SLOTS = int(os.environ.get("FLUX_REDUX_E2E_SLOTS", "12"))

with DAG(
    dag_id="e2e_flux_redux_celery",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    max_active_tasks=SLOTS,
    tags=["e2e"],
):
    # A try lost with its worker is retried; the retry reconnects to the submitted job (task_state_store).
    FluxReduxOperator.partial(
        task_id="vary_spread",
        image_url=INPUT_IMAGE,
        image_size="square",
        output_path=f"file://{OUTPUT_DIR}/" + "{{ run_id | replace(':', '_') | replace('+', '_') }}",
        poll_interval=0.5,
        timeout=600,
        retries=2,
        retry_delay=timedelta(seconds=2),
    ).expand(seed=SEEDS)
