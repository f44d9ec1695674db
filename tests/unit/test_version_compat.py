"""What this Airflow has, and the one log line per feature it lacks (run on every version in the matrix)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow_flux_redux import version_compat
from airflow_flux_redux.version_compat import (
    AIRFLOW_V_3_3_PLUS,
    HAS_TASK_STATE_STORE,
    TRIGGER_ON_KILL,
    log_degraded_features,
)

if TYPE_CHECKING:
    import pytest

LOG = logging.getLogger("tests.version_compat")


def test_features_follow_the_installed_airflow() -> None:
    from airflow.providers.common.compat.sdk import ResumableJobMixin

    sdk_mixin = ResumableJobMixin.__module__.startswith("airflow.sdk")
    assert HAS_TASK_STATE_STORE is AIRFLOW_V_3_3_PLUS is sdk_mixin
    assert TRIGGER_ON_KILL is AIRFLOW_V_3_3_PLUS


def lines(caplog: pytest.LogCaptureFixture, **kwargs: bool) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOG.name):
        log_degraded_features(LOG, **kwargs)
    return [record.getMessage() for record in caplog.records]


def test_newest_airflow_logs_nothing(caplog, monkeypatch) -> None:
    monkeypatch.setattr(version_compat, "HAS_TASK_STATE_STORE", True)
    monkeypatch.setattr(version_compat, "TRIGGER_ON_KILL", True)
    assert lines(caplog, deferrable=True, cancel_on_kill=True) == []


def test_older_airflow_says_what_it_lacks(caplog, monkeypatch) -> None:
    monkeypatch.setattr(version_compat, "HAS_TASK_STATE_STORE", False)
    monkeypatch.setattr(version_compat, "TRIGGER_ON_KILL", False)
    store, kill = lines(caplog, deferrable=True, cancel_on_kill=True)
    assert "no task_state_store (Airflow 3.3+)" in store and "submits a new fal request" in store
    assert "does not call Trigger.on_kill (Airflow 3.3+)" in kill and "does not cancel" in kill
    # The cancel line only concerns a deferred wait that was asked to cancel on kill.
    assert len(lines(caplog, deferrable=False, cancel_on_kill=True)) == 1
    assert len(lines(caplog, deferrable=True, cancel_on_kill=False)) == 1


def test_connection_form_reaches_this_airflow() -> None:
    """Airflow 2 builds the form from the hook class's own methods; 3.2+ from provider info.

    3.0 and 3.1 build it from the hook too, but only with the FAB provider (wtforms) installed, which the
    matrix does not install: there only the hook itself is checked.
    """
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert manager.hooks["flux_redux"] is not None  # Airflow 2 drops a hook whose form it cannot build
    if not version_compat.AIRFLOW_V_3_0_PLUS:
        assert "extra__flux_redux__auth_scheme" in manager.connection_form_widgets
    if not version_compat.AIRFLOW_V_3_0_PLUS or version_compat.AIRFLOW_VERSION >= (3, 2, 0):
        assert manager.field_behaviours["flux_redux"]["relabeling"]["password"] == "API key"
