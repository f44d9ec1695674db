"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_flux_redux import __version__
from airflow_flux_redux.connection_form import conn_fields, ui_field_behaviour


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-flux-redux",
        "name": "FLUX Redux (fal.ai)",
        "description": "FLUX.1 schnell Redux image variation on fal.ai and fal-compatible gateways.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "FLUX Redux (fal.ai)",
                "external-doc-url": "https://fal.ai/models/fal-ai/flux/schnell/redux",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "FLUX Redux (fal.ai)",
                "python-modules": ["airflow_flux_redux.operators.flux_redux"],
            }
        ],
        "hooks": [
            {
                "integration-name": "FLUX Redux (fal.ai)",
                "python-modules": ["airflow_flux_redux.hooks.flux_redux"],
            }
        ],
        "triggers": [
            {
                "integration-name": "FLUX Redux (fal.ai)",
                "python-modules": ["airflow_flux_redux.triggers.flux_redux"],
            }
        ],
        "task-decorators": [
            {
                "name": "flux_redux",
                "class-name": "airflow_flux_redux.decorators.flux_redux.flux_redux_task",
            }
        ],
        "extra-links": [
            "airflow_flux_redux.links.FluxReduxGalleryLink",
            "airflow_flux_redux.links.FluxReduxImageLink",
        ],
        "connection-types": [
            {
                "connection-type": "flux_redux",
                "hook-class-name": "airflow_flux_redux.hooks.flux_redux.FluxReduxHook",
                "hook-name": "FLUX Redux (fal.ai)",
                "ui-field-behaviour": ui_field_behaviour(),
                "conn-fields": conn_fields(),
            }
        ],
    }
