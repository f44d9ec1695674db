"""Fault kinds for the test gaps of issue 12 (item 6): a failed status whose result is fine, and download bodies."""

# The emulator fixtures (server, emu, client) come from test_emulator; tests take them as arguments.
# ruff: noqa: F811
from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from tests.unit.test_emulator import client, emu, result, server, submit, wait  # noqa: F401

if TYPE_CHECKING:
    from airflow_flux_redux.emulator import EmulatorServer


def test_completed_error_status_with_a_result_that_answers_200(emu: EmulatorServer, client: httpx.Client) -> None:
    emu.set_faults(["completed_error_result_ok:error_type=content_policy_violation"])
    handle = submit(client)
    status = wait(client, handle)
    assert status["status"] == "COMPLETED" and status["error_type"] == "content_policy_violation"
    assert status["error"]
    response = client.get(handle["response_url"])
    assert response.status_code == 200 and len(response.json()["images"]) == 1
    assert emu.stats()["faults_fired"] == {"completed_error_result_ok": 1}
    assert "error" not in wait(client, submit(client))  # fires once by default


def test_huge_chunked_file_has_no_content_length(emu: EmulatorServer, client: httpx.Client) -> None:
    url = result(client, submit(client)).json()["images"][0]["url"]
    emu.set_faults([{"kind": "huge_chunked_file", "bytes": 3_000_000}])
    with httpx.stream("GET", url) as response:
        assert "content-length" not in response.headers
        assert response.headers["transfer-encoding"] == "chunked"
        assert sum(len(chunk) for chunk in response.iter_bytes()) == 3_000_000
