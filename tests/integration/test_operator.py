"""FluxReduxOperator against the emulator, with a minimal task context (real Airflow runs are in tests/e2e)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, TaskDeferred

from airflow_flux_redux.emulator.images import sample_image
from airflow_flux_redux.exceptions import (
    FluxReduxCancelledError,
    FluxReduxError,
    FluxReduxJobFailedError,
    FluxReduxResultExpiredError,
    FluxReduxTimeoutError,
    InvalidRequestError,
)
from airflow_flux_redux.hooks.flux_redux import FluxReduxHook
from airflow_flux_redux.models import QueueHandle
from airflow_flux_redux.operators.flux_redux import FluxReduxOperator
from airflow_flux_redux.triggers.flux_redux import event_payload
from airflow_flux_redux.version_compat import HAS_TASK_STATE_STORE
from tests.conftest import API_KEY, StateStore, TaskInstance, context

needs_state_store = pytest.mark.skipif(
    not HAS_TASK_STATE_STORE,
    reason="task_state_store (reconnect on retry) arrived in Airflow 3.3; below it every try submits anew",
)


def operator(**kwargs: Any) -> FluxReduxOperator:
    kwargs.setdefault("task_id", "vary")
    kwargs.setdefault("poll_interval", 0.05)
    return FluxReduxOperator(**kwargs)


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    path.write_bytes(sample_image(80, 60))
    return path


def test_worker_wait_saves_images_under_names_we_build(flux_conn, input_file, tmp_path) -> None:
    ctx = context()
    out = tmp_path / "out"
    result = operator(
        image_url=str(input_file), deferrable=False, num_images=2, output_format="png", output_path=f"file://{out}"
    ).execute(ctx)
    request_id = result["request_id"]
    assert sorted(p.name for p in out.iterdir()) == [f"{request_id}_0.png", f"{request_id}_1.png"]
    assert [image["path"] for image in result["images"]] == [f"file://{out}/{request_id}_{i}.png" for i in (0, 1)]
    assert ctx["ti"].xcom["request_id"] == request_id and ctx["ti"].xcom["status_url"].endswith("/status")
    assert json.dumps(result)  # XCom-serialisable
    assert flux_conn.stats()["submissions"] == 1


def test_sync_mode_images_arrive_inline_and_are_saved(flux_conn, image_uri, tmp_path) -> None:
    result = operator(image_url=image_uri, deferrable=False, sync_mode=True, output_path=str(tmp_path)).execute(
        context()
    )
    (image,) = result["images"]
    assert image["url"] is None and Path(image["path"]).stat().st_size > 0


def test_deferrable_submits_then_defers_with_no_secret(flux_conn, image_uri) -> None:
    ctx = context()
    with pytest.raises(TaskDeferred) as info:
        operator(image_url=image_uri, deferrable=True, defer_after=0, timeout=120).execute(ctx)
    trigger = info.value.trigger
    _, kwargs = trigger.serialize()
    assert kwargs["handle"]["request_id"] == ctx["ti"].xcom["request_id"]
    assert API_KEY not in json.dumps(kwargs)
    assert 110 < kwargs["deadline"] - time.time() <= 120
    assert info.value.method_name == "execute_complete" and info.value.timeout is None


@needs_state_store
def test_retry_reconnects_to_the_stored_request(flux_conn, image_uri) -> None:
    flux_conn.configure(queue_seconds=2)
    store = StateStore()
    with pytest.raises(TaskDeferred) as first:
        operator(image_url=image_uri, deferrable=True, defer_after=0).execute(context(store))
    deadline = first.value.trigger.serialize()[1]["deadline"]
    with pytest.raises(TaskDeferred) as retry:
        operator(image_url=image_uri, deferrable=True, defer_after=0).execute(context(store))
    again = retry.value.trigger.serialize()[1]
    assert again["handle"] == first.value.trigger.handle.to_dict()
    assert again["deadline"] == deadline
    assert flux_conn.stats()["submissions"] == 1


@pytest.mark.skipif(HAS_TASK_STATE_STORE, reason="Airflow 3.3+ reconnects through task_state_store")
def test_retry_submits_anew_and_says_why_without_a_state_store(flux_conn, image_uri, logs) -> None:
    for _ in range(2):
        with pytest.raises(TaskDeferred):
            operator(image_url=image_uri, deferrable=True, defer_after=0).execute({"ti": TaskInstance()})
    assert flux_conn.stats()["submissions"] == 2
    assert "has no task_state_store (Airflow 3.3+)" in logs()


@needs_state_store
def test_retry_after_success_returns_the_result_without_paying_again(flux_conn, image_uri) -> None:
    store = StateStore()
    with pytest.raises(TaskDeferred) as first:
        operator(image_url=image_uri, deferrable=True, defer_after=0).execute(context(store))
    FluxReduxHook().wait(first.value.trigger.handle, poll_interval=0.05)
    result = operator(image_url=image_uri, deferrable=True, defer_after=0).execute(context(store))
    assert result["request_id"] == first.value.trigger.handle.request_id
    assert flux_conn.stats()["submissions"] == 1
    # Kept after success: a try the scheduler fails after it finished (Airflow's deferral race) must reconnect,
    # not pay again; [state_store] clear_on_success drops it when Airflow records the success.
    assert store.data["flux_redux_request"]["handle"]["request_id"] == result["request_id"]


def test_resume_from_event(flux_conn, image_uri, tmp_path) -> None:
    with pytest.raises(TaskDeferred) as info:
        operator(image_url=image_uri, deferrable=True, defer_after=0).execute(context())
    trigger = info.value.trigger
    FluxReduxHook().wait(trigger.handle, poll_interval=0.05)
    op = operator(image_url=image_uri, output_path=str(tmp_path))
    event = event_payload(trigger.handle, metrics={"inference_time": 0.1})
    result = op.execute_complete(context(), event)
    assert result["metrics"] == {"inference_time": 0.1} and Path(result["images"][0]["path"]).exists()
    with pytest.raises(FluxReduxError, match="does not understand"):
        op.execute_complete(context(), {"unexpected": True})


@pytest.mark.parametrize(
    "error",
    [
        FluxReduxTimeoutError("passed the deadline", request_id="r-1"),
        FluxReduxJobFailedError("nsfw", error_type="content_policy_violation", request_id="r-1"),
        FluxReduxCancelledError("cancelled", error_type="client_cancelled", request_id="r-1"),
        FluxReduxResultExpiredError("gone", status_code=404, error_type=None, request_id="r-1"),
    ],
)
def test_resume_raises_the_triggers_error_as_the_same_class_with_its_fields(error) -> None:
    """The event is stored as JSON: the error must come back as what it was, not as a string or another class."""
    handle = QueueHandle(request_id="r-1", status_url="http://h/s", response_url="http://h/r", cancel_url="http://h/c")
    event = json.loads(json.dumps(event_payload(handle, error=error)))
    with pytest.raises(type(error)) as raised:
        operator(image_url="https://example.com/a.png").execute_complete(context(), event)
    assert type(raised.value) is type(error) and str(raised.value) == str(error)
    assert raised.value.request_id == "r-1"
    assert getattr(raised.value, "error_type", None) == getattr(error, "error_type", None)


def test_invalid_field_fails_before_submit(flux_conn, image_uri) -> None:
    with pytest.raises(InvalidRequestError, match="image_size: got 'giant'"):
        operator(image_url=image_uri, image_size="giant").execute(context())
    assert flux_conn.stats()["requests_by_route"].get("submit", 0) == 0


def test_local_input_over_the_size_limit_is_refused(flux_conn, input_file) -> None:
    with pytest.raises(FluxReduxError, match="max_input_bytes"):
        operator(image_url=str(input_file), max_input_bytes=100).execute(context())
    assert flux_conn.stats()["requests_by_route"].get("submit", 0) == 0


def test_uncertain_submit_fails_without_task_retries(flux_conn, image_uri) -> None:
    flux_conn.set_faults([{"route": "submit", "kind": "reset", "after_accept": True}])
    with pytest.raises(AirflowFailException, match="may exist"):
        operator(image_url=image_uri).execute(context())
    assert flux_conn.stats()["submissions"] == 1


def test_worker_timeout_cancels_the_remote_job(flux_conn, image_uri) -> None:
    flux_conn.configure(queue_seconds=30)
    ctx = context()
    with pytest.raises(FluxReduxTimeoutError):
        operator(image_url=image_uri, deferrable=False, timeout=0.3).execute(ctx)
    assert flux_conn.stats()["requests"][ctx["ti"].xcom["request_id"]]["cancelled"]


def test_on_kill_in_the_worker_cancels(flux_conn, image_uri) -> None:
    flux_conn.configure(queue_seconds=30)
    op = operator(image_url=image_uri, defer_after=0)
    with pytest.raises(TaskDeferred):
        op.execute(context())
    op.on_kill()
    assert flux_conn.stats()["requests"][op._handle.request_id]["cancelled"]


def test_every_request_field_is_templated() -> None:
    fields = set(FluxReduxOperator.template_fields)
    assert {"image_url", "image_size", "num_inference_steps", "seed", "num_images", "output_path"} <= fields


def test_openlineage_links_input_image_to_output_images(flux_conn, input_file, tmp_path) -> None:
    pytest.importorskip("airflow.providers.openlineage")
    op = operator(image_url=str(input_file), deferrable=False, num_images=2, output_path=f"file://{tmp_path}")
    result = op.execute(context())
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", str(input_file))]
    assert sorted(d.name for d in lineage.outputs) == sorted(
        image["path"].removeprefix("file://") for image in result["images"]
    )


def test_inline_images_are_capped_like_downloads(flux_conn, image_uri, tmp_path) -> None:
    from airflow_flux_redux.exceptions import FluxReduxProtocolError

    op = operator(image_url=image_uri, deferrable=False, sync_mode=True, output_path=str(tmp_path), max_image_bytes=10)
    with pytest.raises(FluxReduxProtocolError, match="max_image_bytes"):
        op.execute(context())
    assert not list(tmp_path.iterdir())


def test_a_real_speed_job_finishes_in_the_worker_without_deferring(flux_conn, image_uri, tmp_path) -> None:
    """Defaults (deferrable): a 1-2 s job completes inside defer_after, so the task never meets the triggerer."""
    flux_conn.configure(queue_seconds=0.2, run_seconds=1.3)
    ctx = context()
    result = operator(image_url=image_uri, poll_interval=1.0, output_path=str(tmp_path)).execute(ctx)
    assert Path(result["images"][0]["path"]).exists()
    assert flux_conn.stats()["submissions"] == 1
    if HAS_TASK_STATE_STORE:
        assert ctx["task_state_store"].data["flux_redux_request"]["handle"]["request_id"] == result["request_id"]


def test_a_job_longer_than_the_window_defers_with_its_event_held(flux_conn, image_uri) -> None:
    flux_conn.configure(queue_seconds=5)
    started = time.time()
    with pytest.raises(TaskDeferred) as info:
        operator(image_url=image_uri, defer_after=0.5).execute(context())
    assert 0.5 <= time.time() - started < 3
    kwargs = info.value.trigger.serialize()[1]
    assert kwargs["not_before"] == pytest.approx(time.time() + 10.0, abs=3)


def test_fals_lines_gathered_in_the_worker_are_written_when_the_window_ends(flux_conn, image_uri, logs) -> None:
    """A job still running when the window ends: its log lines seen in the worker are in the task log."""
    flux_conn.configure(queue_seconds=0, run_seconds=8, log_lines=16)  # a line every 0.5 s
    with pytest.raises(TaskDeferred):
        operator(image_url=image_uri, defer_after=4).execute(context())
    # Within 10 s of its start the wait writes no record of a running job: every line it saw, up to the
    # last poll about four seconds in, goes out when the wait stops.
    assert logs().count("fal: ") >= 4


def test_the_event_hold_follows_airflows_config(flux_conn, image_uri, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__FLUX_REDUX__DEFER_EVENT_HOLD", "0")
    flux_conn.configure(queue_seconds=5)
    with pytest.raises(TaskDeferred) as info:
        operator(image_url=image_uri, defer_after=0).execute(context())
    assert info.value.trigger.serialize()[1]["not_before"] is None


def test_the_worker_wait_is_the_triggers_wait_with_the_stream(flux_conn, image_uri) -> None:
    """Where the stream is served the in-worker wait uses it, like the trigger: one look first (where is the
    job in fal's queue?), then the stream for a job that runs or is next in line."""
    operator(image_url=image_uri, deferrable=False).execute(context())
    routes = flux_conn.stats()["requests_by_route"]
    assert routes.get("stream", 0) == 1 and routes.get("status", 0) == 1


def test_the_input_image_is_read_once_per_try(flux_conn, input_file, monkeypatch) -> None:
    from airflow_flux_redux import inputs

    reads = []
    original = inputs.data_uri
    monkeypatch.setattr(inputs, "data_uri", lambda *a: reads.append(a) or original(*a))
    operator(image_url=str(input_file), deferrable=False).execute(context())
    assert len(reads) == 1


@needs_state_store
def test_a_rerun_whose_finished_result_expired_submits_anew(flux_conn, image_uri) -> None:
    flux_conn.configure(result_ttl=0.5)
    store = StateStore()
    first = operator(image_url=image_uri, deferrable=False).execute(context(store))
    time.sleep(1.0)
    second = operator(image_url=image_uri, deferrable=False).execute(context(store))
    assert second["request_id"] != first["request_id"] and flux_conn.stats()["submissions"] == 2
    assert store.data["flux_redux_request"]["handle"]["request_id"] == second["request_id"]


@needs_state_store
def test_a_reconnected_try_pushes_its_request_for_the_links(flux_conn, image_uri) -> None:
    flux_conn.configure(queue_seconds=2)
    store = StateStore()
    with pytest.raises(TaskDeferred):
        operator(image_url=image_uri, defer_after=0).execute(context(store))
    retry = context(store)
    with pytest.raises(TaskDeferred):
        operator(image_url=image_uri, defer_after=0).execute(retry)
    assert retry["ti"].xcom["request_id"] == store.data["flux_redux_request"]["handle"]["request_id"]


def test_metrics_of_a_job_finished_in_the_worker_reach_the_result(flux_conn, image_uri) -> None:
    result = operator(image_url=image_uri).execute(context())
    assert "inference_time" in result["metrics"]
