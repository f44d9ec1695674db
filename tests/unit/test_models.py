"""Every constraint of the spec, valid and invalid, with the message a user reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_flux_redux.exceptions import InvalidRequestError
from airflow_flux_redux.models import (
    IMAGE_SIZE_PRESETS,
    QueueState,
    QueueStatus,
    ReduxResult,
    parse_error_body,
    validate_request,
)

URL = "https://example.com/cat.png"


def problems(**fields: object) -> str:
    with pytest.raises(InvalidRequestError) as info:
        validate_request({"image_url": URL, **fields})
    return str(info.value)


def test_minimal_request_sends_spec_defaults() -> None:
    payload = validate_request({"image_url": URL}).to_payload()
    assert payload == {
        "image_url": URL,
        "num_inference_steps": 4,
        "sync_mode": False,
        "num_images": 1,
        "enable_safety_checker": True,
    }


def test_every_field_accepted_at_its_limits() -> None:
    request = validate_request(
        {
            "image_url": "data:image/png;base64,iVBORw0KGgo=",
            "image_size": {"width": 14142, "height": 1},
            "num_inference_steps": 12,
            "seed": 0,
            "sync_mode": True,
            "num_images": 4,
            "enable_safety_checker": False,
            "output_format": "png",
            "acceleration": "high",
        }
    )
    assert request.to_payload()["image_size"] == {"width": 14142, "height": 1}
    assert request.seed == 0


@pytest.mark.parametrize("preset", IMAGE_SIZE_PRESETS)
def test_each_preset_is_accepted(preset: str) -> None:
    assert validate_request({"image_url": URL, "image_size": preset}).image_size == preset


def test_missing_image_url_names_the_field() -> None:
    with pytest.raises(InvalidRequestError, match=r"image_url: required; give an http\(s\) URL or a data: URI"):
        validate_request({})


@pytest.mark.parametrize("bad", ["ftp://x/y.png", "cat.png", "", "https://", "data:nocomma"])
def test_image_url_must_be_http_or_data(bad: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"image_url: got .*allowed: an http\(s\) URL or a data: URI"):
        validate_request({"image_url": bad})


def test_unknown_preset_lists_the_allowed_ones() -> None:
    text = problems(image_size="huge")
    assert "image_size: got 'huge'" in text
    for preset in IMAGE_SIZE_PRESETS:
        assert preset in text


@pytest.mark.parametrize(("width", "height", "bad"), [(0, 512, "width"), (512, 14143, "height"), (-1, 2, "width")])
def test_explicit_size_limits(width: int, height: int, bad: str) -> None:
    text = problems(image_size={"width": width, "height": height})
    assert f"image_size.{bad}: got" in text
    assert "an integer 1..14142" in text


def test_explicit_size_needs_both_sides() -> None:
    assert "image_size.height: required" in problems(image_size={"width": 5})


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("num_inference_steps", 0, "1..12"),
    ("num_inference_steps", 13, "1..12"),
    ("num_images", 0, "1..4"),
    ("num_images", 5, "1..4"),
    ("output_format", "gif", "jpeg or png"),
    ("acceleration", "turbo", "none, regular or high"),
    ("seed", "abc", "an integer or null"),
    ("sync_mode", "maybe", "true or false"),
])  # fmt: skip
def test_out_of_range_values_name_field_value_and_allowed(field: str, value: object, allowed: str) -> None:
    text = problems(**{field: value})
    assert f"{field}: got {value!r}" in text
    assert allowed in text


def test_unknown_field_is_rejected_with_the_known_ones() -> None:
    text = problems(prompt="a cat")
    assert "prompt: unknown field" in text
    assert "num_inference_steps" in text


def test_all_problems_reported_at_once() -> None:
    text = problems(num_images=9, num_inference_steps=99)
    assert "num_images" in text and "num_inference_steps" in text


@given(
    steps=st.integers(-50, 50),
    images=st.integers(-5, 10),
    width=st.integers(-10, 20000),
    seed=st.one_of(st.none(), st.integers()),
)
def test_property_request_valid_exactly_within_spec(steps: int, images: int, width: int, seed: int | None) -> None:
    data = {
        "image_url": URL,
        "num_inference_steps": steps,
        "num_images": images,
        "image_size": {"width": width, "height": 64},
        "seed": seed,
    }
    within = 1 <= steps <= 12 and 1 <= images <= 4 and 1 <= width <= 14142
    if within:
        assert validate_request(data).to_payload()["num_images"] == images
    else:
        with pytest.raises(InvalidRequestError) as info:
            validate_request(data)
        named = {"num_inference_steps": not 1 <= steps <= 12, "num_images": not 1 <= images <= 4,
                 "image_size.width": not 1 <= width <= 14142}  # fmt: skip
        for field, is_bad in named.items():
            assert (f"{field}: got" in str(info.value)) is is_bad


@given(st.text(max_size=30))
def test_property_image_url_scheme(text: str) -> None:
    ok = (text.lower().startswith(("http://", "https://")) and len(text) > 8) or (
        text[:5].lower() == "data:" and "," in text
    )
    if ok:
        assert validate_request({"image_url": text}).image_url == text
    else:
        with pytest.raises(InvalidRequestError, match="image_url"):
            validate_request({"image_url": text})


def test_status_failed_only_when_completed_with_error() -> None:
    done = QueueStatus.model_validate({"status": "COMPLETED", "metrics": None})
    failed = QueueStatus.model_validate({"status": "COMPLETED", "error": "nsfw", "error_type": "content_policy"})
    queued = QueueStatus.model_validate({"status": "IN_QUEUE", "queue_position": 3})
    assert not done.failed and done.metrics == {}
    assert failed.failed
    assert queued.status is QueueState.IN_QUEUE and queued.queue_position == 3


def test_result_keeps_known_fields_and_ignores_new_ones() -> None:
    result = ReduxResult.model_validate(
        {"images": [{"url": "https://x/1.jpg", "width": 8, "height": 8}], "seed": 7, "new_field": 1}
    )
    assert result.images[0].width == 8 and result.seed == 7


def test_parse_error_body_both_shapes() -> None:
    listed = {"detail": [{"loc": ["body", "image_url"], "msg": "NSFW", "type": "content_policy_violation"}]}
    flat = {"detail": "Runner failed", "error_type": "runner_scheduling_failure"}
    assert parse_error_body(listed) == ("content_policy_violation", "NSFW")
    assert parse_error_body(flat) == ("runner_scheduling_failure", "Runner failed")
