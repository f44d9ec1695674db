"""How much one triggerer pays per Redux wait: FluxReduxTrigger against Airflow's and fal's own waiters.

    python benchmarks/bench_triggers.py            # full table, N = 100 .. 10,000 (~10-15 min)
    python benchmarks/bench_triggers.py --quick    # N = 100 and 1,000, short jobs (< 2 min)

Each row runs in a fresh process (so CPU, RSS and connections belong to that row alone): it submits N
jobs to the fal-queue emulator (its own process, on 127.0.0.1), then runs N waiters concurrently in one
asyncio loop, as the triggerer does, and reports:

- CPU µs per status poll of the waiting process (per job for stream waits), and the cores it used;
  the emulator's cores next to it, so a saturated server is visible;
- RSS per waiter (growth of the process between "jobs submitted" and "all waiters waiting", / N);
- p50/p99 completion→event latency: the event time minus the job's completion time, which the
  benchmark sets per job (x-emulator-queue-seconds / x-emulator-run-seconds headers at submit);
- TCP connections opened by the waiting process (counted at ``loop.create_connection``);
- the longest event-loop stall seen by a 50 ms ticker.

Yardsticks in the same run: Airflow's ``HttpAsyncHook`` session loop (one aiohttp session per wait, the
dbt/Databricks style), ``HttpEventTrigger`` (a new session per poll) and fal-client 1.0.3's async
``AsyncRequestHandle.get`` (one shared client). Jobs are spread: each waits ~1 s in the queue and runs
~8-10 s (quick: ~3-4 s), polled every P = 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import io
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KEY = "bench-key-0123456789abcdef"
ENDPOINT = "fal-ai/flux-1/schnell/redux"
P = 1.0
STARTUP = 2.0  # seconds after the waiters start whose loop stalls are reported apart
PAGE = os.sysconf("SC_PAGE_SIZE")

# name: (server, description, unit of CPU cost)
WAITERS: dict[str, tuple[str, str, str]] = {
    "flux-poll": ("uvicorn", "FluxReduxTrigger poll, HTTP/1.1", "poll"),
    "flux-poll-h2": ("hypercorn", "FluxReduxTrigger poll, HTTP/2", "poll"),
    "flux-stream": ("uvicorn", "FluxReduxTrigger stream (SSE), HTTP/1.1", "job"),
    "flux-stream-h2": ("hypercorn", "FluxReduxTrigger stream (SSE), HTTP/2", "job"),
    "flux-stream-h2-quiet": ("hypercorn", "  same, forward_logs=False", "job"),
    "flux-stream-h2-long": ("hypercorn", "  same, jobs run 30-90 s (spread)", "job"),
    "http-session": ("uvicorn", "Airflow HttpAsyncHook session loop", "poll"),
    "http-event": ("uvicorn", "Airflow HttpEventTrigger", "poll"),
    "fal-client": ("uvicorn", "fal-client 1.0.3 AsyncClient", "poll"),
}
YARDSTICKS = ("http-session", "http-event", "fal-client")


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def _raise_nofile(want: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _tiny_png() -> str:
    from PIL import Image

    image = Image.new("RGB", (16, 16), (120, 60, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# -- the child: one row ---------------------------------------------------------------------------------------


async def _submit_all(url: str, n: int, timing: dict[str, float]) -> tuple[list[dict[str, Any]], list[float]]:
    """Submit n jobs whose completion times we choose; returns handles and completion times (monotonic)."""
    import aiohttp

    image = _tiny_png()
    body = {"image_url": image, "image_size": {"width": 32, "height": 32}}
    t_go = time.monotonic() + 1.0 + n * 0.0004  # all waiters run before any job starts
    rng = random.Random(n)
    handles: list[dict[str, Any]] = [{}] * n
    finishes = [0.0] * n
    gate = asyncio.Semaphore(16)
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector, headers={"Authorization": f"Key {KEY}"}) as session:

        async def one(i: int) -> None:
            async with gate:
                sent = time.monotonic()
                queue = max(0.0, t_go - sent) + rng.uniform(timing["q_lo"], timing["q_hi"])
                run = rng.uniform(timing["r_lo"], timing["r_hi"])
                headers = {"x-emulator-queue-seconds": f"{queue:.4f}", "x-emulator-run-seconds": f"{run:.4f}"}
                async with session.post(f"{url}/{ENDPOINT}", json=body, headers=headers) as response:
                    response.raise_for_status()
                    handles[i] = await response.json()
                got = time.monotonic()
            finishes[i] = (sent + got) / 2 + queue + run

        await asyncio.gather(*(one(i) for i in range(n)))
    late = time.monotonic() - t_go
    if late > 0:
        print(f"warning: submitting {n} jobs ran {late:.1f} s past the planned start", file=sys.stderr)
    return handles, finishes


def _flux_waiter(mode: str, forward_logs: bool = True):
    from airflow_flux_redux.triggers.flux_redux import FluxReduxTrigger

    async def wait(handle: dict[str, Any]) -> str:
        trigger = FluxReduxTrigger(
            request_id=handle["request_id"],
            status_url=handle["status_url"],
            response_url=handle["response_url"],
            cancel_url=handle["cancel_url"],
            deadline=time.time() + 3600,
            poll_interval=P,
            wait_mode=mode,
            forward_logs=forward_logs,
        )
        async for event in trigger.run():
            return str(event.payload["status"])
        return "no event"

    return wait


def _path_of(url: str, base: str) -> str:
    return url[len(base) :].lstrip("/")


def _http_session_waiter(base: str):
    from airflow.providers.http.hooks.http import HttpAsyncHook

    async def wait(handle: dict[str, Any]) -> str:
        hook = HttpAsyncHook(method="GET", http_conn_id="bench_http")
        async with hook.session() as http:
            while True:
                response = await http.run(endpoint=_path_of(handle["status_url"], base), data={"logs": "1"})
                status = await response.json(content_type=None)
                if status["status"] == "COMPLETED":
                    result = await http.run(endpoint=_path_of(handle["response_url"], base))
                    await result.read()
                    return "success"
                await asyncio.sleep(P)

    return wait


def _http_event_waiter(base: str):
    from airflow.providers.http.triggers.http import HttpEventTrigger

    async def wait(handle: dict[str, Any]) -> str:
        trigger = HttpEventTrigger(
            response_check_path="_http_check.completed",
            http_conn_id="bench_http",
            method="GET",
            endpoint=_path_of(handle["status_url"], base),
            data={"logs": "1"},
            poll_interval=P,
        )
        async for event in trigger.run():
            return str(event.payload["status"])
        return "no event"

    return wait


def _fal_client_waiter(base: str):
    import fal_client
    import fal_client.client

    # fal-client 1.0.3 builds https URLs from FAL_QUEUE_RUN_HOST; the emulator speaks plain http on loopback.
    fal_client.client.QUEUE_URL_FORMAT = base + "/"
    client = fal_client.AsyncClient(key=KEY)

    async def wait(handle: dict[str, Any]) -> str:
        request = await client.get_handle(ENDPOINT, handle["request_id"])
        await request.get(interval=P)
        return "success"

    return wait


async def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    import psutil

    name, n, url = spec["waiter"], spec["n"], spec["url"]
    if name.startswith("flux-"):
        waiter = _flux_waiter("stream" if "stream" in name else "poll", forward_logs=not name.endswith("-quiet"))
    else:
        waiter = {"http-session": _http_session_waiter, "http-event": _http_event_waiter}.get(name, _fal_client_waiter)(
            url
        )
    server = psutil.Process(spec["server_pid"])
    handles, finishes = await _submit_all(url, n, spec["timing"])
    loop = asyncio.get_running_loop()
    opened = 0
    create_connection = loop.create_connection

    async def counting_create_connection(*args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        opened += 1
        return await create_connection(*args, **kwargs)

    loop.create_connection = counting_create_connection  # type: ignore[method-assign]
    gc.collect()
    rss0, rss_waiting = _rss(), 0
    first_finish = min(finishes)
    events: list[float | None] = [None] * n
    outcomes: dict[str, int] = {}
    stall = stall0 = 0.0

    async def one(i: int) -> None:
        try:
            outcome = await waiter(handles[i])
        except Exception as err:
            outcome = type(err).__name__
        events[i] = time.monotonic()
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    async def monitor() -> None:
        nonlocal rss_waiting, stall, stall0
        tick = start = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            if now - start < STARTUP:  # N waiters starting in one loop iteration: the triggerer adds them so too
                stall0 = max(stall0, now - tick - 0.05)
            else:
                stall = max(stall, now - tick - 0.05)
            tick = now
            if not outcomes:  # every waiter is still waiting
                rss_waiting = max(rss_waiting, _rss())

    server_cpu0 = sum(server.cpu_times()[:2])
    cpu0, wall0 = time.process_time(), time.monotonic()
    watcher = asyncio.ensure_future(monitor())
    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    budget = max(finishes) - wall0 + spec["grace"]
    _, pending = await asyncio.wait(tasks, timeout=budget)
    for task in pending:
        task.cancel()
    cpu1, wall1 = time.process_time(), time.monotonic()
    server_cpu1 = sum(server.cpu_times()[:2])
    watcher.cancel()
    await asyncio.gather(*pending, watcher, return_exceptions=True)
    latencies = [event - finish for event, finish in zip(events, finishes, strict=True) if event is not None]
    done = len(latencies)
    return {
        "cpu": cpu1 - cpu0,
        "wall": wall1 - wall0,
        "server_cores": (server_cpu1 - server_cpu0) / (wall1 - wall0),
        "rss_per_waiter": max(0, rss_waiting - rss0) / n,
        "p50": _percentile(latencies, 0.5) if done == n else float("inf"),
        "p99": _percentile(latencies, 0.99) if done == n else float("inf"),
        "done": done,
        "outcomes": outcomes,
        "connections": opened,
        "stall": stall,
        "stall0": stall0,
        "late_start": max(0.0, wall0 - (first_finish - spec["timing"]["r_lo"])),
    }


def child_main(spec: dict[str, Any]) -> None:
    _raise_nofile()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    home = tempfile.mkdtemp(prefix="flux-bench-airflow-")
    os.environ.update({
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "true",
        "AIRFLOW_CONN_FLUX_REDUX_DEFAULT": json.dumps({
            "conn_type": "flux_redux",
            "host": spec["url"],
            "password": KEY,
            "extra": {"http2": spec["http2"]},
        }),
        "AIRFLOW_CONN_BENCH_HTTP": json.dumps({
            "conn_type": "http",
            "host": spec["url"],
            "extra": {"Authorization": f"Key {KEY}"},
        }),
    })  # fmt: skip
    import logging

    # Airflow's logging as the triggerer has it would write each trigger's lines to its own file; one file
    # at INFO keeps the cost of the log calls in the measurement without flooding the terminal.
    logging.basicConfig(filename=os.path.join(home, "bench.log"), level=logging.INFO, force=True)
    if spec.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        result = asyncio.run(_run_child(spec))
        profiler.stop()
        Path(spec["profile"]).write_text(profiler.output_text(unicode=True, show_all=True))
    else:
        result = asyncio.run(_run_child(spec))
    print(json.dumps(result), flush=True)


def worker_seconds_main(spec: dict[str, Any]) -> None:
    """Worker time per job: submit → TaskDeferred (deferrable) vs submit → result (synchronous wait)."""
    sys.path.insert(0, str(ROOT))
    os.environ.update({
        "AIRFLOW_HOME": tempfile.mkdtemp(prefix="flux-bench-airflow-"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "true",
        "AIRFLOW_CONN_FLUX_REDUX_DEFAULT": json.dumps(
            {"conn_type": "flux_redux", "host": spec["url"], "password": KEY, "extra": {}}
        ),
    })  # fmt: skip
    from airflow.providers.common.compat.sdk import TaskDeferred

    from airflow_flux_redux.operators.flux_redux import FluxReduxOperator

    class TaskInstance:
        stats_tags: dict[str, str] = {}

        def xcom_push(self, key: str, value: Any) -> None:
            pass

    class Store(dict):
        def set(self, key: str, value: Any, **_: Any) -> None:
            self[key] = value

        def delete(self, key: str) -> None:
            self.pop(key, None)

    image = _tiny_png()
    out: dict[str, list[float]] = {"deferrable": [], "deferrable_cpu": [], "sync": [], "sync_cpu": []}
    for deferrable, runs in ((True, spec["runs"]), (False, spec["sync_runs"])):
        for i in range(runs + 1):  # the first run warms imports and the pooled client
            op = FluxReduxOperator(
                task_id=f"t{i}", image_url=image, image_size={"width": 32, "height": 32}, deferrable=deferrable,
                poll_interval=P,
            )  # fmt: skip
            context = {"ti": TaskInstance(), "task_state_store": Store()}
            wall, cpu = time.monotonic(), time.process_time()
            with contextlib.suppress(TaskDeferred):
                op.execute(context)  # type: ignore[arg-type]
            if i:
                key = "deferrable" if deferrable else "sync"
                out[key].append(time.monotonic() - wall)
                out[f"{key}_cpu"].append(time.process_time() - cpu)
    print(json.dumps({key: statistics.median(values) for key, values in out.items()}), flush=True)


# -- the parent: emulators, rows, table -------------------------------------------------------------------------


def _spawn(args: list[str], timeout: float) -> dict[str, Any] | None:
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *args],
            capture_output=True, text=True, timeout=timeout, cwd=str(ROOT),
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-3000:])
        return None
    return json.loads(lines[-1])


def _fmt_seconds(value: float) -> str:
    if value != value:
        return "-"
    if value == float("inf"):
        return "timeout"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _plan(quick: bool) -> tuple[list[tuple[str, int]], dict[str, float]]:
    if quick:
        timing = {"q_lo": 0.2, "q_hi": 0.7, "r_lo": 3.0, "r_hi": 4.0}
        rows = [
            ("flux-poll", 100), ("flux-stream", 100), ("flux-stream-h2", 100),
            ("flux-poll", 1000), ("flux-poll-h2", 1000), ("flux-stream-h2", 1000),
            ("http-session", 1000), ("http-event", 1000), ("fal-client", 1000),
        ]  # fmt: skip
        return rows, timing
    timing = {"q_lo": 0.5, "q_hi": 1.5, "r_lo": 8.0, "r_hi": 10.0}
    rows = []
    for n in (100, 1000, 5000, 10000):
        rows += [(name, n) for name in ("flux-poll", "flux-poll-h2", "flux-stream", "flux-stream-h2")]
        rows += [(name, n) for name in YARDSTICKS if n <= (1000 if name == "fal-client" else 5000)]
    rows.append(("flux-stream-h2-long", 10000))
    return rows, timing


# Completions of 10,000 ~10 s jobs started together arrive at ~3,000 a second; this row spreads them
# (~170 a second), as a day's batch in a triggerer would.
LONG_TIMING = {"q_lo": 0.5, "q_hi": 1.5, "r_lo": 30.0, "r_hi": 90.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 100 and 1,000 only, short jobs (< 2 min)")
    parser.add_argument("--only", default="", help="comma-separated waiter names to run (default: all)")
    parser.add_argument("--n", default="", help="comma-separated N values to run (default: the plan's)")
    parser.add_argument("--no-worker", action="store_true", help="skip the worker-seconds measurement")
    parser.add_argument("--profile", help="write a pyinstrument profile of each row to PROFILE.<waiter>.<N>.txt")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--worker-seconds", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return
    if args.worker_seconds:
        worker_seconds_main(json.loads(args.worker_seconds))
        return
    _raise_nofile()  # inherited by the emulators and the children
    sys.path.insert(0, str(ROOT))
    from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer

    rows, timing = _plan(args.quick)
    if args.only:
        rows = [(name, n) for name, n in rows if name in args.only.split(",")]
    if args.n:
        wanted = {int(v) for v in args.n.split(",")}
        rows = [(name, n) for name, n in rows if n in wanted] or [
            (name, n) for name in (args.only.split(",") if args.only else WAITERS) for n in sorted(wanted)
        ]
    grace = 15.0 if args.quick else 30.0
    print(f"bench_triggers: {os.cpu_count()} cores, Python {sys.version.split()[0]}, P = {P:g} s, "
          f"jobs queue {timing['q_lo']:g}-{timing['q_hi']:g} s then run {timing['r_lo']:g}-{timing['r_hi']:g} s; "
          "emulator in its own process on 127.0.0.1", flush=True)  # fmt: skip
    servers: dict[str, EmulatorServer] = {}
    results: list[tuple[str, int, dict[str, Any] | None, dict[str, Any]]] = []
    header = (f"{'waiter':<42}{'N':>7}{'CPU µs':>10}{'per':>5}{'cores':>7}{'srv':>6}{'KB/wait':>9}"
              f"{'p50':>9}{'p99':>10}{'conns':>7}{'stall0':>8}{'stall':>8}  done")  # fmt: skip
    print(header)
    print("-" * len(header), flush=True)
    try:
        for name, n in rows:
            kind = WAITERS[name][0]
            if kind not in servers:
                config = EmulatorConfig(key=KEY, auth_scheme="Key", log_lines=4, keepalive_seconds=15)
                servers[kind] = EmulatorServer(config, in_process=False, server=kind).start()
            server = servers[kind]
            server.reset()
            spec = {
                "waiter": name, "n": n, "url": server.url, "http2": "-h2" in name,
                "timing": LONG_TIMING if name.endswith("-long") else timing,
                "grace": grace, "server_pid": server._process.pid if server._process else os.getpid(),
            }  # fmt: skip
            if args.profile:
                spec["profile"] = os.path.abspath(f"{args.profile}.{name}.{n}.txt")
            row_timing = spec["timing"]
            result = _spawn(
                ["--child", json.dumps(spec)], timeout=row_timing["r_hi"] + row_timing["q_hi"] + grace + 120
            )
            stats = server.stats(summary=True)["requests_by_route"]
            results.append((name, n, result, stats))
            print(_row(name, n, result, stats), flush=True)
        worker = None
        if not args.no_worker:
            server = (
                servers.get("uvicorn")
                or EmulatorServer(
                    EmulatorConfig(key=KEY, auth_scheme="Key"), in_process=False, server="uvicorn"
                ).start()
            )
            servers["uvicorn"] = server
            server.configure(queue_seconds=0.5, run_seconds=3.0 if args.quick else 8.0)
            worker = _spawn(
                ["--worker-seconds", json.dumps({"url": server.url, "runs": 5, "sync_runs": 1 if args.quick else 2})],
                timeout=180,
            )
    finally:
        for server in servers.values():
            server.stop()
    _summary(results, worker)


def _cost(result: dict[str, Any], stats: dict[str, Any], unit: str, n: int) -> float:
    count = stats.get("status", 0) if unit == "poll" else n
    return result["cpu"] / max(1, count) * 1e6


def _row(name: str, n: int, result: dict[str, Any] | None, stats: dict[str, Any]) -> str:
    label, unit = WAITERS[name][1], WAITERS[name][2]
    if result is None:
        return f"{label:<42}{n:>7}  failed or timed out (see stderr)"
    done = f"{result['done']}/{n}"
    bad = {k: v for k, v in result["outcomes"].items() if k != "success"}
    if bad:
        done += f" {bad}"
    cores = result["cpu"] / result["wall"]
    sat = "*" if cores > 0.9 or result["server_cores"] > 0.9 else ""
    return (
        f"{label:<42}{n:>7}{_cost(result, stats, unit, n):>9.0f}{sat:1}{unit:>5}{cores:>7.2f}"
        f"{result['server_cores']:>6.2f}{result['rss_per_waiter'] / 1024:>9.1f}{_fmt_seconds(result['p50']):>9}"
        f"{_fmt_seconds(result['p99']):>10}{result['connections']:>7}"
        f"{_fmt_seconds(result['stall0']):>8}{_fmt_seconds(result['stall']):>8}  {done}"
    )


def _summary(
    results: list[tuple[str, int, dict[str, Any] | None, dict[str, Any]]], worker: dict[str, Any] | None
) -> None:
    by = {(name, n): (result, stats) for name, n, result, stats in results if result is not None}
    print("\n* = the waiting process or the emulator used > 0.9 core (saturated on this machine)")
    print("\nRatios (yardstick / FluxReduxTrigger poll over HTTP/1.1; > 1 means ours is cheaper/faster):")
    for (name, n), (result, stats) in sorted(by.items(), key=lambda item: (item[0][1], item[0][0])):
        ours = by.get(("flux-poll", n))
        if name not in YARDSTICKS or ours is None:
            continue
        cpu_ratio = _cost(result, stats, "poll", n) / _cost(ours[0], ours[1], "poll", n)
        rss_ratio = result["rss_per_waiter"] / max(1.0, ours[0]["rss_per_waiter"])
        p99_ratio = result["p99"] / ours[0]["p99"]
        print(
            f"  N={n:>6} {WAITERS[name][1]:<38} CPU/poll x{cpu_ratio:.1f}  RSS x{rss_ratio:.1f}  p99 x{p99_ratio:.1f}"
        )
    if worker:
        print(
            f"\nWorker time per job: deferrable (submit→TaskDeferred) {worker['deferrable'] * 1000:.0f} ms wall, "
            f"{worker['deferrable_cpu'] * 1000:.0f} ms CPU; synchronous wait {worker['sync']:.2f} s wall "
            f"({worker['sync_cpu'] * 1000:.0f} ms CPU) for a job that queues 0.5 s and runs "
            f"{worker['sync'] - 0.5:.0f}-ish s: x{worker['sync'] / worker['deferrable']:.0f}"
        )
    print("\nTargets:")

    def target(text: str, ok: bool | None) -> None:
        print(f"  [{'met' if ok else 'not met' if ok is not None else 'not run'}] {text}")

    poll = by.get(("flux-poll", 1000))
    if poll:
        cost = _cost(poll[0], poll[1], "poll", 1000)
        target(f"poll N=1,000 P=1 s: {cost:.0f} µs/poll ≤ 300", cost <= 300)
        target(f"poll N=1,000: p99 {_fmt_seconds(poll[0]['p99'])} ≤ P + 0.1 s", poll[0]["p99"] <= P + 0.1)
        kb = poll[0]["rss_per_waiter"] / 1024
        target(f"poll N=1,000: {kb:.1f} KB per waiter ≤ 15", kb <= 15)
        target(
            f"poll N=1,000: event-loop stall {_fmt_seconds(poll[0]['stall'])} < 50 ms once running "
            f"({_fmt_seconds(poll[0]['stall0'])} while 1,000 start at once)",
            poll[0]["stall"] < 0.05,
        )
        target(f"poll N=1,000: {poll[0]['connections']} connections opened, none per poll", poll[0]["connections"] < 50)
    else:
        target("poll N=1,000", None)
    ten_k = [(name, by[(name, 10000)][0]) for name in WAITERS if name.startswith("flux") and (name, 10000) in by]
    for name, entry in ten_k:
        cores = entry["cpu"] / entry["wall"]
        label = WAITERS[name][1].strip()
        if name.endswith("-long") or name.endswith("-quiet"):
            label = f"stream (SSE), HTTP/2, {label.removeprefix('same, ')}"
        target(
            f"10,000 waits, {label}: p99 {_fmt_seconds(entry['p99'])} ≤ 1 s, {cores:.2f} core ≤ 0.5, "
            f"{entry['rss_per_waiter'] / 1024:.1f} KB ≤ 30",
            entry["done"] == 10000 and entry["p99"] <= 1.0 and cores <= 0.5 and entry["rss_per_waiter"] <= 30 * 1024,
        )
    if not ten_k:
        target("10,000 waits", None)
    stream = [by.get((name, 100)) for name in ("flux-stream", "flux-stream-h2")]
    p99s = [(entry[0]["p99"], name) for entry, name in zip(stream, ("HTTP/1.1", "HTTP/2"), strict=True) if entry]
    if p99s:
        text = ", ".join(f"{name} {_fmt_seconds(value)}" for value, name in p99s)
        target(f"stream N=100: p99 {text} ≤ 50 ms", min(p99s)[0] <= 0.05)
    else:
        target("stream N=100", None)
    if worker:
        target(f"worker time per job {worker['deferrable'] * 1000:.0f} ms ≤ 0.5 s", worker["deferrable"] <= 0.5)
    else:
        target("worker time per job", None)


if __name__ == "__main__":
    main()
