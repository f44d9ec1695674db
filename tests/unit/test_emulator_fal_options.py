"""fal's newer request options and answer headers, as the emulator checks and reflects them (issue 12, item 5)."""

# The emulator fixtures (server, emu, client) come from test_emulator; tests take them as arguments.
# ruff: noqa: F811

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.unit.test_emulator import KEY, MODEL, client, emu, result, server, submit, wait  # noqa: F401

if TYPE_CHECKING:
    from airflow_flux_redux.emulator import EmulatorServer

LIFECYCLE = "X-Fal-Object-Lifecycle-Preference"


@pytest.mark.parametrize(
    "value",
    ["{}", "7", "[7]", "not json", '{"expiration_duration_seconds": 0}', '{"expiration_duration_seconds": "60"}',
     '{"expiration_duration_seconds": true}', '{"expiration_duration_seconds": 60, "other": 1}'],
)  # fmt: skip
def test_bad_lifecycle_preference_is_400_naming_the_header(
    emu: EmulatorServer, client: httpx.Client, value: str
) -> None:
    response = client.post(MODEL, json={"image_url": "https://example.com/x.png"}, headers={LIFECYCLE: value})
    assert response.status_code == 400, response.text
    assert response.json()["error_type"] == "bad_request" and response.headers["x-fal-error-type"] == "bad_request"
    assert LIFECYCLE in response.json()["detail"]
    assert emu.stats()["submissions"] == 0


def test_lifecycle_preference_sets_that_jobs_result_lifetime(client: httpx.Client) -> None:
    short = submit(client, headers={LIFECYCLE: '{"expiration_duration_seconds": 0.4}'})
    kept = submit(client)
    fetched = result(client, short)
    assert fetched.status_code == 200
    file_url = fetched.json()["images"][0]["url"]
    wait(client, kept)
    time.sleep(0.5)
    expired = client.get(short["response_url"])
    assert expired.status_code == 404 and expired.json()["error_type"] == "result_expired"
    assert httpx.get(file_url).status_code == 404
    assert client.get(kept["response_url"]).status_code == 200


@pytest.mark.parametrize(("value", "code"), [("true", 200), ("FALSE", 200), ("yes", 400), ("1", 400)])
def test_disable_fallback_is_true_or_false_and_recorded(
    emu: EmulatorServer, client: httpx.Client, value: str, code: int
) -> None:
    body = {"image_url": "https://example.com/x.png"}
    response = client.post(MODEL, json=body, headers={"x-app-fal-disable-fallback": value})
    assert response.status_code == code, response.text
    if code == 400:
        assert "x-app-fal-disable-fallback" in response.json()["detail"]
    else:
        request = emu.stats()["requests"][response.json()["request_id"]]
        assert request["fal_headers"]["x-app-fal-disable-fallback"] == value


def test_max_queue_length_refuses_when_that_many_jobs_are_queued(emu: EmulatorServer, client: httpx.Client) -> None:
    slow = {"X-Emulator-Queue-Seconds": "5"}
    first = submit(client, headers=slow)
    assert (
        client.post(
            MODEL, params={"fal_max_queue_length": 2}, json={"image_url": "https://e.x/a.png"}, headers=slow
        ).status_code
        == 200
    )
    full = client.post(MODEL, params={"fal_max_queue_length": 2}, json={"image_url": "https://e.x/a.png"})
    assert full.status_code == 429 and full.headers["x-fal-needs-retry"] == "1"
    assert full.json()["error_type"] == "queue_full"
    bad = client.post(MODEL, params={"fal_max_queue_length": "-1"}, json={"image_url": "https://e.x/a.png"})
    assert bad.status_code == 400 and "fal_max_queue_length" in bad.json()["detail"]
    stats = emu.stats()
    assert stats["submissions"] == 2
    second = stats["submitted_ids"][1]
    assert stats["requests"][second]["query"] == {"fal_max_queue_length": "2"}
    assert stats["requests"][first["request_id"]]["query"] == {}


def test_store_io_off_with_sync_mode_keeps_the_result_only_briefly(emu: EmulatorServer, client: httpx.Client) -> None:
    emu.configure(short_result_ttl=0.3)
    try:
        off = {"X-Fal-Store-IO": "0"}
        brief = submit(client, headers=off, sync_mode=True)
        synced, stored = submit(client, sync_mode=True), submit(client, headers=off)
        for handle in (brief, synced, stored):
            wait(client, handle)
        assert client.get(brief["response_url"]).status_code == 200
        time.sleep(0.4)
        assert client.get(brief["response_url"]).status_code == 404
        assert client.get(synced["response_url"]).status_code == 200
        assert client.get(stored["response_url"]).status_code == 200
    finally:
        emu.configure(short_result_ttl=360)


def test_stats_show_the_fal_headers_a_submit_carried_but_never_the_key(
    emu: EmulatorServer, client: httpx.Client
) -> None:
    headers = {"X-Fal-Store-IO": "0", "X-Fal-Queue-Priority": "low", LIFECYCLE: '{"expiration_duration_seconds": 60}'}
    handle = client.post(MODEL, params={"fal_webhook": "https://hook.example/x"}, json={"image_url": "https://e.x/a.png"},
                         headers=headers).json()  # fmt: skip
    request = emu.stats()["requests"][handle["request_id"]]
    assert request["fal_headers"] == {name.lower(): value for name, value in headers.items()}
    assert request["query"] == {"fal_webhook": "https://hook.example/x"}
    assert KEY not in json.dumps(emu.stats())


def test_every_result_carries_the_megapixels_billed(client: httpx.Client) -> None:
    response = result(client, submit(client, num_images=2, image_size={"width": 100, "height": 50}))
    assert response.headers["x-fal-billable-units"] == "0.01"
    square = result(client, submit(client, image_size="square_hd"))
    assert square.headers["x-fal-billable-units"] == "1.048576"


@pytest.mark.parametrize(
    ("rule", "present", "absent"),
    [
        ({"code": 429}, "x-fal-needs-retry", "x-fal-retryable"),
        ({"code": 503}, None, "x-fal-needs-retry"),
        ({"code": 503, "retry_header": "needs-retry"}, "x-fal-needs-retry", "x-fal-retryable"),
        ({"code": 429, "retry_header": "retryable"}, "x-fal-retryable", "x-fal-needs-retry"),
        ({"code": 503, "retry_header": "none"}, None, "x-fal-retryable"),
    ],
)
def test_status_faults_choose_their_retry_header(
    emu: EmulatorServer, client: httpx.Client, rule: dict[str, object], present: str | None, absent: str
) -> None:
    emu.set_faults([{"kind": "status", "route": "submit", **rule}])
    response = client.post(MODEL, json={"image_url": "https://e.x/a.png"})
    assert response.status_code == rule["code"]
    if present:
        assert response.headers[present] in ("1", "true")
    assert absent not in response.headers


def test_bad_retry_header_is_refused(emu: EmulatorServer) -> None:
    with pytest.raises(ValueError, match="retry_header"):
        emu.set_faults([{"kind": "status", "code": 503, "retry_header": "maybe"}])
