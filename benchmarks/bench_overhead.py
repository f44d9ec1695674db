"""Our own Python per wait, with the network taken out: where bench_triggers' gap to aiohttp comes from.

    python benchmarks/bench_overhead.py            # N = 1,000 waits, 6 status answers + 1 result each

N ``FluxReduxTrigger`` waits (built as the triggerer builds them: ``bench_triggers._deferred_trigger``, in a
process set up as its trigger runner: ``bench_triggers.triggerer_process``) run in one loop, every GET of
the waits' session answered from memory at once (``WaitSession.get`` swapped for a stub): IN_QUEUE, four
IN_PROGRESS with a fal log line, COMPLETED, then the result. Beside it, in the same process, the naive
loop over the same stub (``json.loads`` each answer, sleep, poll again). Rows, CPU per wait:

- ``ours``: the trigger as shipped;
- ``ours, no log records``: the status reporter switched off (what the task log's records cost);
- ``naive``: the plain loop (what any waiter spends on the same answers without HTTP).

The difference between ``ours`` and ``naive`` is what our trigger adds per wait on top of the HTTP client.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_triggers as bench  # noqa: E402

URL = "http://127.0.0.1:9"
N = 1000
INTERVAL = 0.02
_LOG = [{"message": "step", "level": "INFO", "timestamp": "2026-01-01T00:00:00Z"}]
QUEUED = json.dumps({"status": "IN_QUEUE", "request_id": "r", "queue_position": 3}).encode()
RUNNING = json.dumps({"status": "IN_PROGRESS", "request_id": "r", "logs": _LOG}).encode()
DONE = json.dumps({"status": "COMPLETED", "request_id": "r", "metrics": {"inference_time": 1.2}, "logs": _LOG}).encode()
RESULT = json.dumps({
    "images": [{"url": f"{URL}/img.png", "width": 512, "height": 512, "content_type": "image/png"}],
    "seed": 1, "has_nsfw_concepts": [False], "prompt": "", "timings": {"inference": 1.1},
}).encode()  # fmt: skip
HEADERS = {"Content-Type": "application/json"}


def _answers() -> Any:
    from airflow_flux_redux.hooks._transport import Reply

    looks: dict[str, int] = {}

    async def get(_session: Any, url: str) -> Reply:
        await asyncio.sleep(0)  # an answer arrives in a later pass of the loop, as from a socket
        if "/status" not in url:
            return Reply(200, HEADERS, RESULT)
        request = url.split("/requests/")[1].split("/")[0]
        look = looks[request] = looks.get(request, 0) + 1
        return Reply(200, HEADERS, QUEUED if look == 1 else RUNNING if look < 6 else DONE)

    return get


def _handles() -> list[dict[str, str]]:
    base = f"{URL}/fal-ai/flux-1/requests"
    return [
        {
            "request_id": f"r{i}",
            "status_url": f"{base}/r{i}/status",
            "response_url": f"{base}/r{i}",
            "cancel_url": f"{base}/r{i}/cancel",
        }
        for i in range(N)
    ]


async def _ours(get: Any) -> float:
    triggers = [bench._deferred_trigger(handle, "poll") for handle in _handles()]
    for trigger in triggers:
        trigger.poll_interval = INTERVAL
    started = time.process_time()
    outcomes = await asyncio.gather(*(bench._flux_wait(trigger) for trigger in triggers))
    assert outcomes == ["success"] * N, set(outcomes)
    return (time.process_time() - started) / N


async def _naive(get: Any) -> float:
    async def wait(handle: dict[str, str]) -> None:
        while True:
            answer = await get(None, f"{handle['status_url']}?logs=1")
            if json.loads(answer.content)["status"] == "COMPLETED":
                json.loads((await get(None, handle["response_url"])).content)
                return
            await asyncio.sleep(INTERVAL)

    handles = [{**handle, "request_id": f"n{handle['request_id']}"} for handle in _handles()]
    for handle in handles:
        handle["status_url"] = handle["status_url"].replace("/requests/r", "/requests/nr")
    started = time.process_time()
    await asyncio.gather(*(wait(handle) for handle in handles))
    return (time.process_time() - started) / N


def main() -> None:
    bench.triggerer_process(URL, {}, "flux-bench-overhead-")
    bench._TINY_PNG = bench._tiny_png()
    from airflow_flux_redux.hooks import _transport
    from airflow_flux_redux.wait import StatusReporter

    get = _answers()
    _transport.WaitSession.get = get  # type: ignore[method-assign]
    asyncio.run(_ours(get))  # warm-up: imports, the settings lookup, the pools
    rows = {"ours": asyncio.run(_ours(get)), "naive": asyncio.run(_naive(get))}
    StatusReporter.__call__ = lambda self, status: None  # type: ignore[method-assign]
    StatusReporter.flush = lambda self: None  # type: ignore[method-assign]
    rows["ours, no log records"] = asyncio.run(_ours(get))
    print(f"bench_overhead: N = {N:,} waits, 6 status answers + 1 result each, answered from memory")
    for name in ("ours", "ours, no log records", "naive"):
        print(f"  {name:<22} {rows[name] * 1000:6.3f} ms CPU per wait")
    print(f"  ours adds {(rows['ours'] - rows['naive']) * 1000:.3f} ms per wait to the naive loop; its log records "
          f"{(rows['ours'] - rows['ours, no log records']) * 1000:.3f} ms of that")  # fmt: skip


if __name__ == "__main__":
    main()
