"""A status COMPLETED with ``error`` fails the task on its own, even when the result would answer 200.

The result is never fetched then: a gateway that answers a failed job's result with 200 (an empty or stale
body) must not turn a failure into a success.
"""

from __future__ import annotations

import asyncio

import pytest

from airflow_flux_redux.exceptions import FluxReduxJobFailedError
from airflow_flux_redux.hooks.flux_redux import ASYNC_CLIENTS
from tests.conftest import context
from tests.integration.test_operator import operator
from tests.integration.test_trigger import events, make_trigger

# The job fails (its status says COMPLETED with error), but its result answers 200 with images.
FAILED_BUT_RESULT_200 = [{"kind": "completed_error_result_ok", "error_type": "content_policy_violation"}]


def test_the_worker_wait_fails_without_fetching_the_result(flux_conn, image_uri) -> None:
    flux_conn.set_faults(FAILED_BUT_RESULT_200)
    with pytest.raises(FluxReduxJobFailedError, match="content_policy_violation"):
        operator(image_url=image_uri, deferrable=False).execute(context())
    assert flux_conn.stats()["requests_by_route"]["result"] == 0


def test_the_trigger_fails_without_fetching_the_result(flux_conn, image_uri) -> None:
    flux_conn.set_faults(FAILED_BUT_RESULT_200)
    trigger = make_trigger(image_uri)

    async def run() -> list[dict]:
        try:
            return await events(trigger)
        finally:
            await ASYNC_CLIENTS.aclose()

    (event,) = asyncio.run(run())
    assert event["status"] == "failed" and event["error"]["class"] == "FluxReduxJobFailedError"
    assert flux_conn.stats()["requests_by_route"]["result"] == 0
