"""The gallery plugin as Airflow itself loads it: entry point, tabs, the mounted app, no FastAPI in workers."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from importlib.metadata import entry_points
from importlib.util import find_spec

import pytest

from airflow_flux_redux.gallery import GALLERY_AVAILABLE, RUN_ROUTE, TASK_ROUTE, URL_PREFIX
from airflow_flux_redux.get_provider_info import get_provider_info
from airflow_flux_redux.links import FluxReduxGalleryLink, FluxReduxImageLink, operator_links

needs_gallery = pytest.mark.skipif(not GALLERY_AVAILABLE, reason="UI plugin views arrived in Airflow 3.1")


def test_registered_once_through_the_plugins_entry_point() -> None:
    (entry,) = [e for e in entry_points(group="airflow.plugins") if e.value.startswith("airflow_flux_redux")]
    assert entry.value == "airflow_flux_redux.plugins.flux_redux:FluxReduxPlugin"
    # Not in the provider info as well: with lazy_discover_providers = False Airflow would load it twice and
    # list the second as a plugin import error.
    assert "plugins" not in get_provider_info()


def _load_in_fresh_airflow(code: str) -> dict:
    """Run ``code`` in a new interpreter (Airflow caches its plugins per process); it prints one JSON line.

    Not from the checkout's root: the ``airflow_flux_redux.egg-info`` that ``pip install -e`` leaves there
    would be a second distribution on ``sys.path`` (so a second entry point), which an installed package
    never has.
    """
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=tempfile.gettempdir()
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_gallery
def test_airflow_loads_the_plugin_with_default_settings_and_shows_two_tabs() -> None:
    seen = _load_in_fresh_airflow(
        "import json, sys\n"
        "from airflow import plugins_manager, settings\n"
        "plugins, errors = plugins_manager._get_plugins()\n"
        "views, _ = plugins_manager._get_ui_plugins()\n"
        "apps, _ = plugins_manager.get_fastapi_plugins()\n"
        "print(json.dumps({'lazy': settings.LAZY_LOAD_PROVIDERS, 'names': [p.name for p in plugins],\n"
        "  'errors': errors, 'views': [v for v in views if v['href'].startswith('/flux-redux')],\n"
        "  'apps': [a['url_prefix'] for a in apps]}))\n"
    )
    assert seen["lazy"] is True  # Airflow's default
    assert "flux_redux" in seen["names"] and not seen["errors"]
    assert {(v["destination"], v["url_route"]) for v in seen["views"]} == {
        ("task_instance", TASK_ROUTE),
        ("dag_run", RUN_ROUTE),
    }
    assert URL_PREFIX in seen["apps"]


def test_a_worker_loading_plugins_imports_neither_the_app_nor_pillow() -> None:
    # What a task process does before it runs a task: load the plugins (for their macros). The app module is
    # what imports FastAPI (Airflow 3.0's own plugins manager imports FastAPI anyway, 3.1+'s task SDK does not).
    # (Task SDK's own plugins manager from Airflow 3.1; the core one before.)
    try:
        module = (
            "airflow.sdk.plugins_manager" if find_spec("airflow.sdk.plugins_manager") else "airflow.plugins_manager"
        )
    except ModuleNotFoundError:  # Airflow 2: no airflow.sdk at all
        module = "airflow.plugins_manager"
    seen = _load_in_fresh_airflow(
        "import json, sys\n"
        f"from {module} import integrate_macros_plugins\n"
        "integrate_macros_plugins()\n"
        "assert 'airflow_flux_redux.plugins.flux_redux' in sys.modules\n"
        "print(json.dumps({m: m in sys.modules for m in ('PIL', 'airflow_flux_redux.gallery.app')}))\n"
    )
    assert not any(seen.values()), seen


@needs_gallery
def test_the_gallery_link_opens_the_tab_and_reads_no_xcom() -> None:
    class Key:
        dag_id, run_id, task_id, map_index = "d", "manual__2026-01-01T00:00:00+00:00", "t", 3

    link = FluxReduxGalleryLink().get_link(None, ti_key=Key())  # type: ignore[arg-type]
    assert link.endswith(f"/dags/d/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00/tasks/t/mapped/3/plugin/{TASK_ROUTE}")
    assert [type(link) for link in operator_links()] == [FluxReduxGalleryLink, FluxReduxImageLink]
