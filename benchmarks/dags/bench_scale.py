"""N mapped ``FluxReduxOperator`` tasks with the operator's defaults, for benchmarks/bench_standalone.py.

``FLUX_REDUX_BENCH_N`` sets N. A first task reports which ``airflow_flux_redux`` the workers import, so the
benchmark can tell the provider version it measured from the one it meant to.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.providers.common.compat.sdk import DAG, task

from airflow_flux_redux.operators.flux_redux import FluxReduxOperator

N = int(os.environ.get("FLUX_REDUX_BENCH_N", "200"))
INPUT_IMAGE = os.environ.get("FLUX_REDUX_EXAMPLE_IMAGE", "/tmp/flux-redux-input.png")
OUTPUT_DIR = os.environ.get("FLUX_REDUX_EXAMPLE_OUTPUT", "/tmp/flux-redux-output")


@task
def provider() -> dict[str, str | bool]:
    """Where the worker's ``airflow_flux_redux`` comes from, and whether it has the queue-aware waits."""
    import airflow_flux_redux
    from airflow_flux_redux import wait

    return {"file": str(airflow_flux_redux.__file__), "queue_aware": hasattr(wait, "DrainRate")}


with DAG(dag_id="bench_scale", start_date=datetime(2026, 1, 1), schedule=None, catchup=False, tags=["bench"]):
    provider() >> FluxReduxOperator.partial(
        task_id="vary",
        image_url=INPUT_IMAGE,
        image_size={"width": 64, "height": 64},
        output_path=f"file://{OUTPUT_DIR}",
    ).expand(seed=list(range(N)))
