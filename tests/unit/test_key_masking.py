"""A key taken from ``FAL_KEY`` (no connection) is registered with Airflow's secrets masker by the hooks.

Airflow masks a connection's password itself, which hides a missing ``mask_secret`` call for a connection key;
``FAL_KEY`` alone is only masked because the hook says so.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from airflow.providers.common.compat.sdk import redact

from airflow_flux_redux.hooks.flux_redux import FluxReduxAsyncHook, FluxReduxHook


@pytest.fixture
def fal_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A key never seen before in this process, in ``FAL_KEY``, with no connection defined."""
    key = f"fal-only-{uuid.uuid4().hex}"
    monkeypatch.delenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", raising=False)
    monkeypatch.setenv("FAL_KEY", key)
    return key


def test_the_sync_hook_masks_a_fal_key_it_loaded(fal_key: str) -> None:
    line = f"calling fal with {fal_key}"
    assert fal_key in str(redact(line))  # nothing masked it yet: what follows is the hook's doing
    assert FluxReduxHook().settings.api_key == fal_key
    assert fal_key not in str(redact(line))


def test_the_async_hook_masks_a_fal_key_it_loaded(fal_key: str) -> None:
    line = f"calling fal with {fal_key}"
    assert fal_key in str(redact(line))
    assert asyncio.run(FluxReduxAsyncHook().aget_settings()).api_key == fal_key
    assert fal_key not in str(redact(line))
