"""The gallery: a tab on Airflow's task-instance and DAG-run pages that shows what FluxReduxOperator made.

This package's ``__init__`` stays cheap (no FastAPI, no Pillow): the plugin and the extra links import it
in every process that loads plugins, workers included. The app itself is in ``gallery.app``.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from airflow_flux_redux.version_compat import AIRFLOW_VERSION

#: ``external_views`` with a ``destination`` and a ``url_route`` (a tab on the page) arrived in Airflow 3.1.
GALLERY_AVAILABLE = AIRFLOW_VERSION >= (3, 1, 0)

#: Where the API server mounts the gallery's FastAPI app.
URL_PREFIX = "/flux-redux"
#: The tab's route inside the UI (``.../plugin/<route>``), one per destination: Airflow refuses duplicates.
TASK_ROUTE = "flux-redux-gallery"
RUN_ROUTE = "flux-redux-run-gallery"


def base_url() -> str:
    """``[api] base_url`` without a trailing slash ('' when unset: links stay relative to the UI's origin)."""
    from airflow.providers.common.compat.sdk import conf

    return (conf.get("api", "base_url", fallback="") or "").rstrip("/")


def base_path() -> str:
    """The path Airflow is served under ('' at the root): the iframe's page is on the UI's own origin."""
    return urlsplit(base_url()).path.rstrip("/")


def task_tab_url(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The UI page of a task instance with the gallery tab open (what the extra link opens)."""
    parts = [quote(part, safe="") for part in (dag_id, run_id, task_id)]
    path = "/dags/{}/runs/{}/tasks/{}".format(*parts)
    if map_index >= 0:
        path += f"/mapped/{map_index}"
    return f"{base_url()}{path}/plugin/{TASK_ROUTE}"
