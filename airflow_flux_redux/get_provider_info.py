"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_flux_redux import __version__


def _field(label: str, kind: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": {"type": [kind, "null"], **schema}}


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
        "extra-links": [
            "airflow_flux_redux.links.FluxReduxRequestLink",
            "airflow_flux_redux.links.FluxReduxImageLink",
        ],
        "connection-types": [
            {
                "connection-type": "flux_redux",
                "hook-class-name": "airflow_flux_redux.hooks.flux_redux.FluxReduxHook",
                "hook-name": "FLUX Redux (fal.ai)",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://queue.fal.run (leave empty for fal.ai) or your gateway's BASE_URL",
                        "password": "fal key (key_id:key_secret) or your gateway's key",
                    },
                },
                "conn-fields": {
                    "auth_scheme": _field(
                        "Auth scheme",
                        "string",
                        "Key for fal.ai; Bearer for most fal-compatible gateways.",
                        default="Key",
                        enum=["Key", "Bearer"],
                    ),
                    "endpoint": _field(
                        "Model endpoint",
                        "string",
                        "Path of the model under the base URL.",
                        default="fal-ai/flux-1/schnell/redux",
                    ),
                    "timeout": _field("HTTP timeout (s)", "number", "Per HTTP call, not the whole job.", default=30),
                    "max_retries": _field(
                        "Max retries",
                        "integer",
                        "Retries of a transient failure (429, 502, 503, 504, network) per call.",
                        default=5,
                    ),
                    "allowed_hosts": _field(
                        "Allowed hosts",
                        "string",
                        "Comma-separated origins (https://host:port) that may receive the key besides the "
                        "base URL, for gateways that answer with status URLs on another host.",
                    ),
                    "queue_priority": _field(
                        "Queue priority",
                        "string",
                        "fal queue priority (X-Fal-Queue-Priority).",
                        enum=["normal", "low"],
                    ),
                    "request_timeout": _field(
                        "Start deadline (s)",
                        "integer",
                        "fal gives up on a job not started within this many seconds (X-Fal-Request-Timeout).",
                    ),
                },
            }
        ],
    }
