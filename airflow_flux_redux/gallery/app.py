"""The gallery's FastAPI app, mounted by Airflow's API server (Airflow 3.1+) under ``URL_PREFIX``.

Every route authenticates with Airflow's own dependencies: ``get_user`` takes the ``Authorization: Bearer``
header or, in the UI's iframe, the session cookie (no credential: 401); ``requires_access_dag`` checks read
access to the DAG's task instances and XComs (none: 403). Images are served by task and index only: a
request names no path, so nothing outside what the task saved can be read.
"""

from __future__ import annotations

from typing import Annotated, Literal

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep  # noqa: TC002 (FastAPI reads the annotation at runtime)
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, Response

from airflow_flux_redux.gallery import pages
from airflow_flux_redux.gallery.images import ImageUnavailable, ThumbnailCache, read_image
from airflow_flux_redux.gallery.records import TaskRecord, images
from airflow_flux_redux.gallery.store import run_gallery, task_record

Size = Literal["thumb", "full"]
# Files are named by request id (or a pattern the user chose) and not rewritten: a browser may keep them.
_IMAGE_CACHE = "private, max-age=3600"
_PAGE_HEADERS = {"Cache-Control": "no-store", "Content-Security-Policy": "script-src 'none'; object-src 'none'"}
_ACCESS = [
    Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE)),
    Depends(requires_access_dag("GET", DagAccessEntity.XCOM)),
]


def _map_index(value: str) -> int:
    """The UI fills ``{MAP_INDEX}`` only on a mapped task's page; the literal placeholder means unmapped."""
    try:
        return max(-1, int(value))
    except ValueError:
        return -1


MapIndex = Annotated[str, Query()]


def _root(request: Request) -> str:
    """The path this app is mounted at (the API server's base path included)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _record(session: SessionDep, dag_id: str, run_id: str, task_id: str, map_index: str) -> TaskRecord:
    record = task_record(session, dag_id, run_id, task_id, _map_index(map_index))
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such task instance")
    return record


def create_app(thumbnails: ThumbnailCache | None = None) -> FastAPI:
    """The app; ``thumbnails`` is the in-memory thumbnail cache (one per API server worker by default)."""
    cache = thumbnails or ThumbnailCache()
    app = FastAPI(title="FLUX Redux gallery", docs_url=None, redoc_url=None, openapi_url=None)

    def serve(location: str | None, size: Size) -> Response:
        if not location:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "This image was not saved by the task")
        try:
            image = cache.get(location) if size == "thumb" else read_image(location)
        except ImageUnavailable as err:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(err)) from None
        headers = {"Cache-Control": _IMAGE_CACHE, "X-Content-Type-Options": "nosniff"}
        return Response(image.data, media_type=image.content_type, headers=headers)

    # Plain ``def`` routes: FastAPI runs them in its thread pool (database reads, file reads, Pillow).
    @app.get("/dags/{dag_id}/runs/{run_id}", response_class=HTMLResponse, dependencies=_ACCESS)
    def run_page(request: Request, session: SessionDep, dag_id: str, run_id: str) -> HTMLResponse:
        html = pages.run_page(_root(request), dag_id, run_id, run_gallery(session, dag_id, run_id))
        return HTMLResponse(html, headers=_PAGE_HEADERS)

    @app.get("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}", response_class=HTMLResponse, dependencies=_ACCESS)
    def task_page(
        request: Request, session: SessionDep, dag_id: str, run_id: str, task_id: str, map_index: MapIndex = "-1"
    ) -> HTMLResponse:
        record = _record(session, dag_id, run_id, task_id, map_index)
        return HTMLResponse(pages.task_page(_root(request), record), headers=_PAGE_HEADERS)

    @app.get("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/images/{index}", dependencies=_ACCESS)
    def output_image(
        session: SessionDep,
        dag_id: str,
        run_id: str,
        task_id: str,
        index: int,
        map_index: MapIndex = "-1",
        size: Size = "thumb",
    ) -> Response:
        views = images(_record(session, dag_id, run_id, task_id, map_index))
        if not 0 <= index < len(views):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"The task recorded {len(views)} image(s)")
        return serve(views[index].path, size)

    @app.get("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/input", dependencies=_ACCESS)
    def input_image(
        session: SessionDep, dag_id: str, run_id: str, task_id: str, map_index: MapIndex = "-1", size: Size = "thumb"
    ) -> Response:
        record = _record(session, dag_id, run_id, task_id, map_index)
        reference = str((record.result or {}).get("input") or "")
        scheme = reference.split("://", 1)[0].lower() if "://" in reference else ""
        if scheme in ("http", "https") or reference[:5].lower() == "data:":
            raise HTTPException(status.HTTP_404_NOT_FOUND, "The input is a URL or inline data, not a file")
        return serve(reference or None, size)

    return app
