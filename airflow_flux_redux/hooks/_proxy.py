"""Which proxy a request goes through: decided once here, for httpx and aiohttp alike.

httpx and aiohttp each read ``HTTP_PROXY`` & co. in their own way (aiohttp ignores ``ALL_PROXY`` and looks
the variables up in a thread per request), so the hook reads them itself, with the standard library's
rules, and hands both clients the same explicit answer: the connection extra ``proxy`` when set, else
``HTTPS_PROXY`` / ``HTTP_PROXY`` by the URL's scheme, else ``ALL_PROXY``, unless ``NO_PROXY`` names the
host. The clients do the proxying itself (CONNECT tunnels for https origins, so a proxy never sees the key).
"""

from __future__ import annotations

import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from airflow_flux_redux.exceptions import FluxReduxConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

PROXY_SCHEMES = ("http", "https")


def check_proxy_url(url: str, source: str) -> str:
    """``url`` if it is a proxy both clients can use, else an error naming ``source`` (never the password)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in PROXY_SCHEMES or not parts.hostname:
        raise FluxReduxConfigError(
            f"{source} is not an HTTP proxy URL ({redact(url)}); allowed: http://[user:password@]host:port or "
            "https://host:port."
        )
    return parts.geturl()


def redact(url: str) -> str:
    """The proxy URL as it may be shown: without its credentials."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def proxy_password(url: str | None) -> str | None:
    return urlsplit(url).password if url else None


def environment_proxies() -> tuple[tuple[str, str], ...]:
    """The proxy variables of the environment now (``{scheme}_proxy``, ``all_proxy``, ``no_proxy``), sorted."""
    return tuple(sorted(urllib.request.getproxies_environment().items()))


def environment_proxy(scheme: str, host: str, port: int, environment: tuple[tuple[str, str], ...]) -> str | None:
    """The proxy ``environment`` (from ``environment_proxies``) names for an origin, or None (direct)."""
    proxies = dict(environment)
    name = "https_proxy" if scheme == "https" else "http_proxy"
    chosen = proxies.get(scheme) or proxies.get("all")
    if not chosen:
        return None
    if proxies.get("no") and urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
        f"{host}:{port}", proxies
    ):
        return None
    return check_proxy_url(chosen, f"The environment variable {name.upper()} (or ALL_PROXY)")


class ProxyRoutes:
    """One httpx transport per proxy (None: direct), picked per request by the connection's proxy rule."""

    def __init__(self, proxy_for: Callable[[httpx.URL], str | None], make: Callable[[str | None], Any]) -> None:
        self._proxy_for = proxy_for
        self._make = make
        self.transports: dict[str | None, Any] = {}

    def transport(self, url: httpx.URL) -> Any:
        proxy = self._proxy_for(url)
        transport = self.transports.get(proxy)
        if transport is None:
            transport = self.transports[proxy] = self._make(proxy)
        return transport


class ProxyTransport(httpx.BaseTransport):
    """The sync client's transport: each request through its origin's proxy, or direct."""

    def __init__(self, routes: ProxyRoutes) -> None:
        self.routes = routes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response: httpx.Response = self.routes.transport(request.url).handle_request(request)
        return response

    def close(self) -> None:
        for transport in self.routes.transports.values():
            transport.close()


class AsyncProxyTransport(httpx.AsyncBaseTransport):
    """The async client's transport: each request through its origin's proxy, or direct."""

    def __init__(self, routes: ProxyRoutes) -> None:
        self.routes = routes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response: httpx.Response = await self.routes.transport(request.url).handle_async_request(request)
        return response

    async def aclose(self) -> None:
        for transport in self.routes.transports.values():
            await transport.aclose()
