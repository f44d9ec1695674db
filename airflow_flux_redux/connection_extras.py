"""The ``flux_redux`` connection's extras, declared once: name, type, default, help, allowed values.

The hook's settings, Airflow 3's ``conn-fields`` and Airflow 2's form widgets are all derived from this
table (``connection_form`` renders it, ``hooks/_settings`` parses it). Kept free of heavy imports:
Airflow reads provider info on every CLI start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from airflow_flux_redux.exceptions import FluxReduxConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

Kind = Literal["string", "integer", "number", "boolean"]
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def header_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _true_false(value: Any) -> str:
    return "true" if value else "false"


def _lifecycle(seconds: Any) -> str:
    return json.dumps({"expiration_duration_seconds": seconds})


@dataclass(frozen=True)
class Extra:
    """One connection extra, and where its value goes on the submit call.

    ``header`` names the fal request header it sets, ``query`` the query parameter (if any); ``encode`` writes
    the value as fal spells it there.
    """

    name: str
    label: str
    kind: Kind
    help: str
    default: Any = None
    choices: tuple[str, ...] = ()
    header: str | None = None
    minimum: float | None = None
    query: str | None = None
    encode: Callable[[Any], str] = header_value

    def parse(self, raw: Any) -> Any:
        """The value of this extra, or a ``FluxReduxConfigError`` naming it and what it allows."""
        if raw is None or raw == "":
            return self.default
        try:
            if self.kind == "boolean":
                text = str(raw).strip().lower()
                if text not in _TRUE + _FALSE:
                    raise ValueError
                value: Any = text in _TRUE
            elif self.kind == "integer":
                value = int(str(raw).strip())
            elif self.kind == "number":
                value = float(str(raw).strip())
            else:
                value = str(raw).strip()
        except ValueError:
            raise FluxReduxConfigError(f"Connection extra {self.name}={raw!r}; allowed: {self.allowed}.") from None
        if self.choices and value not in self.choices:
            raise FluxReduxConfigError(f"Connection extra {self.name}={raw!r}; allowed: {self.allowed}.")
        if self.minimum is not None and value < self.minimum:
            raise FluxReduxConfigError(f"Connection extra {self.name}={raw!r}; allowed: {self.allowed}.")
        return value

    @property
    def allowed(self) -> str:
        if self.choices:
            return " or ".join(self.choices)
        if self.kind == "boolean":
            return "true or false"
        if self.kind in ("integer", "number"):
            low = "" if self.minimum is None else f" >= {self.minimum:g}"
            return f"{'an integer' if self.kind == 'integer' else 'a number'}{low}"
        return "a string"


EXTRAS: tuple[Extra, ...] = (
    Extra("auth_scheme", "Auth scheme", "string", "Key for fal.ai; Bearer for most fal-compatible gateways.",
          default="Key", choices=("Key", "Bearer")),
    Extra("endpoint", "Model endpoint", "string", "Path of the model under the base URL.",
          default="fal-ai/flux-1/schnell/redux"),
    Extra("rebase_queue_urls", "Rebase fal's queue URLs", "string",
          "auto: a gateway (base URL not fal's) that answers with status/result/cancel URLs on fal's queue host "
          "is called on the same paths under its own base URL, so its key never goes to fal; always: every "
          "returned URL is; never: follow them as returned.",
          default="auto", choices=("auto", "always", "never")),
    Extra("timeout", "HTTP timeout (s)", "number", "Per HTTP call, not the whole job.", default=30.0, minimum=0.1),
    Extra("max_retries", "Max retries", "integer",
          "Retries of a transient failure (429, 502, 503, 504, network) per call.", default=5, minimum=0),
    Extra("retry_initial_wait", "First retry wait (s)", "number", "Backoff before the first retry; doubles.",
          default=0.5, minimum=0),
    Extra("retry_max_wait", "Longest retry wait (s)", "number", "Cap of the backoff and of Retry-After.",
          default=30.0, minimum=0),
    Extra("allowed_hosts", "Allowed hosts", "string",
          "Comma-separated origins (https://host:port) that may receive the key besides the base URL, for "
          "gateways that answer with status URLs on another host of their own. Never fal's host for a "
          "gateway's key: see rebase_queue_urls.", default=""),
    Extra("http2", "HTTP/2", "boolean", "Multiplex the waits' status streams over HTTP/2 (server permitting).",
          default=False),
    Extra("proxy", "Proxy URL", "string",
          "http://[user:password@]host:port for every call of this connection, instead of HTTPS_PROXY / "
          "HTTP_PROXY / ALL_PROXY / NO_PROXY (used when empty). An https origin is reached through a CONNECT "
          "tunnel, so the proxy never sees the key.", default=""),
    Extra("max_in_flight", "Max requests in flight", "integer", "Per connection and event loop.", default=64,
          minimum=1),
    Extra("queue_priority", "Queue priority", "string", "fal queue priority.", choices=("normal", "low"),
          header="X-Fal-Queue-Priority"),
    Extra("request_timeout", "Start deadline (s)", "integer",
          "fal gives up on a job not started within this many seconds.", header="X-Fal-Request-Timeout",
          minimum=1),
    Extra("runner_hint", "Runner hint", "string", "fal runner routing hint.", header="X-Fal-Runner-Hint"),
    Extra("no_retry", "No fal-side retry", "boolean", "Ask fal not to retry the job itself.",
          header="X-Fal-No-Retry"),
    Extra("store_io", "Store payloads", "boolean", "fal's payload storage (X-Fal-Store-IO); off keeps results "
          "only minutes.", header="X-Fal-Store-IO"),
    Extra("object_expiration_seconds", "Output file lifetime (s)", "integer",
          "How long fal keeps the output image files (X-Fal-Object-Lifecycle-Preference); fal's default when "
          "empty.", header="X-Fal-Object-Lifecycle-Preference", minimum=1, encode=_lifecycle),
    Extra("disable_fallback", "Disable model fallback", "boolean",
          "Never let fal run the job on a fallback model (x-app-fal-disable-fallback).",
          header="x-app-fal-disable-fallback", encode=_true_false),
    Extra("max_queue_length", "Max queue length", "integer",
          "Submit is refused with 429 (retried as any 429, up to max_retries) while fal's queue is longer than "
          "this (fal_max_queue_length).", query="fal_max_queue_length", minimum=0),
)  # fmt: skip

BY_NAME = {extra.name: extra for extra in EXTRAS}


def parse_extras(extra: dict[str, Any]) -> dict[str, Any]:
    """Every declared extra's value (defaults filled in); unknown extras are ignored, as Airflow does."""
    return {item.name: item.parse(extra.get(item.name)) for item in EXTRAS}
