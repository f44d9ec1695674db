"""TLS contexts for the async transport: one per process each, since building one loads the CA bundle."""

from __future__ import annotations

import contextlib
import ssl

_CONTEXTS: dict[str, ssl.SSLContext] = {}


def _new_ssl_context(alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    with contextlib.suppress(ImportError):
        import certifi

        context.load_verify_locations(certifi.where())
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def ssl_context() -> ssl.SSLContext:
    """The default context (~25 ms and ~850 KB to build)."""
    if "default" not in _CONTEXTS:
        _CONTEXTS["default"] = _new_ssl_context()
    return _CONTEXTS["default"]


def h2_ssl_context() -> ssl.SSLContext:
    """Like ``ssl_context()``, offering only h2 by ALPN."""
    if "h2" not in _CONTEXTS:
        _CONTEXTS["h2"] = _new_ssl_context(["h2"])
    return _CONTEXTS["h2"]
