"""Reads the gallery's records from Airflow's metadata database (in the API server, Airflow 3.1+)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from sqlalchemy import select

from airflow_flux_redux.gallery.failures import failure_type
from airflow_flux_redux.gallery.records import OPERATORS, Gallery, TaskRecord, gallery
from airflow_flux_redux.links import XCOM_REQUEST_ID

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

RETURN_VALUE = "return_value"
_KEYS = (RETURN_VALUE, XCOM_REQUEST_ID)
_Key = tuple[str, int]


def _xcoms(session: Session, dag_id: str, run_id: str, task_id: str | None = None) -> dict[_Key, dict[str, Any]]:
    """The two XComs the gallery reads, per (task_id, map_index): key -> XCom row."""
    query = select(XComModel).where(XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.key.in_(_KEYS))
    if task_id is not None:
        query = query.where(XComModel.task_id == task_id)
    rows: dict[_Key, dict[str, Any]] = {}
    for row in session.scalars(query):
        rows.setdefault((row.task_id, row.map_index), {})[row.key] = row
    return rows


def _record(ti: TaskInstance, xcoms: dict[str, Any]) -> TaskRecord:
    result_row, request_row = xcoms.get(RETURN_VALUE), xcoms.get(XCOM_REQUEST_ID)
    result = XComModel.deserialize_value(result_row) if result_row is not None else None
    request_id = XComModel.deserialize_value(request_row) if request_row is not None else None
    state = None if ti.state is None else str(getattr(ti.state, "value", ti.state))
    return TaskRecord(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        task_id=ti.task_id,
        map_index=ti.map_index,
        state=state,
        result=result if isinstance(result, dict) else None,
        request_id=str(request_id) if request_id else None,
        submitted_at=request_row.timestamp if request_row is not None else None,
        finished_at=result_row.timestamp if result_row is not None else None,
        error=failure_type(ti) if state in ("failed", "up_for_retry") else None,
        operator=ti.operator,
    )


def task_record(session: Session, dag_id: str, run_id: str, task_id: str, map_index: int) -> TaskRecord | None:
    ti = session.scalar(
        select(TaskInstance).where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.task_id == task_id,
            TaskInstance.map_index == map_index,
        )
    )
    if ti is None:
        return None
    return _record(ti, _xcoms(session, dag_id, run_id, task_id).get((task_id, map_index), {}))


def run_gallery(session: Session, dag_id: str, run_id: str) -> Gallery:
    """Every task instance of the run that is a FluxReduxOperator or pushed a fal request id."""
    xcoms = _xcoms(session, dag_id, run_id)
    tis = session.scalars(
        select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
    ).all()
    ours = [
        ti for ti in tis if ti.operator in OPERATORS or XCOM_REQUEST_ID in xcoms.get((ti.task_id, ti.map_index), {})
    ]
    return gallery(_record(ti, xcoms.get((ti.task_id, ti.map_index), {})) for ti in ours)
