"""Fault rules: the failures a real fal queue (or a gateway in front of it) shows, on demand.

A rule names a route, a kind and how often it fires. Rules come from ``--fault`` on the command line,
from ``EmulatorConfig.faults`` or from ``POST /_emulator/faults``, as JSON objects or in a compact form
``kind[:code][:key=value]...`` such as ``status:503:times=2`` or ``delay:route=status:seconds=3``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Collection

ROUTES = ("submit", "status", "stream", "result", "cancel", "file")

# Kinds that fit every route, and the routes of the others (the first one is the default route).
_ANYWHERE = ("status", "reset", "delay", "malformed", "redirect")
_ROUTES_OF_KIND: dict[str, tuple[str, ...]] = {
    "unknown_status": ("status", "stream"),
    "missing_fields": ("submit",),
    "fail_job": ("submit",),
    "expire_result": ("result",),
    "huge_file": ("file",),
    "wrong_content_type": ("file",),
}
KINDS = (*_ANYWHERE, *_ROUTES_OF_KIND)
# On submit, these kinds answer after the job was taken (a client that retries creates a duplicate).
_ACCEPTED_BY_DEFAULT = {"delay", "malformed", "missing_fields", "fail_job"}

# What fal answers for each code when a rule gives no body: (error_type, detail).
DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    429: ("rate_limited", "Too many requests: concurrency limit reached"),
    500: ("internal_error", "Internal server error"),
    502: ("bad_gateway", "Bad gateway"),
    503: ("runner_scheduling_failure", "No runner could be scheduled for the request"),
    504: ("request_timeout", "The request timed out"),
}


@dataclass
class FaultRule:
    """One rule; ``times=-1`` fires forever, ``after=k`` lets the first k matching requests through."""

    kind: str
    route: str
    times: int = 1
    after: int = 0
    probability: float | None = None
    after_accept: bool = False
    code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    seconds: float = 1.0
    location: str | None = None
    bytes: int = 64 * 1024 * 1024
    error_type: str | None = None
    message: str | None = None
    seen: int = 0
    fired: int = 0


def parse_compact(text: str) -> dict[str, Any]:
    """``status:503:times=2:route=submit`` -> ``{"kind": "status", "code": 503, "times": 2, ...}``."""
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    kind, *parts = text.split(":")
    rule: dict[str, Any] = {"kind": kind}
    for part in parts:
        name, sep, value = part.partition("=")
        if not sep:
            if not name.isdigit():
                raise ValueError(f"fault {text!r}: {part!r} is neither a status code nor key=value")
            rule["code"] = int(name)
            continue
        try:
            rule[name] = json.loads(value)
        except json.JSONDecodeError:
            rule[name] = value
    return rule


def parse_rule(spec: dict[str, Any] | str) -> FaultRule:
    """Validate one rule (a dict or the compact form); raises ValueError saying what is wrong."""
    data = dict(parse_compact(spec) if isinstance(spec, str) else spec)
    kind = data.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"fault kind must be one of {', '.join(KINDS)}; got {kind!r}")
    allowed = _ROUTES_OF_KIND.get(kind, (*ROUTES, "any"))
    route = data.pop("route", None) or (allowed[0] if kind in _ROUTES_OF_KIND else "any")
    if route not in allowed:
        raise ValueError(f"fault kind {kind!r} applies to route(s) {', '.join(allowed)}, not {route!r}")
    data.setdefault("after_accept", kind in _ACCEPTED_BY_DEFAULT)
    if kind == "redirect" and not data.get("location"):
        raise ValueError("a redirect fault needs a 'location'")
    if kind == "status" and not data.get("code"):
        raise ValueError("a status fault needs a 'code', e.g. 503")
    known = set(FaultRule.__dataclass_fields__) - {"kind", "route", "seen", "fired"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown fault field(s) {sorted(unknown)}; known: {sorted(known)}")
    return FaultRule(kind=kind, route=route, **data)


class FaultBook:
    """The active rules and how often each kind fired; picking a rule is O(number of rules)."""

    def __init__(self, seed: int | None) -> None:
        self.rules: list[FaultRule] = []
        self.fired: Counter[str] = Counter()
        self._rng = random.Random(f"faults:{seed}")

    def replace(self, specs: list[dict[str, Any] | str]) -> None:
        """Swap in a new rule list; nothing changes if any rule is invalid."""
        self.rules = [parse_rule(spec) for spec in specs]

    def take(self, route: str, kinds: Collection[str]) -> FaultRule | None:
        """The rule that fires for this request on ``route`` (counting it), or None."""
        for rule in self.rules:
            if rule.kind not in kinds or rule.route not in (route, "any"):
                continue
            if rule.times != -1 and rule.fired >= rule.times:
                continue
            rule.seen += 1
            if rule.seen <= rule.after:
                continue
            if rule.probability is not None and self._rng.random() >= rule.probability:
                continue
            rule.fired += 1
            self.fired[rule.kind] += 1
            return rule
        return None
