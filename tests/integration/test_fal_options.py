"""fal's newer options and retry hint against the emulator over loopback."""

from __future__ import annotations

import pytest

from airflow_flux_redux.exceptions import FluxReduxTransportError
from airflow_flux_redux.hooks.flux_redux import FluxReduxHook
from airflow_flux_redux.models import QueueState
from tests.integration.test_hook import submit_and_wait


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
