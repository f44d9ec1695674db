"""FluxReduxHook: an Airflow connection turned into fal-queue calls over httpx, sync and async.

One module owns auth, transport, the retry policy and the reading of responses. The operator and the
trigger compose these calls; they never build URLs or parse JSON themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import random
import ssl
import time
import weakref
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

import httpcore
import httpx
from airflow.providers.common.compat.sdk import BaseHook, mask_secret
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from airflow_flux_redux.connection_form import HIDDEN_FIELDS, PLACEHOLDERS, RELABELING, form_widgets
from airflow_flux_redux.exceptions import (
    FluxReduxAuthError,
    FluxReduxCancelledError,
    FluxReduxConfigError,
    FluxReduxError,
    FluxReduxJobFailedError,
    FluxReduxProtocolError,
    FluxReduxRequestRejectedError,
    FluxReduxResultExpiredError,
    FluxReduxSubmitUncertainError,
    FluxReduxTimeoutError,
    FluxReduxTransportError,
    FluxReduxUntrustedUrlError,
)
from airflow_flux_redux.models import (
    FluxReduxRequest,
    QueueHandle,
    QueueState,
    QueueStatus,
    ReduxResult,
    parse_error_body,
    validate_request,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Generator
    from typing import Protocol

    from airflow.providers.common.compat.sdk import Connection
    from pydantic import BaseModel

    class _Answer(Protocol):
        """What the error and model readers use of an answer: an ``httpx.Response`` or a lane ``_Reply``."""

        @property
        def status_code(self) -> int: ...
        @property
        def content(self) -> bytes: ...
        @property
        def headers(self) -> httpx.Headers: ...
        @property
        def text(self) -> str: ...


DEFAULT_BASE_URL = "https://queue.fal.run"
DEFAULT_ENDPOINT = "fal-ai/flux-1/schnell/redux"
RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})
# Submit is at-most-once: only answers that prove the job was not taken may be retried.
SUBMIT_RETRYABLE_STATUS = frozenset({429, 503})
OPTIONAL_HEADERS = {
    "queue_priority": "X-Fal-Queue-Priority",
    "request_timeout": "X-Fal-Request-Timeout",
    "runner_hint": "X-Fal-Runner-Hint",
    "no_retry": "X-Fal-No-Retry",
    "store_io": "X-Fal-Store-IO",
}

ModelT = TypeVar("ModelT", bound="BaseModel")


def _origin(url: str | httpx.URL) -> tuple[str, str, int]:
    return _origin_of(str(url))


@functools.lru_cache(maxsize=16384)
def _origin_of(url: str) -> tuple[str, str, int]:
    # Cached: every poll checks its URL's origin twice (require_trusted, then the auth guard).
    parts = httpx.URL(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.host.lower(), port


def _parse_allowed_hosts(value: Any) -> frozenset[tuple[str, str, int]]:
    """``allowed_hosts`` entries: ``https://host[:port]`` exactly, or a bare ``host[:port]`` meaning https."""
    if not value:
        return frozenset()
    entries = value.split(",") if isinstance(value, str) else list(value)
    origins = set()
    for raw in entries:
        entry = str(raw).strip()
        if not entry:
            continue
        origins.add(_origin(entry if "://" in entry else f"https://{entry}"))
    return frozenset(origins)


@dataclass(frozen=True)
class FluxReduxSettings:
    """Everything a call needs, resolved once from the connection. The key never shows in ``repr``."""

    base_url: str
    api_key: str = field(repr=False)
    auth_scheme: str = "Key"
    endpoint: str = DEFAULT_ENDPOINT
    timeout: float = 30.0
    max_retries: int = 5
    retry_initial_wait: float = 0.5
    retry_max_wait: float = 30.0
    allowed_origins: frozenset[tuple[str, str, int]] = frozenset()
    headers: tuple[tuple[str, str], ...] = ()
    http2: bool = False
    max_in_flight: int = 64

    @classmethod
    def from_connection(cls, conn: Connection | None) -> FluxReduxSettings:
        extra = conn.extra_dejson if conn is not None else {}
        host = (conn.host or "").strip() if conn is not None else ""
        if host and "://" not in host:
            host = f"https://{host}"
        if host and conn is not None and conn.port and not urlsplit(host).port:
            host = f"{host.rstrip('/')}:{conn.port}"
        api_key = ((conn.password if conn is not None else None) or os.environ.get("FAL_KEY") or "").strip()
        if not api_key:
            raise FluxReduxConfigError(
                "No API key: set the connection's password (API key) or the FAL_KEY environment variable."
            )
        scheme = str(extra.get("auth_scheme") or "Key").strip()
        if scheme not in ("Key", "Bearer"):
            raise FluxReduxConfigError(f"Connection extra auth_scheme={scheme!r}; allowed: Key (fal) or Bearer.")
        headers = tuple(
            (header, str(extra[name]).lower() if isinstance(extra[name], bool) else str(extra[name]))
            for name, header in OPTIONAL_HEADERS.items()
            if extra.get(name) not in (None, "")
        )
        try:
            return cls(
                base_url=(host or DEFAULT_BASE_URL).rstrip("/"),
                api_key=api_key,
                auth_scheme=scheme,
                endpoint=str(extra.get("endpoint") or DEFAULT_ENDPOINT).strip("/"),
                timeout=float(extra.get("timeout", 30.0)),
                max_retries=int(extra.get("max_retries", 5)),
                retry_initial_wait=float(extra.get("retry_initial_wait", 0.5)),
                retry_max_wait=float(extra.get("retry_max_wait", 30.0)),
                allowed_origins=_parse_allowed_hosts(extra.get("allowed_hosts")),
                headers=headers,
                http2=bool(extra.get("http2", False)),
                max_in_flight=int(extra.get("max_in_flight", 64)),
            )
        except (TypeError, ValueError) as err:
            raise FluxReduxConfigError(f"Connection extra has a bad number: {err}") from None

    @cached_property
    def origin(self) -> tuple[str, str, int]:
        return _origin(self.base_url)

    @cached_property
    def authorization(self) -> str:
        return f"{self.auth_scheme} {self.api_key}"

    @cached_property
    def client_key(self) -> str:
        """Tells pooled clients apart without keeping the key itself as a dict key."""
        digest = hashlib.sha256(f"{self.base_url}\0{self.authorization}\0{self.http2}".encode()).hexdigest()
        return digest[:32]

    @property
    def submit_url(self) -> str:
        return f"{self.base_url}/{self.endpoint}"

    def trusts(self, url: str | httpx.URL) -> bool:
        if isinstance(url, str) and self.same_origin(url):
            return True
        origin = _origin(url)
        return origin == self.origin or origin in self.allowed_origins

    @cached_property
    def origin_prefix(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    def same_origin(self, url: str) -> bool:
        """True when ``url`` is on the base URL's origin; a prefix test first, since it runs at every poll.

        Only an exact ``scheme://host[:port]`` prefix followed by ``/`` or ``?`` passes the quick test
        (``https://host@evil`` does not); anything else is parsed.
        """
        prefix = self.origin_prefix
        if url.startswith(prefix) and url[len(prefix) : len(prefix) + 1] in ("/", "?"):
            return True
        return _origin(url) == self.origin

    def require_trusted(self, url: str, what: str, request_id: str | None) -> None:
        """Refuse, before sending anything, a URL whose origin would receive the key without consent."""
        if not self.trusts(url):
            scheme, host, port = _origin(url)
            raise FluxReduxUntrustedUrlError(
                f"The {what} URL {scheme}://{host}:{port} is not on the connection's origin "
                f"{self.origin[0]}://{self.origin[1]}:{self.origin[2]}; nothing was sent. If that host is "
                f'yours, trust it with the connection extra allowed_hosts (e.g. "{scheme}://{host}:{port}").',
                request_id=request_id,
            )


class _OriginAuth(httpx.Auth):
    """Adds the key only to requests on a trusted origin: a last guard under ``require_trusted``."""

    def __init__(self, settings: FluxReduxSettings) -> None:
        self._settings = settings

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._settings.trusts(request.url):
            request.headers["Authorization"] = self._settings.authorization
        yield request


# -- reading answers: written once, used by the sync and async twins ------------------------------------


def _retry_after(response: _Answer) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _json(response: _Answer, what: str, request_id: str | None) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        raise FluxReduxProtocolError(
            f"The {what} answer (HTTP {response.status_code}) is not JSON: {response.text[:200]!r}",
            request_id=request_id,
        ) from None


def _model(model: type[ModelT], response: _Answer, what: str, request_id: str | None) -> ModelT:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors()[:5])
        raise FluxReduxProtocolError(
            f"The {what} answer (HTTP {response.status_code}) is not what the fal queue protocol sends: {problems}",
            request_id=request_id,
        ) from None


def _raise_for_status(response: _Answer, op: str, request_id: str | None) -> None:
    """Turn a non-2xx answer into the error that says what to do; decide here whether it may be retried."""
    code = response.status_code
    if code < 300:
        return
    try:
        body: Any = json.loads(response.content) if response.content else None
    except ValueError:
        body = response.text[:200]
    error_type, detail = parse_error_body(body)
    error_type = error_type or response.headers.get("X-Fal-Error-Type")
    what = f"{op} answered HTTP {code}" + (f" {error_type}" if error_type else "") + (f": {detail}" if detail else "")
    if 300 <= code < 400:
        raise FluxReduxProtocolError(
            f"{what}; redirects are not followed on the queue API (the key would travel with them)",
            request_id=request_id,
        )
    if code in (401, 403):
        raise FluxReduxAuthError(
            f"{what}. Check the API key in the connection's password (or FAL_KEY) and the auth_scheme "
            "extra (Key for fal.ai, Bearer for most gateways).",
            status_code=code,
            error_type=error_type,
            request_id=request_id,
        )
    user_timeout = code == 504 and response.headers.get("X-Fal-Request-Timeout-Type", "").lower() == "user"
    if user_timeout:
        raise FluxReduxTimeoutError(
            f"{what}: the job did not start within the request_timeout you set (X-Fal-Request-Timeout); "
            "not retried. Raise request_timeout in the connection extra or try later.",
            request_id=request_id,
        )
    if op == "result" and code == 404:
        raise FluxReduxResultExpiredError(
            f"{what}: the result is gone. fal keeps results about an hour, large ones only minutes; fetch "
            "promptly (the trigger does) or enable payload storage.",
            status_code=code,
            error_type=error_type,
            request_id=request_id,
        )
    if op == "result" and code < 500 and code not in RETRYABLE_STATUS:
        error_class = FluxReduxCancelledError if error_type == "client_cancelled" else FluxReduxJobFailedError
        raise error_class(f"The job failed: {what}", error_type=error_type, request_id=request_id)
    retry_header = response.headers.get("X-Fal-Retryable", "").lower()
    allowed = SUBMIT_RETRYABLE_STATUS if op == "submit" else RETRYABLE_STATUS
    retryable = code in allowed and retry_header != "false"
    if op != "submit" and retry_header == "true":
        retryable = True
    if op == "submit" and code >= 500 and not retryable:
        raise FluxReduxSubmitUncertainError(
            f"{what}. The gateway failed after the request was sent, so the job may exist and be billed; "
            "it was not resubmitted. Check your fal dashboard's request list before running again.",
            status_code=code,
        )
    if code >= 500 or retryable:
        raise FluxReduxTransportError(
            what, request_id=request_id, status_code=code, retryable=retryable, retry_after=_retry_after(response)
        )
    raise FluxReduxRequestRejectedError(what, status_code=code, error_type=error_type, request_id=request_id)


def _transport_error(err: httpx.HTTPError, op: str, url: str, request_id: str | None) -> FluxReduxError:
    """A network failure. For submit only a failure before the body left is safe to retry."""
    name = type(err).__name__
    never_sent = isinstance(err, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    host = httpx.URL(url).host
    if op == "submit" and not never_sent:
        return FluxReduxSubmitUncertainError(
            f"submit to {host} failed with {name} after the request was sent: the job may exist and be "
            "billed, so it was not resubmitted. Check your fal dashboard's request list before running "
            "again.",
        )
    return FluxReduxTransportError(f"{op} to {host} failed: {name}: {err}", request_id=request_id, retryable=True)


class _Backoff:
    """Capped exponential backoff with full jitter; a server's ``Retry-After`` wins (capped too)."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, FluxReduxTransportError) and error.retry_after is not None:
            return min(self.cap, error.retry_after)
        ceiling = min(self.cap, self.initial * 2 ** (state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)


def _retry_policy(settings: FluxReduxSettings, op: str, request_id: str | None, log: Any) -> dict[str, Any]:
    """The one retry policy: which errors, how often, how long between tries."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "fal %s failed (%s); try %d of %d in %.1fs",
            op,
            error,
            state.attempt_number + 1,
            settings.max_retries + 1,
            state.next_action.sleep if state.next_action else 0.0,
        )

    return {
        "retry": retry_if_exception(lambda e: isinstance(e, FluxReduxTransportError) and e.retryable),
        "stop": stop_after_attempt(settings.max_retries + 1),
        "wait": _Backoff(settings.retry_initial_wait, settings.retry_max_wait),
        "before_sleep": before_sleep,
        "reraise": True,
    }


def _gave_up(error: FluxReduxError, settings: FluxReduxSettings) -> FluxReduxError:
    if isinstance(error, FluxReduxTransportError) and error.retryable and settings.max_retries > 0:
        return FluxReduxTransportError(
            f"gave up after {settings.max_retries + 1} tries: {error}",
            request_id=error.request_id,
            status_code=error.status_code,
        )
    return error


_SSL_CONTEXT: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    """One SSL context per process: building one loads the CA bundle (~25 ms, ~850 KB)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
        try:
            import certifi

            _SSL_CONTEXT.load_verify_locations(certifi.where())
        except ImportError:
            pass
    return _SSL_CONTEXT


def _client_kwargs(settings: FluxReduxSettings) -> dict[str, Any]:
    return {
        "auth": _OriginAuth(settings),
        "headers": {"User-Agent": "airflow-flux-redux", "Accept": "application/json"},
        "timeout": httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
        "follow_redirects": False,
        "verify": _ssl_context(),
        "http2": settings.http2,
        "limits": httpx.Limits(
            max_connections=settings.max_in_flight, max_keepalive_connections=settings.max_in_flight
        ),
    }


class _Reply:
    """A fully read answer from the poll lane: what ``_raise_for_status`` and the models read of a response."""

    __slots__ = ("_raw_headers", "content", "status_code")

    def __init__(self, status_code: int, raw_headers: list[tuple[bytes, bytes]], content: bytes) -> None:
        self.status_code = status_code
        self._raw_headers = raw_headers
        self.content = content

    @property
    def headers(self) -> httpx.Headers:
        return httpx.Headers(self._raw_headers)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def _httpx_error(err: Exception) -> httpx.TransportError:
    """httpcore's exception as the httpx one of the same name, so one error policy reads both."""
    error_class = getattr(httpx, type(err).__name__, None)
    if not (isinstance(error_class, type) and issubclass(error_class, httpx.TransportError)):
        error_class = httpx.TransportError
    return error_class(str(err) or type(err).__name__)


_HTTPCORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)
# What a keep-alive connection the server closed meanwhile looks like: worth one try on a fresh one.
_STALE = (httpcore.ConnectionNotAvailable, httpcore.ReadError, httpcore.WriteError, httpcore.RemoteProtocolError)


class _CoreStream(httpx.AsyncByteStream):
    """An httpcore response body as an httpx stream, its errors as httpx's."""

    def __init__(self, response: httpcore.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_stream():
                yield chunk
        except _HTTPCORE_ERRORS as err:
            raise _httpx_error(err) from None

    async def aclose(self) -> None:
        await self._response.aclose()


class _StreamRefused(httpx.RemoteProtocolError):
    """The server's GOAWAY came before it processed this stream: safe to send again on a new connection."""


class _H2Stream:
    """One request on a multiplexed HTTP/2 connection: its answer, filled in by the connection's reader."""

    __slots__ = ("_waiter", "chunks", "ended", "error", "headers", "status", "stream_id")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.ended = False
        self.error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self, timeout: float) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        except TimeoutError:
            raise httpx.ReadTimeout("no answer on the HTTP/2 stream in time") from None
        finally:
            self._waiter = None

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    async def response(self, timeout: float) -> None:
        while not self.status:
            self._check()
            await self._wait(timeout)

    async def body(self, timeout: float) -> AsyncIterator[bytes]:
        while True:
            if self.chunks:
                chunks, self.chunks = self.chunks, []
                for chunk in chunks:
                    yield chunk
            if self.ended:
                return
            self._check()
            await self._wait(timeout)


class _H2Connection:
    """One HTTP/2 connection, written on ``h2`` directly: one reader task hands each frame to its stream.

    httpcore's HTTP/2 makes every waiting stream take a shared read lock and read the socket in turn, so an
    event for one of a thousand open streams waits for the streams queued before it (seconds), and with
    hundreds of concurrent requests it stalled outright here. This reader wakes exactly the stream the
    frame is for. Streams are bounded by the server's SETTINGS_MAX_CONCURRENT_STREAMS; the lane opens
    another connection when one is full.
    """

    def __init__(self, lane: _Lane) -> None:
        import h2.config
        import h2.connection

        self._lane = lane
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.streams: dict[int, _H2Stream] = {}
        self.closed = False
        # Until the server's SETTINGS arrive, stay within the 100 streams RFC 9113 asks every server to allow.
        self.capacity = 100
        self.error: Exception | None = None

    def has_room(self) -> bool:
        # Every stream is ours and sent complete, so it is open until its answer ends or it is reset: the
        # streams dict counts them (h2's own count walks all streams, at every new request).
        return not self.closed and len(self.streams) < self.capacity

    async def connect(self) -> None:
        origin = self._lane.origin
        host = origin.host.decode()
        tls = origin.scheme == b"https"
        try:
            async with asyncio.timeout(self._lane.extensions["timeout"]["connect"]):
                reader, writer = await asyncio.open_connection(
                    host, origin.port, ssl=_h2_ssl_context() if tls else None, server_hostname=host if tls else None
                )
        except (OSError, TimeoutError) as err:
            raise (httpx.ConnectTimeout if isinstance(err, TimeoutError) else httpx.ConnectError)(str(err)) from None
        if tls and (ssl_object := writer.get_extra_info("ssl_object")) and ssl_object.selected_alpn_protocol() != "h2":
            writer.close()
            raise httpx.UnsupportedProtocol("the server did not agree to HTTP/2")
        self._writer = writer
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(2**24)
        self._flush()
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._writer is not None and not self.closed:
            self._writer.write(data)

    def open(self, target: bytes, headers: list[tuple[bytes, bytes]]) -> _H2Stream:
        if self.closed:
            raise self.error or httpx.RemoteProtocolError("HTTP/2 connection closed")
        origin = self._lane.origin
        stream_id = self._h2.get_next_available_stream_id()
        self._h2.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", origin.scheme), (b":authority", self._lane.authority),
             (b":path", target), *headers],
            end_stream=True,
        )  # fmt: skip
        stream = self.streams[stream_id] = _H2Stream(stream_id)
        self._flush()
        return stream

    def cancel(self, stream: _H2Stream) -> None:
        """Reset a stream the caller no longer reads (a wait that ended or was cancelled)."""
        if self.streams.pop(stream.stream_id, None) is not None and not stream.ended and not self.closed:
            with contextlib.suppress(Exception):
                self._h2.reset_stream(stream.stream_id)
                self._flush()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        import h2.events

        error: Exception = httpx.RemoteProtocolError("the server closed the HTTP/2 connection")
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for event in self._h2.receive_data(data):
                    stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
                    if isinstance(event, h2.events.ResponseReceived) and stream is not None:
                        stream.headers = [(k, v) for k, v in event.headers if not k.startswith(b":")]
                        stream.status = int(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        if stream is not None:
                            stream.chunks.append(event.data)
                    elif isinstance(event, h2.events.StreamEnded) and stream is not None:
                        stream.ended = True
                        del self.streams[event.stream_id]
                    elif isinstance(event, h2.events.StreamReset) and stream is not None:
                        stream.error = httpx.RemoteProtocolError(f"the server reset the stream ({event.error_code})")
                        del self.streams[event.stream_id]
                    elif isinstance(event, h2.events.RemoteSettingsChanged):
                        self.capacity = min(self._h2.remote_settings.max_concurrent_streams, 1000)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self._goaway(event.last_stream_id)
                        continue
                    else:
                        continue
                    if stream is not None:
                        stream.wake()
                self._flush()
                if self.closed and not self.streams:
                    break
        except Exception as err:  # a broken connection fails its streams; they raise it to their callers
            error = httpx.ReadError(f"HTTP/2 connection failed: {err}")
        self._fail(error)

    def _goaway(self, last_stream_id: int | None) -> None:
        """No new streams here; the ones the server never saw go again elsewhere, the rest finish."""
        self.closed = True
        for stream_id, stream in list(self.streams.items()):
            if last_stream_id is None or stream_id > last_stream_id:
                stream.error = _StreamRefused("the server closed the HTTP/2 connection before this request")
                del self.streams[stream_id]
                stream.wake()

    def _fail(self, error: Exception) -> None:
        self.closed = True
        self.error = error
        for stream in self.streams.values():
            stream.error = error
            stream.wake()
        self.streams.clear()
        if self._writer is not None:
            self._writer.close()

    async def aclose(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
        if not self.closed:
            with contextlib.suppress(Exception):
                self._h2.close_connection()
                self._flush()
        self._fail(httpx.RemoteProtocolError("HTTP/2 connection closed"))


_H2_SSL_CONTEXT: ssl.SSLContext | None = None


def _h2_ssl_context() -> ssl.SSLContext:
    """Like ``_ssl_context()``, offering only h2 by ALPN (one per process as well)."""
    global _H2_SSL_CONTEXT
    if _H2_SSL_CONTEXT is None:
        context = ssl.create_default_context()
        with contextlib.suppress(ImportError):
            import certifi

            context.load_verify_locations(certifi.where())
        context.set_alpn_protocols(["h2"])
        _H2_SSL_CONTEXT = context
    return _H2_SSL_CONTEXT


class _H2Body(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


class _StreamProtocol(asyncio.Protocol):
    """Bytes from one socket, for ``_AsyncioStream.read``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def _expire(waiter: asyncio.Future[None], error: Exception) -> None:
    if not waiter.done():
        waiter.set_exception(error)


class _AsyncioStream(httpcore.AsyncNetworkStream):
    """httpcore's network stream on a plain asyncio transport.

    httpcore's default backend goes through anyio, whose cancel scope per read and write (``fail_after``)
    and socket-stream layers cost about a fifth of a poll; a timer handle per blocking read does the same.
    """

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        while not protocol.buffer:
            if protocol.eof:
                if protocol.error is not None:
                    raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
                return b""
            loop = asyncio.get_running_loop()
            waiter = protocol.waiter = loop.create_future()
            timer = (
                loop.call_later(timeout, _expire, waiter, httpcore.ReadTimeout("read timed out")) if timeout else None
            )
            try:
                await waiter
            finally:
                protocol.waiter = None
                if timer is not None:
                    timer.cancel()
        data = bytes(protocol.buffer[:max_bytes])
        del protocol.buffer[:max_bytes]
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)  # requests are small GETs: no need to wait for the buffer to drain

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as err:
            self._transport.close()
            raise httpcore.ConnectError(str(err)) from None
        if transport is None:
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        return _AsyncioStream(transport, self._protocol)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle keep-alive connection the server closed, or that has stray data
            return bool(self._protocol.buffer) or self._protocol.eof
        name = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername", "socket": "socket"}
        return self._transport.get_extra_info(name[info]) if info in name else None


class _AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _StreamProtocol, host, port, local_addr=(local_address, 0) if local_address else None
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as err:
            raise httpcore.ConnectError(str(err)) from None
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_ASYNCIO_BACKEND = _AsyncioBackend()


class _Lane:
    """Connections to the connection's own origin for the waits' GETs: status polls, results, streams.

    httpx's pool re-scans every connection on each request event (a cost that grows with the square of
    open connections: 86 % of the CPU at 1,000 waiters) and its client layer (URL merging, cookies, auth
    flow, redirects) costs more than the poll itself. A wait only GETs URLs on one origin, so it goes to
    httpcore directly: a few HTTP/1.1 keep-alive connections handed out from an idle list (or HTTP/2
    connections, multiplexed), in-flight requests bounded, request line and headers built once.
    """

    def __init__(self, settings: FluxReduxSettings) -> None:
        scheme, host, port = settings.origin
        self.origin = httpcore.Origin(scheme.encode(), host.encode(), port)
        self.http2 = settings.http2
        self._ssl = _ssl_context() if scheme == "https" else None
        authority = f"[{host}]" if ":" in host else host
        if port != (443 if scheme == "https" else 80):
            authority = f"{authority}:{port}"
        self.authority = authority.encode()
        self.headers = [
            (b"Host", self.authority),
            (b"Accept", b"application/json"),
            (b"User-Agent", b"airflow-flux-redux"),
            (b"Authorization", settings.authorization.encode()),
        ]
        self.timeout = settings.timeout
        self.extensions = {"timeout": self._timeouts(settings.timeout)}
        # HTTP/1.1: a few connections carry a thousand polls a second on loopback or across a region, and
        # each open connection costs the server a socket; HTTP/2 multiplexes the in-flight requests.
        self._slots = asyncio.Semaphore(
            max(1, settings.max_in_flight if self.http2 else min(8, settings.max_in_flight))
        )
        self._idle: list[httpcore.AsyncHTTPConnection] = []  # HTTP/1.1: one request per connection at a time
        self.http1_streams = 0
        self.prefix = settings.origin_prefix
        self._open: weakref.WeakSet[httpcore.AsyncHTTPConnection] = weakref.WeakSet()
        self._h2_headers = [(name.lower(), value) for name, value in self.headers if name != b"Host"]
        self._h2: list[_H2Connection] = []
        self._h2_opening: asyncio.Future[_H2Connection] | None = None

    async def h2_connection(self) -> _H2Connection:
        """An HTTP/2 connection with room for one more stream; opens one (only one at a time) when all are full."""
        while True:
            if self._h2 and self._h2[-1].has_room():  # the newest first: the others are usually full
                return self._h2[-1]
            for conn in self._h2:
                if conn.has_room():
                    return conn
            self._h2 = [conn for conn in self._h2 if not conn.closed]
            if self._h2_opening is not None:
                await asyncio.shield(self._h2_opening)
                continue
            opening = self._h2_opening = asyncio.get_running_loop().create_future()
            conn = _H2Connection(self)
            try:
                await conn.connect()
            except BaseException as err:
                opening.set_exception(err)
                opening.exception()
                raise
            finally:
                self._h2_opening = None
            self._h2.append(conn)
            opening.set_result(conn)
            return conn

    async def h2_request(self, url: str) -> tuple[_H2Connection, _H2Stream]:
        """Send a GET on a connection with room and wait for its response headers; a refused one goes again."""
        import h2.exceptions

        target = self.request(url).url.target
        for attempt in range(3):
            conn = await self.h2_connection()
            try:
                stream = conn.open(target, self._h2_headers)
            except h2.exceptions.H2Error as err:  # the connection went away between the check and the send
                conn.closed = True
                if attempt == 2:
                    raise httpx.RemoteProtocolError(f"HTTP/2: {err}") from None
                continue
            try:
                await stream.response(self.timeout)
            except _StreamRefused:
                if attempt == 2:
                    raise
                continue
            except BaseException:
                conn.cancel(stream)
                raise
            return conn, stream
        raise AssertionError("unreachable")  # pragma: no cover

    def _timeouts(self, read: float) -> dict[str, float]:
        return {"connect": min(10.0, self.timeout), "read": read, "write": self.timeout, "pool": self.timeout}

    def connection(self, *, http2: bool | None = None) -> httpcore.AsyncHTTPConnection:
        use_h2 = self.http2 if http2 is None else http2
        h2c = use_h2 and self.origin.scheme == b"http"  # cleartext HTTP/2 only by prior knowledge
        conn = httpcore.AsyncHTTPConnection(
            self.origin, ssl_context=self._ssl, http1=not h2c, http2=use_h2, network_backend=_ASYNCIO_BACKEND
        )
        self._open.add(conn)
        return conn

    def request(self, url: str, *, read_timeout: float | None = None) -> httpcore.Request:
        rest = url[len(self.prefix) :] if url.startswith(self.prefix) else ""
        if rest[:1] == "/" and rest.isascii() and rest.isprintable() and " " not in rest:
            path = rest.encode()  # the server's own URL, already encoded: sent as it came
        else:
            path = httpx.URL(url).raw_path
        target = httpcore.URL(scheme=self.origin.scheme, host=self.origin.host, port=self.origin.port, target=path)
        extensions = self.extensions if read_timeout is None else {"timeout": self._timeouts(read_timeout)}
        return httpcore.Request(b"GET", target, headers=self.headers, extensions=extensions)

    async def get(self, url: str) -> _Reply:
        """GET ``url`` (on this origin) and read the whole answer; a stale keep-alive is replaced once."""
        if self.http2:
            return await self._h2_get(url)
        request = self.request(url)
        async with self._slots:
            for fresh in (False, True):
                conn, reused = self._checkout(fresh)
                try:
                    response = await conn.handle_async_request(request)
                    content = await response.aread()
                    await response.aclose()  # hands the connection back to IDLE for the next request
                except _STALE as err:
                    self._discard(conn)
                    if reused and not fresh:
                        continue
                    raise _httpx_error(err) from None
                except _HTTPCORE_ERRORS as err:
                    self._discard(conn)
                    raise _httpx_error(err) from None
                except BaseException:
                    self._discard(conn)
                    raise
                self._checkin(conn)
                return _Reply(response.status, response.headers, content)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _h2_get(self, url: str) -> _Reply:
        timeout = self.timeout
        async with self._slots:
            conn, stream = await self.h2_request(url)
            try:
                content = b"".join([chunk async for chunk in stream.body(timeout)])
            finally:
                conn.cancel(stream)
        return _Reply(stream.status, stream.headers, content)

    def _checkout(self, fresh: bool) -> tuple[httpcore.AsyncHTTPConnection, bool]:
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not (conn.has_expired() or conn.is_closed()):
                return conn, True
            self._discard(conn)
        return self.connection(), False

    def _checkin(self, conn: httpcore.AsyncHTTPConnection) -> None:
        if not conn.is_closed():
            self._idle.append(conn)

    def _discard(self, conn: httpcore.AsyncHTTPConnection) -> None:
        with contextlib.suppress(RuntimeError):
            closing = asyncio.get_running_loop().create_task(conn.aclose())
            _CLOSING.add(closing)
            closing.add_done_callback(_CLOSING.discard)

    async def aclose(self) -> None:
        for conn in list(self._open):
            with contextlib.suppress(Exception):
                await conn.aclose()
        self._idle.clear()
        for h2_conn in self._h2:
            await h2_conn.aclose()
        self._h2.clear()


_CLOSING: set[asyncio.Task[None]] = set()
# Each HTTP/1.1 stream holds a connection (~290 KB with TLS): past this many, ``auto`` waits poll instead.
MAX_HTTP1_STREAMS = 256


@dataclass
class _LoopClients:
    client: httpx.AsyncClient
    in_flight: asyncio.Semaphore
    lane: _Lane


class _AsyncClientPool:
    """Per event loop and per (base URL, credentials): one pooled ``AsyncClient`` and one lane for waits.

    Thousands of triggers in one triggerer share a handful of connections instead of a client each.
    """

    def __init__(self) -> None:
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _LoopClients]] = (
            weakref.WeakKeyDictionary()
        )

    def entry(self, settings: FluxReduxSettings) -> _LoopClients:
        loop = asyncio.get_running_loop()
        per_loop = self._clients.get(loop)
        if per_loop is None:
            per_loop = self._clients[loop] = {}
        entry = per_loop.get(settings.client_key)
        if entry is None or entry.client.is_closed:
            client = httpx.AsyncClient(**_client_kwargs(settings))
            entry = _LoopClients(client, asyncio.Semaphore(settings.max_in_flight), _Lane(settings))
            per_loop[settings.client_key] = entry
        return entry

    def get(self, settings: FluxReduxSettings) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        entry = self.entry(settings)
        return entry.client, entry.in_flight

    async def aclose(self) -> None:
        """Close this loop's clients (tests, benchmarks, a clean triggerer shutdown)."""
        loop = asyncio.get_running_loop()
        _SETTINGS_CACHE.pop(loop, None)
        for entry in self._clients.pop(loop, {}).values():
            await entry.lane.aclose()
            await entry.client.aclose()


# A triggerer's hooks share the connection's settings per loop and conn id for this long: a thousand
# triggers starting together look the connection up once, and a changed key is picked up within it.
SETTINGS_TTL = 30.0
_SETTINGS_CACHE: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[float, asyncio.Future[FluxReduxSettings]]]
] = weakref.WeakKeyDictionary()


ASYNC_CLIENTS = _AsyncClientPool()


class _FluxReduxHookBase(BaseHook):
    """Connection handling shared by the sync and the async hook."""

    conn_name_attr = "flux_redux_conn_id"
    default_conn_name = "flux_redux_default"
    conn_type = "flux_redux"
    hook_name = "FLUX Redux (fal.ai)"

    def __init__(self, flux_redux_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flux_redux_conn_id = flux_redux_conn_id
        self._settings: FluxReduxSettings | None = None

    def _use_settings(self, settings: FluxReduxSettings) -> FluxReduxSettings:
        mask_secret(settings.api_key)
        self._settings = settings
        return settings

    @staticmethod
    def _submit_request(
        settings: FluxReduxSettings, request: FluxReduxRequest | dict[str, Any], webhook_url: str | None
    ) -> dict[str, Any]:
        """Validate (before any network call) and shape the submit call."""
        payload = validate_request(request).to_payload()
        params = {"fal_webhook": webhook_url} if webhook_url else None
        return {"json": payload, "params": params, "headers": dict(settings.headers)}

    def _require_settings(self) -> FluxReduxSettings:
        if self._settings is None:
            raise FluxReduxConfigError("connection settings not loaded")
        return self._settings

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Labels for Airflow 2's connection form; Airflow 3 reads them from provider info."""
        return {"hidden_fields": HIDDEN_FIELDS, "relabeling": RELABELING, "placeholders": PLACEHOLDERS}

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Our extra fields in Airflow 2's connection form."""
        return form_widgets()


class FluxReduxHook(_FluxReduxHookBase):
    """Synchronous fal-queue calls for the worker; one pooled ``httpx.Client`` per hook.

    :param flux_redux_conn_id: The Airflow connection (type ``flux_redux``) with the base URL and key.
    """

    # Airflow 2 reads the connection form only from the registered hook class's own __dict__, not its bases'.
    get_ui_field_behaviour = _FluxReduxHookBase.__dict__["get_ui_field_behaviour"]
    get_connection_form_widgets = _FluxReduxHookBase.__dict__["get_connection_form_widgets"]

    def __init__(self, flux_redux_conn_id: str = _FluxReduxHookBase.default_conn_name, **kwargs: Any) -> None:
        super().__init__(flux_redux_conn_id=flux_redux_conn_id, **kwargs)
        self._client: httpx.Client | None = None
        self._files: httpx.Client | None = None

    @property
    def settings(self) -> FluxReduxSettings:
        if self._settings is None:
            self._use_settings(FluxReduxSettings.from_connection(self._connection()))
        return self._require_settings()

    def _connection(self) -> Connection | None:
        try:
            return self.get_connection(self.flux_redux_conn_id)
        except Exception:
            if os.environ.get("FAL_KEY") and self.flux_redux_conn_id == self.default_conn_name:
                return None
            raise

    def get_conn(self) -> httpx.Client:
        """The hook's one pooled client (keep-alive across submit, polls and result)."""
        if self._client is None or self._client.is_closed:
            self._client = httpx.Client(**_client_kwargs(self.settings))
        return self._client

    def close(self) -> None:
        for client in (self._client, self._files):
            if client is not None:
                client.close()

    def _call(self, op: str, method: str, url: str, request_id: str | None, **kwargs: Any) -> httpx.Response:
        settings = self.settings
        settings.require_trusted(url, op, request_id)
        client = self.get_conn()

        def attempt() -> httpx.Response:
            try:
                response = client.request(method, url, **kwargs)
            except httpx.HTTPError as err:
                raise _transport_error(err, op, url, request_id) from None
            _raise_for_status(response, op, request_id)
            return response

        try:
            return Retrying(**_retry_policy(settings, op, request_id, self.log))(attempt)
        except FluxReduxError as err:
            raise _gave_up(err, settings) from None

    def submit(self, request: FluxReduxRequest | dict[str, Any], *, webhook_url: str | None = None) -> QueueHandle:
        """Queue one job; at most once (see the module's retry policy). Returns the handle to follow."""
        validate_request(request)
        settings = self.settings
        call = self._submit_request(settings, request, webhook_url)
        response = self._call("submit", "POST", settings.submit_url, None, **call)
        return _model(QueueHandle, response, "submit", None)

    def status(self, handle: QueueHandle, *, logs: bool = True) -> QueueStatus:
        response = self._call("status", "GET", handle.status_url, handle.request_id, params=_logs(logs))
        return _model(QueueStatus, response, "status", handle.request_id)

    def result(self, handle: QueueHandle) -> ReduxResult:
        response = self._call("result", "GET", handle.response_url, handle.request_id)
        return _model(ReduxResult, response, "result", handle.request_id)

    def cancel(self, handle: QueueHandle) -> str:
        """Ask the queue to cancel; returns CANCELLATION_REQUESTED, ALREADY_COMPLETED or NOT_FOUND."""
        try:
            response = self._call("cancel", "PUT", handle.cancel_url, handle.request_id)
        except FluxReduxRequestRejectedError as err:
            return _cancel_outcome(err)
        return str(_json(response, "cancel", handle.request_id).get("status", "CANCELLATION_REQUESTED"))

    def wait(
        self,
        handle: QueueHandle,
        *,
        poll_interval: float = 1.0,
        deadline: float | None = None,
        on_status: Callable[[QueueStatus], None] | None = None,
    ) -> ReduxResult:
        """Poll until the job completes and return its result; cancel the job if ``deadline`` passes."""
        schedule = PollSchedule(poll_interval)
        while True:
            status = self.status(handle)
            if on_status is not None:
                on_status(status)
            if status.status is QueueState.COMPLETED:
                raise_if_failed(status, handle.request_id)
                return self.result(handle)
            delay = schedule.next_delay(status)
            if deadline is not None and time.time() + delay >= deadline:
                outcome = self.cancel(handle)
                raise FluxReduxTimeoutError(
                    f"The job did not complete before the deadline; cancel answered {outcome}.",
                    request_id=handle.request_id,
                )
            time.sleep(delay)

    def download(self, url: str, sink: BinaryIO, *, max_bytes: int) -> ImageDownload:
        """Stream one output image into ``sink``, never holding it whole; no credential is ever sent."""
        if self._files is None:
            self._files = httpx.Client(**_file_client_kwargs(self.settings))
        try:
            with self._files.stream("GET", url) as response:
                check = _DownloadCheck(url, response, max_bytes)
                for chunk in response.iter_bytes():
                    sink.write(check.chunk(chunk))
                return check.done()
        except httpx.HTTPError as err:
            raise FluxReduxTransportError(f"download of {httpx.URL(url).host} image failed: {err}") from None

    def test_connection(self) -> tuple[bool, str]:
        """Check key and host without a billable job: cancel a request id that cannot exist, no retries."""
        try:
            settings = self._use_settings(dataclasses.replace(self.settings, max_retries=0))
            outcome = self.cancel(_probe_handle(settings))
        except FluxReduxAuthError as err:
            return False, f"The key was refused: {err}"
        except FluxReduxError as err:
            return False, str(err)
        return True, f"Connected to {settings.base_url}: the queue answered ({outcome}) and accepted the key."


class FluxReduxAsyncHook(_FluxReduxHookBase):
    """The async twin for triggers: same methods, awaited; clients shared per event loop and connection."""

    async def aget_settings(self) -> FluxReduxSettings:
        if self._settings is None:
            self._settings = await self._shared_settings()
        return self._settings

    async def _shared_settings(self) -> FluxReduxSettings:
        """The connection's settings, looked up once per loop and ``SETTINGS_TTL`` for all hooks on it."""
        loop = asyncio.get_running_loop()
        per_loop = _SETTINGS_CACHE.get(loop)
        if per_loop is None:
            per_loop = _SETTINGS_CACHE[loop] = {}
        now = time.monotonic()
        cached = per_loop.get(self.flux_redux_conn_id)
        if cached is not None and cached[0] > now:
            return await asyncio.shield(cached[1])
        future: asyncio.Future[FluxReduxSettings] = loop.create_future()
        per_loop[self.flux_redux_conn_id] = (now + SETTINGS_TTL, future)
        try:
            settings = self._use_settings(FluxReduxSettings.from_connection(await self._aconnection()))
        except BaseException as err:
            per_loop.pop(self.flux_redux_conn_id, None)
            future.set_exception(err)
            future.exception()  # marks it retrieved; hooks waiting on it get it through their own await
            raise
        future.set_result(settings)
        return settings

    async def _aconnection(self) -> Connection | None:
        from airflow.providers.common.compat.connection import get_async_connection

        try:
            return await get_async_connection(self.flux_redux_conn_id, hook=self)
        except Exception:
            if not (os.environ.get("FAL_KEY") and self.flux_redux_conn_id == self.default_conn_name):
                raise
            return None

    async def _call(self, op: str, method: str, url: str, request_id: str | None, **kwargs: Any) -> httpx.Response:
        settings = self._settings or await self.aget_settings()
        settings.require_trusted(url, op, request_id)
        client, in_flight = ASYNC_CLIENTS.get(settings)

        async def attempt() -> httpx.Response:
            try:
                async with in_flight:
                    response = await client.request(method, url, **kwargs)
            except httpx.HTTPError as err:
                raise _transport_error(err, op, url, request_id) from None
            _raise_for_status(response, op, request_id)
            return response

        response: httpx.Response = await self._with_retries(settings, op, request_id, attempt)
        return response

    async def _get(self, op: str, url: str, request_id: str | None) -> httpx.Response | _Reply:
        """A GET on the poll lane when ``url`` is on the connection's own origin, else through the client."""
        settings = self._settings or await self.aget_settings()
        settings.require_trusted(url, op, request_id)
        if not settings.same_origin(url):
            return await self._call(op, "GET", url, request_id)
        lane = ASYNC_CLIENTS.entry(settings).lane

        async def attempt() -> _Reply:
            try:
                reply = await lane.get(url)
            except httpx.HTTPError as err:
                raise _transport_error(err, op, url, request_id) from None
            _raise_for_status(reply, op, request_id)
            return reply

        reply: _Reply = await self._with_retries(settings, op, request_id, attempt)
        return reply

    async def _with_retries(
        self, settings: FluxReduxSettings, op: str, request_id: str | None, attempt: Callable[[], Awaitable[Any]]
    ) -> Any:
        """The first try runs bare (the common case: no retry machinery per poll); a failure replays into it."""
        try:
            return await attempt()
        except FluxReduxTransportError as err:
            if not err.retryable or settings.max_retries <= 0:
                raise _gave_up(err, settings) from None
            first: FluxReduxError | None = err
        except FluxReduxError as err:
            raise _gave_up(err, settings) from None

        async def replay() -> Any:
            nonlocal first
            if first is not None:
                error, first = first, None
                raise error
            return await attempt()

        try:
            return await AsyncRetrying(**_retry_policy(settings, op, request_id, self.log))(replay)
        except FluxReduxError as err:
            raise _gave_up(err, settings) from None

    async def submit(
        self, request: FluxReduxRequest | dict[str, Any], *, webhook_url: str | None = None
    ) -> QueueHandle:
        validate_request(request)
        settings = await self.aget_settings()
        call = self._submit_request(settings, request, webhook_url)
        response = await self._call("submit", "POST", settings.submit_url, None, **call)
        return _model(QueueHandle, response, "submit", None)

    async def status(self, handle: QueueHandle, *, logs: bool = True) -> QueueStatus:
        response = await self._get("status", _with_logs(handle.status_url, logs), handle.request_id)
        return _model(QueueStatus, response, "status", handle.request_id)

    async def result(self, handle: QueueHandle) -> ReduxResult:
        response = await self._get("result", handle.response_url, handle.request_id)
        return _model(ReduxResult, response, "result", handle.request_id)

    async def cancel(self, handle: QueueHandle) -> str:
        try:
            response = await self._call("cancel", "PUT", handle.cancel_url, handle.request_id)
        except FluxReduxRequestRejectedError as err:
            return _cancel_outcome(err)
        return str(_json(response, "cancel", handle.request_id).get("status", "CANCELLATION_REQUESTED"))

    async def stream(
        self, handle: QueueHandle, *, logs: bool = True, fallback_when_busy: bool = False
    ) -> AsyncIterator[QueueStatus]:
        """Status updates from ``{status_url}/stream`` (Server-Sent Events), ending after COMPLETED.

        Raises :class:`StreamUnsupportedError` when the server does not serve the stream, so the
        caller can fall back to polling; with ``fallback_when_busy`` also when the stream would need one more
        HTTP/1.1 connection past ``MAX_HTTP1_STREAMS`` (HTTP/2 streams share connections and never are).
        """
        from httpx_sse import EventSource

        settings = self._settings or await self.aget_settings()
        url = f"{handle.status_url.split('?')[0].rstrip('/')}/stream"
        settings.require_trusted(url, "status stream", handle.request_id)
        try:
            async with self._open_stream(settings, _with_logs(url, logs), fallback_when_busy) as response:
                if response.status_code in (404, 405, 501) or (
                    response.status_code < 300 and "text/event-stream" not in response.headers.get("content-type", "")
                ):
                    raise StreamUnsupportedError(f"HTTP {response.status_code}", request_id=handle.request_id)
                if response.status_code >= 300:
                    await response.aread()
                    _raise_for_status(response, "status stream", handle.request_id)
                async for event in EventSource(response).aiter_sse():
                    if not event.data:
                        continue
                    try:
                        status = QueueStatus.model_validate_json(event.data)
                    except ValidationError as err:
                        raise FluxReduxProtocolError(
                            f"status stream sent an event that is not a queue status: {err.errors()[0]['msg']}",
                            request_id=handle.request_id,
                        ) from None
                    yield status
                    if status.status is QueueState.COMPLETED:
                        return
        except httpx.HTTPError as err:
            raise _transport_error(err, "status stream", url, handle.request_id) from None

    @contextlib.asynccontextmanager
    async def _open_stream(
        self, settings: FluxReduxSettings, url: str, fallback_when_busy: bool = False
    ) -> AsyncIterator[httpx.Response]:
        """The stream's response, on a connection of its own to our origin (else through the client).

        A stream holds its HTTP/1.1 connection for the whole wait: through the client's pool, the streams
        past its connection limit would queue behind the others for the length of a job.
        """
        if not settings.same_origin(url):
            client, _ = ASYNC_CLIENTS.get(settings)
            timeout = httpx.Timeout(settings.timeout, read=max(60.0, settings.timeout))
            async with client.stream("GET", url, headers={"Accept": "text/event-stream"}, timeout=timeout) as response:
                yield response
            return
        lane = ASYNC_CLIENTS.entry(settings).lane
        if lane.http2:
            h2_conn, h2_stream = await lane.h2_request(url)
            read_timeout = max(60.0, settings.timeout)
            try:
                yield httpx.Response(
                    h2_stream.status, headers=h2_stream.headers, stream=_H2Body(h2_stream.body(read_timeout))
                )
            finally:
                h2_conn.cancel(h2_stream)
            return
        if fallback_when_busy and lane.http1_streams >= MAX_HTTP1_STREAMS:
            raise StreamUnsupportedError(
                f"all {MAX_HTTP1_STREAMS} HTTP/1.1 stream connections are in use (set the connection extra "
                '"http2": true to multiplex streams)'
            )
        conn = lane.connection(http2=False)
        request = lane.request(url, read_timeout=max(60.0, settings.timeout))
        lane.http1_streams += 1
        try:
            try:
                core = await conn.handle_async_request(request)
            except _HTTPCORE_ERRORS as err:
                raise _httpx_error(err) from None
            try:
                yield httpx.Response(core.status, headers=core.headers, stream=_CoreStream(core))
            finally:
                await core.aclose()
        finally:
            lane.http1_streams -= 1
            await conn.aclose()

    async def wait(
        self,
        handle: QueueHandle,
        *,
        poll_interval: float = 1.0,
        deadline: float | None = None,
        on_status: Callable[[QueueStatus], None] | None = None,
    ) -> ReduxResult:
        schedule = PollSchedule(poll_interval)
        while True:
            status = await self.status(handle)
            if on_status is not None:
                on_status(status)
            if status.status is QueueState.COMPLETED:
                raise_if_failed(status, handle.request_id)
                return await self.result(handle)
            delay = schedule.next_delay(status)
            if deadline is not None and time.time() + delay >= deadline:
                outcome = await self.cancel(handle)
                raise FluxReduxTimeoutError(
                    f"The job did not complete before the deadline; cancel answered {outcome}.",
                    request_id=handle.request_id,
                )
            await asyncio.sleep(delay)


class StreamUnsupportedError(FluxReduxError):
    """The server does not serve the status stream; poll instead."""


# -- helpers shared by both twins -----------------------------------------------------------------------


def _logs(logs: bool) -> dict[str, str] | None:
    return {"logs": "1"} if logs else None


def _with_logs(url: str, logs: bool) -> str:
    if not logs:
        return url
    return f"{url}&logs=1" if "?" in url else f"{url}?logs=1"


def _cancel_outcome(err: FluxReduxRequestRejectedError) -> str:
    if err.status_code == 400:
        return "ALREADY_COMPLETED"
    if err.status_code == 404:
        return "NOT_FOUND"
    raise err


def raise_if_failed(status: QueueStatus, request_id: str) -> None:
    """A COMPLETED status with an error is a failed job: raise with fal's error type and message."""
    if status.failed:
        error_class = FluxReduxCancelledError if status.error_type == "client_cancelled" else FluxReduxJobFailedError
        raise error_class(
            f"The job failed: {status.error_type or 'error'}: {status.error or 'no detail'}",
            error_type=status.error_type,
            request_id=request_id,
        )


class PollSchedule:
    """Adaptive polling: fast at first, slower while far back in the queue, reset on a state change."""

    def __init__(self, interval: float) -> None:
        self.interval = max(0.05, interval)
        self._state: QueueState | None = None
        self._polls_in_state = 0

    def next_delay(self, status: QueueStatus) -> float:
        if status.status is not self._state:
            self._state = status.status
            self._polls_in_state = 0
        self._polls_in_state += 1
        delay = self.interval
        if status.status is QueueState.IN_QUEUE and (status.queue_position or 0) > 10:
            delay = min(self.interval * 4, self.interval + 0.5 * (status.queue_position or 0))
        elif self._polls_in_state <= 2:
            delay = min(self.interval, 0.25)
        # Jitter only shortens the wait: waiters started together drift apart instead of polling in bursts,
        # and the interval stays an upper bound on how late a change is seen.
        return delay * random.uniform(0.9, 1.0)


@dataclass
class ImageDownload:
    bytes_written: int
    content_type: str


_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


class _DownloadCheck:
    """Caps the size and checks the type of a downloaded image while it streams."""

    def __init__(self, url: str, response: httpx.Response, max_bytes: int) -> None:
        self.url = url
        self.max_bytes = max_bytes
        self.written = 0
        self.content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.status_code != 200:
            raise FluxReduxTransportError(
                f"image download from {response.url.host} answered HTTP {response.status_code}"
            )
        if self.content_type not in _IMAGE_TYPES:
            raise FluxReduxProtocolError(
                f"image download from {response.url.host} sent Content-Type {self.content_type or 'none'!r}; "
                f"expected one of {', '.join(_IMAGE_TYPES)}"
            )
        declared = int(response.headers.get("content-length") or 0)
        if declared > max_bytes:
            raise FluxReduxProtocolError(f"image at {response.url.host} is {declared} bytes; the cap is {max_bytes}")

    def chunk(self, data: bytes) -> bytes:
        self.written += len(data)
        if self.written > self.max_bytes:
            raise FluxReduxProtocolError(f"image download passed the cap of {self.max_bytes} bytes; stopped")
        return data

    def done(self) -> ImageDownload:
        return ImageDownload(bytes_written=self.written, content_type=self.content_type)


def _file_client_kwargs(settings: FluxReduxSettings) -> dict[str, Any]:
    # No auth at all: images live on a CDN; redirects are followed and carry nothing secret.
    return {
        "timeout": httpx.Timeout(max(60.0, settings.timeout), connect=10.0),
        "follow_redirects": True,
        "max_redirects": 5,
        "verify": _ssl_context(),
        "headers": {"User-Agent": "airflow-flux-redux"},
    }


_PROBE_ID = "00000000-0000-0000-0000-airflow-probe"


def _probe_handle(settings: FluxReduxSettings) -> QueueHandle:
    """A request id that cannot exist, under the configured app: cancelling it costs nothing."""
    app = "/".join(settings.endpoint.split("/")[:2])
    base = f"{settings.base_url}/{app}/requests/{_PROBE_ID}"
    return QueueHandle(
        request_id=_PROBE_ID, status_url=f"{base}/status", response_url=base, cancel_url=f"{base}/cancel"
    )


POSITION_LOG_INTERVAL = 10.0


class StatusReporter:
    """Log what changed between statuses: state, queue position, and fal's new log lines.

    Logs only on change (the queue position at most every POSITION_LOG_INTERVAL seconds), so thousands of
    waits do not flood the triggerer's log.
    """

    def __init__(self, log: Any, request_id: str, *, forward_logs: bool = True) -> None:
        self.log = log
        self.request_id = request_id
        self.forward_logs = forward_logs
        self._state: QueueState | None = None
        self._position: int | None = None
        self._position_logged = 0.0
        self._seen_logs = 0

    def __call__(self, status: QueueStatus) -> None:
        if status.status is not self._state:
            self._state = status.status
            self.log.info("fal request %s is %s", self.request_id, status.status.value)
        if (
            status.status is QueueState.IN_QUEUE
            and status.queue_position != self._position
            and (self._position is None or time.monotonic() >= self._position_logged + POSITION_LOG_INTERVAL)
        ):
            # In a long queue the position changes at every poll: one line per interval, not one per poll.
            self._position = status.queue_position
            self._position_logged = time.monotonic()
            self.log.info("fal request %s: queue position %s", self.request_id, status.queue_position)
        if self.forward_logs and status.logs and len(status.logs) > self._seen_logs:
            for entry in status.logs[self._seen_logs :]:
                self.log.info("fal: %s", entry.message)
            self._seen_logs = len(status.logs)
