"""FluxReduxHook against the emulator over loopback: the calls, the retry policy, the key's safety."""

from __future__ import annotations

import io
import json
import time

import httpx
import pytest

from airflow_flux_redux.exceptions import (
    FluxReduxAuthError,
    FluxReduxJobFailedError,
    FluxReduxProtocolError,
    FluxReduxResultExpiredError,
    FluxReduxSubmitUncertainError,
    FluxReduxTimeoutError,
    FluxReduxTransportError,
    FluxReduxUntrustedUrlError,
    InvalidRequestError,
)
from airflow_flux_redux.hooks.flux_redux import ASYNC_CLIENTS, FluxReduxAsyncHook, FluxReduxHook
from airflow_flux_redux.models import QueueHandle, QueueState
from tests.conftest import API_KEY, connection_json


def submit_and_wait(hook: FluxReduxHook, image_uri: str, **fields: object):
    handle = hook.submit({"image_url": image_uri, **fields})
    return handle, hook.wait(handle, poll_interval=0.05, deadline=time.time() + 30)


def test_submit_wait_result_makes_real_images(flux_conn, image_uri) -> None:
    hook = FluxReduxHook()
    handle, result = submit_and_wait(hook, image_uri, num_images=2, image_size="square", seed=5, output_format="png")
    assert "/requests/" in handle.status_url and handle.request_id in handle.response_url
    assert [(i.width, i.height, i.content_type) for i in result.images] == [(512, 512, "image/png")] * 2
    assert result.seed == 5
    body = httpx.get(result.images[0].url).content
    assert body.startswith(b"\x89PNG")
    assert flux_conn.stats()["submissions"] == 1


def test_status_goes_through_the_three_states_with_logs(flux_conn, image_uri) -> None:
    flux_conn.configure(queue_seconds=0.3, run_seconds=0.6)
    hook = FluxReduxHook()
    handle = hook.submit({"image_url": image_uri})
    seen = []
    hook.wait(handle, poll_interval=0.05, deadline=time.time() + 30, on_status=seen.append)
    states = [s.status for s in seen]
    assert states[0] is QueueState.IN_QUEUE and seen[0].queue_position is not None
    assert QueueState.IN_PROGRESS in states and states[-1] is QueueState.COMPLETED
    assert seen[-1].logs and "inference_time" in seen[-1].metrics


async def test_async_twin_has_the_same_calls(flux_conn, image_uri) -> None:
    hook = FluxReduxAsyncHook()
    handle = await hook.submit({"image_url": image_uri, "num_images": 1})
    status = await hook.status(handle)
    result = await hook.wait(handle, poll_interval=0.05, deadline=time.time() + 30)
    assert status.status in (QueueState.IN_QUEUE, QueueState.IN_PROGRESS)
    assert len(result.images) == 1
    assert await hook.cancel(handle) == "ALREADY_COMPLETED"
    await ASYNC_CLIENTS.aclose()


async def test_stream_yields_until_completed(flux_conn, image_uri) -> None:
    hook = FluxReduxAsyncHook()
    handle = await hook.submit({"image_url": image_uri})
    states = [s.status async for s in hook.stream(handle)]
    assert states[-1] is QueueState.COMPLETED and len(states) >= 2
    await ASYNC_CLIENTS.aclose()


def test_cancel_outcomes(flux_conn, image_uri) -> None:
    flux_conn.configure(queue_seconds=5)
    hook = FluxReduxHook()
    handle = hook.submit({"image_url": image_uri})
    assert hook.cancel(handle) == "CANCELLATION_REQUESTED"
    with pytest.raises(FluxReduxJobFailedError, match="client_cancelled"):
        hook.wait(handle, poll_interval=0.05)
    assert hook.cancel(handle) == "ALREADY_COMPLETED"
    ghost = handle.model_copy(update={"cancel_url": handle.cancel_url.replace(handle.request_id, "nope")})
    assert hook.cancel(ghost) == "NOT_FOUND"


def test_invalid_input_fails_before_any_network_call(flux_conn) -> None:
    with pytest.raises(InvalidRequestError, match="num_images: got 7"):
        FluxReduxHook().submit({"image_url": "https://x/y.png", "num_images": 7})
    assert flux_conn.stats()["requests_by_route"].get("submit", 0) == 0


def test_wrong_key_is_a_clear_auth_error_without_the_key(flux_conn, monkeypatch, image_uri, logs) -> None:
    wrong = "wrong-key-abcdef-0123456789"
    monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(flux_conn.url).replace(API_KEY, wrong))
    with pytest.raises(FluxReduxAuthError) as info:
        FluxReduxHook().submit({"image_url": image_uri})
    assert "401" in str(info.value) and "auth_scheme" in str(info.value)
    assert wrong not in str(info.value) and wrong not in logs()
    assert flux_conn.stats()["submissions"] == 0


def test_bearer_scheme_for_gateways(monkeypatch, image_uri) -> None:
    from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(EmulatorConfig(key=API_KEY, auth_scheme="Bearer", queue_seconds=0, run_seconds=0.05)) as gw:
        monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(gw.url))
        with pytest.raises(FluxReduxAuthError):
            FluxReduxHook().submit({"image_url": image_uri})
        monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(gw.url, auth_scheme="Bearer"))
        _handle, result = submit_and_wait(FluxReduxHook(), image_uri)
        assert result.images and gw.stats()["submissions"] == 1


@pytest.mark.parametrize("route", ["status", "result", "cancel"])
@pytest.mark.parametrize("code", [429, 502, 503, 504])
def test_transient_answers_are_retried(flux_conn, image_uri, route, code) -> None:
    hook = FluxReduxHook()
    handle, _ = submit_and_wait(hook, image_uri)
    flux_conn.set_faults([{"route": route, "kind": "status", "code": code, "times": 2}])
    call = {"status": hook.status, "result": hook.result, "cancel": hook.cancel}[route]
    call(handle)
    assert flux_conn.stats()["faults_fired"]["status"] == 2


def test_connection_reset_is_retried(flux_conn, image_uri) -> None:
    hook = FluxReduxHook()
    handle, _ = submit_and_wait(hook, image_uri)
    flux_conn.set_faults([{"route": "status", "kind": "reset", "times": 2}])
    assert hook.status(handle).status is QueueState.COMPLETED
    assert flux_conn.stats()["faults_fired"]["reset"] == 2


def test_retry_after_is_honoured(flux_conn, image_uri, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(flux_conn.url, retry_max_wait=5))
    hook = FluxReduxHook()
    handle, _ = submit_and_wait(hook, image_uri)
    flux_conn.set_faults([{"route": "status", "kind": "status", "code": 429, "headers": {"Retry-After": "1"}}])
    started = time.monotonic()
    hook.status(handle)
    assert time.monotonic() - started >= 0.9


def test_bounded_tries_then_an_error_naming_the_request(flux_conn, image_uri) -> None:
    hook = FluxReduxHook()
    handle, _ = submit_and_wait(hook, image_uri)
    flux_conn.set_faults([{"route": "status", "kind": "status", "code": 503, "times": -1}])
    with pytest.raises(FluxReduxTransportError, match="gave up after 4 tries") as info:
        hook.status(handle)
    assert handle.request_id in str(info.value)
    assert flux_conn.stats()["faults_fired"]["status"] == 4


def test_user_start_timeout_is_not_retried(flux_conn, image_uri) -> None:
    hook = FluxReduxHook()
    handle, _ = submit_and_wait(hook, image_uri)
    flux_conn.set_faults(
        [{"route": "result", "kind": "status", "code": 504, "headers": {"X-Fal-Request-Timeout-Type": "user"}}]
    )
    with pytest.raises(FluxReduxTimeoutError, match="request_timeout"):
        hook.result(handle)
    assert flux_conn.stats()["faults_fired"]["status"] == 1


@pytest.mark.parametrize("code", [429, 503])
def test_submit_retried_when_the_server_did_not_take_it(flux_conn, image_uri, code) -> None:
    flux_conn.set_faults([{"route": "submit", "kind": "status", "code": code, "times": 2}])
    FluxReduxHook().submit({"image_url": image_uri})
    assert flux_conn.stats()["submissions"] == 1


def test_submit_connection_refused_is_retried_then_clear(monkeypatch, image_uri) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json("http://127.0.0.1:9"))
    with pytest.raises(FluxReduxTransportError, match=r"gave up after 4 tries.*ConnectError"):
        FluxReduxHook().submit({"image_url": image_uri})


@pytest.mark.parametrize(
    "fault",
    [
        {"route": "submit", "kind": "reset", "after_accept": True},
        {"route": "submit", "kind": "status", "code": 502, "after_accept": True},
        {"route": "submit", "kind": "status", "code": 504, "after_accept": True},
        {"route": "submit", "kind": "delay", "seconds": 3},
    ],
    ids=["reset", "502", "504", "read-timeout"],
)
def test_submit_is_at_most_once(flux_conn, image_uri, monkeypatch, fault) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(flux_conn.url, timeout=1))
    flux_conn.set_faults([fault])
    with pytest.raises(FluxReduxSubmitUncertainError, match="may exist") as info:
        FluxReduxHook().submit({"image_url": image_uri})
    assert "not resubmitted" in str(info.value)
    time.sleep(0.1)
    assert flux_conn.stats()["submissions"] == 1


def test_malformed_and_unknown_answers_are_clear_errors(flux_conn, image_uri) -> None:
    hook = FluxReduxHook()
    handle, _ = submit_and_wait(hook, image_uri)
    flux_conn.set_faults([{"route": "status", "kind": "malformed"}])
    with pytest.raises(FluxReduxProtocolError, match="status answer"):
        hook.status(handle)
    flux_conn.set_faults([{"route": "status", "kind": "unknown_status"}])
    with pytest.raises(FluxReduxProtocolError, match="status"):
        hook.status(handle)
    flux_conn.set_faults([{"route": "submit", "kind": "missing_fields"}])
    with pytest.raises(FluxReduxProtocolError, match="status_url"):
        hook.submit({"image_url": image_uri})


def test_failed_job_carries_fal_error_type(flux_conn, image_uri) -> None:
    flux_conn.set_faults([{"route": "submit", "kind": "fail_job"}])
    hook = FluxReduxHook()
    handle = hook.submit({"image_url": image_uri})
    with pytest.raises(FluxReduxJobFailedError, match="content_policy_violation") as info:
        hook.wait(handle, poll_interval=0.05)
    assert info.value.error_type == "content_policy_violation"
    with pytest.raises(FluxReduxJobFailedError, match="422"):
        hook.result(handle)


def test_expired_result_names_the_request(flux_conn, image_uri) -> None:
    hook = FluxReduxHook()
    handle, _ = submit_and_wait(hook, image_uri)
    flux_conn.set_faults([{"route": "result", "kind": "expire_result"}])
    with pytest.raises(FluxReduxResultExpiredError, match=handle.request_id):
        hook.result(handle)


def test_foreign_status_url_is_refused_and_gets_no_key(flux_conn, image_uri, monkeypatch) -> None:
    from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(EmulatorConfig()) as foreign:
        hook = FluxReduxHook()
        handle = hook.submit({"image_url": image_uri})
        moved = QueueHandle(
            request_id=handle.request_id,
            status_url=handle.status_url.replace(flux_conn.url, foreign.url),
            response_url=handle.response_url.replace(flux_conn.url, foreign.url),
            cancel_url=handle.cancel_url.replace(flux_conn.url, foreign.url),
        )
        for call in (hook.status, hook.result, hook.cancel):
            with pytest.raises(FluxReduxUntrustedUrlError, match="allowed_hosts"):
                call(moved)
        assert sum(foreign.stats()["requests_by_route"].values()) == 0
        # Same host, other port: still another origin.
        other_port = handle.model_copy(
            update={"status_url": handle.status_url.replace(flux_conn.url, "http://127.0.0.1:1")}
        )
        with pytest.raises(FluxReduxUntrustedUrlError):
            hook.status(other_port)
        monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(flux_conn.url, allowed_hosts=foreign.url))
        with pytest.raises(Exception) as info:
            FluxReduxHook().status(moved)
        assert not isinstance(info.value, FluxReduxUntrustedUrlError)
        assert foreign.stats()["requests_by_route"]["status"] >= 1


def test_key_is_never_in_logs_or_errors(flux_conn, image_uri, logs) -> None:
    flux_conn.set_faults([{"route": "status", "kind": "status", "code": 503, "times": -1}])
    hook = FluxReduxHook()
    handle = hook.submit({"image_url": image_uri})
    with pytest.raises(FluxReduxTransportError) as info:
        hook.status(handle)
    text = logs()
    assert "try 2 of 4" in text
    assert API_KEY not in text and API_KEY not in str(info.value) and API_KEY not in repr(hook.settings)


def test_download_is_capped_typed_and_sends_no_key(flux_conn, image_uri) -> None:
    hook = FluxReduxHook()
    _, result = submit_and_wait(hook, image_uri)
    url = result.images[0].url
    sink = io.BytesIO()
    assert hook.download(url, sink, max_bytes=10_000_000).bytes_written == len(sink.getvalue()) > 0
    with pytest.raises(FluxReduxProtocolError, match="cap"):
        hook.download(url, io.BytesIO(), max_bytes=100)
    flux_conn.set_faults([{"route": "file", "kind": "wrong_content_type"}])
    with pytest.raises(FluxReduxProtocolError, match="text/html"):
        hook.download(url, io.BytesIO(), max_bytes=10_000_000)


def test_test_connection_says_what_is_wrong(flux_conn, monkeypatch) -> None:
    ok, message = FluxReduxHook().test_connection()
    assert ok, message
    assert flux_conn.stats()["submissions"] == 0
    monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(flux_conn.url).replace(API_KEY, "bad"))
    ok, message = FluxReduxHook().test_connection()
    assert not ok and "key was refused" in message
    monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json("http://127.0.0.1:9"))
    ok, message = FluxReduxHook().test_connection()
    assert not ok and "ConnectError" in message


def test_queue_redirect_is_not_followed_so_the_key_stays_home(flux_conn, image_uri) -> None:
    from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(EmulatorConfig()) as foreign:
        hook = FluxReduxHook()
        handle, _ = submit_and_wait(hook, image_uri)
        flux_conn.set_faults([{"route": "status", "kind": "redirect", "code": 307, "location": f"{foreign.url}/x"}])
        with pytest.raises(FluxReduxProtocolError, match="redirects are not followed"):
            hook.status(handle)
        assert sum(foreign.stats()["requests_by_route"].values()) == 0


def test_image_redirect_is_followed_without_credentials(flux_conn, image_uri) -> None:
    from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(EmulatorConfig()) as cdn:
        hook = FluxReduxHook()
        _, result = submit_and_wait(hook, image_uri)
        target = cdn.sample_image_url(32, 32)
        flux_conn.set_faults([{"route": "file", "kind": "redirect", "code": 302, "location": target}])
        sink = io.BytesIO()
        assert hook.download(result.images[0].url, sink, max_bytes=1_000_000).content_type == "image/png"
        assert "Authorization" not in hook._files.headers


def test_huge_image_is_cut_off_at_the_cap(flux_conn, image_uri) -> None:
    hook = FluxReduxHook()
    _, result = submit_and_wait(hook, image_uri)
    flux_conn.set_faults([{"route": "file", "kind": "huge_file", "bytes": 5_000_000}])
    with pytest.raises(FluxReduxProtocolError, match="cap"):
        hook.download(result.images[0].url, io.BytesIO(), max_bytes=1_000_000)


@pytest.mark.parametrize("bad", ["key-with\nnewline-0123456789", "key\x00secret-0123456789", "kéy-0123456789"])
def test_a_key_no_header_can_carry_is_refused_without_quoting_it(flux_conn, monkeypatch, bad) -> None:
    from airflow_flux_redux.exceptions import FluxReduxConfigError

    conn = json.loads(connection_json(flux_conn.url))
    monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", json.dumps({**conn, "password": bad}))
    with pytest.raises(FluxReduxConfigError, match="line break") as info:
        FluxReduxHook().settings  # noqa: B018
    assert bad.strip() not in str(info.value) and "secret" not in str(info.value)


def test_connections_that_differ_in_trust_never_share_a_client() -> None:
    from airflow_flux_redux.hooks.flux_redux import FluxReduxSettings

    plain = FluxReduxSettings(base_url="https://q.example", api_key="k")
    trusting = FluxReduxSettings(
        base_url="https://q.example", api_key="k", allowed_origins=frozenset({("https", "cdn", 443)})
    )
    assert plain.client_key != trusting.client_key
