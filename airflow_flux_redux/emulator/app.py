"""The emulator's ASGI application: fal's queue protocol over in-memory jobs, with scriptable faults.

It is not a model. It answers exactly as fal's queue does (codes, bodies, URLs under owner/app only)
and makes real images, but they are deterministic variations of the input image, not FLUX output.
Plain ASGI, no framework: the status route is the hot path of a 10,000-waiter benchmark, so it does no
validation and mostly concatenates precomputed bytes.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import httpx
from pydantic import ValidationError

from airflow_flux_redux.emulator import images
from airflow_flux_redux.emulator.config import EmulatorConfig
from airflow_flux_redux.emulator.faults import DEFAULT_ERRORS, ROUTES, FaultBook, FaultRule
from airflow_flux_redux.emulator.jobs import (
    CANCELLED,
    START_TIMEOUT,
    Failure,
    Job,
    JobTable,
    dumps,
    model_error,
)
from airflow_flux_redux.models import FluxReduxRequest, QueueState, describe_validation_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Iterable, MutableMapping

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger(__name__)

# A relay passes fal's answers through, so the URLs it hands out are on fal's queue host.
FAL_QUEUE_URL = "https://queue.fal.run"
_GENERIC = frozenset({"status", "reset", "delay", "malformed", "redirect"})
_STATUS_KINDS = _GENERIC | {"unknown_status"}
_NOT_FOUND = dumps({"detail": "Request not found"})
_MAX_BODY = 64 * 1024 * 1024
# An image_url containing "emulator-fail=<name>" fails its job as the model would.
_FAIL_MARKER = re.compile(r"emulator-fail=([a-z_]+)")
_MARKED_FAILURES = {
    "content_policy": (422, "content_policy_violation", "The input image was flagged by the safety checker"),
    "image_too_large": (422, "image_too_large", "The input image is too large"),
    "file_download": (422, "file_download_error", "Failed to download the input image"),
    "generation_timeout": (504, "generation_timeout", "Generation timed out"),
    "internal": (500, "internal_server_error", "Internal server error"),
}
_REQUEST_ROUTES = (  # (route, method, path tail after requests/{id})
    ("stream", "GET", ("status", "stream")),
    ("status", "GET", ("status",)),
    ("cancel", "PUT", ("cancel",)),
    ("result", "GET", ()),
)


class _ConnectionDropped(Exception):
    """Raised on purpose mid-response so the server closes the connection (a ``reset`` fault)."""


class _HideDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _ConnectionDropped))


_HIDE_DROPS = _HideDrops()


class _Call:
    """One HTTP request: parsed path, headers and query, and helpers to answer it."""

    __slots__ = ("headers", "method", "parts", "query", "receive", "scope", "send")

    def __init__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        self.scope, self.receive, self.send = scope, receive, send
        self.method: str = scope["method"]
        self.parts: list[str] = path.strip("/").split("/")
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.query = dict(parse_qsl(scope["query_string"].decode("latin-1")))

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("1", "true", "yes")

    async def reply(
        self,
        code: int,
        body: bytes = b"",
        headers: Iterable[tuple[bytes, bytes]] = (),
        content_type: bytes = b"application/json",
    ) -> None:
        start = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *headers]
        await self.send({"type": "http.response.start", "status": code, "headers": start})
        await self.send({"type": "http.response.body", "body": body})

    async def json(self, code: int, value: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        await self.reply(code, dumps(value), headers)

    async def body(self) -> bytes | None:
        """The request body, or None when it exceeds the size cap."""
        chunks, size = [], 0
        while True:
            message = await self.receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > _MAX_BODY:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def drop(self) -> None:
        """Start an answer, then abort it: the client sees a broken connection, not an HTTP error."""
        headers = [(b"content-type", b"application/json"), (b"content-length", b"1000")]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        await self.send({"type": "http.response.body", "body": b'{"status":', "more_body": True})
        raise _ConnectionDropped


def _validation_detail(error: ValidationError) -> list[dict[str, Any]]:
    """fal's 422 ``detail`` list, one entry per bad field, worded by the shared models."""
    errors = [([str(p) for p in item["loc"]], item["type"]) for item in error.errors()]
    detail = []
    for line in describe_validation_error(error):
        name, _, message = line.partition(": ")
        parts = [] if name == "request" else name.split(".")
        error_type = next(
            (kind for loc, kind in errors if not parts or (loc[:1] == parts[:1] and loc[-1:] == parts[-1:])),
            next((kind for loc, kind in errors if loc[:1] == parts[:1]), "value_error"),
        )
        detail.append({"loc": ["body", *parts], "msg": message, "type": error_type})
    return detail


def _float_header(call: _Call, name: bytes, default: float | None) -> float | None:
    value = call.headers.get(name)
    try:
        return max(0.0, float(value)) if value else default
    except ValueError:
        return default


class EmulatorApp:
    """The ASGI callable; all state lives in memory and is cleared by ``POST /_emulator/reset``."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.faults = FaultBook(config.seed)
        self.faults.replace(config.faults)
        self._client: httpx.AsyncClient | None = None
        self._clear()

    def _clear(self) -> None:
        self.table = JobTable()
        self.submitted_ids: list[str] = []
        self.by_route: Counter[str] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self.images_submitted: Counter[str] = Counter()
        self._rng = random.Random(self.config.seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, prefix = scope["path"], self.config.path_prefix
        if prefix:
            if path != prefix and not path.startswith(prefix + "/"):
                await _Call(scope, receive, send, path).json(404, {"detail": "Not Found"})
                return
            path = path[len(prefix) :]
        call = _Call(scope, receive, send, path)
        head = call.parts[0]
        if head == "_emulator":
            await self._admin(call)
        elif head == "files" and len(call.parts) == 3:
            await self._file(call)
        elif call.method == "POST" and len(call.parts) >= 2:
            await self._submit(call)
        else:
            await self._request_route(call)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _request_route(self, call: _Call) -> None:
        parts, size = call.parts, len(call.parts)
        for route, method, tail in _REQUEST_ROUTES:
            n = len(tail)
            if size >= 4 + n and parts[size - n - 2] == "requests" and tuple(parts[size - n :]) == tail:
                if call.method != method:
                    await call.json(405, {"detail": "Method Not Allowed"})
                    return
                prefix, job_id = "/".join(parts[: size - n - 2]), parts[size - n - 1]
                handler = getattr(self, f"_{route}")
                await handler(call, prefix, job_id)
                return
        await call.json(404, {"detail": "Not Found"})

    # -- shared steps -------------------------------------------------------------------------------------

    def _authorized(self, call: _Call) -> bool:
        scheme, _, key = call.headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        allowed = ("key", "bearer") if self.config.auth_scheme == "any" else (self.config.auth_scheme.lower(),)
        key = key.strip()
        if scheme.lower() not in allowed or not key:
            return False
        return self.config.key is None or hmac.compare_digest(key.encode(), self.config.key.encode())

    async def _gate(self, call: _Call, route: str, job_id: str | None = None) -> bool:
        """Count the request and check its key; answers 401 itself and returns False when it is wrong."""
        self.by_route[route] += 1
        if self._authorized(call):
            return True
        self.auth_failures[route] += 1
        job = self.table.jobs.get(job_id) if job_id else None
        if job is not None:
            job.auth_failures += 1
        scheme = "Key or Bearer" if self.config.auth_scheme == "any" else self.config.auth_scheme
        await call.json(401, {"detail": f"Missing or invalid credentials: send 'Authorization: {scheme} <key>'"})
        return False

    def _find(self, prefix: str, job_id: str) -> Job | None:
        job = self.table.jobs.get(job_id)
        # Status and result live under owner/app only; a client that rebuilt the URL from the full model
        # path (fal-ai/flux-1/schnell/redux/requests/...) gets the 404 that fal would give it.
        return job if job is not None and job.prefix == prefix else None

    def _base_url(self, call: _Call) -> str:
        """The base of the URLs this emulator serves (files, and queue URLs unless it plays a relay)."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        host = call.headers.get(b"host", b"").decode("latin-1")
        if not host:
            server_host, port = call.scope.get("server") or ("127.0.0.1", 80)
            host = f"{server_host}:{port}"
        return f"{call.scope.get('scheme', 'http')}://{host}{self.config.path_prefix}"

    def _queue_url(self, call: _Call) -> str:
        """The base of the status, result and cancel URLs handed out: fal's own host when playing a relay."""
        return FAL_QUEUE_URL if self.config.relay else self._base_url(call)

    async def _fault_answer(self, call: _Call, route: str, rule: FaultRule, job_id: str = "") -> bool:
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
            job = self.table.jobs.get(job_id)
            body = dumps({"status": "PAUSED", "request_id": job_id, "response_url": job and job.response_url})
            if route == "stream":
                await call.reply(200, b"data: %s\n\n" % body, content_type=b"text/event-stream")
            else:
                await call.reply(202, body)
        else:  # "status"
            code = int(rule.code or 500)
            error_type, detail = DEFAULT_ERRORS.get(code, ("http_error", f"HTTP {code}"))
            error_type = rule.error_type or error_type
            headers = [(b"x-fal-error-type", error_type.encode())]
            if code == 429:
                headers.append((b"x-fal-needs-retry", b"1"))
            given = {name.lower().encode(): str(value).encode() for name, value in rule.headers.items()}
            headers = [(k, v) for k, v in headers if k not in given] + list(given.items())
            given_body = (
                rule.body if rule.body is not None else {"detail": rule.message or detail, "error_type": error_type}
            )
            await call.reply(code, given_body.encode() if isinstance(given_body, str) else dumps(given_body), headers)
        return True

    async def _generic_fault(self, call: _Call, route: str, kinds: Collection[str], job_id: str = "") -> bool:
        """Fire a matching rule for a non-submit route; True when it answered the request."""
        if not self.faults.rules:  # the hot path: no rules, no work
            return False
        rule = self.faults.take(route, kinds)
        return rule is not None and await self._fault_answer(call, route, rule, job_id)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=32)
            self._client = httpx.AsyncClient(timeout=self.config.fetch_timeout, follow_redirects=True, limits=limits)
        return self._client

    async def _resolve(self, job: Job, wait: bool) -> None:
        """Start making the job's images (once); with ``wait``, return only when its outcome is known."""
        if job.failure is not None or job.images is not None or job.expired:
            return
        if job.generation is None:
            job.generation = asyncio.ensure_future(self._generate(job))
        if wait:
            await asyncio.shield(job.generation)

    async def _generate(self, job: Job) -> None:
        request = job.request
        try:
            data = await images.fetch_input(request.image_url, self._http(), self.config.max_input_bytes)
            size = images.output_size(request.image_size, self.config.max_side)
            job.images = await asyncio.to_thread(
                images.make_variations, data, size, job.seed, request.num_images, request.output_format or "jpeg"
            )
        except images.InputImageError as err:
            job.failure = job.failure or model_error(422, err.error_type, str(err))
        except Exception:  # a bug here must fail the job visibly instead of hanging every poller
            logger.exception("emulator: generating images for %s failed", job.id)
            job.failure = job.failure or model_error(500, "internal_server_error", "Internal server error")

    async def _status_of(self, job: Job, logs: bool) -> tuple[int, bytes]:
        now = time.monotonic()
        state = job.state(now)
        if state is QueueState.IN_QUEUE:
            return job.status_body(now, logs, self.table.queue_position(job, now))
        await self._resolve(job, wait=state is QueueState.COMPLETED)
        return job.status_body(now, logs, 0)

    def _expired(self, job: Job, now: float) -> bool:
        if not job.expired and now > job.finish_at + self.config.result_ttl:
            job.expired, job.images = True, None
        return job.expired

    # -- queue routes -------------------------------------------------------------------------------------

    async def _submit(self, call: _Call) -> None:
        if not await self._gate(call, "submit"):
            return
        rule = self.faults.take("submit", _GENERIC | {"missing_fields"}) if self.faults.rules else None
        if rule is not None and not rule.after_accept and await self._fault_answer(call, "submit", rule):
            return
        raw = await call.body()
        if raw is None:
            await call.json(413, {"detail": f"Request body larger than {_MAX_BODY} bytes"})
            return
        try:
            request = FluxReduxRequest.model_validate_json(raw or b"null")
        except ValidationError as err:
            if any(e["type"] == "json_invalid" for e in err.errors()):
                detail = [{"loc": ["body"], "msg": "The body is not valid JSON", "type": "json_invalid"}]
            else:
                detail = _validation_detail(err)
            await call.json(422, {"detail": detail})
            return
        limit = call.query.get("fal_max_queue_length")
        queued = self.table.queue_length(time.monotonic())
        if limit is not None and limit.isdigit() and queued > int(limit):
            await call.json(
                429,
                {"detail": f"Queue length {queued} exceeds fal_max_queue_length={limit}", "error_type": "queue_full"},
                [(b"x-fal-error-type", b"queue_full"), (b"x-fal-needs-retry", b"1")],
            )
            return
        job = self._accept(call, "/".join(call.parts[:2]), request)
        if rule is not None and rule.after_accept and await self._fault_answer(call, "submit", rule):
            return
        answer = {
            "status": "IN_QUEUE",
            "request_id": job.id,
            "response_url": job.response_url,
            "status_url": f"{job.response_url}/status",
            "cancel_url": f"{job.response_url}/cancel",
            "queue_position": self.table.queue_position(job, time.monotonic()),
            "logs": None,
            "metrics": {},
        }
        if rule is not None and rule.kind == "missing_fields":
            for name in ("status_url", "response_url", "cancel_url"):
                del answer[name]
        await call.json(200, answer)

    def _accept(self, call: _Call, prefix: str, request: FluxReduxRequest) -> Job:
        """Create and schedule the job, with any failure it is bound to have."""
        config, now = self.config, time.monotonic()
        queue_seconds, run_seconds = config.timing_for(request.seed)
        queue_seconds = _float_header(call, b"x-emulator-queue-seconds", queue_seconds) or 0.0
        run_seconds = _float_header(call, b"x-emulator-run-seconds", run_seconds) or 0.0
        start = self.table.schedule(now, queue_seconds, run_seconds, config.workers)
        seed = request.seed if request.seed is not None else self._rng.randrange(2**31)
        job = Job(
            str(uuid.uuid4()), prefix, request, seed, self._queue_url(call),
            now, start, start + run_seconds, config.log_lines, time.time() - now,
        )  # fmt: skip
        failure: Failure | None = None
        deadline = _float_header(call, b"x-fal-request-timeout", None)
        marker = _FAIL_MARKER.search(request.image_url)
        if deadline is not None and start > now + deadline:
            job.start_at = job.finish_at = now + deadline
            failure = START_TIMEOUT
        elif self.faults.rules and (fail_rule := self.faults.take("submit", {"fail_job"})):
            failure = model_error(
                fail_rule.code or 422,
                fail_rule.error_type or "content_policy_violation",
                fail_rule.message or "The input image was flagged by the safety checker",
            )
        elif marker and marker.group(1) in _MARKED_FAILURES:
            failure = model_error(*_MARKED_FAILURES[marker.group(1)])
        job.failure = failure
        self.table.add(job)
        self.submitted_ids.append(job.id)
        self.images_submitted[job.image_hash] += 1
        return job

    async def _status(self, call: _Call, prefix: str, job_id: str) -> None:
        if not await self._gate(call, "status", job_id):
            return
        if await self._generic_fault(call, "status", _STATUS_KINDS, job_id):
            return
        job = self._find(prefix, job_id)
        if job is None:
            await call.reply(404, _NOT_FOUND)
            return
        job.status_polls += 1
        code, body = await self._status_of(job, call.flag("logs"))
        await call.reply(code, body)

    async def _stream(self, call: _Call, prefix: str, job_id: str) -> None:
        if self.config.relay:  # relays do not serve fal's status stream
            await call.json(404, {"detail": "Not Found"})
            return
        if not await self._gate(call, "stream", job_id):
            return
        if await self._generic_fault(call, "stream", _STATUS_KINDS, job_id):
            return
        job = self._find(prefix, job_id)
        if job is None:
            await call.reply(404, _NOT_FOUND)
            return
        job.stream_opens += 1
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await call.send({"type": "http.response.start", "status": 200, "headers": headers})
        if job.wakeup is None:
            job.wakeup = asyncio.Event()
        disconnected = asyncio.ensure_future(_wait_for_disconnect(call.receive))
        woken = asyncio.ensure_future(job.wakeup.wait())
        try:
            await self._stream_events(call, job, disconnected, woken)
        finally:
            disconnected.cancel()
            woken.cancel()

    async def _stream_events(
        self, call: _Call, job: Job, disconnected: asyncio.Future[None], woken: asyncio.Future[Any]
    ) -> None:
        """Send an event per change and a keep-alive comment when idle; sleep until the next known change."""
        logs, keepalive = call.flag("logs"), self.config.keepalive_seconds
        last, keepalive_at = b"", time.monotonic() + keepalive
        while True:
            code, body = await self._status_of(job, logs)
            if body != last:
                await call.send({"type": "http.response.body", "body": b"data: %s\n\n" % body, "more_body": True})
                last = body
            if code == 200:
                await call.send({"type": "http.response.body", "body": b""})
                return
            now = time.monotonic()
            if now >= keepalive_at:
                await call.send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
                keepalive_at = now + keepalive
            wake_at = min(job.next_change(now, logs, self.table.next_start(now)), keepalive_at)
            timeout = max(0.0, wake_at - now)
            done, _ = await asyncio.wait({disconnected, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if disconnected in done:
                return

    async def _result(self, call: _Call, prefix: str, job_id: str) -> None:
        if not await self._gate(call, "result", job_id):
            return
        if await self._generic_fault(call, "result", _GENERIC, job_id):
            return
        job = self._find(prefix, job_id)
        if job is None:
            await call.reply(404, _NOT_FOUND)
            return
        job.result_fetches += 1
        now = time.monotonic()
        if job.state(now) is not QueueState.COMPLETED:
            await call.json(400, {"detail": "Request is still in progress"})
            return
        await self._resolve(job, wait=True)
        if not job.expired and self.faults.rules and self.faults.take("result", {"expire_result"}):
            job.expired, job.images = True, None
        if self._expired(job, now):
            await call.json(404, {"detail": "Result expired", "error_type": "result_expired"})
        elif job.failure is not None:
            await call.reply(job.failure.code, job.failure.body, job.failure.headers)
        else:
            await call.reply(200, self._result_body(job, self._base_url(call)))

    def _result_body(self, job: Job, base: str) -> bytes:
        request, made = job.request, job.images or []
        outputs = []
        for index, image in enumerate(made):
            name = f"{index}.{image.output_format}"
            url = (
                f"data:{image.content_type};base64,{base64.b64encode(image.data).decode()}"
                if request.sync_mode
                else f"{base}/files/{job.id}/{name}"
            )
            outputs.append({
                "url": url,
                "width": image.width,
                "height": image.height,
                "content_type": image.content_type,
                "file_name": f"{job.id}-{name}",
                "file_size": len(image.data),
            })  # fmt: skip
        return dumps({
            "images": outputs,
            "timings": {"inference": round(job.planned_run, 3)},
            "seed": job.seed,
            "has_nsfw_concepts": [False] * len(outputs),
            "prompt": "",
        })  # fmt: skip

    async def _cancel(self, call: _Call, prefix: str, job_id: str) -> None:
        if not await self._gate(call, "cancel", job_id):
            return
        if await self._generic_fault(call, "cancel", _GENERIC, job_id):
            return
        job = self._find(prefix, job_id)
        if job is None:
            await call.json(404, {"status": "NOT_FOUND"})
            return
        job.cancels += 1
        now = time.monotonic()
        if job.state(now) is QueueState.COMPLETED:
            await call.json(400, {"status": "ALREADY_COMPLETED"})
            return
        queued_from = job.start_at
        job.end_now(now, CANCELLED)
        if job.start_at != queued_from:
            self.table.move_start(queued_from, job.start_at)
        await call.json(202, {"status": "CANCELLATION_REQUESTED"})

    async def _file(self, call: _Call) -> None:
        """Generated images, without auth, like fal's CDN."""
        self.by_route["file"] += 1
        if await self._generic_fault(call, "file", _GENERIC):
            return
        _, job_id, name = call.parts
        index, _, extension = name.partition(".")
        job, now = self.table.jobs.get(job_id), time.monotonic()
        if job is None or job.state(now) is not QueueState.COMPLETED or self._expired(job, now):
            await call.json(404, {"detail": "File not found"})
            return
        await self._resolve(job, wait=True)
        made = job.images or []
        if not index.isdigit() or int(index) >= len(made) or made[int(index)].output_format != extension:
            await call.json(404, {"detail": "File not found"})
            return
        image = made[int(index)]
        rule = self.faults.take("file", {"huge_file", "wrong_content_type"}) if self.faults.rules else None
        if rule is not None and rule.kind == "wrong_content_type":
            await call.reply(200, b"<html><body>Service unavailable</body></html>", content_type=b"text/html")
        elif rule is not None:
            await _send_huge(call, rule.bytes, image.content_type.encode())
        else:
            await call.reply(
                200, image.data, [(b"cache-control", b"public, max-age=3600")], image.content_type.encode()
            )

    # -- admin ---------------------------------------------------------------------------------------------

    async def _admin(self, call: _Call) -> None:
        """Stats, faults, config, reset and a sample input image; no auth, like a test fixture."""
        action, method = "/".join(call.parts[1:]), call.method
        if (method, action) == ("GET", "stats"):
            await call.json(200, self.stats(summary=call.flag("summary")))
        elif (method, action) == ("GET", "faults"):
            await call.json(200, {"faults": [asdict(rule) for rule in self.faults.rules]})
        elif (method, action) in (("POST", "faults"), ("POST", "config")):
            try:
                data = json.loads(await call.body() or b"{}")
                if action == "faults":
                    self.faults.replace(data.get("faults", []))
                else:
                    self.config.apply_live(data)
            except (ValueError, TypeError, AttributeError) as err:
                await call.json(400, {"detail": str(err)})
                return
            answer = {"faults": len(self.faults.rules)} if action == "faults" else self.config.live()
            await call.json(200, answer)
        elif (method, action) == ("GET", "config"):
            await call.json(200, self.config.live())
        elif (method, action) == ("POST", "reset"):
            self.faults.replace([])
            self.faults.fired.clear()
            self._clear()
            await call.json(200, {"reset": True})
        elif (method, action) == ("GET", "sample.png"):
            try:
                width, height = (min(4096, max(1, int(call.query.get(k) or 256))) for k in ("width", "height"))
            except ValueError:
                await call.json(400, {"detail": "width and height must be integers"})
                return
            png = await asyncio.to_thread(images.sample_image, width, height)
            await call.reply(200, png, content_type=b"image/png")
        else:
            await call.json(404, {"detail": "Not Found"})

    def stats(self, summary: bool = False) -> dict[str, Any]:
        """Counters for tests and benchmarks; ``summary`` leaves out the per-request table."""
        now = time.monotonic()
        data: dict[str, Any] = {
            "submissions": len(self.submitted_ids),
            "auth_failures": sum(self.auth_failures.values()),
            "auth_failures_by_route": dict(self.auth_failures),
            "requests_by_route": {route: self.by_route[route] for route in ROUTES},
            "faults_fired": dict(self.faults.fired),
            "queue_length": self.table.queue_length(now),
            "submissions_by_image_url": dict(self.images_submitted),
        }
        if not summary:
            data["submitted_ids"] = list(self.submitted_ids)
            data["requests"] = {job_id: job.stats(now) for job_id, job in self.table.jobs.items()}
        return data


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_huge(call: _Call, size: int, content_type: bytes) -> None:
    """A body of ``size`` bytes, streamed so the emulator itself does not hold it in memory."""
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % size)]
    await call.send({"type": "http.response.start", "status": 200, "headers": headers})
    chunk, remaining = b"\0" * min(size, 1 << 20), size
    while remaining > 0:
        part = chunk[:remaining]
        remaining -= len(part)
        await call.send({"type": "http.response.body", "body": part, "more_body": remaining > 0})


def create_app(config: EmulatorConfig | None = None) -> EmulatorApp:
    """A fresh emulator application (ASGI); serve it with uvicorn or hypercorn, or use EmulatorServer."""
    for name in ("uvicorn.error", "hypercorn.error"):
        logging.getLogger(name).addFilter(_HIDE_DROPS)
    return EmulatorApp(config or EmulatorConfig())
