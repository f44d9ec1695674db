"""Extra links on the task: the gallery tab (Airflow 3.1+) and the first result image.

Airflow 3 computes every extra link in the worker when the task finishes *or defers* (task-sdk's
``finalize``) and stores it; the UI only reads what was stored. Reading an XCom that does not exist yet
there logs ``[error] XCom not found``, on every deferral. So on Airflow 3 the links read nothing: the
gallery link is built from the task instance's key, the image link from what the operator itself just
made (``FIRST_IMAGE_ATTR``). Airflow 2's webserver calls ``get_link`` with the DAG's operator, so there
the image link reads the XCom the operator pushed (a missing one is a quiet ``None`` on Airflow 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

from airflow_flux_redux.gallery import GALLERY_AVAILABLE, task_tab_url
from airflow_flux_redux.version_compat import AIRFLOW_V_3_0_PLUS

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator, TaskInstanceKey

XCOM_REQUEST_ID = "request_id"
XCOM_STATUS_URL = "status_url"
XCOM_IMAGE_URL = "first_image_url"
#: The operator sets this attribute on itself when it has a first image (read by FluxReduxImageLink).
FIRST_IMAGE_ATTR = "_flux_redux_first_image"


class FluxReduxGalleryLink(BaseOperatorLink):
    """The task's gallery tab in the Airflow UI: images, timeline, metrics, cost (Airflow 3.1+)."""

    name = "FLUX Redux gallery"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        map_index = getattr(ti_key, "map_index", -1)
        return task_tab_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id, -1 if map_index is None else map_index)


class FluxReduxImageLink(BaseOperatorLink):
    """The first generated image: its result URL, else where it was saved."""

    name = "FLUX Redux image"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        if AIRFLOW_V_3_0_PLUS:
            return str(getattr(operator, FIRST_IMAGE_ATTR, None) or "")
        value = XCom.get_value(ti_key=ti_key, key=XCOM_IMAGE_URL)
        return str(value) if value else ""


def operator_links() -> tuple[BaseOperatorLink, ...]:
    """The operator's extra links on this Airflow: no gallery link where there is no gallery."""
    if GALLERY_AVAILABLE:
        return (FluxReduxGalleryLink(), FluxReduxImageLink())
    return (FluxReduxImageLink(),)
