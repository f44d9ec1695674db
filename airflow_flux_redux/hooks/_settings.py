"""The connection's settings: what every call needs, resolved once from an Airflow connection.

Its own module because both the hook and the transport (``_transport``) read it, and the transport must
not import the hook.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import weakref
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from airflow_flux_redux.connection_extras import BY_NAME, EXTRAS, parse_extras
from airflow_flux_redux.exceptions import FluxReduxConfigError, FluxReduxUntrustedUrlError
from airflow_flux_redux.hooks._proxy import check_proxy_url, environment_proxies, environment_proxy

if TYPE_CHECKING:
    import asyncio

    from airflow.providers.common.compat.sdk import Connection

DEFAULT_BASE_URL = "https://queue.fal.run"
DEFAULT_ENDPOINT = BY_NAME["endpoint"].default
# fal's queue hosts (the second is fal's backup). Relays pass fal's submit answer through, URLs and all.
FAL_QUEUE_HOSTS = frozenset({"queue.fal.run", "queue.falrun.com"})


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
    rebase_queue_urls: str = "auto"
    timeout: float = 30.0
    max_retries: int = 5
    retry_initial_wait: float = 0.5
    retry_max_wait: float = 30.0
    allowed_origins: frozenset[tuple[str, str, int]] = frozenset()
    headers: tuple[tuple[str, str], ...] = ()
    submit_params: tuple[tuple[str, str], ...] = ()
    http2: bool = False
    max_in_flight: int = 64
    proxy: str | None = field(default=None, repr=False)
    # The environment's proxy variables when the settings were made: the clients built from them follow them.
    environment_proxies: tuple[tuple[str, str], ...] = field(default_factory=environment_proxies, repr=False)

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
        if not all(" " < char <= "~" for char in api_key):
            # An HTTP library would refuse the header and quote the key in its error: say it here, without it.
            raise FluxReduxConfigError(
                "The API key has a space, control or non-ASCII character (a pasted line break?); "
                "set it again in the connection's password."
            )
        values = parse_extras(extra)
        headers = tuple(
            (item.header, item.encode(values[item.name]))
            for item in EXTRAS
            if item.header is not None and values[item.name] is not None
        )
        submit_params = tuple(
            (item.query, item.encode(values[item.name]))
            for item in EXTRAS
            if item.query is not None and values[item.name] is not None
        )
        return cls(
            base_url=(host or DEFAULT_BASE_URL).rstrip("/"),
            api_key=api_key,
            auth_scheme=values["auth_scheme"],
            endpoint=values["endpoint"].strip("/"),
            rebase_queue_urls=values["rebase_queue_urls"],
            timeout=values["timeout"],
            max_retries=values["max_retries"],
            retry_initial_wait=values["retry_initial_wait"],
            retry_max_wait=values["retry_max_wait"],
            allowed_origins=_parse_allowed_hosts(values["allowed_hosts"]),
            headers=headers,
            submit_params=submit_params,
            http2=values["http2"],
            max_in_flight=values["max_in_flight"],
            proxy=check_proxy_url(values["proxy"], "The connection extra proxy") if values["proxy"] else None,
        )

    @cached_property
    def origin(self) -> tuple[str, str, int]:
        return _origin(self.base_url)

    @cached_property
    def authorization(self) -> str:
        return f"{self.auth_scheme} {self.api_key}"

    @cached_property
    def client_key(self) -> str:
        """Tells pooled clients apart without keeping the key itself as a dict key."""
        # Every setting (the key as part of the Authorization value): connections differing in anything never
        # share a pooled client.
        parts = [self.authorization] + [
            sorted(value) if isinstance(value, frozenset) else value
            for name, value in ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
            if name != "api_key"
        ]
        digest = hashlib.sha256(repr(parts).encode()).hexdigest()
        return digest[:32]

    @cached_property
    def store_io_off(self) -> bool:
        """True when the connection turned fal's payload storage off (``store_io``): results are kept minutes."""
        header = BY_NAME["store_io"].header
        return any(name == header and value == "0" for name, value in self.headers)

    @cached_property
    def _proxies(self) -> dict[tuple[str, str, int], str | None]:
        return {}

    def proxy_for(self, url: str | httpx.URL) -> str | None:
        """The proxy for a request to ``url`` (see ``_proxy``): the connection's, the environment's, or None."""
        origin = _origin(url)
        if origin not in self._proxies:
            self._proxies[origin] = self.proxy or environment_proxy(*origin, self.environment_proxies)
        return self._proxies[origin]

    @property
    def submit_url(self) -> str:
        return f"{self.base_url}/{self.endpoint}"

    def trusts(self, url: str | httpx.URL) -> bool:
        if isinstance(url, str) and self.same_origin(url):
            return True
        origin = _origin(url)
        if origin == self.origin or origin in self.allowed_origins:
            return True
        # A fal key belongs on all of fal's queue hosts (fal lists a backup host), over https only.
        return self.is_fal and origin[0] == "https" and origin[1] in FAL_QUEUE_HOSTS

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

    @cached_property
    def is_fal(self) -> bool:
        return self.origin[1] in FAL_QUEUE_HOSTS

    def queue_url(self, url: str) -> str:
        """The URL to call for a status, result or cancel URL the queue returned (``rebase_queue_urls``).

        Relays answer with fal's own URLs, where their key is worthless and must not go: the same path is
        called under the base URL instead (its own path prefix kept).
        """
        mode = self.rebase_queue_urls
        if mode == "never" or self.same_origin(url):
            return url
        parts = urlsplit(url)
        if mode == "auto" and (self.is_fal or (parts.hostname or "").lower() not in FAL_QUEUE_HOSTS):
            return url
        prefix = urlsplit(self.base_url).path.rstrip("/")
        path = parts.path if not prefix or parts.path.startswith(f"{prefix}/") else f"{prefix}{parts.path}"
        return f"{self.origin_prefix}{path}" + (f"?{parts.query}" if parts.query else "")

    def require_trusted(self, url: str, what: str, request_id: str | None) -> None:
        """Refuse, before sending anything, a URL whose origin would receive the key without consent."""
        if self.trusts(url):
            return
        scheme, host, port = _origin(url)
        here = f"{self.origin[0]}://{self.origin[1]}:{self.origin[2]}"
        if host in FAL_QUEUE_HOSTS and not self.is_fal:
            # Never advise trusting fal with a gateway's key: it is worthless there and must not leak.
            advice = (
                f"This connection's key belongs to {here}, not to fal. Set the connection extra "
                "rebase_queue_urls to auto (the default) or always, so the same path is called on the base URL."
            )
        else:
            advice = (
                f'If that host is yours, trust it with the connection extra allowed_hosts (e.g. "{scheme}://{host}:'
                f'{port}").'
            )
        raise FluxReduxUntrustedUrlError(
            f"The {what} URL {scheme}://{host}:{port} is not on the connection's origin {here}; nothing was sent. "
            + advice,
            request_id=request_id,
        )


# A triggerer's hooks share the connection's settings per loop and conn id for this long: a thousand
# triggers starting together look the connection up once, and a changed key is picked up within it.
SETTINGS_TTL = 30.0
_SETTINGS_CACHE: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[float, asyncio.Future[FluxReduxSettings]]]
] = weakref.WeakKeyDictionary()
