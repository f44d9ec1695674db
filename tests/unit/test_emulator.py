"""The fal-queue emulator, over real HTTP on loopback: protocol, images, auth, stream and every fault kind."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from PIL import Image

from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
from airflow_flux_redux.emulator.cli import build_parser, config_from_args, config_to_argv
from airflow_flux_redux.emulator.faults import KINDS

if TYPE_CHECKING:
    from collections.abc import Iterator

KEY = "emulator-test-key"
MODEL = "/fal-ai/flux-1/schnell/redux"


def gradient_uri(width: int = 96, height: int = 64) -> str:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


IMAGE = gradient_uri()
SMALL = {"width": 64, "height": 48}


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(key=KEY, seed=7)) as running:
        yield running


@pytest.fixture
def emu(server: EmulatorServer) -> EmulatorServer:
    server.reset()
    server.configure(queue_seconds=0.05, run_seconds=0.2, log_lines=3, result_ttl=3600, keepalive_seconds=15)
    return server


@pytest.fixture
def client(emu: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, headers={"Authorization": f"Key {KEY}"}, timeout=10) as http:
        yield http


def submit(client: httpx.Client, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    response = client.post(MODEL, json={"image_url": IMAGE, "image_size": SMALL, **body}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def wait(client: httpx.Client, handle: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(handle["status_url"], params={"logs": 1})
        if response.status_code == 200:
            return response.json()
        assert response.status_code == 202, response.text
        time.sleep(0.02)
    raise AssertionError("job did not complete")


def result(client: httpx.Client, handle: dict[str, Any]) -> httpx.Response:
    wait(client, handle)
    return client.get(handle["response_url"])


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- protocol ---------------------------------------------------------------------------------------------


def test_submit_answers_like_fal_with_urls_under_owner_and_app(client: httpx.Client) -> None:
    handle = submit(client)
    request_id = handle["request_id"]
    base = f"{client.base_url}".rstrip("/")
    assert handle["status"] == "IN_QUEUE"
    assert handle["response_url"] == f"{base}/fal-ai/flux-1/requests/{request_id}"
    assert handle["status_url"] == f"{handle['response_url']}/status"
    assert handle["cancel_url"] == f"{handle['response_url']}/cancel"
    assert handle["queue_position"] == 0 and handle["logs"] is None and handle["metrics"] == {}
    rebuilt = client.get(f"{base}{MODEL}/requests/{request_id}/status")
    assert rebuilt.status_code == 404 and rebuilt.json() == {"detail": "Request not found"}


def test_job_goes_through_queue_progress_with_growing_logs_then_completed(
    emu: EmulatorServer, client: httpx.Client
) -> None:
    emu.configure(queue_seconds=0.25, run_seconds=0.6, log_lines=4)
    handle = submit(client)
    seen: list[tuple[int, str, int]] = []
    while not seen or seen[-1][0] != 200:
        response = client.get(handle["status_url"], params={"logs": 1})
        body = response.json()
        seen.append((response.status_code, body["status"], len(body.get("logs") or [])))
        time.sleep(0.02)
    states = [state for _, state, _ in seen]
    assert states[0] == "IN_QUEUE" and states[-1] == "COMPLETED"
    assert states == sorted(states, key=["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].index)
    assert all(code == 202 for code, state, _ in seen if state != "COMPLETED")
    progress_logs = [count for _, state, count in seen if state == "IN_PROGRESS"]
    assert progress_logs == sorted(progress_logs) and len(set(progress_logs)) >= 3
    final = client.get(handle["status_url"], params={"logs": 1}).json()
    assert len(final["logs"]) == 4 and final["logs"][0]["source"] == "user"
    assert final["metrics"]["inference_time"] == pytest.approx(0.6, abs=0.01)
    assert "error" not in final and "error_type" not in final
    assert client.get(handle["status_url"]).json()["logs"] is None


def test_queue_position_counts_jobs_ahead_and_result_waits_for_completion(client: httpx.Client) -> None:
    slow = {"X-Emulator-Queue-Seconds": "5"}
    first, second = submit(client, headers=slow), submit(client, headers=slow)
    assert second["queue_position"] == 1
    status = client.get(second["status_url"])
    assert status.status_code == 202 and status.json()["queue_position"] == 1
    early = client.get(first["response_url"])
    assert early.status_code == 400 and early.json() == {"detail": "Request is still in progress"}
    full = client.post(MODEL, params={"fal_max_queue_length": 1}, json={"image_url": IMAGE})
    assert full.status_code == 429 and full.headers["x-fal-needs-retry"] == "1"
    client.put(first["cancel_url"])
    assert client.get(second["status_url"]).json()["queue_position"] == 0


def test_unknown_request_id_is_404(client: httpx.Client) -> None:
    response = client.get("/fal-ai/flux-1/requests/no-such-id/status")
    assert response.status_code == 404 and response.json() == {"detail": "Request not found"}


# -- images -----------------------------------------------------------------------------------------------


def test_result_has_real_images_of_the_requested_size_and_format_served_from_file_urls(client: httpx.Client) -> None:
    handle = submit(client, num_images=3, output_format="png", image_size={"width": 80, "height": 40}, seed=3)
    response = result(client, handle)
    assert response.status_code == 200
    body = response.json()
    assert body["seed"] == 3 and body["has_nsfw_concepts"] == [False] * 3 and body["prompt"] == ""
    assert len(body["images"]) == 3
    for entry in body["images"]:
        file = httpx.get(entry["url"])  # no Authorization: the file host is a CDN
        assert file.status_code == 200 and file.headers["content-type"] == "image/png"
        assert int(file.headers["content-length"]) == len(file.content) == entry["file_size"]
        image = decode(file.content)
        assert (image.format, image.size) == ("PNG", (80, 40)) == ("PNG", (entry["width"], entry["height"]))
    assert len({httpx.get(entry["url"]).content for entry in body["images"]}) == 3


def test_preset_size_and_default_jpeg(client: httpx.Client) -> None:
    response = result(client, submit(client, image_size="square"))
    image = decode(httpx.get(response.json()["images"][0]["url"]).content)
    assert (image.format, image.size) == ("JPEG", (512, 512))


def test_same_seed_same_bytes_other_seed_other_bytes(client: httpx.Client) -> None:
    def first_image(seed: int | None) -> tuple[int, bytes]:
        body = result(client, submit(client, seed=seed) if seed is not None else submit(client)).json()
        return body["seed"], httpx.get(body["images"][0]["url"]).content

    assert first_image(11)[1] == first_image(11)[1]
    assert first_image(11)[1] != first_image(12)[1]
    picked, data = first_image(None)
    assert isinstance(picked, int) and first_image(picked)[1] == data


def test_sync_mode_returns_data_uris(client: httpx.Client) -> None:
    body = result(client, submit(client, sync_mode=True, num_images=2)).json()
    for entry in body["images"]:
        header, _, payload = entry["url"].partition(",")
        assert header == "data:image/jpeg;base64"
        assert decode(base64.b64decode(payload)).size == (64, 48)


def test_http_input_is_fetched_and_unreachable_input_fails_the_job(emu: EmulatorServer, client: httpx.Client) -> None:
    fetched = result(client, submit(client, image_url=emu.sample_image_url(120, 90)))
    assert fetched.status_code == 200
    handle = submit(client, image_url="http://127.0.0.1:9/missing.png")
    status = wait(client, handle)
    assert status["status"] == "COMPLETED" and status["error_type"] == "file_download_error"
    failed = client.get(handle["response_url"])
    assert failed.status_code == 422
    assert failed.json()["detail"][0]["type"] == "file_download_error"
    assert failed.json()["detail"][0]["loc"] == ["body", "image_url"]


def test_image_url_marker_fails_the_job_with_content_policy(client: httpx.Client) -> None:
    handle = submit(client, image_url=f"{IMAGE}#emulator-fail=content_policy")
    assert wait(client, handle)["error_type"] == "content_policy_violation"
    response = client.get(handle["response_url"])
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "content_policy_violation"


def test_request_timeout_header_expires_a_job_that_cannot_start(client: httpx.Client) -> None:
    handle = submit(client, headers={"X-Emulator-Queue-Seconds": "5", "X-Fal-Request-Timeout": "0.1"})
    assert wait(client, handle)["error_type"] == "request_timeout"
    response = client.get(handle["response_url"])
    assert response.status_code == 504 and response.headers["x-fal-request-timeout-type"] == "user"


def test_result_expires_after_ttl(emu: EmulatorServer, client: httpx.Client) -> None:
    emu.configure(result_ttl=0.05)
    handle = submit(client)
    wait(client, handle)
    time.sleep(0.1)
    response = client.get(handle["response_url"])
    assert response.status_code == 404 and response.json()["detail"] == "Result expired"


# -- auth and validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "code"),
    [(None, 401), ("Key wrong", 401), (KEY, 401), (f"Key {KEY}", 200), (f"Bearer {KEY}", 200)],
)
def test_auth_on_queue_routes(emu: EmulatorServer, authorization: str | None, code: int) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(f"{emu.url}{MODEL}", json={"image_url": IMAGE}, headers=headers)
    assert response.status_code == code
    stats = emu.stats()
    assert stats["auth_failures"] == (code == 401) and stats["submissions"] == (code == 200)
    if code == 401:
        assert "detail" in response.json() and KEY not in response.text


def test_wrong_key_on_a_status_poll_marks_the_request_unauthorized(emu: EmulatorServer, client: httpx.Client) -> None:
    handle = submit(client)
    assert httpx.get(handle["status_url"], headers={"Authorization": "Key nope"}).status_code == 401
    assert emu.stats()["requests"][handle["request_id"]]["authorized"] is False
    assert emu.stats()["auth_failures_by_route"] == {"status": 1}


def test_auth_scheme_can_be_restricted_to_bearer() -> None:
    with EmulatorServer(EmulatorConfig(key=KEY, auth_scheme="Bearer")) as bearer_only:
        url = f"{bearer_only.url}{MODEL}"
        assert httpx.post(url, json={"image_url": IMAGE}, headers={"Authorization": f"Key {KEY}"}).status_code == 401
        assert httpx.post(url, json={"image_url": IMAGE}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "image_url"),
        ({"image_url": "ftp://example.com/x.png"}, "image_url"),
        ({"image_url": IMAGE, "num_images": 5}, "num_images"),
        ({"image_url": IMAGE, "image_size": "huge"}, "image_size"),
        ({"image_url": IMAGE, "image_size": {"width": 20000, "height": 10}}, "image_size.width"),
        ({"image_url": IMAGE, "prompt": "a cat"}, "prompt"),
    ],
)
def test_invalid_body_is_422_naming_the_field(
    emu: EmulatorServer, client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = client.post(MODEL, json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert ["body", *field.split(".")] in [entry["loc"] for entry in detail]
    assert all(entry["msg"] and entry["type"] for entry in detail)
    assert emu.stats()["submissions"] == 0


def test_non_json_body_is_422(client: httpx.Client) -> None:
    response = client.post(MODEL, content=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"


# -- cancel -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("queue_seconds", ["5", "0"])
def test_cancel_queued_or_running_job(emu: EmulatorServer, client: httpx.Client, queue_seconds: str) -> None:
    handle = submit(client, headers={"X-Emulator-Queue-Seconds": queue_seconds, "X-Emulator-Run-Seconds": "5"})
    cancel = client.put(handle["cancel_url"])
    assert cancel.status_code == 202 and cancel.json() == {"status": "CANCELLATION_REQUESTED"}
    status = client.get(handle["status_url"])
    assert status.status_code == 200 and status.json()["error_type"] == "client_cancelled"
    response = client.get(handle["response_url"])
    assert response.status_code == 499
    assert response.json() == {"detail": "Request cancelled", "error_type": "client_cancelled"}
    again = client.put(handle["cancel_url"])
    assert again.status_code == 400 and again.json() == {"status": "ALREADY_COMPLETED"}
    stats = emu.stats()["requests"][handle["request_id"]]
    assert stats["cancelled"] is True and stats["cancels"] == 2 and stats["state"] == "COMPLETED"


def test_cancel_completed_and_unknown(client: httpx.Client) -> None:
    handle = submit(client)
    wait(client, handle)
    assert client.put(handle["cancel_url"]).json() == {"status": "ALREADY_COMPLETED"}
    unknown = client.put("/fal-ai/flux-1/requests/nope/cancel")
    assert unknown.status_code == 404 and unknown.json() == {"status": "NOT_FOUND"}


# -- stream -----------------------------------------------------------------------------------------------


def stream_lines(client: httpx.Client, handle: dict[str, Any], timeout: float = 10) -> list[str]:
    with client.stream("GET", f"{handle['status_url']}/stream", params={"logs": 1}, timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line for line in response.iter_lines() if line]


def test_stream_sends_each_change_then_closes_after_completed(emu: EmulatorServer, client: httpx.Client) -> None:
    emu.configure(queue_seconds=0.1, run_seconds=0.3, log_lines=3)
    started = time.monotonic()
    events = [json.loads(line[len("data: ") :]) for line in stream_lines(client, submit(client))]
    assert time.monotonic() - started < 2
    assert next(e["status"] for e in events) == "IN_QUEUE" and events[-1]["status"] == "COMPLETED"
    assert [len(e["logs"]) for e in events if e["status"] == "IN_PROGRESS"] == [1, 2, 3]
    assert events[-1]["metrics"]["inference_time"] > 0


def test_stream_sends_keep_alive_comments_while_idle(emu: EmulatorServer, client: httpx.Client) -> None:
    emu.configure(queue_seconds=0.5, run_seconds=0.05, keepalive_seconds=0.1)
    lines = stream_lines(client, submit(client))
    assert lines.count(": keep-alive") >= 3
    assert lines[0].startswith("data: ") and '"COMPLETED"' in lines[-1]


def test_stream_ends_at_once_when_the_job_is_cancelled(client: httpx.Client) -> None:
    handle = submit(client, headers={"X-Emulator-Queue-Seconds": "30"})
    with httpx.Client(headers=client.headers) as other:
        timer = threading.Timer(0.2, lambda: other.put(handle["cancel_url"]))
        timer.start()
        started = time.monotonic()
        lines = stream_lines(client, handle)
        timer.join()
    assert time.monotonic() - started < 5
    assert '"client_cancelled"' in lines[-1]


# -- faults -----------------------------------------------------------------------------------------------


def test_status_fault_fires_the_configured_number_of_times(emu: EmulatorServer, client: httpx.Client) -> None:
    handle = submit(client)
    emu.set_faults([{"route": "status", "kind": "status", "code": 503, "times": 2, "headers": {"Retry-After": "1"}}])
    codes = [client.get(handle["status_url"]) for _ in range(3)]
    assert [r.status_code for r in codes][:2] == [503, 503] and codes[2].status_code in (200, 202)
    assert codes[0].headers["x-fal-error-type"] == "runner_scheduling_failure"
    assert codes[0].headers["retry-after"] == "1"
    assert codes[0].json()["error_type"] == "runner_scheduling_failure"
    assert emu.stats()["faults_fired"] == {"status": 2}


def test_compact_rules_after_and_always(emu: EmulatorServer, client: httpx.Client) -> None:
    handle = submit(client)
    emu.set_faults(["status:500:route=status:after=1:times=-1"])
    codes = [client.get(handle["status_url"]).status_code for _ in range(4)]
    assert codes[0] in (200, 202) and codes[1:] == [500, 500, 500]
    assert emu.stats()["faults_fired"] == {"status": 3}


def test_probability_fires_some_but_not_all(emu: EmulatorServer, client: httpx.Client) -> None:
    handle = submit(client)
    emu.set_faults([{"route": "status", "kind": "status", "code": 502, "times": -1, "probability": 0.5}])
    codes = [client.get(handle["status_url"]).status_code for _ in range(40)]
    assert 5 < codes.count(502) < 35 and emu.stats()["faults_fired"]["status"] == codes.count(502)


def test_invalid_rule_is_refused(emu: EmulatorServer) -> None:
    with pytest.raises(ValueError, match="kind"):
        emu.set_faults([{"kind": "explode"}])
    with pytest.raises(ValueError, match="route"):
        emu.set_faults([{"kind": "huge_file", "route": "status"}])


@pytest.mark.parametrize(("after_accept", "jobs"), [(False, 0), (True, 1)])
def test_submit_status_fault_creates_a_job_only_after_accept(
    emu: EmulatorServer, client: httpx.Client, after_accept: bool, jobs: int
) -> None:
    emu.set_faults([{"route": "submit", "kind": "status", "code": 502, "after_accept": after_accept}])
    assert client.post(MODEL, json={"image_url": IMAGE}).status_code == 502
    assert emu.stats()["submissions"] == jobs


@pytest.mark.parametrize(
    ("route", "after_accept", "jobs"), [("status", False, 1), ("submit", False, 0), ("submit", True, 1)]
)
def test_reset_drops_the_connection(
    emu: EmulatorServer, client: httpx.Client, route: str, after_accept: bool, jobs: int
) -> None:
    handle = submit(client) if route == "status" else None
    emu.set_faults([{"route": route, "kind": "reset", "after_accept": after_accept}])
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        if handle:
            client.get(handle["status_url"])
        else:
            client.post(MODEL, json={"image_url": IMAGE})
    assert emu.stats()["faults_fired"] == {"reset": 1} and emu.stats()["submissions"] == jobs


def test_submit_delay_takes_the_job_then_answers_late(emu: EmulatorServer, client: httpx.Client) -> None:
    emu.set_faults([{"route": "submit", "kind": "delay", "seconds": 0.5}])
    with pytest.raises(httpx.ReadTimeout):
        client.post(MODEL, json={"image_url": IMAGE}, timeout=0.2)
    assert emu.stats()["submissions"] == 1 and emu.stats()["faults_fired"] == {"delay": 1}


def test_malformed_unknown_status_and_missing_fields(emu: EmulatorServer, client: httpx.Client) -> None:
    handle = submit(client)
    emu.set_faults(["malformed:route=status", "unknown_status", "missing_fields"])
    malformed = client.get(handle["status_url"])
    assert malformed.status_code == 202
    with pytest.raises(json.JSONDecodeError):
        malformed.json()
    paused = client.get(handle["status_url"])
    assert paused.status_code == 202 and paused.json()["status"] == "PAUSED"
    trimmed = client.post(MODEL, json={"image_url": IMAGE}).json()
    assert trimmed["request_id"] and "status_url" not in trimmed and "response_url" not in trimmed
    assert emu.stats()["faults_fired"] == {"malformed": 1, "unknown_status": 1, "missing_fields": 1}


def test_fail_job_and_expire_result(emu: EmulatorServer, client: httpx.Client) -> None:
    emu.set_faults([{"kind": "fail_job", "error_type": "generation_timeout", "code": 504}, "expire_result:after=1"])
    failed = submit(client)
    assert wait(client, failed)["error_type"] == "generation_timeout"
    assert client.get(failed["response_url"]).status_code == 504
    expired = submit(client)
    wait(client, expired)
    assert client.get(expired["response_url"]).status_code == 404
    assert client.get(expired["response_url"]).status_code == 404  # expired stays expired
    assert emu.stats()["faults_fired"] == {"fail_job": 1, "expire_result": 1}


def test_redirect_fault(emu: EmulatorServer, client: httpx.Client) -> None:
    handle = submit(client)
    emu.set_faults([{"route": "status", "kind": "redirect", "location": "http://127.0.0.2:9/elsewhere"}])
    response = client.get(handle["status_url"])
    assert response.status_code == 307 and response.headers["location"] == "http://127.0.0.2:9/elsewhere"


def test_file_faults_huge_and_wrong_content_type(emu: EmulatorServer, client: httpx.Client) -> None:
    url = result(client, submit(client)).json()["images"][0]["url"]
    emu.set_faults([{"kind": "huge_file", "bytes": 3_000_000}, "wrong_content_type"])
    huge = httpx.get(url)
    assert huge.headers["content-type"] == "image/jpeg" and len(huge.content) == 3_000_000
    html = httpx.get(url)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert decode(httpx.get(url).content).size == (64, 48)
    assert emu.stats()["faults_fired"] == {"huge_file": 1, "wrong_content_type": 1}


# -- stats and admin --------------------------------------------------------------------------------------


def test_stats_count_submissions_routes_and_reset_clears_them(emu: EmulatorServer, client: httpx.Client) -> None:
    first, second = submit(client), submit(client)
    client.get(first["status_url"])
    stats = emu.stats()
    assert stats["submissions"] == 2 and stats["submitted_ids"] == [first["request_id"], second["request_id"]]
    assert list(stats["submissions_by_image_url"].values()) == [2]
    assert stats["requests_by_route"]["submit"] == 2 and stats["requests_by_route"]["status"] == 1
    assert stats["requests"][first["request_id"]]["status_polls"] == 1
    assert "requests" not in emu.stats(summary=True)
    emu.reset()
    assert emu.stats()["submissions"] == 0 and client.get(first["status_url"]).status_code == 404


def test_workers_queue_jobs_behind_busy_runners_and_public_url_is_used() -> None:
    config = EmulatorConfig(queue_seconds=0.0, run_seconds=0.3, workers=1, public_url="https://gw.example/v1")
    with EmulatorServer(config) as one_worker, httpx.Client(base_url=one_worker.url) as http:
        http.headers["Authorization"] = "Key anything"
        first = http.post(MODEL, json={"image_url": IMAGE}).json()
        second = http.post(MODEL, json={"image_url": IMAGE}).json()
        assert first["response_url"].startswith("https://gw.example/v1/fal-ai/flux-1/requests/")
        own = second["status_url"].replace("https://gw.example/v1", one_worker.url)
        assert http.get(own).json()["status"] == "IN_QUEUE"
        time.sleep(0.35)
        assert http.get(own).json()["status"] == "IN_PROGRESS"


# -- ways to run it ---------------------------------------------------------------------------------------


def test_subprocess_mode_reports_its_url_and_takes_the_key_from_the_environment() -> None:
    config = EmulatorConfig(key=KEY, queue_seconds=0.01, run_seconds=0.05, faults=["status:503:route=submit"])
    with EmulatorServer(config, in_process=False) as child:
        assert child.url.startswith("http://127.0.0.1:")
        url = f"{child.url}{MODEL}"
        assert httpx.post(url, json={"image_url": IMAGE}, headers={"Authorization": "Key wrong"}).status_code == 401
        headers = {"Authorization": f"Bearer {KEY}"}
        assert httpx.post(url, json={"image_url": IMAGE}, headers=headers).status_code == 503
        assert httpx.post(url, json={"image_url": IMAGE}, headers=headers).status_code == 200
        assert child.stats()["submissions"] == 1


def test_hypercorn_answers_http2_prior_knowledge() -> None:
    with EmulatorServer(EmulatorConfig(key=KEY), server="hypercorn") as h2:
        with httpx.Client(http1=False, http2=True, headers={"Authorization": f"Key {KEY}"}) as http:
            response = http.post(f"{h2.url}{MODEL}", json={"image_url": IMAGE})
            assert response.http_version == "HTTP/2" and response.status_code == 200
            assert response.json()["status_url"].startswith(h2.url)


def test_cli_help_says_it_is_not_a_model() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "airflow_flux_redux.emulator", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "NOT a model" in help_text and "--fault" in help_text and "--public-url" in help_text
    assert all(flag in help_text for flag in ("--relay", "--path-prefix", "--timing", "--short-result-ttl"))
    assert all(f"  {kind} (" in help_text for kind in KINDS)  # every fault kind is explained


# -- relay mode and path prefix ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(key=KEY, relay=True, path_prefix="/api/v1/", queue_seconds=0.05)) as running:
        yield running


def test_relay_hands_out_fal_urls_and_serves_the_same_paths_under_its_base_url(relay: EmulatorServer) -> None:
    assert relay.url.endswith("/api/v1")
    bearer = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(headers=bearer, timeout=10) as http:
        handle = http.post(f"{relay.url}{MODEL}", json={"image_url": IMAGE, "image_size": SMALL}).json()
        request_id = handle["request_id"]
        fal = f"https://queue.fal.run/fal-ai/flux-1/requests/{request_id}"
        assert (handle["response_url"], handle["status_url"], handle["cancel_url"]) == (
            fal, f"{fal}/status", f"{fal}/cancel"
        )  # fmt: skip
        own = handle["response_url"].replace("https://queue.fal.run", relay.url)
        assert own == f"{relay.url}/fal-ai/flux-1/requests/{request_id}"
        wait(http, {"status_url": f"{own}/status"})
        status = http.get(f"{own}/status")
        assert status.status_code == 200 and status.json()["response_url"] == fal
        images = http.get(own).json()["images"]
        assert images[0]["url"].startswith(f"{relay.url}/files/")  # the files are served by the relay itself
        assert httpx.get(images[0]["url"]).status_code == 200
        assert http.put(f"{own}/cancel").json() == {"status": "ALREADY_COMPLETED"}
        assert http.get(f"{own}/status/stream").status_code == 404  # relays serve no status stream
        keyed = {"Authorization": f"Key {KEY}"}
        assert httpx.get(f"{own}/status", headers=keyed).status_code == 401
        assert httpx.post(f"{relay.url}{MODEL}", json={"image_url": IMAGE}, headers=keyed).status_code == 401
        outside = relay.url.removesuffix("/api/v1")
        assert http.get(f"{outside}/fal-ai/flux-1/requests/{request_id}/status").status_code == 404


def test_relay_cancel_on_its_own_path(relay: EmulatorServer) -> None:
    bearer = {"Authorization": f"Bearer {KEY}", "X-Emulator-Queue-Seconds": "5"}
    handle = httpx.post(f"{relay.url}{MODEL}", json={"image_url": IMAGE}, headers=bearer).json()
    own = handle["cancel_url"].replace("https://queue.fal.run", relay.url)
    assert httpx.put(own, headers=bearer).status_code == 202
    assert relay.stats()["requests"][handle["request_id"]]["cancelled"] is True


def test_path_prefix_without_relay_returns_urls_under_the_prefix() -> None:
    with EmulatorServer(EmulatorConfig(path_prefix="/gw"), in_process=False) as prefixed:
        assert prefixed.url.endswith("/gw")
        with httpx.Client(headers={"Authorization": "Key any"}, timeout=10) as http:
            handle = http.post(f"{prefixed.url}{MODEL}", json={"image_url": IMAGE, "image_size": SMALL}).json()
            assert handle["status_url"].startswith(f"{prefixed.url}/fal-ai/flux-1/requests/")
            assert http.get(f"{handle['status_url']}/stream").status_code == 200
            body = result(http, handle).json()
            assert body["images"][0]["url"].startswith(f"{prefixed.url}/files/")
            assert http.post(f"{prefixed.url.removesuffix('/gw')}{MODEL}", json={"image_url": IMAGE}).status_code == 404
        assert prefixed.stats()["submissions"] == 1  # the admin API lives under the prefix too


def test_bad_path_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="path_prefix"):
        EmulatorConfig(path_prefix="api")


# -- per-seed timings -------------------------------------------------------------------------------------


def test_timing_rules_give_each_seed_range_its_own_job_length(emu: EmulatorServer, client: httpx.Client) -> None:
    live = emu.configure(timings=[{"seeds": [0, 9], "queue_seconds": 0, "run_seconds": 0.1}, "10-19:0.4:0.1:0.05"])
    assert live["timings"][1] == {"seeds": [10, 19], "queue_seconds": 0.4, "run_seconds": 0.1, "run_step": 0.05}
    short, stepped, other = submit(client, seed=5), submit(client, seed=14), submit(client, seed=40)
    pinned = submit(client, headers={"X-Emulator-Queue-Seconds": "0", "X-Emulator-Run-Seconds": "0.05"}, seed=14)
    assert client.get(stepped["status_url"]).json()["status"] == "IN_QUEUE"
    assert client.get(short["status_url"]).json()["status"] == "IN_PROGRESS"
    ran = {name: wait(client, handle)["metrics"]["inference_time"] for name, handle in
           (("short", short), ("stepped", stepped), ("other", other), ("pinned", pinned))}  # fmt: skip
    assert ran == {"short": 0.1, "stepped": 0.3, "other": 0.2, "pinned": 0.05}
    emu.configure(timings=[])
    assert wait(client, submit(client, seed=5))["metrics"]["inference_time"] == 0.2


@pytest.mark.parametrize(
    "rule",
    ["0-9:0.1", "9-0:0.1:0.2", {"seeds": [0], "queue_seconds": 0, "run_seconds": 1}, {"seeds": [0, 1], "run": 1}],
)
def test_bad_timing_rule_is_refused(emu: EmulatorServer, rule: Any) -> None:
    with pytest.raises(ValueError, match="timing"):
        emu.configure(timings=[rule])
    with pytest.raises(ValueError, match="timing"):
        EmulatorConfig(timings=[rule])


def test_every_config_field_round_trips_through_the_command_line() -> None:
    config = EmulatorConfig(
        relay=True,
        path_prefix="/api/v1",
        timings=["0-23:0.2:1.3", {"seeds": [24, 47], "queue_seconds": 0.2, "run_seconds": 10, "run_step": 0.2}],
        short_result_ttl=5,
        workers=3,
        seed=9,
        faults=["status:503:times=2"],
    )
    assert config.auth_scheme == "Bearer"  # a relay takes Bearer keys
    assert config_from_args(build_parser().parse_args(config_to_argv(config))) == config
    assert config.timing_for(30) == (0.2, pytest.approx(11.2)) and config.timing_for(None) == (0.5, 1.5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--timing", "0-23:fast:1"])


def test_every_preset_of_the_models_has_a_pixel_size() -> None:
    from airflow_flux_redux.emulator.images import SIZE_PRESETS
    from airflow_flux_redux.models import IMAGE_SIZE_PRESETS

    assert set(SIZE_PRESETS) == set(IMAGE_SIZE_PRESETS)
