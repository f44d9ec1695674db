"""The ``flux-redux-emulator`` command line: flags <-> ``EmulatorConfig``, and serving until a signal."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import TYPE_CHECKING

from airflow_flux_redux.emulator.config import EmulatorConfig, parse_timing
from airflow_flux_redux.emulator.faults import KINDS, parse_rule
from airflow_flux_redux.emulator.serving import BANNER, KEY_ENV, bind, serve, url_of

if TYPE_CHECKING:
    from collections.abc import Callable

DESCRIPTION = """\
A local stand-in for fal.ai's queue serving FLUX.1 [schnell] Redux, for tests, demos and benchmarks.
It is NOT a model: it answers with fal's queue protocol and returns real images, but they are
deterministic variations of the input image (crop, mirror, hue shift, grain), not FLUX output.
Sides above 4096 px are scaled down. Admin API (no auth, under --path-prefix): GET /_emulator/stats,
POST /_emulator/faults, POST /_emulator/config, POST /_emulator/reset, GET /_emulator/sample.png.
"""
_LIVE_HELP = {
    "queue_seconds": "time a job waits IN_QUEUE",
    "run_seconds": "time a job runs IN_PROGRESS",
    "log_lines": "progress log lines during a run",
    "result_ttl": "seconds a result stays fetchable",
    "short_result_ttl": "seconds a result stays fetchable when sent with X-Fal-Store-IO: 0 and sync_mode",
    "keepalive_seconds": "SSE keep-alive period",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _checked(parse: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type that rejects a bad value at the command line (not at the first request), kept as text."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text

    return check


def _fault_kinds() -> str:
    lines = [f"  {kind} ({', '.join(routes) or 'any route'}): {what}" for kind, (routes, what) in KINDS.items()]
    head = "fault kinds (--fault KIND[:CODE][:key=value]... or JSON; keys: route, times, after, probability, ...):"
    return "\n".join([head, *lines])


def build_parser() -> argparse.ArgumentParser:
    defaults = EmulatorConfig()
    parser = argparse.ArgumentParser(
        prog="flux-redux-emulator",
        description=DESCRIPTION,
        epilog=_fault_kinds(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=8790, help="port; 0 picks a free one (the URL is printed first)")
    add("--key", default=os.environ.get(KEY_ENV), help=f"API key to require (default ${KEY_ENV}; unset = any)")
    add("--auth-scheme", choices=("Key", "Bearer", "any"), default="any", help="Authorization scheme accepted")
    for name in EmulatorConfig.LIVE_NUMBERS:
        kind = int if isinstance(getattr(defaults, name), int) else float
        add(_flag(name), type=kind, default=getattr(defaults, name), help=_LIVE_HELP[name])
    add(
        "--concurrency-limit",
        "--workers",
        dest="concurrency_limit",
        type=int,
        default=None,
        help="fal's account concurrency limit: jobs IN_PROGRESS at once per key, across its endpoints; the "
        "others wait IN_QUEUE, dispatched FIFO (default unlimited; --workers is the old name)",
    )
    add("--seed", type=int, default=None, help="seed of the emulator's RNG (picked seeds, fault probabilities)")
    add(
        "--public-url",
        default=None,
        help="base of returned URLs, prefix included (default: the request's Host header + --path-prefix)",
    )
    add(
        "--relay",
        action="store_true",
        help="play a fal-compatible relay: hand out https://queue.fal.run URLs, serve the same paths here "
        "with Bearer auth, no status stream",
    )
    add("--path-prefix", default="", help="serve every route under this path, e.g. /api/v1 (a gateway's base URL)")
    add(
        "--timing",
        action="append",
        type=_checked(parse_timing),
        default=[],
        help="per-seed job length, repeatable: LO-HI:QUEUE:RUN[:STEP] gives jobs whose seed is in LO..HI that "
        "queue time and a run time of RUN + (seed - LO) * STEP, e.g. 24-47:0.2:10:0.2",
    )
    add(
        "--fault",
        action="append",
        type=_checked(parse_rule),
        default=[],
        help='fault rule, repeatable: JSON or compact "kind[:code][:key=value]...", e.g. status:503:times=2',
    )
    add("--server", choices=("uvicorn", "hypercorn"), default="uvicorn", help="hypercorn adds HTTP/2 (h2c)")
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        key=args.key,
        auth_scheme=args.auth_scheme,
        faults=args.fault,
        seed=args.seed,
        concurrency_limit=args.concurrency_limit,
        public_url=args.public_url,
        relay=args.relay,
        path_prefix=args.path_prefix,
        timings=args.timing,
        **{name: getattr(args, name) for name in EmulatorConfig.LIVE_NUMBERS},
    )


def config_to_argv(config: EmulatorConfig) -> list[str]:
    """Command-line flags reproducing ``config`` (except the key, which goes through the environment)."""
    argv = ["--auth-scheme", config.auth_scheme]
    for name in EmulatorConfig.LIVE_NUMBERS:
        argv += [_flag(name), str(getattr(config, name))]
    for name in ("concurrency_limit", "seed", "public_url"):
        if getattr(config, name) is not None:
            argv += [_flag(name), str(getattr(config, name))]
    argv += ["--relay"] if config.relay else []
    argv += ["--path-prefix", config.path_prefix] if config.path_prefix else []
    for timing in config.timing_rules:
        argv += ["--timing", timing.compact()]
    for rule in config.faults:
        argv += ["--fault", rule if isinstance(rule, str) else json.dumps(rule)]
    return argv


async def _run(args: argparse.Namespace, config: EmulatorConfig) -> None:
    from airflow_flux_redux.emulator.app import create_app

    sock = bind(args.host, args.port)
    print(BANNER + url_of(sock) + config.path_prefix, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await serve(create_app(config), sock, args.server, stop)


def main(argv: list[str] | None = None) -> None:
    """Parse flags and serve until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(_run(args, config_from_args(args)))
    except KeyboardInterrupt:
        sys.exit(130)
