"""What the operator records for the gallery and for downstream tasks: input, names, local paths, cost."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from PIL import Image

from airflow_flux_redux.emulator.images import sample_image
from airflow_flux_redux.exceptions import FluxReduxError
from airflow_flux_redux.links import FIRST_IMAGE_ATTR, FluxReduxImageLink
from airflow_flux_redux.operators.flux_redux import FluxReduxOperator
from airflow_flux_redux.version_compat import AIRFLOW_V_3_0_PLUS
from tests.integration.test_operator import context, operator

if TYPE_CHECKING:
    from pathlib import Path


def test_result_traces_outputs_to_their_input_with_named_files_a_downstream_task_can_open(
    flux_conn, tmp_path: Path
) -> None:
    source = tmp_path / "in" / "holiday cat.png"
    source.parent.mkdir()
    source.write_bytes(sample_image(80, 60))
    out = tmp_path / "out"
    result = operator(
        image_url=str(source),
        deferrable=False,
        num_images=2,
        image_size={"width": 640, "height": 480},
        output_format="png",
        output_path=f"file://{out}",
        output_name="{input_stem}_{index}_{request_id}",
    ).execute(context())
    request_id = result["request_id"]
    assert result["input"] == str(source)
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"holiday_cat_{i}_{request_id}.png" for i in (0, 1)]
    for image in result["images"]:
        assert image["path"].startswith("file://")  # output_path's form, as before
        with Image.open(image["local_path"]) as opened:  # what a downstream task opens
            assert opened.size == (640, 480)
    megapixels = round(2 * 640 * 480 / 1e6, 6)
    # fal's X-Fal-Billable-Units header as the hook read it (the emulator bills megapixels made).
    assert result["cost"] == {"megapixels": megapixels, "billable_units": pytest.approx(megapixels)}


def test_a_data_uri_input_is_recorded_by_its_header_only(flux_conn, image_uri: str) -> None:
    result = operator(image_url=image_uri, deferrable=False).execute(context())
    assert result["input"].startswith("data:image/png;base64,... (") and len(result["input"]) < 80
    assert result["images"][0]["local_path"] is None  # nothing saved without output_path


@pytest.mark.parametrize(
    ("pattern", "complaint"),
    [
        ("{stem}_{index}", "unknown field(s) ['stem']"),
        ("{input_stem}", "must contain {index}"),
        ("{index", "not a valid pattern"),
    ],
)
def test_a_bad_output_name_fails_at_once_naming_the_allowed_fields(pattern: str, complaint: str) -> None:
    with pytest.raises(FluxReduxError, match="output_name") as err:
        FluxReduxOperator(task_id="t", image_url="https://x/y.png", output_name=pattern)
    assert (complaint in str(err.value) and "{request_id}" in str(err.value)) or complaint == "must contain {index}"


def test_output_name_cannot_leave_the_output_folder(flux_conn, image_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = operator(
        image_url=image_uri, deferrable=False, output_path=str(out), output_name="../../{index}/..{request_id}"
    ).execute(context())
    (saved,) = [p for p in out.iterdir()]
    assert saved.parent == out and not saved.name.startswith(".") and result["images"][0]["local_path"] == str(saved)


def test_the_image_link_comes_from_the_operator_not_a_missing_xcom(flux_conn, image_uri: str) -> None:
    task = operator(image_url=image_uri, deferrable=False)
    link = FluxReduxImageLink()
    if AIRFLOW_V_3_0_PLUS:
        # Before a result (as at a deferral), the link is empty without reading XCom (which would log an error).
        assert link.get_link(task, ti_key=None) == ""  # type: ignore[arg-type]
    result = task.execute(context())
    assert getattr(task, FIRST_IMAGE_ATTR) == result["images"][0]["url"]
    if AIRFLOW_V_3_0_PLUS:
        assert link.get_link(task, ti_key=None) == result["images"][0]["url"]  # type: ignore[arg-type]
