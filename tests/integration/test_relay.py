"""Against a relay that answers with fal's own URLs (the kind of gateway our spec comes from).

The emulator in relay mode hands out ``https://queue.fal.run/...`` status, result and cancel URLs, serves
the same paths itself under its base URL (with a path prefix here), wants Bearer, and serves no status
stream. The connection holds only what the README says: base URL, key, ``auth_scheme`` Bearer. Every
name the process looks up is recorded, so a request meant for fal would show.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
from airflow_flux_redux.exceptions import FluxReduxUntrustedUrlError
from airflow_flux_redux.hooks.flux_redux import ASYNC_CLIENTS, FluxReduxHook
from airflow_flux_redux.operators.flux_redux import FluxReduxOperator
from airflow_flux_redux.triggers.flux_redux import FluxReduxTrigger
from airflow_flux_redux.wait import WaitPolicy
from tests.conftest import API_KEY, context, one_log_record

if TYPE_CHECKING:
    from collections.abc import Iterator

FAL_HOSTS = ("queue.fal.run", "queue.falrun.com")


@pytest.fixture(scope="module")
def relay_server() -> Iterator[EmulatorServer]:
    config = EmulatorConfig(key=API_KEY, relay=True, path_prefix="/api/v1", queue_seconds=0.05, run_seconds=0.3)
    with EmulatorServer(config) as server:
        yield server


@pytest.fixture
def relay(relay_server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """``flux_redux_default`` = the relay's base URL, its key and Bearer: nothing else."""
    relay_server.reset()
    connection = {"conn_type": "flux_redux", "host": relay_server.url, "password": API_KEY}
    monkeypatch.setenv(
        "AIRFLOW_CONN_FLUX_REDUX_DEFAULT", json.dumps({**connection, "extra": {"auth_scheme": "Bearer"}})
    )
    monkeypatch.delenv("FAL_KEY", raising=False)
    return relay_server


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every host name this process resolves while the test runs (a call to fal would resolve fal's host)."""
    seen: list[str] = []
    original = socket.getaddrinfo

    def recording(host: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(host.decode() if isinstance(host, bytes) else str(host))
        return original(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    return seen


def test_the_relay_answers_with_fals_urls(relay: EmulatorServer, image_uri: str) -> None:
    """The premise: a plain submit to this relay gets URLs on fal's host (as the spec's example shows)."""
    import httpx

    answer = httpx.post(
        f"{relay.url}/fal-ai/flux-1/schnell/redux",
        json={"image_url": image_uri},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ).json()
    assert answer["status_url"].startswith("https://queue.fal.run/fal-ai/flux-1/requests/")


def test_hook_submit_status_result_cancel_stay_on_the_relay(relay, image_uri, lookups) -> None:
    hook = FluxReduxHook()
    handle = hook.submit({"image_url": image_uri, "num_images": 2})
    for url in (handle.status_url, handle.response_url, handle.cancel_url):
        assert url.startswith(f"{relay.url}/fal-ai/flux-1/requests/{handle.request_id}"), url
    result = hook.wait(handle, poll_interval=0.05)
    assert len(result.images) == 2
    assert hook.cancel(handle) == "ALREADY_COMPLETED"
    other = hook.submit({"image_url": image_uri})
    assert hook.cancel(other) == "CANCELLATION_REQUESTED"
    stats = relay.stats()
    assert stats["submissions"] == 2 and stats["requests"][other.request_id]["cancelled"]
    assert stats["requests_by_route"]["status"] >= 1 and stats["requests_by_route"]["result"] >= 1
    assert not any(host in FAL_HOSTS for host in lookups), lookups


def test_operator_with_defaults_saves_the_images_and_submits_once(relay, image_uri, tmp_path, lookups) -> None:
    ctx = context()
    result = FluxReduxOperator(task_id="vary", image_url=image_uri, num_images=2, output_path=str(tmp_path)).execute(
        ctx
    )
    assert [Path(image["path"]).exists() for image in result["images"]] == [True, True]
    assert ctx["ti"].xcom["status_url"].startswith(relay.url)
    assert relay.stats()["submissions"] == 1
    assert not any(host in FAL_HOSTS for host in lookups), lookups


async def test_deferred_wait_polls_the_relay_and_learns_it_has_no_stream(relay, image_uri, lookups) -> None:
    relay.configure(queue_seconds=1.0)
    store: Any = context()
    with pytest.raises(TaskDeferred) as info:
        FluxReduxOperator(task_id="vary", image_url=image_uri, defer_after=0, poll_interval=0.1).execute(store)
    _, kwargs = info.value.trigger.serialize()
    assert kwargs["handle"]["status_url"].startswith(relay.url), "the trigger must carry the URL really called"
    assert API_KEY not in json.dumps(kwargs)
    for _ in range(2):
        trigger = FluxReduxTrigger(**{**kwargs, "not_before": None, "deadline": time.time() + 30})
        (event,) = [event.payload async for event in trigger.run()]
        assert event["status"] == "success" and event["result"]["images"]
    await ASYNC_CLIENTS.aclose()
    # auto tried the stream once (the relay has none), then polled; later waits on the relay poll at once.
    assert not WaitPolicy(request_id="x", status_url=kwargs["handle"]["status_url"]).use_stream
    assert not any(host in FAL_HOSTS for host in lookups), lookups


def test_a_real_speed_job_on_the_relay_is_one_record_of_the_workers_log(relay, image_uri, tmp_path, logs) -> None:
    """A schnell job as users run it (a free slot, 1.3 s of run) through a relay with fal's URLs and no status
    stream finishes in the worker: its states and fal's lines are one record of the task's log."""
    relay.configure(queue_seconds=0.2, run_seconds=1.3, log_lines=3)
    result = FluxReduxOperator(task_id="vary", image_url=image_uri, output_path=str(tmp_path)).execute(context())
    assert re.search(one_log_record(result["request_id"], queue_seen=False), logs())
    assert relay.stats()["submissions"] == 1


async def test_a_real_speed_job_on_the_relay_is_one_record_of_the_triggers_log(relay, image_uri, logs) -> None:
    relay.configure(queue_seconds=0.2, run_seconds=1.3, log_lines=3)
    handle = FluxReduxHook().submit({"image_url": image_uri})
    trigger = FluxReduxTrigger(handle=handle.to_dict(), deadline=time.time() + 30, poll_interval=0.2)
    (event,) = [event.payload async for event in trigger.run()]
    assert event["status"] == "success"
    # On a loaded machine the first look (within 0.2 s of the trigger's start) may already see the job running.
    assert re.search(one_log_record(handle.request_id, queue_seen=False), logs())


def test_never_rebasing_refuses_before_sending_and_never_advises_trusting_fal(relay, image_uri, monkeypatch) -> None:
    connection = {"conn_type": "flux_redux", "host": relay.url, "password": API_KEY}
    extra = {"auth_scheme": "Bearer", "rebase_queue_urls": "never"}
    monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", json.dumps({**connection, "extra": extra}))
    hook = FluxReduxHook()
    handle = hook.submit({"image_url": image_uri})
    with pytest.raises(FluxReduxUntrustedUrlError) as raised:
        hook.status(handle)
    assert "rebase_queue_urls" in str(raised.value) and "allowed_hosts" not in str(raised.value)
    assert relay.stats()["requests_by_route"].get("status", 0) == 0
