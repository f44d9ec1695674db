"""Fault rules: the failures a real fal queue (or a gateway in front of it) shows, on demand, and their answers.

A rule names a route, a kind and how often it fires. Rules come from ``--fault`` on the command line,
from ``EmulatorConfig.faults`` or from ``POST /_emulator/faults``, as JSON objects or in a compact form
``kind[:code][:key=value]...`` such as ``status:503:times=2`` or ``delay:route=status:seconds=3``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_flux_redux.emulator.jobs import dumps

if TYPE_CHECKING:
    from collections.abc import Collection

    from airflow_flux_redux.emulator.call import Call
    from airflow_flux_redux.emulator.state import EmulatorState

ROUTES = ("submit", "status", "stream", "result", "cancel", "file")

# Every kind: the routes it applies to (empty: every route, default "any"; else the first is the default)
# and what it does. The CLI help prints this table.
KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "status": ((), "answer HTTP `code` with fal's error body and X-Fal-Error-Type (`error_type`, `message`, "
                   "`body`, `headers`; `retry_header`: needs-retry sends X-Fal-Needs-Retry: 1 (the default for "
                   "429), retryable sends X-Fal-Retryable: true, none neither); on submit before the job is "
                   "taken unless after_accept=true"),
    "reset": ((), "start the answer, then drop the connection"),
    "delay": ((), "wait `seconds` (default 1), then answer normally"),
    "malformed": ((), "answer with a body that is not JSON"),
    "redirect": ((), "answer `code` (default 307) with Location: `location`"),
    "unknown_status": (("status", "stream"), 'a status answer with the unknown state "PAUSED"'),
    "missing_fields": (("submit",), "a submit answer without status_url, response_url and cancel_url"),
    "fail_job": (("submit",), "the job fails: COMPLETED with error, result answers `code` (default 422)"),
    "completed_error_result_ok": (("submit",), "the status says COMPLETED with error/error_type (`code`, "
                                               "`error_type`, `message`) but the result answers 200 with images"),
    "expire_result": (("result",), "the result answers 404 result_expired"),
    "huge_file": (("file",), "an image download of `bytes` bytes (default 64 MiB), Content-Length declared"),
    "huge_chunked_file": (("file",), "an image download of `bytes` bytes sent chunked, with no Content-Length"),
    "wrong_content_type": (("file",), "an image download that is an HTML page"),
}  # fmt: skip
ANYWHERE = frozenset(kind for kind, (routes, _) in KINDS.items() if not routes)
STATUS_KINDS = ANYWHERE | {"unknown_status"}
# On submit, these kinds answer after the job was taken (a client that retries creates a duplicate).
_ACCEPTED_BY_DEFAULT = {"delay", "malformed", "missing_fields", "fail_job", "completed_error_result_ok"}

# The header a "status" fault says "retrying may help" with: fal's older name, its newer one, or none.
_RETRY_HEADERS: dict[str, list[tuple[bytes, bytes]]] = {
    "retryable": [(b"x-fal-retryable", b"true")],
    "needs-retry": [(b"x-fal-needs-retry", b"1")],
    "none": [],
}

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
    retry_header: str | None = None
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
    allowed = KINDS[kind][0] or (*ROUTES, "any")
    route = data.pop("route", None) or (allowed[0] if KINDS[kind][0] else "any")
    if route not in allowed:
        raise ValueError(f"fault kind {kind!r} applies to route(s) {', '.join(allowed)}, not {route!r}")
    data.setdefault("after_accept", kind in _ACCEPTED_BY_DEFAULT)
    if kind == "redirect" and not data.get("location"):
        raise ValueError("a redirect fault needs a 'location'")
    if kind == "status" and not data.get("code"):
        raise ValueError("a status fault needs a 'code', e.g. 503")
    if data.get("retry_header") not in (None, *_RETRY_HEADERS):
        raise ValueError(f"retry_header must be one of {', '.join(_RETRY_HEADERS)}, not {data['retry_header']!r}")
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


async def answer(call: Call, route: str, rule: FaultRule, job_id: str = "", response_url: str | None = None) -> bool:
    """Act on a fired rule; True when the rule answered the request, False when it only delayed it."""
    if rule.kind == "missing_fields":  # the submit handler trims its own answer
        return False
    if rule.kind == "delay":
        await asyncio.sleep(rule.seconds)
        return False
    if rule.kind == "reset":
        await call.drop()
    if rule.kind == "redirect":
        await call.reply(rule.code or 307, headers=[(b"location", str(rule.location).encode())])
    elif rule.kind == "malformed" and route == "stream":
        await call.reply(200, b"data: {not json\n\n", content_type=b"text/event-stream")
    elif rule.kind == "malformed":
        await call.reply(202 if route == "status" else 200, b"{not json")
    elif rule.kind == "unknown_status":
        body = dumps({"status": "PAUSED", "request_id": job_id, "response_url": response_url})
        if route == "stream":
            await call.reply(200, b"data: %s\n\n" % body, content_type=b"text/event-stream")
        else:
            await call.reply(202, body)
    else:  # "status"
        await _error_answer(call, rule)
    return True


async def _error_answer(call: Call, rule: FaultRule) -> None:
    code = int(rule.code or 500)
    error_type, detail = DEFAULT_ERRORS.get(code, ("http_error", f"HTTP {code}"))
    error_type = rule.error_type or error_type
    headers = [(b"x-fal-error-type", error_type.encode())]
    headers += _RETRY_HEADERS[rule.retry_header or ("needs-retry" if code == 429 else "none")]
    given = {name.lower().encode(): str(value).encode() for name, value in rule.headers.items()}
    headers = [(k, v) for k, v in headers if k not in given] + list(given.items())
    body = rule.body if rule.body is not None else {"detail": rule.message or detail, "error_type": error_type}
    await call.reply(code, body.encode() if isinstance(body, str) else dumps(body), headers)


async def fire(state: EmulatorState, call: Call, route: str, kinds: Collection[str], job_id: str = "") -> bool:
    """Fire a matching rule for a non-submit route; True when it answered the request."""
    if not state.faults.rules:  # the hot path: no rules, no work
        return False
    rule = state.faults.take(route, kinds)
    if rule is None:
        return False
    job = state.table.jobs.get(job_id)
    return await answer(call, route, rule, job_id, job.response_url if job else None)
