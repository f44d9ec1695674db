"""Extra links on the task: the request's status and the first result image."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator, TaskInstanceKey

XCOM_REQUEST_ID = "request_id"
XCOM_STATUS_URL = "status_url"
XCOM_IMAGE_URL = "first_image_url"


class _XComLink:
    """A link whose URL the operator pushed to XCom under ``key`` (before deferring, where known)."""

    key: ClassVar[str]

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        value = XCom.get_value(ti_key=ti_key, key=self.key)
        return str(value) if value else ""


class FluxReduxRequestLink(_XComLink, BaseOperatorLink):
    """The fal status URL of the request (JSON; needs the key where the server checks it)."""

    name = "FLUX Redux request"
    key = XCOM_STATUS_URL


class FluxReduxImageLink(_XComLink, BaseOperatorLink):
    """The first generated image."""

    name = "FLUX Redux image"
    key = XCOM_IMAGE_URL
