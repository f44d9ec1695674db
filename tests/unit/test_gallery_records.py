"""What the gallery computes from a task's stored result: timeline, cost, images; and the HTML it makes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_flux_redux.gallery import pages
from airflow_flux_redux.gallery.records import Cost, TaskRecord, gallery, images, task_cost, timeline
from tests.conftest import API_KEY

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def result(**extra: Any) -> dict[str, Any]:
    return {
        "request_id": "req-1",
        "input": "/data/in/cat.png",
        "images": [
            {
                "url": "https://fal.media/a.png",
                "width": 1024,
                "height": 1024,
                "content_type": "image/png",
                "path": "file:///out/req-1_0.png",
                "local_path": "/out/req-1_0.png",
            },
            {
                "url": "https://fal.media/b.png",
                "width": 512,
                "height": 768,
                "content_type": "image/png",
                "path": None,
                "local_path": None,
            },
        ],
        "seed": 42,
        "has_nsfw_concepts": [False, True],
        "timings": {"inference": 1.5},
        "metrics": {"inference_time": 4.0},
        "cost": {"megapixels": 1.441792, "billable_units": 2.0},
        **extra,
    }


def record(state: str = "success", map_index: int = -1, **kwargs: Any) -> TaskRecord:
    values: dict[str, Any] = {
        "dag_id": "d",
        "run_id": "r",
        "task_id": "vary",
        "map_index": map_index,
        "state": state,
        "result": result(),
        "request_id": "req-1",
        "submitted_at": T0,
        "finished_at": T0 + timedelta(seconds=10),
    }
    values.update(kwargs)
    return TaskRecord(**values)


def test_timeline_splits_the_wait_with_fals_inference_time() -> None:
    phases = timeline(record())
    assert [(p.name, p.seconds) for p in phases] == [
        ("submitted", None),
        ("in queue", 6.0),
        ("in progress", 4.0),
        ("completed", None),
    ]
    assert phases[2].at == T0 + timedelta(seconds=6) and phases[3].at == T0 + timedelta(seconds=10)


def test_timeline_without_queue_metrics_uses_the_models_timings() -> None:
    # A job that finished while the worker followed it: the final status's metrics are not in the result.
    phases = timeline(record(result=result(metrics={})))
    assert [(p.name, p.seconds) for p in phases][1:3] == [("in queue", 8.5), ("in progress", 1.5)]
    assert "timings.inference" in phases[2].note


def test_timeline_without_any_run_time_or_result_says_only_what_is_known() -> None:
    no_run_time = record(result=result(metrics={}, timings={}))
    assert [(p.name, p.seconds) for p in timeline(no_run_time)][1] == ("in queue + in progress", 10.0)
    waiting = record(state="deferred", result=None, finished_at=None)
    assert [p.name for p in timeline(waiting)] == ["submitted"]
    assert timeline(record(state="failed", result=None, request_id=None, submitted_at=None, finished_at=None)) == []


def test_cost_is_summed_over_the_run_and_unknown_units_stay_unknown() -> None:
    older = record(map_index=1, result=result(cost=None))  # a result from before cost was recorded
    no_units = record(map_index=2, result=result(cost={"megapixels": 1.0, "billable_units": None}))
    failed = record(map_index=3, state="failed", result=None)
    run = gallery([failed, no_units, older, record(map_index=0)])
    assert [r.map_index for r in run.records] == [0, 1, 2, 3]
    assert run.cost == Cost(megapixels=1.441792 + 1.0, billable_units=2.0, tasks=3, images=6, unknown=1)
    assert task_cost(no_units).billable_units is None
    assert run.states == {"success": 3, "failed": 1}


def test_images_carry_nsfw_flags_and_where_they_were_saved() -> None:
    first, second = images(record())
    assert (first.nsfw, first.local_path, second.nsfw, second.path) == (False, "/out/req-1_0.png", True, None)


def test_task_page_shows_everything_and_serves_saved_images_by_index_only() -> None:
    html = pages.task_page("/flux-redux", record())
    for needle in (
        "req-1",
        "/data/in/cat.png",
        "42",
        "no, yes",
        "/out/req-1_0.png",
        "1.442 megapixels",
        "fal billable units: 2",
        "inference_time: 4.0",
        "in progress",
    ):
        assert needle in html, needle
    # The saved image comes from the app by index; the unsaved one from its result URL (the browser's fetch).
    assert "/flux-redux/dags/d/runs/r/tasks/vary/images/0?map_index=-1&amp;size=thumb" in html
    assert 'src="https://fal.media/b.png"' in html
    assert "file:///out" not in html.split("<h2>Outputs")[1]  # no path reaches an image URL


def test_pages_escape_what_the_database_holds() -> None:
    evil = "<script>alert(1)</script>"
    hostile = record(task_id=evil, result=result(input=evil, metrics={evil: evil}, seed=evil))
    for html in (pages.task_page("", hostile), pages.run_page("", "d", evil, gallery([hostile]))):
        assert evil not in html and "&lt;script&gt;" in html


def test_a_javascript_url_in_a_result_is_never_an_image_source() -> None:
    bad = result()
    bad["images"][1]["url"] = "javascript:alert(1)"
    assert "javascript:" not in pages.task_page("", record(result=bad))


def test_run_page_is_a_contact_sheet_with_states_errors_and_totals() -> None:
    failed = record(map_index=1, state="failed", result=None, error="FluxReduxJobFailedError: content_policy")
    html = pages.run_page("/p", "d", "r", gallery([record(map_index=0), failed]))
    assert html.count('data-role="thumbnail"') == 2 and 'data-state="failed"' in html
    assert "FluxReduxJobFailedError: content_policy" in html
    assert "<b>2</b>images" in html and "<b>1.442</b>megapixels" in html
    assert API_KEY not in html


def test_the_tab_on_another_operators_task_says_so() -> None:
    other = record(result=None, request_id=None, submitted_at=None, finished_at=None, operator="BashOperator")
    html = pages.task_page("", other)
    assert "is a BashOperator" in html and "Timeline" not in html
    assert "Timeline" in pages.task_page("", record(operator="FluxReduxOperator"))
