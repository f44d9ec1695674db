"""FluxReduxTrigger in an event loop against the emulator: one terminal event for every outcome."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time
import weakref
from types import SimpleNamespace

import pytest

from airflow_flux_redux.hooks.flux_redux import ASYNC_CLIENTS, FluxReduxHook
from airflow_flux_redux.triggers.flux_redux import FluxReduxTrigger
from airflow_flux_redux.version_compat import AIRFLOW_V_3_0_PLUS
from tests.conftest import API_KEY, one_log_record


@pytest.fixture(autouse=True)
async def _close_clients():
    yield
    await ASYNC_CLIENTS.aclose()


def make_trigger(image_uri: str, *, deadline_in: float = 30, **kwargs) -> FluxReduxTrigger:
    handle = FluxReduxHook().submit({"image_url": image_uri})
    return FluxReduxTrigger(
        handle=handle.to_dict(),
        deadline=time.time() + deadline_in,
        poll_interval=0.05,
        **kwargs,
    )


async def events(trigger: FluxReduxTrigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


async def test_success_event_carries_everything_the_resume_needs(flux_conn, image_uri, logs) -> None:
    flux_conn.configure(queue_seconds=0.5)  # the first look sees the queue, however busy the machine
    trigger = make_trigger(image_uri)
    (event,) = await events(trigger)
    assert event["status"] == "success"
    assert event["handle"] == trigger.handle.to_dict() and event["error"] is None
    assert len(event["result"]["images"]) == 1 and "inference_time" in event["metrics"]
    text = logs()
    assert "queue position" in text and "fal: " in text and API_KEY not in text
    assert flux_conn.stats()["submissions"] == 1


async def test_serialized_kwargs_are_json_primitives_without_the_key(flux_conn, image_uri) -> None:
    trigger = make_trigger(image_uri)
    classpath, kwargs = trigger.serialize()
    text = json.dumps(kwargs)
    assert API_KEY not in text
    assert classpath == "airflow_flux_redux.triggers.flux_redux.FluxReduxTrigger"
    (event,) = await events(FluxReduxTrigger(**json.loads(text)))
    assert event["status"] == "success"


async def test_restarted_trigger_resumes_the_same_request(flux_conn, image_uri) -> None:
    flux_conn.configure(run_seconds=0.6)
    trigger = make_trigger(image_uri)
    first = asyncio.ensure_future(events(trigger))
    await asyncio.sleep(0.2)
    first.cancel()
    _, kwargs = trigger.serialize()
    (event,) = await events(FluxReduxTrigger(**kwargs))
    assert event["status"] == "success" and event["handle"]["request_id"] == trigger.handle.request_id
    assert flux_conn.stats()["submissions"] == 1


async def test_deadline_cancels_the_remote_job(flux_conn, image_uri) -> None:
    flux_conn.configure(queue_seconds=10)
    trigger = make_trigger(image_uri, deadline_in=0.3)
    (event,) = await events(trigger)
    assert event["status"] == "timeout" and "deadline" in event["message"]
    assert flux_conn.stats()["requests"][trigger.handle.request_id]["cancelled"]


async def test_deadline_already_passed_after_restart_is_kept(flux_conn, image_uri) -> None:
    flux_conn.configure(queue_seconds=10)
    trigger = make_trigger(image_uri, deadline_in=-1)
    (event,) = await events(trigger)
    assert event["status"] == "timeout"


async def test_failed_job_is_a_failed_event_with_fal_error_type(flux_conn, image_uri) -> None:
    flux_conn.set_faults([{"route": "submit", "kind": "fail_job"}])
    (event,) = await events(make_trigger(image_uri))
    assert event["status"] == "failed" and event["error"]["class"] == "FluxReduxJobFailedError"
    assert event["error"]["fields"]["error_type"] == "content_policy_violation"


async def test_transient_errors_are_tolerated(flux_conn, image_uri) -> None:
    flux_conn.set_faults([{"route": "status", "kind": "status", "code": 503, "times": 6}])
    (event,) = await events(make_trigger(image_uri))
    assert event["status"] == "success"


async def test_too_many_errors_end_in_one_error_event(flux_conn, image_uri) -> None:
    flux_conn.set_faults([{"route": "status", "kind": "malformed", "times": -1}])
    (event,) = await events(make_trigger(image_uri, max_consecutive_errors=1, wait_mode="poll"))
    assert event["status"] == "error" and "not" in event["message"] and trigger_id_in(event)


def trigger_id_in(event: dict) -> bool:
    return event["handle"]["request_id"] in event["message"]


@pytest.mark.parametrize("mode", ["stream", "auto"])
async def test_stream_mode(flux_conn, image_uri, mode) -> None:
    (event,) = await events(make_trigger(image_uri, wait_mode=mode))
    assert event["status"] == "success"
    stats = flux_conn.stats()
    assert stats["requests_by_route"].get("stream", 0) >= 1


async def test_auto_falls_back_to_polling_when_no_stream(flux_conn, image_uri) -> None:
    flux_conn.set_faults([{"route": "stream", "kind": "status", "code": 404, "times": -1}])
    (event,) = await events(make_trigger(image_uri, wait_mode="auto"))
    assert event["status"] == "success"
    assert flux_conn.stats()["requests_by_route"]["status"] >= 1


async def test_on_kill_cancels_when_the_task_left_deferred(flux_conn, image_uri, monkeypatch) -> None:
    flux_conn.configure(queue_seconds=10)
    trigger = make_trigger(image_uri)
    await trigger.on_kill()
    assert flux_conn.stats()["requests"][trigger.handle.request_id]["cancelled"]


@pytest.mark.parametrize(("state", "cancelled"), [("deferred", False), ("failed", True), (None, True)])
async def test_on_kill_checks_the_real_task_state(flux_conn, image_uri, monkeypatch, state, cancelled) -> None:
    """A stale triggerer's on_kill must not cancel a job the task still waits on elsewhere."""
    flux_conn.configure(queue_seconds=10)
    trigger = make_trigger(image_uri)
    # Airflow 2's triggerer hands over the ORM task instance (current_state() reads the DB); 3.x asks the API.
    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1, current_state=lambda: state)
    trigger.task_instance = ti
    if AIRFLOW_V_3_0_PLUS:
        from airflow.sdk.execution_time import task_runner

        monkeypatch.setattr(
            task_runner.RuntimeTaskInstance, "get_task_states", staticmethod(lambda **kw: {"r": {"t": state}})
        )
    await trigger.on_kill()
    assert flux_conn.stats()["requests"][trigger.handle.request_id]["cancelled"] is cancelled


@pytest.mark.parametrize("fault", [{"kind": "status", "code": 503}, {"kind": "status", "code": 429}, {"kind": "reset"}])
async def test_stream_faults_reconnect(flux_conn, image_uri, fault) -> None:
    flux_conn.set_faults([{"route": "stream", "times": 2, **fault}])
    (event,) = await events(make_trigger(image_uri, wait_mode="stream"))
    assert event["status"] == "success", event["message"]
    assert flux_conn.stats()["requests_by_route"]["stream"] >= 3


async def test_result_unreachable_from_the_triggerer_leaves_it_to_the_worker(flux_conn, image_uri) -> None:
    flux_conn.set_faults([{"route": "result", "kind": "status", "code": 503, "times": 4}])
    (event,) = await events(make_trigger(image_uri))
    assert event["status"] == "success" and event["result"] is None
    assert len(FluxReduxHook().result(_handle(event)).images) == 1


def _handle(event: dict):
    from airflow_flux_redux.models import QueueHandle

    return QueueHandle.from_dict(event["handle"])


async def test_gateway_error_body_of_any_shape_ends_in_one_event(flux_conn, image_uri) -> None:
    body = {"detail": [{"loc": "body", "msg": 3}]}
    flux_conn.set_faults([{"route": "status", "kind": "status", "code": 400, "body": body, "times": -1}])
    (event,) = await events(make_trigger(image_uri, wait_mode="poll"))
    assert event["status"] == "error" and "400" in event["message"]


async def test_job_done_as_the_deadline_passes_is_a_success(flux_conn, image_uri) -> None:
    trigger = make_trigger(image_uri, deadline_in=-1)
    FluxReduxHook().wait(trigger.handle, poll_interval=0.05)
    (event,) = await events(trigger)
    assert event["status"] == "success" and event["result"]["images"]
    assert not flux_conn.stats()["requests"][trigger.handle.request_id]["cancelled"]


async def test_auto_falls_back_when_a_gateway_refuses_the_stream_with_400(flux_conn, image_uri) -> None:
    flux_conn.set_faults([{"route": "stream", "kind": "status", "code": 400, "times": -1}])
    (event,) = await events(make_trigger(image_uri, wait_mode="auto"))
    assert event["status"] == "success"


async def test_a_cancelled_settings_load_does_not_cancel_the_others(flux_conn, monkeypatch) -> None:
    from airflow_flux_redux.hooks.flux_redux import FluxReduxAsyncHook

    original = FluxReduxAsyncHook._aconnection

    async def slow(self):
        await asyncio.sleep(0.2)
        return await original(self)

    monkeypatch.setattr(FluxReduxAsyncHook, "_aconnection", slow)
    first = asyncio.ensure_future(FluxReduxAsyncHook(flux_redux_conn_id="flux_redux_default").aget_settings())
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(FluxReduxAsyncHook(flux_redux_conn_id="flux_redux_default").aget_settings())
    await asyncio.sleep(0.05)
    first.cancel()
    settings = await second
    assert settings.base_url == flux_conn.url


async def test_an_early_event_is_held_until_not_before(flux_conn, image_uri) -> None:
    """apache/airflow#72716: an event soon after the deferral waits until the deferring worker has reported."""
    trigger = make_trigger(image_uri, not_before=time.time() + 1.0)
    (event,) = await events(trigger)
    assert time.time() >= trigger.not_before and event["status"] == "success"


async def test_auto_learns_once_per_origin_that_the_stream_is_not_served(flux_conn, image_uri) -> None:
    flux_conn.set_faults([{"route": "stream", "kind": "status", "code": 404, "times": -1}])
    for _ in range(3):
        (event,) = await events(make_trigger(image_uri, wait_mode="auto"))
        assert event["status"] == "success"
    assert flux_conn.stats()["requests_by_route"]["stream"] == 1


def test_the_sync_wait_treats_a_job_done_at_the_deadline_as_done_too(flux_conn, image_uri) -> None:
    """One policy: the sync twin, like the trigger, returns a result that completed as the deadline passed."""
    hook = FluxReduxHook()
    handle = hook.submit({"image_url": image_uri})
    hook.wait(handle, poll_interval=0.05)
    result = hook.wait(handle, poll_interval=0.05, deadline=time.time() - 1)
    assert result.images and not flux_conn.stats()["requests"][handle.request_id]["cancelled"]


async def test_many_auto_waits_starting_together_probe_the_stream_once(flux_conn, image_uri) -> None:
    """A thousand triggers on a relay without the stream must not each open a connection to find that out."""
    flux_conn.set_faults([{"route": "stream", "kind": "status", "code": 404, "times": -1}])
    triggers = [make_trigger(image_uri, wait_mode="auto") for _ in range(12)]
    results = await asyncio.gather(*(events(trigger) for trigger in triggers))
    assert all(event["status"] == "success" for (event,) in results)
    assert flux_conn.stats()["requests_by_route"]["stream"] == 1


async def test_a_real_speed_job_tells_its_whole_story_in_one_trigger_log_record(flux_conn, image_uri, logs) -> None:
    """A schnell job's wait (a free slot, 1-2 s of run): every state and every line of fal's, in order, in
    one record of the trigger's log, not a record each (a record costs a triggerer about a status poll)."""
    flux_conn.configure(queue_seconds=0.2, run_seconds=1.3, log_lines=3)
    trigger = make_trigger(image_uri)
    (event,) = await events(trigger)
    assert event["status"] == "success"
    assert re.search(one_log_record(trigger.handle.request_id), logs())


async def test_where_the_stream_is_served_every_auto_wait_streams(flux_conn, image_uri) -> None:
    # Jobs long enough that none has finished before its wait's first look, however slowly the six submits go.
    flux_conn.configure(run_seconds=1.0)
    triggers = [make_trigger(image_uri, wait_mode="auto") for _ in range(6)]
    results = await asyncio.gather(*(events(trigger) for trigger in triggers))
    assert all(event["status"] == "success" for (event,) in results)
    routes = flux_conn.stats()["requests_by_route"]
    # A look or two first (where is the job in the queue?), then the stream once it runs or is next in line.
    assert routes["stream"] == 6 and routes.get("status", 0) <= 2 * 6


@pytest.fixture
def gc_unfrozen(monkeypatch):
    """This process as a fresh triggerer: nothing frozen, no wait in flight; unfrozen again afterwards."""
    from airflow_flux_redux.triggers import _gc

    gc.unfreeze()
    monkeypatch.setattr(_gc, "_in_flight", 0)
    monkeypatch.setattr(_gc, "_unfrozen", None)
    yield
    gc.unfreeze()


async def test_waits_in_flight_keep_the_collector_off_the_imports_and_their_own_state(
    flux_conn, image_uri, gc_unfrozen, monkeypatch
) -> None:
    from airflow_flux_redux.hooks.flux_redux import FluxReduxAsyncHook
    from airflow_flux_redux.triggers import _gc

    monkeypatch.setattr(_gc, "FREEZE_BATCH", 4)
    flux_conn.configure(run_seconds=1.5)  # every wait still waiting when the collector is looked at
    policies: list[object] = []
    follow = FluxReduxAsyncHook.follow

    async def recording_follow(self, handle, policy):
        policies.append(policy)
        return await follow(self, handle, policy)

    monkeypatch.setattr(FluxReduxAsyncHook, "follow", recording_follow)
    held = len(gc.get_objects())
    waits = [asyncio.ensure_future(events(make_trigger(image_uri))) for _ in range(12)]
    while len(policies) < 12:
        await asyncio.sleep(0.05)
    # What the process held (its imports, Airflow's state) is out of the collector's way ...
    assert gc.get_freeze_count() >= held * 0.9
    # ... and so is the state of every wait but the few started since the last freeze (at most a batch).
    walked = {id(obj) for obj in gc.get_objects()}
    assert sum(id(policy) in walked for policy in policies) <= 4
    results = await asyncio.gather(*waits)
    assert all(event["status"] == "success" for (event,) in results)
    # The last wait ended: everything goes back to the collector, so garbage frozen meanwhile is collected.
    assert gc.get_freeze_count() == 0


async def test_what_a_long_wait_makes_after_its_start_is_frozen_once_a_batch_of_others_has_ended(
    flux_conn, image_uri, gc_unfrozen, monkeypatch
) -> None:
    # A batch that starts at once then only ends: without freezes at the ends, the state a long wait builds
    # after its start (its policy, its last status) stays for every full collection to walk.
    from airflow_flux_redux.hooks.flux_redux import FluxReduxAsyncHook
    from airflow_flux_redux.triggers import _gc

    monkeypatch.setattr(_gc, "FREEZE_BATCH", 4)
    policies: dict[str, object] = {}
    follow = FluxReduxAsyncHook.follow

    async def recording_follow(self, handle, policy):
        policies[handle.request_id] = policy
        return await follow(self, handle, policy)

    monkeypatch.setattr(FluxReduxAsyncHook, "follow", recording_follow)
    flux_conn.configure(run_seconds=8.0)
    long = make_trigger(image_uri)
    flux_conn.configure(run_seconds=0.3)
    short = [make_trigger(image_uri) for _ in range(2)]
    waiting = asyncio.ensure_future(events(long))  # its start freezes; its policy is made after that
    while long.handle.request_id not in policies:
        await asyncio.sleep(0.05)
    assert id(policies[long.handle.request_id]) in {id(obj) for obj in gc.get_objects()}
    # Two starts and two ends: a batch of 4, so the process freezes again, the long wait's state with it.
    for (event,) in await asyncio.gather(*(events(trigger) for trigger in short)):
        assert event["status"] == "success"
    assert not waiting.done()
    assert id(policies[long.handle.request_id]) not in {id(obj) for obj in gc.get_objects()}
    (event,) = await waiting
    assert event["status"] == "success" and gc.get_freeze_count() == 0


async def test_freeze_gc_false_leaves_the_collector_alone(flux_conn, image_uri, gc_unfrozen, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__FLUX_REDUX__FREEZE_GC", "False")
    (event,) = await events(make_trigger(image_uri))
    assert event["status"] == "success" and gc.get_freeze_count() == 0


def test_a_triggerer_loop_that_ends_closes_the_clients_its_waits_shared(flux_conn, image_uri, logs) -> None:
    """A triggerer whose waits have all ended keeps no socket open to fal (nor logs "Unclosed client session"
    when its loop ends); the waits of one loop share one pool while any of them waits, and a wait that comes
    after the last one ended gets a new one."""
    import psutil

    from airflow_flux_redux.hooks import _stream, _transport

    built = []  # weak: a session held here could never say it was left unclosed
    original = _transport.WaitSession.__init__

    def counting(self, *args, **kwargs) -> None:
        built.append(weakref.ref(self))
        original(self, *args, **kwargs)

    def sockets_to_fal() -> int:
        gc.collect()  # the submits' clients, dropped
        port = int(flux_conn.url.rsplit(":", 1)[1])
        return sum(1 for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port)

    short = make_trigger(image_uri)
    flux_conn.configure(run_seconds=1.0)
    long = make_trigger(image_uri)
    later = make_trigger(image_uri)

    async def triggerer() -> list[list[dict]]:
        first = await asyncio.gather(events(short), events(long))  # the short one ends while the long one polls
        return [*first, await events(later)]

    before = sockets_to_fal()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_transport.WaitSession, "__init__", counting)
        outcomes = asyncio.run(triggerer())
    assert [event["status"] for (event,) in outcomes] == ["success"] * 3
    assert len(built) == 2  # one for the two waits together, one for the wait after them
    assert sockets_to_fal() == before
    assert "Unclosed" not in logs()
    # Nothing of ours keeps the ended loop or its clients alive: no session, no stream probe (a future of it).
    assert [session() for session in built] == [None, None] and not _stream._PROBES
