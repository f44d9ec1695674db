"""FluxReduxPlugin: the gallery tab on the task-instance and DAG-run pages (Airflow 3.1+).

Registered through the ``airflow.plugins`` entry point, which Airflow loads in a default install. It is not
listed in the provider info's ``plugins``: Airflow 3.3 loads those only with ``[core]
lazy_discover_providers = False``, and then it would load the plugin twice and report the second as an
import error ("already registered").

Every Airflow process that loads plugins imports this module, workers included, so it imports neither
FastAPI nor Pillow: the app is built the first time ``fastapi_apps`` is read, which only the API server
(and ``airflow plugins``) do.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.providers.common.compat.sdk import AirflowPlugin

from airflow_flux_redux.gallery import GALLERY_AVAILABLE, RUN_ROUTE, TASK_ROUTE, URL_PREFIX, base_path
from airflow_flux_redux.version_compat import AIRFLOW_VERSION

log = logging.getLogger(__name__)

NAME = "FLUX Redux"


class _GalleryApps:
    """``fastapi_apps``, built on first read (a descriptor, so class and instance reads both work)."""

    def __init__(self) -> None:
        self._apps: list[dict[str, Any]] | None = None

    def __get__(self, instance: object, owner: type | None = None) -> list[dict[str, Any]]:
        if self._apps is None:
            from airflow_flux_redux.gallery.app import create_app

            self._apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": f"{NAME} gallery"}]
        return self._apps


def external_views() -> list[dict[str, Any]]:
    """The two tabs. The UI fills ``{DAG_ID}``, ``{RUN_ID}``, ``{TASK_ID}``, and ``{MAP_INDEX}`` on a mapped task."""
    app = f"{base_path()}{URL_PREFIX}/dags/{{DAG_ID}}/runs/{{RUN_ID}}"
    return [
        {
            "name": NAME,
            "href": f"{app}/tasks/{{TASK_ID}}?map_index={{MAP_INDEX}}",
            "destination": "task_instance",
            "url_route": TASK_ROUTE,
        },
        {"name": NAME, "href": app, "destination": "dag_run", "url_route": RUN_ROUTE},
    ]


class FluxReduxPlugin(AirflowPlugin):
    """The gallery view where Airflow has UI plugin views (3.1+); on older Airflow, one log line says why not."""

    name = "flux_redux"
    if GALLERY_AVAILABLE:
        fastapi_apps = _GalleryApps()  # type: ignore[assignment]
        external_views = external_views()

    @classmethod
    def on_load(cls, *args: Any, **kwargs: Any) -> None:
        if not GALLERY_AVAILABLE:
            log.info(
                "FLUX Redux gallery not available: Airflow %s has no UI plugin views (Airflow 3.1+). "
                "Operators, links and logs work as before.",
                ".".join(map(str, AIRFLOW_VERSION)),
            )
