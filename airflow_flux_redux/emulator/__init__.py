"""A faithful fal-queue emulator for FLUX.1 [schnell] Redux, on loopback, for tests, demos and benchmarks.

It is not a model. It speaks fal's queue protocol (submit, status, SSE stream, result, cancel; the same
codes, bodies and URLs), and returns real JPEG/PNG images, but each is a deterministic variation of the
input image (seeded crop, mirror, hue shift and grain), not FLUX output. Faults (HTTP errors, dropped
connections, delays, malformed answers, failed or expired jobs, redirects, bad files) are scriptable
through ``EmulatorServer.set_faults`` or ``--fault``.

    with EmulatorServer(EmulatorConfig(key="k", queue_seconds=0.1, run_seconds=0.5)) as emulator:
        ...  # point the client at emulator.url

``relay=True`` plays a fal-compatible relay (fal's queue URLs, Bearer, no stream); ``path_prefix`` serves
everything under a gateway-like base path; ``timings`` give seed ranges their own job lengths.

Modules: ``app`` routes a request to ``submit`` (with fal's header and query ``options``), ``status``
(status and its SSE stream), ``results``, ``cancel``, ``files`` or ``admin``; routes under ``requests/{id}``
start with ``lookup`` (``auth`` key check, ``faults``, the job). ``call`` wraps one ASGI request,
``state`` is the emulator's memory (``jobs``, counters), ``images`` makes the pictures. ``config`` is the
settings, ``cli`` the command line, ``serving`` the sockets and ASGI servers, ``server`` ``EmulatorServer``.
"""

from __future__ import annotations

from airflow_flux_redux.emulator.app import create_app
from airflow_flux_redux.emulator.config import EmulatorConfig
from airflow_flux_redux.emulator.server import EmulatorServer

__all__ = ["EmulatorConfig", "EmulatorServer", "create_app"]
