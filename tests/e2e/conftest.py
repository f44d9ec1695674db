"""One real Airflow deployment (``airflow standalone`` on PostgreSQL) for every e2e test module."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.conftest import API_KEY, connection_json
from tests.e2e.standalone import Session, session_fixture, timed

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
