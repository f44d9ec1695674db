"""Which proxy a request takes: one rule for httpx and aiohttp, from the connection or the environment."""

from __future__ import annotations

import pytest

from airflow_flux_redux.exceptions import FluxReduxConfigError
from airflow_flux_redux.hooks._proxy import redact
from airflow_flux_redux.hooks._settings import FluxReduxSettings

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def settings(**options: object) -> FluxReduxSettings:
    return FluxReduxSettings(base_url="https://gw.example.com", api_key="k" * 24, **options)  # type: ignore[arg-type]


def test_the_scheme_picks_the_variable_and_all_proxy_covers_the_rest(env) -> None:
    env.setenv("HTTPS_PROXY", "http://secure-proxy:3128")
    env.setenv("ALL_PROXY", "http://any-proxy:3128")
    rules = settings()
    assert rules.proxy_for("https://gw.example.com/x") == "http://secure-proxy:3128"
    assert rules.proxy_for("http://cdn.example.net/a.png") == "http://any-proxy:3128"


def test_no_proxy_names_hosts_domains_and_ports_reached_directly(env) -> None:
    env.setenv("HTTPS_PROXY", "http://proxy:3128")
    env.setenv("HTTP_PROXY", "http://proxy:3128")
    env.setenv("NO_PROXY", "localhost,.corp.example,gw.internal:8443")
    rules = settings()
    assert rules.proxy_for("https://api.corp.example/x") is None
    assert rules.proxy_for("http://localhost:9000/x") is None
    assert rules.proxy_for("https://gw.internal:8443/x") is None
    assert rules.proxy_for("https://gw.internal:9443/x") == "http://proxy:3128"
    assert rules.proxy_for("https://queue.fal.run/x") == "http://proxy:3128"


def test_lower_case_variables_win_and_nothing_set_means_direct(env) -> None:
    assert settings().proxy_for("https://gw.example.com/x") is None
    env.setenv("HTTPS_PROXY", "http://upper:1")
    env.setenv("https_proxy", "http://lower:2")
    assert settings().proxy_for("https://gw.example.com/x") == "http://lower:2"


def test_the_connections_proxy_overrides_the_environment_no_proxy_included(env) -> None:
    env.setenv("HTTPS_PROXY", "http://env-proxy:3128")
    env.setenv("NO_PROXY", "gw.example.com")
    rules = settings(proxy="http://conn-proxy:8080")
    assert rules.proxy_for("https://gw.example.com/x") == "http://conn-proxy:8080"


def test_settings_follow_the_environment_they_were_made_in(env) -> None:
    before = settings()
    env.setenv("HTTPS_PROXY", "http://later:3128")
    assert before.proxy_for("https://gw.example.com/x") is None  # its clients keep their routes
    assert settings().proxy_for("https://gw.example.com/x") == "http://later:3128"
    assert settings().client_key != before.client_key  # so new settings never reuse the old clients


def test_a_socks_proxy_in_the_environment_is_refused_by_name_without_its_password(env) -> None:
    env.setenv("ALL_PROXY", "socks5://user:s3cret-pw@127.0.0.1:1080")
    with pytest.raises(FluxReduxConfigError, match="ALL_PROXY") as caught:
        settings().proxy_for("https://gw.example.com/x")
    assert "s3cret-pw" not in str(caught.value)


def test_redact_hides_credentials_only() -> None:
    assert redact("http://user:pw@proxy:3128") == "http://***@proxy:3128"
    assert redact("http://proxy:3128") == "http://proxy:3128"
