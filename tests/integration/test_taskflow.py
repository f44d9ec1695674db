"""``@task.flux_redux`` against the emulator, with a minimal task context (the mapped DAG runs in tests/e2e)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from airflow.providers.common.compat.sdk import DAG, ObjectStoragePath, TaskDeferred

from airflow_flux_redux.decorators.flux_redux import _FluxReduxDecoratedOperator, flux_redux_task
from airflow_flux_redux.emulator.images import sample_image
from airflow_flux_redux.exceptions import InvalidRequestError
from airflow_flux_redux.hooks.flux_redux import ASYNC_CLIENTS
from airflow_flux_redux.operators.flux_redux import FluxReduxOperator
from airflow_flux_redux.version_compat import HAS_TASK_STATE_STORE
from tests.conftest import API_KEY, StateStore, context

if TYPE_CHECKING:
    from collections.abc import Callable

URL = "https://example.com/in.png"
_dag_ids = iter(range(10**6))


def decorated(function: Callable[..., Any], *args: Any, **decorator_kwargs: Any) -> _FluxReduxDecoratedOperator:
    """The task ``@task.flux_redux(**decorator_kwargs)`` makes of ``function(*args)`` in a DAG file."""
    decorator_kwargs.setdefault("task_id", "vary")
    decorator_kwargs.setdefault("poll_interval", 0.05)
    with DAG(dag_id=f"taskflow_{next(_dag_ids)}", schedule=None, start_date=datetime(2026, 1, 1)):
        operator = flux_redux_task(**decorator_kwargs)(function)(*args).operator
    assert isinstance(operator, _FluxReduxDecoratedOperator)
    return operator


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    path.write_bytes(sample_image(80, 60))
    return path


def no_request_sent(emulator: Any) -> bool:
    return sum(emulator.stats()["requests_by_route"].values()) == 0


def test_a_returned_path_is_sent_and_the_result_is_the_operators(flux_conn, input_file, tmp_path) -> None:
    def vary(photo: str) -> str:
        return photo

    ctx = context()
    out = tmp_path / "out"
    task = decorated(vary, str(input_file), deferrable=False, num_images=2, output_path=str(out))
    result = task.execute(ctx)
    assert result["input"] == str(input_file)
    assert sorted(p.name for p in out.iterdir()) == [f"{result['request_id']}_{i}.jpg" for i in (0, 1)]
    assert ctx["ti"].xcom["request_id"] == result["request_id"]  # links and gallery read it
    assert set(result) == {"request_id", "input", "images", "seed", "has_nsfw_concepts", "timings", "metrics", "cost"}
    assert json.dumps(result)
    assert flux_conn.stats()["submissions"] == 1


def test_a_returned_dict_sets_the_request_over_the_decorators_defaults(flux_conn, image_uri, tmp_path) -> None:
    def vary(photo: str) -> dict:  # a ``-> dict`` annotation must not split the result into XComs
        return {"image_url": photo, "image_size": {"width": 320, "height": 640}, "seed": 7}

    task = decorated(vary, image_uri, deferrable=False, image_size="square", seed=1, output_path=str(tmp_path))
    assert task.multiple_outputs is False
    result = task.execute(context())
    (image,) = result["images"]
    assert (image["width"], image["height"]) == (320, 640)
    assert result["seed"] == 7 and result["input"].startswith("data:image/png;base64,...")


def test_an_object_storage_path_is_read_like_the_operators_input(flux_conn, input_file, tmp_path) -> None:
    def vary() -> ObjectStoragePath:
        return ObjectStoragePath(f"file://{input_file}")

    result = decorated(vary, deferrable=False).execute(context())
    assert result["input"] == str(ObjectStoragePath(f"file://{input_file}"))
    assert flux_conn.stats()["submissions"] == 1


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (None, "image_url: got None (NoneType) from the @task.flux_redux function; allowed: an http(s) URL"),
        (42, "image_url: got 42 (int) from the @task.flux_redux function; allowed:"),
        ([URL], "image_url: got ['https://example.com/in.png'] (list)"),
        ({"image_url": URL, "image_size": "giant"}, "image_size: got 'giant'; allowed: one of square_hd"),
        ({"image_url": URL, "num_images": 5}, "num_images: got 5; allowed: an integer 1..4 (default 1)"),
        ({"image_url": 3.5}, "image_url: got 3.5 (float)"),
        ({"seed": 1}, "image_url: missing from the dict the @task.flux_redux function returned"),
        (
            {"image_url": URL, "output_path": "/tmp/x"},
            "output_path: unknown field in the dict the @task.flux_redux function returned; allowed: image_url, "
            "image_size",
        ),
        ("photos/missing.png", "photos/missing.png does not exist; allowed: an http(s) URL"),
    ],
)
def test_a_bad_return_value_fails_before_any_network_call(flux_conn, returned, expected) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        decorated(lambda: returned).execute(context())
    assert expected in str(raised.value)
    assert no_request_sent(flux_conn)


def test_a_bad_field_fails_with_the_operators_own_message(flux_conn) -> None:
    with pytest.raises(InvalidRequestError) as taskflow:
        decorated(lambda: {"image_url": URL, "acceleration": "turbo"}).execute(context())
    with pytest.raises(InvalidRequestError) as operator:
        FluxReduxOperator(task_id="vary", image_url=URL, acceleration="turbo")
    assert str(taskflow.value) == str(operator.value)
    assert no_request_sent(flux_conn)


def test_a_function_that_raises_fails_the_task_with_its_error(flux_conn) -> None:
    def vary() -> str:
        raise LookupError("no photo today")

    with pytest.raises(LookupError, match="no photo today"):
        decorated(vary).execute(context())
    assert no_request_sent(flux_conn)


def test_image_url_is_the_functions_to_give_not_the_decorators() -> None:
    with pytest.raises(TypeError, match="takes no image_url argument"):
        decorated(lambda: URL, image_url=URL)


def test_a_literal_bad_decorator_argument_fails_when_the_dag_is_parsed() -> None:
    with pytest.raises(InvalidRequestError, match=r"num_images: got 0; allowed: an integer 1\.\.4"):
        decorated(lambda: URL, num_images=0)


def first_event(trigger: Any) -> dict[str, Any]:
    """Run the trigger (as the triggerer would, from its serialized kwargs) to its one event, through JSON."""
    _, kwargs = trigger.serialize()
    assert API_KEY not in json.dumps(kwargs)
    rebuilt = type(trigger)(**json.loads(json.dumps(kwargs)))

    async def run() -> dict[str, Any]:
        try:
            async for event in rebuilt.run():
                return json.loads(json.dumps(event.payload))
            raise AssertionError("the trigger fired no event")
        finally:
            await ASYNC_CLIENTS.aclose()

    return asyncio.run(run())


def test_deferral_resumes_without_running_the_function_again(flux_conn, input_file, tmp_path, monkeypatch) -> None:
    """The resumed task is a fresh instance: it takes its input from the event, and does not call the function."""
    monkeypatch.setenv("AIRFLOW__FLUX_REDUX__DEFER_EVENT_HOLD", "0")
    flux_conn.configure(queue_seconds=0.5)
    calls: list[str] = []

    def vary(photo: str) -> dict:
        calls.append(photo)
        return {"image_url": photo, "image_size": "portrait_4_3"}

    out = tmp_path / "out"
    options = {"defer_after": 0, "output_path": str(out), "output_name": "{input_stem}_{index}"}
    with pytest.raises(TaskDeferred) as deferred:
        decorated(vary, str(input_file), **options).execute(context())
    assert deferred.value.method_name == "execute_complete"
    event = first_event(deferred.value.trigger)

    resumed = decorated(vary, str(input_file), **options)
    result = resumed.execute_complete(context(), event)
    assert calls == [str(input_file)]
    assert result["input"] == str(input_file)
    assert [p.name for p in out.iterdir()] == ["cat_0.jpg"]
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (768, 1024)
    assert flux_conn.stats()["submissions"] == 1


def test_a_data_uri_input_is_named_by_its_header_after_a_resume(flux_conn, image_uri, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__FLUX_REDUX__DEFER_EVENT_HOLD", "0")
    with pytest.raises(TaskDeferred) as deferred:
        decorated(lambda: image_uri, defer_after=0).execute(context())
    kwargs = deferred.value.trigger.serialize()[1]
    assert image_uri not in json.dumps(kwargs)  # the trigger's kwargs stay small: the reference, not the bytes
    result = decorated(lambda: image_uri).execute_complete(context(), first_event(deferred.value.trigger))
    assert result["input"] == f"data:image/png;base64,... ({len(image_uri)} characters inline)"


@pytest.mark.skipif(not HAS_TASK_STATE_STORE, reason="task_state_store (reconnect on retry) arrived in Airflow 3.3")
def test_a_retry_reconnects_to_the_submitted_job(flux_conn, input_file) -> None:
    flux_conn.configure(queue_seconds=2)
    store = StateStore()
    with pytest.raises(TaskDeferred) as first:
        decorated(lambda: str(input_file), defer_after=0).execute(context(store))
    with pytest.raises(TaskDeferred) as retry:
        decorated(lambda: str(input_file), defer_after=0).execute(context(store))
    assert retry.value.trigger.handle == first.value.trigger.handle
    assert flux_conn.stats()["submissions"] == 1


def test_a_real_speed_job_finishes_in_the_worker_window(flux_conn, image_uri, tmp_path) -> None:
    """Defaults (deferrable, defer_after 10 s): a 1-2 s job finishes in the worker, as with the operator."""
    flux_conn.configure(queue_seconds=0.2, run_seconds=1.3)
    result = decorated(lambda: image_uri, poll_interval=1.0, output_path=str(tmp_path)).execute(context())
    assert Path(result["images"][0]["path"]).exists() and flux_conn.stats()["submissions"] == 1
