"""Shared fixtures: one real Mosquitto and one real influxd per test session, on free loopback ports.

They are started by the same code as `energyhub services`, so the tests run the configuration users run.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from energyhub.cli.services import RunningServices, free_port, start_services
from energyhub.runtime.settings import ServiceSettings
from energyhub.runtime.supervisor import Supervisor

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServices]:
    state_dir = tmp_path_factory.mktemp("ehub-state")
    settings = ServiceSettings(
        state_dir=state_dir,
        host="127.0.0.1",
        mqtt_port=free_port(),
        mqtt_tls_port=free_port(),
        influx_port=free_port(),
        influx_rpc_port=free_port(),
        influx_db="ehub_test",
        site="test-site",
    )
    with Supervisor() as supervisor:
        yield start_services(supervisor, settings)


@pytest.fixture
def unique_id() -> str:
    """A fresh identifier per test, so tests on one broker and database never see each other's data."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
async def gateway(services: RunningServices, unique_id: str) -> str:
    """A fresh gateway account on the session's broker, usable once this returns."""
    from tests.mqtt_helpers import can_log_in

    name = f"gw-{unique_id}"
    services.accounts.add_gateway(name)
    services.accounts.reload_broker()
    await can_log_in(services, name)
    return name


# -- the estate at real time: one whole quarter hour takes 15 real minutes, so it runs beside the rest ----------
REAL_TIME_ESTATE = pytest.StashKey["object"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "real_time_estate: runs last, on an estate started at real time when collection ends, beside the other tests",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests on the real-time estate go last: its quarter hour passes while the others run.
    items.sort(key=lambda item: item.get_closest_marker("real_time_estate") is not None)


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.get_closest_marker("real_time_estate") for item in session.items):
        from tests.whole.test_estate_live import start_real_time_estate

        folder = Path(tempfile.mkdtemp(prefix="ehub-real-time-estate-"))  # kept: its logs tell what failed
        try:
            session.config.stash[REAL_TIME_ESTATE] = start_real_time_estate(folder)
        except AssertionError as exc:  # it did not come up: its test fails with why, the others run
            session.config.stash[REAL_TIME_ESTATE] = exc


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(REAL_TIME_ESTATE, None)
    if run is not None and not isinstance(run, BaseException):
        run.stop()  # type: ignore[attr-defined]


@pytest.fixture
def real_time_estate(request: pytest.FixtureRequest) -> object:
    run = request.config.stash[REAL_TIME_ESTATE]
    if isinstance(run, BaseException):
        pytest.fail(f"the real-time estate did not start: {run}")
    return run
