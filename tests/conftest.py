"""Shared fixtures: one real Mosquitto and one real influxd per test session, on free loopback ports.

They are started by the same code as `energyhub services`, so the tests run the configuration users run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.services import RunningServices, free_port, start_services
from hub.settings import ServiceSettings
from hub.supervisor import Supervisor

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
    from mqtt_helpers import can_log_in

    name = f"gw-{unique_id}"
    services.accounts.add_gateway(name)
    services.accounts.reload_broker()
    await can_log_in(services, name)
    return name
