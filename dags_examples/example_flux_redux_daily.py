"""Example (b): a daily batch of variations over several inputs, written under a dated path.

The output folder is declared as an Asset, so downstream DAGs can be scheduled on fresh images.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.providers.common.compat.sdk import DAG, Asset, task

from airflow_flux_redux.operators.flux_redux import FluxReduxOperator

INPUTS = [
    url.strip()
    for url in os.environ.get(
        "FLUX_REDUX_DAILY_IMAGES",
        "https://storage.googleapis.com/falserverless/gallery/flux-redux.png",
    ).split(",")
    if url.strip()
]
OUTPUT_ROOT = os.environ.get("FLUX_REDUX_EXAMPLE_OUTPUT", "/tmp/flux-redux-output")
DAILY_IMAGES = Asset(f"file://{OUTPUT_ROOT}/daily")

with DAG(
    dag_id="example_flux_redux_daily",
    start_date=datetime(2026, 1, 1),
    schedule="@daily",
    catchup=False,
    max_active_runs=1,
    tags=["example", "flux-redux"],
) as dag:
    # [START howto_operator_flux_redux_mapped]
    variations = FluxReduxOperator.partial(
        task_id="daily_variations",
        image_size="landscape_4_3",
        output_path=f"file://{OUTPUT_ROOT}/daily/{{{{ ds }}}}",
        poll_interval=0.5,
        outlets=[DAILY_IMAGES],
    ).expand(image_url=INPUTS)
    # [END howto_operator_flux_redux_mapped]

    @task
    def summarize(results: list[dict]) -> dict:
        """Count what the batch produced (each mapped result is the operator's XCom dict)."""
        paths = [image["path"] for result in results for image in result["images"]]
        return {"requests": len(results), "images": len(paths), "paths": paths}

    summarize(variations.output)


with DAG(
    dag_id="example_flux_redux_downstream",
    start_date=datetime(2026, 1, 1),
    schedule=[DAILY_IMAGES],
    catchup=False,
    tags=["example", "flux-redux"],
) as downstream:

    @task
    def list_new_images(ds: str | None = None) -> list[str]:
        folder = os.path.join(OUTPUT_ROOT, "daily")
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []

    list_new_images()
