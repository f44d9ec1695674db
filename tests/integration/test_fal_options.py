"""fal's newer options and retry hint against the emulator over loopback: each reaches the server and acts."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_flux_redux.emulator import EmulatorConfig
from airflow_flux_redux.exceptions import FluxReduxConfigError, FluxReduxResultExpiredError, FluxReduxTransportError
from airflow_flux_redux.hooks.flux_redux import FluxReduxHook
from airflow_flux_redux.models import QueueState
from tests.conftest import connection_json, context
from tests.integration.test_hook import submit_and_wait
from tests.integration.test_operator import operator
from tests.unit.test_fal_option_extras import WARNING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_flux_redux.emulator import EmulatorServer


@pytest.fixture
def connect(flux_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch):
    """Point ``flux_redux_default`` at the emulator with these extras (fast retries unless given)."""

    def use(**extra: Any) -> EmulatorServer:
        monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(flux_conn.url, **extra))
        return flux_conn

    return use


@pytest.fixture
def short_ttl(flux_conn: EmulatorServer) -> Iterator[float]:
    """The emulator keeps a ``store_io`` off + ``sync_mode`` result only this long."""
    flux_conn.configure(short_result_ttl=0.5)
    yield 0.5
    flux_conn.configure(short_result_ttl=EmulatorConfig.short_result_ttl)  # reset() keeps timings


def request_stats(emulator: EmulatorServer, request_id: str) -> dict[str, Any]:
    return emulator.stats()["requests"][request_id]


def test_each_option_reaches_the_server_as_fal_spells_it(connect, image_uri) -> None:
    emulator = connect(object_expiration_seconds=600, disable_fallback=True, max_queue_length=10)
    handle = FluxReduxHook().submit({"image_url": image_uri})
    seen = request_stats(emulator, handle.request_id)
    assert seen["fal_headers"]["x-fal-object-lifecycle-preference"] == '{"expiration_duration_seconds": 600}'
    assert seen["fal_headers"]["x-app-fal-disable-fallback"] == "true"
    assert seen["query"] == {"fal_max_queue_length": "10"}


def test_the_output_lifetime_is_how_long_the_result_lives(connect, image_uri) -> None:
    connect(object_expiration_seconds=1)
    hook = FluxReduxHook()
    handle, result = submit_and_wait(hook, image_uri)
    assert result.images
    time.sleep(1.3)
    with pytest.raises(FluxReduxResultExpiredError, match=handle.request_id):
        hook.result(handle)


def test_a_bad_lifetime_is_refused_before_anything_is_sent(connect, image_uri) -> None:
    emulator = connect(object_expiration_seconds=0)
    with pytest.raises(FluxReduxConfigError, match="object_expiration_seconds=0; allowed: an integer >= 1"):
        FluxReduxHook().submit({"image_url": image_uri})
    assert sum(emulator.stats()["requests_by_route"].values()) == 0


def test_a_full_queue_refuses_the_submit_and_the_429_is_retried_until_it_drains(connect, image_uri) -> None:
    emulator = connect()
    emulator.configure(queue_seconds=0.4)
    hook = FluxReduxHook()
    for _ in range(2):
        hook.submit({"image_url": image_uri})
    connect(max_queue_length=1, max_retries=6, retry_initial_wait=0.2, retry_max_wait=0.5)
    FluxReduxHook().submit({"image_url": image_uri})
    stats = emulator.stats()
    assert stats["submissions"] == 3
    assert stats["requests_by_route"]["submit"] > 3  # refused (429 queue_full) at least once, then taken


def test_a_queue_that_stays_full_ends_in_a_clear_error_and_no_job(connect, image_uri) -> None:
    emulator = connect()
    emulator.configure(queue_seconds=30)
    FluxReduxHook().submit({"image_url": image_uri})
    connect(max_queue_length=1)
    with pytest.raises(FluxReduxTransportError, match=r"gave up after 4 tries.*429 queue_full.*fal_max_queue_length=1"):
        FluxReduxHook().submit({"image_url": image_uri})
    assert emulator.stats()["submissions"] == 1


def test_sync_mode_with_store_io_off_warns_and_the_result_is_short_lived(
    connect, image_uri, short_ttl: float, times_logged
) -> None:
    connect(store_io=False)
    hook = FluxReduxHook()
    handle, result = submit_and_wait(hook, image_uri, sync_mode=True)
    assert result.images[0].url.startswith("data:")
    assert times_logged(WARNING) == 1
    time.sleep(short_ttl + 0.3)
    with pytest.raises(FluxReduxResultExpiredError):
        hook.result(handle)


def test_sync_mode_with_store_io_on_keeps_the_result(connect, image_uri, short_ttl: float, times_logged) -> None:
    connect(store_io=True)
    hook = FluxReduxHook()
    handle, _ = submit_and_wait(hook, image_uri, sync_mode=True)
    time.sleep(short_ttl + 0.3)
    assert hook.result(handle).images
    assert times_logged(WARNING) == 0


def test_the_operator_warns_once_for_sync_mode_with_store_io_off(connect, image_uri, times_logged) -> None:
    connect(store_io=False)
    result = operator(image_url=image_uri, sync_mode=True, deferrable=False).execute(context())
    assert result["images"]
    assert times_logged(WARNING) == 1


def test_needs_retry_makes_a_500_retryable(flux_conn, image_uri) -> None:
    hook = FluxReduxHook()
    handle, _ = submit_and_wait(hook, image_uri)
    flux_conn.set_faults(
        [{"route": "status", "kind": "status", "code": 500, "times": 2, "headers": {"X-Fal-Needs-Retry": "1"}}]
    )
    assert hook.status(handle).status is QueueState.COMPLETED
    assert flux_conn.stats()["faults_fired"]["status"] == 2


def test_needs_retry_false_stops_the_retries_of_a_503(flux_conn, image_uri) -> None:
    hook = FluxReduxHook()
    handle, _ = submit_and_wait(hook, image_uri)
    flux_conn.set_faults(
        [{"route": "status", "kind": "status", "code": 503, "times": -1, "headers": {"X-Fal-Needs-Retry": "0"}}]
    )
    with pytest.raises(FluxReduxTransportError, match="HTTP 503") as raised:
        hook.status(handle)
    assert "gave up" not in str(raised.value)
    assert flux_conn.stats()["faults_fired"]["status"] == 1
