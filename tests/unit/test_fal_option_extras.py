"""fal's newer request options as connection extras: parsed once, written on the submit call as fal spells them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from airflow_flux_redux.connection_form import conn_fields
from airflow_flux_redux.hooks.flux_redux import FluxReduxHook
from tests.unit.test_settings import settings

if TYPE_CHECKING:
    from airflow_flux_redux.hooks._settings import FluxReduxSettings

WARNING = "with store_io off fal may keep a result that large only minutes"
REQUEST = {"image_url": "https://example.com/in.png"}


def submit_call(current: FluxReduxSettings, webhook_url: str | None = None, **fields: Any) -> dict[str, Any]:
    return FluxReduxHook()._submit_call(current, {**REQUEST, **fields}, webhook_url)


def test_the_three_options_become_fals_headers_and_query_parameter() -> None:
    call = submit_call(
        settings("", object_expiration_seconds="600", disable_fallback="true", max_queue_length=3),
        webhook_url="https://h/k",
    )
    assert json.loads(call["headers"]["X-Fal-Object-Lifecycle-Preference"]) == {"expiration_duration_seconds": 600}
    assert call["headers"]["x-app-fal-disable-fallback"] == "true"
    assert call["params"] == {"fal_max_queue_length": "3", "fal_webhook": "https://h/k"}


def test_unset_options_send_nothing() -> None:
    call = submit_call(settings(""))
    assert call["headers"] == {}
    assert call["params"] is None


def test_the_connection_form_shows_them() -> None:
    fields = conn_fields()
    assert fields["object_expiration_seconds"]["schema"] == {"type": ["integer", "null"], "minimum": 1}
    assert fields["disable_fallback"]["schema"] == {"type": ["boolean", "null"]}
    assert fields["max_queue_length"]["schema"] == {"type": ["integer", "null"], "minimum": 0}


def test_options_are_part_of_the_pooled_client_key() -> None:
    assert settings(max_queue_length=3).client_key != settings(max_queue_length=4).client_key


@pytest.mark.parametrize(
    ("store_io", "sync_mode", "warned"),
    [("false", True, True), ("false", False, False), ("true", True, False), (None, True, False)],
)
def test_sync_mode_with_store_io_off_warns_once(
    store_io: str | None, sync_mode: bool, warned: bool, times_logged
) -> None:
    submit_call(settings(store_io=store_io), sync_mode=sync_mode)
    assert times_logged(WARNING) == (1 if warned else 0)
