"""Airflow finds the provider, its connection type and form fields, through the entry point."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import airflow
import jsonschema

from airflow_flux_redux.get_provider_info import get_provider_info


def test_entry_point_is_registered() -> None:
    (entry,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_flux_redux")]
    assert entry.load()()["package-name"] == "airflow-flux-redux"


def test_provider_info_matches_airflows_schema() -> None:
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_connection_form_has_our_fields() -> None:
    (conn_type,) = get_provider_info()["connection-types"]
    assert conn_type["connection-type"] == "flux_redux"
    assert {"auth_scheme", "endpoint", "timeout", "max_retries", "allowed_hosts", "queue_priority"} <= set(
        conn_type["conn-fields"]
    )
    assert conn_type["ui-field-behaviour"]["relabeling"] == {"host": "Base URL", "password": "API key"}


def test_providers_manager_knows_the_connection_type() -> None:
    from airflow.providers_manager import ProvidersManager

    hooks = ProvidersManager().hooks
    assert hooks["flux_redux"].hook_class_name == "airflow_flux_redux.hooks.flux_redux.FluxReduxHook"


def test_task_flux_redux_is_found_through_airflows_own_task_decorator() -> None:
    """``@task.flux_redux`` after a plain install: ``airflow.sdk.task`` on Airflow 3, ``airflow.decorators`` on 2."""
    from airflow_flux_redux.decorators.flux_redux import flux_redux_task
    from airflow_flux_redux.version_compat import AIRFLOW_V_3_0_PLUS

    if AIRFLOW_V_3_0_PLUS:
        from airflow.sdk import task
    else:
        from airflow.decorators import task  # type: ignore[no-redef]
    assert task.flux_redux is flux_redux_task
    (entry,) = get_provider_info()["task-decorators"]
    assert entry == {"name": "flux_redux", "class-name": "airflow_flux_redux.decorators.flux_redux.flux_redux_task"}
