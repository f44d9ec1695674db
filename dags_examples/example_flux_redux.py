"""Example (a): one FLUX.1 [schnell] Redux variation, images saved to a folder.

The input image and the output folder come from the environment so the same DAG runs against fal.ai,
a gateway, or the bundled emulator (see the README's main command).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_flux_redux.operators.flux_redux import FluxReduxOperator

INPUT_IMAGE = os.environ.get(
    "FLUX_REDUX_EXAMPLE_IMAGE", "https://storage.googleapis.com/falserverless/gallery/flux-redux.png"
)
OUTPUT_DIR = os.environ.get("FLUX_REDUX_EXAMPLE_OUTPUT", "/tmp/flux-redux-output")

with DAG(
    dag_id="example_flux_redux",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["example", "flux-redux"],
) as dag:
    # [START howto_operator_flux_redux]
    vary = FluxReduxOperator(
        task_id="vary_image",
        image_url=INPUT_IMAGE,
        image_size="square",
        num_images=2,
        seed=42,
        output_format="png",
        output_path=f"file://{OUTPUT_DIR}/{{{{ run_id | replace(':', '_') | replace('+', '_') }}}}",
        poll_interval=0.5,
        timeout=600,
    )
    # [END howto_operator_flux_redux]
