"""Big batches against fal's concurrency limit: N waits in one event loop, C jobs running at once.

    python benchmarks/bench_queue.py --n 1000 --c 40      # floor 37.5 s per row
    python benchmarks/bench_queue.py --n 1000 --c 2       # floor 750 s per row
    python benchmarks/bench_queue.py --quick              # N = 200, C = 40 (floor 7.5 s per row)
    python benchmarks/bench_queue.py --n 200 --c 2 --rows ours-relay,naive

Run it under ``flock /tmp/heavy.lock``. The emulator (its own process) queues like fal
(``--concurrency-limit C``, 1.5 s jobs, FIFO; DESIGN.md section 8): N jobs are submitted first, all made
ready at the same instant once every waiter is built, so the floor of the batch is N x 1.5 / C seconds.
Each row runs in a fresh process, its N waits in one asyncio loop:

- ``ours-relay``: ``FluxReduxTrigger.run`` built as the triggerer builds it (``operator.execute()`` ->
  ``TaskDeferred`` -> serialize -> rebuilt, the operator's defaults: ``wait_mode="auto"``,
  ``poll_interval`` 1 s), against the emulator as a relay (no status stream);
- ``ours-stream``: the same against the emulator serving the status stream (fal);
- ``naive``: one shared aiohttp session polling every ``poll_interval`` = 1 s (bench_triggers.py's
  waiter); it never uses the stream, so one row serves for both servers.

Printed per row: status calls per job; streams opened, streams open at peak (the emulator's count) and
the waiting process's TCP connections opened and open descriptors at peak (above its baseline); CPU of
the waiting process (core, average over the run and peak over any 1 s); KB of RSS per wait; completion
-> event p50/p99 (the event time minus the emulator's completion time of the job; one clock); the
longest event-loop lag (a 50 ms ticker) and the longest garbage collection (the loop stalls for it);
wall time (all jobs ready -> last event) against the floor.

The waiting process logs as a triggerer's trigger runner does (``bench_triggers.triggerer_process``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUN = 1.5
ROWS = {
    "ours-relay": ("ours, relay (no stream)", False),
    "ours-stream": ("ours, stream served", True),
    "naive": ("naive: shared aiohttp, poll 1 s", False),
}


def _bench() -> Any:
    sys.path.insert(0, str(HERE))
    import bench_triggers

    return bench_triggers


# -- the child: one row --------------------------------------------------------------------------------------


async def _submit_all(url: str, n: int, key: str, ready_at: float, png: str) -> list[dict[str, Any]]:
    """Submit n jobs, all ready (queue time over) at ``ready_at``: FIFO from then on, C at a time."""
    import aiohttp

    body = {"image_url": png, "image_size": {"width": 32, "height": 32}}
    handles: list[dict[str, Any]] = [{}] * n
    gate = asyncio.Semaphore(16)
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector, headers={"Authorization": f"Key {key}"}) as session:

        async def one(i: int) -> None:
            async with gate:
                headers = {"x-emulator-queue-seconds": f"{max(0.0, ready_at - time.monotonic()):.4f}"}
                async with session.post(f"{url}/fal-ai/flux-1/schnell/redux", json=body, headers=headers) as answer:
                    answer.raise_for_status()
                    handles[i] = {
                        k: v.replace("https://queue.fal.run", url) if isinstance(v, str) else v
                        for k, v in (await answer.json()).items()
                    }

        for start in range(0, n, 500):  # in order, so FIFO order is submission order
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 500))))
    return handles


async def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    import psutil

    bench = _bench()
    bench._TINY_PNG = png = bench._tiny_png()
    name, n, url, key = spec["row"], spec["n"], spec["url"], bench.KEY
    ours = name.startswith("ours")
    build_each = 0.0
    if ours:
        probe = {"request_id": "x", "status_url": url, "response_url": url, "cancel_url": url}
        bench._deferred_trigger(probe, None)  # imports
        started = time.monotonic()
        for _ in range(20):
            bench._deferred_trigger(probe, None)
        build_each = (time.monotonic() - started) / 20
    lead = 2.0 + n * (0.004 + 1.3 * build_each)
    ready_at = time.monotonic() + lead
    handles = await _submit_all(url, n, key, ready_at, png)
    if ours:
        items: list[Any] = [bench._deferred_trigger(handle, None) for handle in handles]

        async def wait(item: Any) -> str:
            async for event in item.run():
                return str(event.payload["status"])
            return "no event"

    else:
        items = handles
        wait = bench._aiohttp_waiter()
    late_start = time.monotonic() - ready_at
    if late_start > 0:
        print(f"warning: {name} N={n}: waiters start {late_start:.1f} s after the jobs became ready", file=sys.stderr)
    opened = bench.count_connections(asyncio.get_running_loop())
    me = psutil.Process()
    fds0, rss0 = me.num_fds(), me.memory_info().rss
    peak = {"fds": 0, "rss": 0, "lag": 0.0, "core": 0.0}
    events: list[float | None] = [None] * n
    outcomes: dict[str, int] = {}

    async def one(i: int) -> None:
        try:
            outcome = await wait(items[i])
        except Exception as err:
            outcome = type(err).__name__
        events[i] = time.monotonic()
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    async def monitor() -> None:
        tick = last = time.monotonic()
        cpu_last = time.process_time()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            peak["lag"] = max(peak["lag"], now - tick - 0.05)
            tick = now
            if now - last >= 1.0:
                cpu = time.process_time()
                peak["core"] = max(peak["core"], (cpu - cpu_last) / (now - last))
                cpu_last, last = cpu, now
                peak["fds"] = max(peak["fds"], me.num_fds() - fds0)
                if not outcomes:
                    peak["rss"] = max(peak["rss"], me.memory_info().rss)

    gc_pauses = bench._gc_pauses()
    cpu0, wall0 = time.process_time(), time.monotonic()
    watcher = asyncio.ensure_future(monitor())
    tasks = []
    for i in range(n):
        await asyncio.sleep(0)  # as the triggerer's create_triggers does between two triggers
        tasks.append(asyncio.ensure_future(one(i)))
    floor = n * RUN / spec["c"]
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, ready_at - wall0) + floor * 1.5 + 120)
    for task in pending:
        task.cancel()
    cpu1, wall1 = time.process_time(), time.monotonic()
    watcher.cancel()
    await asyncio.gather(*pending, watcher, return_exceptions=True)
    done = [(i, t) for i, t in enumerate(events) if t is not None]
    return {
        "ids": [handle["request_id"] for handle in handles],
        "events": events,
        "ready_at": ready_at,
        "late_start": max(0.0, late_start),
        "cpu": cpu1 - cpu0,
        "wall": wall1 - wall0,
        "last_event": max((t for _, t in done), default=float("nan")),
        "core_peak": peak["core"],
        "fds_peak": peak["fds"],
        "rss_per_wait": max(0, peak["rss"] - rss0) / n,
        "lag": peak["lag"],
        "gc_max": max(gc_pauses, default=0.0),
        "connections": opened[0],
        "outcomes": outcomes,
    }


def child_main(spec: dict[str, Any]) -> None:
    _bench().triggerer_process(spec["url"], {}, "flux-bench-queue-")
    print(json.dumps(asyncio.run(_run_child(spec))), flush=True)


# -- the parent: emulators, rows, table ------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _row(name: str, n: int, c: int, stream: bool) -> dict[str, Any] | None:
    from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer

    bench = _bench()
    config = EmulatorConfig(
        key=bench.KEY, auth_scheme="Key", concurrency_limit=c, queue_seconds=0.0, run_seconds=RUN, log_lines=4,
        relay=not stream,
    )  # fmt: skip
    floor = n * RUN / c
    with EmulatorServer(config, in_process=False) as emu:
        spec = {"row": name, "n": n, "c": c, "url": emu.url}
        try:
            child = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                capture_output=True, text=True, timeout=floor * 2 + n * 0.05 + 300, cwd=str(ROOT),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            print(f"{name}: timed out", file=sys.stderr)
            return None
        sys.stderr.write("".join(line + "\n" for line in child.stderr.splitlines() if line.startswith("warning:")))
        lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
        if child.returncode != 0 or not lines:
            sys.stderr.write(child.stderr[-3000:])
            return None
        result = json.loads(lines[-1])
        stats = emu.stats()
    jobs = stats["requests"]
    latencies = [
        event - jobs[request_id]["finished_at"]
        for request_id, event in zip(result["ids"], result["events"], strict=True)
        if event is not None and request_id in jobs
    ]
    routes = stats["requests_by_route"]
    return {
        **result,
        "status_per_job": routes.get("status", 0) / n,
        "streams": routes.get("stream", 0),
        "streams_peak": stats["streams_open_peak"],
        "p50": _percentile(latencies, 0.5),
        "p99": _percentile(latencies, 0.99),
        "done": sum(result["outcomes"].values()),
        "success": result["outcomes"].get("success", 0),
        "batch_wall": result["last_event"] - result["ready_at"],
        "floor": floor,
    }


HEADER = (
    f"{'waiter':<34}{'N':>6}{'C':>4}{'calls/job':>10}{'streams':>8}{'open':>6}{'conns':>7}{'fds':>6}"
    f"{'core avg':>9}{'peak':>6}{'KB':>6}{'p50':>8}{'p99':>8}{'lag max':>9}{'gc max':>8}{'wall':>8}{'floor':>7}"
    f"{'ratio':>7}  done"
)


def _fmt(value: float) -> str:
    if value != value:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _line(name: str, n: int, c: int, r: dict[str, Any] | None) -> str:
    label = ROWS[name][0]
    if r is None:
        return f"{label:<34}{n:>6}{c:>4}  failed or timed out (see stderr)"
    bad = {k: v for k, v in r["outcomes"].items() if k != "success"}
    done = f"{r['success']}/{n}" + (f" {bad}" if bad else "")
    core = r["cpu"] / r["wall"]
    return (
        f"{label:<34}{n:>6}{c:>4}{r['status_per_job']:>10.1f}{r['streams']:>8}{r['streams_peak']:>6}"
        f"{r['connections']:>7}{r['fds_peak']:>6}{core:>9.3f}{r['core_peak']:>6.2f}{r['rss_per_wait'] / 1024:>6.1f}"
        f"{_fmt(r['p50']):>8}{_fmt(r['p99']):>8}{_fmt(r['lag']):>9}{_fmt(r['gc_max']):>8}{r['batch_wall']:>7.1f}s{r['floor']:>6.1f}s"
        f"{r['batch_wall'] / r['floor']:>7.3f}  {done}"
    )


def _targets(n: int, c: int, results: dict[str, dict[str, Any] | None]) -> None:
    print(f"\nTargets (issue 18), N = {n:,}, C = {c}:")

    def target(text: str, ok: bool) -> None:
        print(f"  [{'met' if ok else 'NOT met'}] {text}")

    for name in ("ours-relay", "ours-stream"):
        r = results.get(name)
        if r is None:
            continue
        core, limit = r["cpu"] / r["wall"], 1.05 * r["floor"] + 5
        label = ROWS[name][0]
        if name == "ours-relay":
            target(f"{label}: {r['status_per_job']:.1f} status calls per job <= 20", r["status_per_job"] <= 20)
        else:
            target(f"{label}: {r['streams_peak']} streams open at peak <= a few hundred", r["streams_peak"] <= 300)
        target(f"{label}: {core:.3f} core on average <= 0.1", core <= 0.1)
        target(f"{label}: completion -> event p99 {_fmt(r['p99'])} <= 1.5 s", r["p99"] <= 1.5)
        target(f"{label}: loop lag max {_fmt(r['lag'])} <= 100 ms", r["lag"] <= 0.1)
        target(f"{label}: wall {r['batch_wall']:.1f} s <= 1.05 x floor + 5 = {limit:.1f} s", r["batch_wall"] <= limit)
        target(f"{label}: every wait succeeds ({r['success']}/{n})", r["success"] == n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="jobs (waits), default 1,000")
    parser.add_argument("--c", type=int, default=40, help="the account's concurrency limit, default 40")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default all: {', '.join(ROWS)})")
    parser.add_argument("--quick", action="store_true", help="N = 200, C = 40: floor 7.5 s per row (~1.5 min)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return
    _bench()._raise_nofile()
    sys.path.insert(0, str(ROOT))
    n, c = (200, 40) if args.quick else (args.n, args.c)
    names = [name for name in args.rows.split(",") if name]
    unknown = set(names) - set(ROWS)
    if unknown:
        parser.error(f"--rows: unknown {sorted(unknown)}; allowed: {', '.join(ROWS)}")
    print(
        f"bench_queue: {os.cpu_count()} cores, Python {sys.version.split()[0]}; N = {n:,} jobs of {RUN} s, "
        f"concurrency limit C = {c}, floor N x {RUN} / C = {n * RUN / c:.1f} s; poll_interval 1 s; emulator in its "
        "own process on 127.0.0.1",
        flush=True,
    )
    print(HEADER)
    print("-" * len(HEADER), flush=True)
    results: dict[str, dict[str, Any] | None] = {}
    for name in names:
        results[name] = _row(name, n, c, ROWS[name][1])
        print(_line(name, n, c, results[name]), flush=True)
    print(
        "\ncalls/job: status GETs per job; streams: status streams opened; open: streams open at once at peak (the "
        "emulator's count);\nconns: TCP connections the waiting process opened; fds: its open descriptors at peak "
        "above its baseline;\ncore: CPU of the waiting process (average; peak over 1 s); KB: RSS per wait; p50/p99: "
        "completion -> event;\nlag max: longest event-loop stall; gc max: longest garbage collection; wall: all jobs "
        "ready -> last event; floor: N x 1.5 / C."
    )
    _targets(n, c, results)
    naive = results.get("naive")
    ours = [results.get(name) for name in ("ours-relay", "ours-stream")]
    if naive and any(ours):
        base = statistics.mean([naive["status_per_job"]])
        print(f"\nNaive polling made {base:.1f} status calls per job in the same run.")


if __name__ == "__main__":
    main()
