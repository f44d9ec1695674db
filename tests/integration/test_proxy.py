"""Behind a corporate proxy: every request of a job goes through it, the same way in every part.

The connection's base URL is ``http://fal-gw.internal:PORT``, a name only the proxy (tests/forward_proxy.py)
resolves: a request that bypassed the proxy would fail with a name-resolution error. The proxy's log is the
witness of what went through it.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from airflow.providers.common.compat.sdk import TaskDeferred, redact

from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
from airflow_flux_redux.exceptions import FluxReduxConfigError, FluxReduxError
from airflow_flux_redux.hooks.flux_redux import ASYNC_CLIENTS, FluxReduxAsyncHook, FluxReduxHook
from airflow_flux_redux.operators.flux_redux import FluxReduxOperator
from tests.conftest import API_KEY, connection_json, context
from tests.forward_proxy import ForwardProxy

if TYPE_CHECKING:
    from collections.abc import Iterator

GATEWAY = "fal-gw.internal"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*PROXY_VARIABLES, "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("FAL_KEY", raising=False)
    return monkeypatch


@pytest.fixture
def proxy(emulator: EmulatorServer) -> Iterator[ForwardProxy]:
    port = int(emulator.url.rsplit(":", 1)[1])
    with ForwardProxy({GATEWAY: ("127.0.0.1", port), "127.0.0.1": ("127.0.0.1", port)}) as running:
        yield running


@pytest.fixture
def behind_proxy(emulator, proxy, clean_env) -> tuple[EmulatorServer, ForwardProxy, str]:
    """The default connection on the gateway's name; the environment's proxy variables name the proxy."""
    base = f"http://{GATEWAY}:{emulator.url.rsplit(':', 1)[1]}"
    clean_env.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(base, max_retries=0))
    clean_env.setenv("HTTP_PROXY", proxy.url)
    clean_env.setenv("HTTPS_PROXY", proxy.url)
    return emulator, proxy, base


def routes(proxy: ForwardProxy) -> list[str]:
    """What went through the proxy, by kind: submit, status, stream, result, cancel, file."""
    kinds = []
    for seen in proxy.log:
        path = httpx.URL(seen.target).path
        if seen.method == "POST":
            kinds.append("submit")
        elif path.endswith("/status/stream"):
            kinds.append("stream")
        elif path.endswith("/status"):
            kinds.append("status")
        elif path.endswith("/cancel"):
            kinds.append("cancel")
        elif "/requests/" in path:
            kinds.append("result")
        else:
            kinds.append("file")
    return kinds


def test_sync_hook_submit_wait_result_and_download_all_go_through_the_proxy(behind_proxy, image_uri) -> None:
    emulator, proxy, _ = behind_proxy
    hook = FluxReduxHook()
    handle = hook.submit({"image_url": image_uri})
    result = hook.wait(handle, poll_interval=0.05)
    sink = bytearray()

    class Sink:
        def write(self, data: bytes) -> None:
            sink.extend(data)

    hook.download(result.images[0].url, Sink(), max_bytes=10_000_000)  # type: ignore[arg-type]
    hook.close()
    assert sink[:3] == b"\xff\xd8\xff"
    kinds = routes(proxy)
    assert kinds[0] == "submit" and "status" in kinds and kinds[-2:] == ["result", "file"]
    assert all(httpx.URL(seen.target).host == GATEWAY for seen in proxy.log)
    assert emulator.stats()["submissions"] == 1


async def test_async_hook_wait_streams_through_the_proxy(behind_proxy, image_uri) -> None:
    emulator, proxy, _ = behind_proxy
    hook = FluxReduxAsyncHook()
    handle = await hook.submit({"image_url": image_uri})
    result = await hook.wait(handle, poll_interval=0.05)
    await ASYNC_CLIENTS.aclose()
    assert result.images
    seen = routes(proxy)  # a look first (where is the job in the queue?), then the stream: all via the proxy
    assert seen[0] == "submit" and seen[-2:] == ["stream", "result"] and set(seen[1:-2]) == {"status"}
    assert emulator.stats()["submissions"] == 1


async def test_relay_polls_through_the_proxy(clean_env, image_uri) -> None:
    config = EmulatorConfig(key=API_KEY, relay=True, queue_seconds=0.05, run_seconds=0.4)
    with EmulatorServer(config) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        proxy = ForwardProxy({GATEWAY: ("127.0.0.1", port)}).__enter__()
        base = f"http://{GATEWAY}:{port}"
        extra = {"auth_scheme": "Bearer", "max_retries": 0}
        clean_env.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(base, **extra))
        clean_env.setenv("HTTP_PROXY", proxy.url)
        hook = FluxReduxAsyncHook()
        handle = await hook.submit({"image_url": image_uri})
        assert handle.status_url.startswith(f"{base}/")  # fal's URL, rebased onto the relay
        await hook.wait(handle, poll_interval=0.1)
        await ASYNC_CLIENTS.aclose()
        proxy.__exit__()
    kinds = routes(proxy)
    assert kinds[0] == "submit" and kinds[-1] == "result" and kinds.count("status") >= 2
    assert kinds.count("stream") == 1  # auto asked for the stream once (the job about to run), the relay refused it


def test_operator_finishing_in_the_worker_goes_through_the_proxy(behind_proxy, image_uri, tmp_path) -> None:
    emulator, proxy, _ = behind_proxy
    emulator.configure(queue_seconds=0.2, run_seconds=1.3)  # a real-speed job
    op = FluxReduxOperator(task_id="vary", image_url=image_uri, output_path=str(tmp_path), defer_after=10)
    result = op.execute(context())
    assert Path(result["images"][0]["path"]).stat().st_size > 0
    assert routes(proxy)[0] == "submit" and routes(proxy)[-2:] == ["result", "file"]
    assert emulator.stats()["submissions"] == 1


def test_operator_deferring_and_resuming_from_the_trigger_goes_through_the_proxy(
    behind_proxy, image_uri, tmp_path
) -> None:
    emulator, proxy, _ = behind_proxy
    emulator.configure(queue_seconds=0.5, run_seconds=1.0)
    op = FluxReduxOperator(task_id="vary", image_url=image_uri, output_path=str(tmp_path), defer_after=0)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context())
    _, kwargs = deferred.value.trigger.serialize()
    assert GATEWAY in json.dumps(kwargs) and API_KEY not in json.dumps(kwargs)
    trigger = type(deferred.value.trigger)(**{**kwargs, "not_before": None})

    async def first_event() -> dict[str, Any]:
        try:
            async for event in trigger.run():
                return dict(event.payload)
        finally:
            await ASYNC_CLIENTS.aclose()
        raise AssertionError("no event")

    event = asyncio.run(first_event())
    assert event["status"] == "success"
    resumed = FluxReduxOperator(task_id="vary", image_url=image_uri, output_path=str(tmp_path))
    result = resumed.execute_complete(context(), event)
    assert Path(result["images"][0]["path"]).exists()
    kinds = routes(proxy)
    assert kinds[0] == "submit" and "stream" in kinds and kinds[-1] == "file"
    assert emulator.stats()["submissions"] == 1


def test_no_proxy_bypasses_the_proxy_for_the_hosts_it_names(emulator, proxy, clean_env, image_uri) -> None:
    clean_env.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(emulator.url, max_retries=0))
    clean_env.setenv("HTTP_PROXY", proxy.url)
    clean_env.setenv("NO_PROXY", "localhost,127.0.0.1")
    hook = FluxReduxHook()
    hook.wait(hook.submit({"image_url": image_uri}), poll_interval=0.05)
    assert proxy.log == []
    clean_env.setenv("NO_PROXY", "localhost")
    hook = FluxReduxHook()
    hook.wait(hook.submit({"image_url": image_uri}), poll_interval=0.05)
    assert routes(proxy)[0] == "submit"


def test_the_proxy_extra_overrides_the_environment_and_its_password_stays_secret(emulator, clean_env, image_uri):
    port = int(emulator.url.rsplit(":", 1)[1])
    with ForwardProxy({GATEWAY: ("127.0.0.1", port)}, credentials=("corp", "proxy-pass-7q2")) as guarded:
        base = f"http://{GATEWAY}:{port}"
        clean_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens there
        clean_env.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(base, max_retries=0, proxy=guarded.url))
        hook = FluxReduxHook()
        result = hook.wait(hook.submit({"image_url": image_uri}), poll_interval=0.05)

        async def async_status() -> str:
            async_hook = FluxReduxAsyncHook()
            try:
                return (await async_hook.status(hook.submit({"image_url": image_uri}))).status.value
            finally:
                await ASYNC_CLIENTS.aclose()

        assert asyncio.run(async_status()) in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    assert result.images and guarded.refused == 0 and len(guarded.log) >= 4
    assert "proxy-pass-7q2" not in str(redact(f"proxy in use: {guarded.url}"))  # the hook registered it


def test_a_wrong_proxy_password_fails_with_the_proxys_answer_not_the_password(emulator, clean_env, image_uri):
    port = int(emulator.url.rsplit(":", 1)[1])
    with ForwardProxy({GATEWAY: ("127.0.0.1", port)}, credentials=("corp", "right")) as guarded:
        wrong = guarded.url.replace(":right@", ":wrong-pass-91@")
        clean_env.setenv(
            "AIRFLOW_CONN_FLUX_REDUX_DEFAULT",
            connection_json(f"http://{GATEWAY}:{port}", max_retries=0, proxy=wrong),
        )
        with pytest.raises(FluxReduxError) as caught:
            FluxReduxHook().submit({"image_url": image_uri})
    assert "407" in str(caught.value) and "wrong-pass-91" not in str(caught.value)
    assert emulator.stats()["submissions"] == 0


@pytest.mark.parametrize("value", ["socks5://127.0.0.1:1080", "ftp://proxy:21"])
def test_a_proxy_the_clients_cannot_use_is_refused_before_any_call(clean_env, value) -> None:
    clean_env.setenv(
        "AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json("https://gw.example", proxy=value.replace("//", "//u:pw@"))
    )
    with pytest.raises(FluxReduxConfigError, match="connection extra proxy") as caught:
        FluxReduxHook().settings  # noqa: B018
    assert "pw" not in str(caught.value).replace("http://[user:password@]", "")
