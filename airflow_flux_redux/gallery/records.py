"""What the gallery shows of one task instance, computed from what Airflow stored (no I/O here).

The operator's XCom result (``return_value``) is read back tolerantly: a result written by an older
version of the provider lacks ``input``, ``cost`` or ``local_path``, and the page still shows the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime


#: The operator classes the gallery is about (a task instance row names its operator's class): the operator and
#: the one behind ``@task.flux_redux``.
OPERATORS = ("FluxReduxOperator", "_FluxReduxDecoratedOperator")


@dataclass(frozen=True)
class TaskRecord:
    """One task instance of FluxReduxOperator as the metadata database has it."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    state: str | None
    #: The operator's return value (None until the task succeeded).
    result: dict[str, Any] | None = None
    #: The request id the operator pushed right after submit, and when it pushed it.
    request_id: str | None = None
    submitted_at: datetime | None = None
    #: When the return value was pushed: the result was fetched and the files saved.
    finished_at: datetime | None = None
    #: Why a failed task failed (the exception's type), where known.
    error: str | None = None
    #: The task's operator class name (the tab is on every task instance's page, not only ours).
    operator: str | None = None

    @property
    def label(self) -> str:
        return self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"


@dataclass(frozen=True)
class ImageView:
    index: int
    width: int | None
    height: int | None
    content_type: str | None
    path: str | None
    local_path: str | None
    url: str | None
    nsfw: bool | None


@dataclass(frozen=True)
class Phase:
    """One step of the request's life: a point (``seconds`` None) or a span."""

    name: str
    at: datetime
    seconds: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Cost:
    megapixels: float = 0.0
    billable_units: float | None = None
    tasks: int = 0
    images: int = 0
    #: Tasks whose result carried no cost record (written before the provider recorded it).
    unknown: int = 0

    def __add__(self, other: Cost) -> Cost:
        units = [u for u in (self.billable_units, other.billable_units) if u is not None]
        return Cost(
            megapixels=self.megapixels + other.megapixels,
            billable_units=sum(units) if units else None,
            tasks=self.tasks + other.tasks,
            images=self.images + other.images,
            unknown=self.unknown + other.unknown,
        )


@dataclass(frozen=True)
class Gallery:
    """A DAG run's gallery: every FluxReduxOperator task instance, in task and map order."""

    records: list[TaskRecord] = field(default_factory=list)

    @property
    def cost(self) -> Cost:
        return sum((task_cost(record) for record in self.records), Cost())

    @property
    def states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records:
            state = record.state or "none"
            counts[state] = counts.get(state, 0) + 1
        return counts


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def images(record: TaskRecord) -> list[ImageView]:
    result = record.result or {}
    flags = result.get("has_nsfw_concepts") or []
    views = []
    for index, item in enumerate(result.get("images") or []):
        if not isinstance(item, dict):
            continue
        views.append(
            ImageView(
                index=index,
                width=item.get("width"),
                height=item.get("height"),
                content_type=item.get("content_type"),
                path=item.get("path"),
                local_path=item.get("local_path"),
                url=item.get("url"),
                nsfw=bool(flags[index]) if index < len(flags) else None,
            )
        )
    return views


def task_cost(record: TaskRecord) -> Cost:
    """The cost recorded by the task: megapixels made and fal's billable units (None where not sent)."""
    if record.result is None:
        return Cost()
    recorded = record.result.get("cost")
    count = len(images(record))
    if not isinstance(recorded, dict):
        return Cost(tasks=1, images=count, unknown=1)
    return Cost(
        megapixels=_number(recorded.get("megapixels")) or 0.0,
        billable_units=_number(recorded.get("billable_units")),
        tasks=1,
        images=count,
    )


def _run_time(result: dict[str, Any]) -> tuple[float | None, str]:
    """How long the model ran: the queue's ``metrics.inference_time``, else the model's ``timings.inference``.

    The queue's metrics come with the final status, which a wait in the worker does not keep; the model's
    own timings are part of every result.
    """
    for field_name, key, source in (
        ("metrics", "inference_time", "fal's inference_time"),
        ("timings", "inference", "the model's timings.inference"),
    ):
        values = result.get(field_name)
        seconds = _number(values.get(key)) if isinstance(values, dict) else None
        if seconds is not None:
            return seconds, source
    return None, ""


def timeline(record: TaskRecord) -> list[Phase]:
    """submitted -> in queue -> in progress -> completed, from the times Airflow recorded and fal's metrics.

    Airflow records when the operator pushed the request id (right after submit) and when it pushed the
    result (after fetching it and saving the files). fal's ``metrics.inference_time`` is the time the model
    ran; the queue time is the rest of the wait, so it also holds the moments Airflow took to resume the
    task and save the images.
    """
    if record.submitted_at is None:
        return []
    phases = [Phase("submitted", record.submitted_at)]
    if record.finished_at is None:
        return phases
    total = max(0.0, (record.finished_at - record.submitted_at).total_seconds())
    inference, source = _run_time(record.result or {})
    if inference is not None and 0 <= inference <= total:
        queued = total - inference
        phases.append(Phase("in queue", record.submitted_at, queued, "until the model ran (the wait less its run)"))
        started = record.submitted_at + timedelta(seconds=queued)
        phases.append(Phase("in progress", started, inference, source))
    else:
        phases.append(Phase("in queue + in progress", record.submitted_at, total, "fal sent no run time"))
    phases.append(Phase("completed", record.finished_at, None, "result fetched and files saved"))
    return phases


def gallery(records: Iterable[TaskRecord]) -> Gallery:
    return Gallery(sorted(records, key=lambda r: (r.task_id, r.map_index)))
