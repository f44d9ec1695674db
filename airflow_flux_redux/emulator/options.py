"""fal's optional submit headers and query parameters: each is checked as fal does, and recorded.

- ``X-Fal-Object-Lifecycle-Preference: {"expiration_duration_seconds": N}`` sets how long the result lives;
- ``x-app-fal-disable-fallback: true|false`` switches model fallback off (recorded only: there is none);
- ``?fal_max_queue_length=N`` refuses the submit (429, ``X-Fal-Needs-Retry: 1``) when N jobs are queued;
- ``X-Fal-Store-IO: 0`` with ``sync_mode: true`` keeps the result only ``short_result_ttl`` seconds.

A bad value is refused with 400 ``bad_request`` naming the header or parameter, before the job exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_flux_redux.emulator.jobs import Failure, request_error

if TYPE_CHECKING:
    from airflow_flux_redux.emulator.call import Call

LIFECYCLE = b"x-fal-object-lifecycle-preference"
DISABLE_FALLBACK = b"x-app-fal-disable-fallback"
STORE_IO = b"x-fal-store-io"
MAX_QUEUE_LENGTH = "fal_max_queue_length"
_FAL_HEADER_PREFIXES = (b"x-fal-", b"x-app-fal-")


@dataclass(frozen=True)
class SubmitOptions:
    """What a submit asked for beyond its body; ``seen`` is what stats show (never the Authorization header)."""

    lifetime: float | None = None
    store_io: bool = True
    max_queue_length: int | None = None
    seen: dict[str, dict[str, str]] = field(default_factory=dict)


def _bad(name: str, value: str, allowed: str) -> Failure:
    return request_error(400, "bad_request", f"{name}: {value!r} is not valid; allowed: {allowed}")


def _lifetime(value: str) -> float:
    """The ``expiration_duration_seconds`` of the lifecycle header; ValueError when it is not one."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(value) from None
    if not isinstance(data, dict) or set(data) != {"expiration_duration_seconds"}:
        raise ValueError(value)
    seconds = data["expiration_duration_seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise ValueError(value)
    return float(seconds)


def read_options(call: Call) -> SubmitOptions | Failure:
    """The submit's fal options, or the 400 to answer with."""
    lifetime = None
    raw = call.header(LIFECYCLE)
    if raw is not None:
        try:
            lifetime = _lifetime(raw)
        except ValueError:
            allowed = 'JSON {"expiration_duration_seconds": N} with N > 0'
            return _bad("X-Fal-Object-Lifecycle-Preference", raw, allowed)
    fallback = call.header(DISABLE_FALLBACK)
    if fallback is not None and fallback.lower() not in ("true", "false"):
        return _bad("x-app-fal-disable-fallback", fallback, "true or false")
    limit = call.query.get(MAX_QUEUE_LENGTH)
    if limit is not None and not limit.isdigit():
        return _bad(MAX_QUEUE_LENGTH, limit, "an integer >= 0")
    store_io = (call.header(STORE_IO) or "1").lower() not in ("0", "false")
    headers = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in call.headers.items()
        if name.startswith(_FAL_HEADER_PREFIXES)
    }
    seen = {"headers": headers, "query": dict(call.query)}
    return SubmitOptions(lifetime, store_io, None if limit is None else int(limit), seen)
