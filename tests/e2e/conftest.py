"""One real Airflow deployment (``airflow standalone`` on PostgreSQL) for every e2e test module.

The distributed test (``test_celery.py``) brings its own deployment: it runs last, after the shared one
has stopped, so this 2-core machine never runs two Airflow deployments at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.conftest import API_KEY, connection_json
from tests.e2e.standalone import Session, session_fixture, stop_shared_session, timed

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(scope="session")
def airflow_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    yield from session_fixture(tmp_path_factory, API_KEY, connection_json)


@pytest.fixture
def e2e(airflow_session: Session, request: pytest.FixtureRequest) -> Iterator[Session]:
    """The shared deployment with a fresh emulator, timing the test."""
    airflow_session.reset_emulator()
    with timed(airflow_session, request.node.name):
        yield airflow_session


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the distributed test after every test that uses the shared deployment."""
    items.sort(key=lambda item: item.path.name == "test_celery.py")  # stable: keeps the order otherwise


@pytest.fixture(scope="module")
def no_shared_deployment() -> None:
    """Stop the shared ``airflow standalone`` (no later test needs it: the distributed test runs last)."""
    stop_shared_session()
