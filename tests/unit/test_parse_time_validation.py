"""Literal request arguments that break the spec fail when the DAG is parsed; templated ones when the task runs."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

import pytest

from airflow_flux_redux.exceptions import InvalidRequestError
from airflow_flux_redux.models import validate_request
from airflow_flux_redux.operators.flux_redux import FluxReduxOperator

if TYPE_CHECKING:
    from pathlib import Path

URL = "https://example.com/in.png"


def run_time_message(**fields: Any) -> str:
    """What ``validate_request`` says of these fields: the message a run would fail with."""
    with pytest.raises(InvalidRequestError) as raised:
        validate_request({"image_url": URL, **fields})
    return str(raised.value)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"image_size": "4k"}, "image_size: got '4k'; allowed: one of square_hd"),
        ({"num_images": 0}, "num_images: got 0; allowed: an integer 1..4 (default 1)"),
        ({"output_format": "gif"}, "output_format: got 'gif'; allowed: jpeg or png"),
        ({"num_inference_steps": 50}, "num_inference_steps: got 50; allowed: an integer 1..12"),
        ({"acceleration": "turbo"}, "acceleration: got 'turbo'; allowed: none, regular or high"),
        ({"image_size": {"width": 0, "height": 512}}, "image_size.width: got 0; allowed: an integer 1..14142"),
    ],
)
def test_a_literal_bad_argument_fails_at_construction_with_the_run_time_message(
    fields: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        FluxReduxOperator(task_id="vary", image_url=URL, **fields)
    assert expected in str(raised.value)
    assert str(raised.value) == run_time_message(**fields)


def test_templated_arguments_wait_for_the_run_and_fail_there_with_the_same_message() -> None:
    op = FluxReduxOperator(
        task_id="vary", image_url=URL, num_images="{{ params.n }}", image_size={"width": "{{ params.w }}", "height": 64}
    )
    op.render_template_fields({"params": {"n": 0, "w": 64}})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError) as raised:
        op.build_request()
    assert str(raised.value) == run_time_message(num_images="0", image_size={"width": "64", "height": 64})
    assert "num_images: got '0'; allowed: an integer 1..4" in str(raised.value)


def test_a_local_image_path_is_not_read_at_parse_time() -> None:
    # The file may exist only on the worker: image_url is resolved when the task runs.
    FluxReduxOperator(task_id="vary", image_url="/data/only-on-the-worker.png")


def _dagbag(folder: Path) -> Any:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow < 3.1
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
    # safe_mode off: the files need not mention "airflow" and "dag" for the parser to read them.
    return DagBag(dag_folder=str(folder), safe_mode=False)


def test_a_dag_file_with_a_literal_bad_argument_is_an_import_error(tmp_path: Path) -> None:
    dag_file = tmp_path / "redux_bad.py"
    dag_file.write_text(
        textwrap.dedent(
            """
            from airflow_flux_redux.operators.flux_redux import FluxReduxOperator
            from airflow.providers.common.compat.sdk import DAG

            with DAG(dag_id="redux_bad", schedule=None):
                FluxReduxOperator(task_id="vary", image_url="https://example.com/in.png", num_images=0)
            """
        )
    )
    (tmp_path / "redux_templated.py").write_text(
        textwrap.dedent(
            """
            from airflow_flux_redux.operators.flux_redux import FluxReduxOperator
            from airflow.providers.common.compat.sdk import DAG

            with DAG(dag_id="redux_templated", schedule=None, params={"n": 2}):
                FluxReduxOperator(task_id="vary", image_url="{{ params.url }}", num_images="{{ params.n }}")
            """
        )
    )
    bag = _dagbag(tmp_path)
    errors = {str(path).rsplit("/", 1)[-1]: text for path, text in bag.import_errors.items()}
    assert list(errors) == ["redux_bad.py"]
    assert "num_images: got 0; allowed: an integer 1..4 (default 1)" in errors["redux_bad.py"]
    assert "redux_templated" in bag.dag_ids


@pytest.mark.parametrize("value", [0.5, -1, "60", True])
def test_a_bad_max_poll_interval_fails_when_the_dag_is_parsed_naming_the_field(value: Any) -> None:
    from airflow_flux_redux.exceptions import FluxReduxError

    with pytest.raises(FluxReduxError, match=r"max_poll_interval: got .*; allowed: a number of seconds >= poll"):
        FluxReduxOperator(task_id="vary", image_url=URL, poll_interval=1.0, max_poll_interval=value)
