"""Connection settings: relays' fal URLs rebased onto the base URL, the key kept home, extras checked."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from airflow_flux_redux.connection_extras import EXTRAS
from airflow_flux_redux.exceptions import FluxReduxConfigError, FluxReduxUntrustedUrlError
from airflow_flux_redux.hooks._settings import FluxReduxSettings

FAL = "https://queue.fal.run/fal-ai/flux-1/requests/abc"


def settings(host: str = "", **extra: Any) -> FluxReduxSettings:
    conn = SimpleNamespace(host=host, port=None, password="k-123", extra_dejson=extra)
    return FluxReduxSettings.from_connection(conn)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "url", "expected"),
    [
        ("https://relay.example.com", f"{FAL}/status", "https://relay.example.com/fal-ai/flux-1/requests/abc/status"),
        ("https://relay.example.com", f"{FAL}/status?logs=1", "https://relay.example.com/fal-ai/flux-1/requests/abc/status?logs=1"),
        ("https://relay.example.com/api/v1/", FAL, "https://relay.example.com/api/v1/fal-ai/flux-1/requests/abc"),
        ("http://127.0.0.1:8790/p", "https://queue.falrun.com/fal-ai/flux-1/requests/abc/cancel", "http://127.0.0.1:8790/p/fal-ai/flux-1/requests/abc/cancel"),
        # A gateway with URLs of its own is followed as it answers; so is fal itself.
        ("https://gw.example.com", "https://files.gw.example.com/r/abc", "https://files.gw.example.com/r/abc"),
        ("", f"{FAL}/status", f"{FAL}/status"),
    ],
)  # fmt: skip
def test_auto_rebases_only_fal_urls_returned_to_a_gateway(host: str, url: str, expected: str) -> None:
    assert settings(host, auth_scheme="Bearer").queue_url(url) == expected


def test_always_rebases_any_url_and_never_follows_as_returned() -> None:
    always = settings("https://gw.example.com/v1", rebase_queue_urls="always")
    assert always.queue_url("https://other.example.com/x/r/1") == "https://gw.example.com/v1/x/r/1"
    # Already under the base URL: the prefix is not doubled.
    assert always.queue_url("https://gw.example.com/v1/x/r/1") == "https://gw.example.com/v1/x/r/1"
    assert settings("https://gw.example.com", rebase_queue_urls="never").queue_url(FAL) == FAL


def test_never_rebasing_refuses_fal_urls_without_advising_to_trust_fal_with_the_gateway_key() -> None:
    relay = settings("https://relay.example.com", rebase_queue_urls="never")
    with pytest.raises(FluxReduxUntrustedUrlError) as raised:
        relay.require_trusted(f"{FAL}/status", "status", "abc")
    message = str(raised.value)
    assert "nothing was sent" in message and "rebase_queue_urls" in message
    assert "allowed_hosts" not in message and '"https://queue.fal.run' not in message


def test_a_truly_foreign_host_is_still_refused_with_the_allowed_hosts_advice() -> None:
    relay = settings("https://relay.example.com")
    url = relay.queue_url("https://evil.example.net/fal-ai/flux-1/requests/abc/status")
    with pytest.raises(FluxReduxUntrustedUrlError, match="allowed_hosts"):
        relay.require_trusted(url, "status", "abc")


def test_fal_key_may_go_to_fals_backup_queue_host() -> None:
    fal = settings("")
    fal.require_trusted("https://queue.falrun.com/fal-ai/flux-1/requests/abc/status", "status", "abc")
    with pytest.raises(FluxReduxUntrustedUrlError):
        fal.require_trusted("http://queue.falrun.com/fal-ai/flux-1/requests/abc/status", "status", "abc")


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("rebase_queue_urls", "sometimes", "auto or always or never"),
        ("auth_scheme", "Basic", "Key or Bearer"),
        ("max_retries", "many", "an integer >= 0"),
        ("timeout", "-1", "a number >= 0.1"),
        ("http2", "perhaps", "true or false"),
        ("object_expiration_seconds", "0", "an integer >= 1"),
        ("object_expiration_seconds", "an hour", "an integer >= 1"),
        ("disable_fallback", "maybe", "true or false"),
        ("max_queue_length", "-1", "an integer >= 0"),
    ],
)
def test_a_bad_extra_names_itself_and_what_is_allowed(name: str, value: str, allowed: str) -> None:
    with pytest.raises(FluxReduxConfigError) as raised:
        settings("https://gw.example.com", **{name: value})
    assert f"{name}={value!r}" in str(raised.value) and allowed in str(raised.value)


def test_every_extra_reaches_the_settings_or_a_header() -> None:
    """The table drives the settings: no extra is declared that nothing reads."""
    values = {"queue_priority": "low", "request_timeout": 9, "runner_hint": "eu", "no_retry": True, "store_io": False}
    values |= {"object_expiration_seconds": 60, "disable_fallback": True, "max_queue_length": 4}
    built = settings("https://gw.example.com", **values)
    headers = dict(built.headers)
    for extra in EXTRAS:
        if extra.header:
            assert extra.header in headers, extra.name
        elif extra.query:
            assert extra.query in dict(built.submit_params), extra.name
        else:
            assert hasattr(built, extra.name) or extra.name == "allowed_hosts", extra.name
    assert headers["X-Fal-No-Retry"] == "1" and headers["X-Fal-Store-IO"] == "0"
