"""Shared fixtures: one real Mosquitto and one real influxd per test session, on free loopback ports.

They are started by the same code as `energyhub services`, so the tests run the configuration users run.

Tests that need live services or start their own (Mosquitto, influxd, Modbus or HTTP servers on TCP, processes,
Chromium) are marked ``live`` here at collection: ``make test-fast`` (``-m "not live"``) runs the others, with
neither Mosquitto nor influxd installed. A new test marks itself (``@pytest.mark.live`` or ``pytestmark``); the lists
below mark the tests that were there before the marker.
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
        # The tests' data lies at fixed times (June 2026): raw points must outlive the wall clock's distance to it.
        raw_retention_days=3650,
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


# -- the live marker (declared in pyproject.toml) ---------------------------------------------------------------
TESTS = Path(__file__).resolve().parent

# Fixtures of live services: item.fixturenames is the closure, so a fixture built on one of these counts too.
LIVE_FIXTURES = frozenset({"services", "gateway", "real_time_estate"})

# Folders and modules (under tests/) whose tests start their own services, servers or processes.
LIVE_MODULES = frozenset(
    {
        "whole/",  # the chain end to end: agents, ingest and control as processes, brokers killed
        "api/test_api.py",  # the API in uvicorn, the live page in Chromium, the Compose validator
        "broker/test_broker_live.py",  # a Mosquitto of its own per module
        "cli/test_services.py",  # the services and the supervisor's processes
        "edge/test_edge_agent.py",  # Mosquitto, Modbus servers, the agent as a process
        "edge/test_edge_sunspec.py",  # a Modbus server
        "edge/test_ocpp_server.py",  # the OCPP server on a loopback port, stations as WebSocket clients
        "io/test_mqtt_link.py",  # a Mosquitto of its own (PrivateBroker), a fake server
        "io/test_mqtt_paho.py",  # a Mosquitto of its own (PrivateBroker)
        "runtime/test_ports.py",  # ports held by listeners, Mosquitto and influxd refused, CLI processes
        "simulators/test_sim_control_api.py",  # Modbus and HTTP servers
        "simulators/test_sim_devices.py",  # Modbus servers
    }
)

# Single tests, by function name, in modules whose other tests need nothing.
LIVE_TESTS: dict[str, frozenset[str]] = {
    "runtime/test_passwords.py": frozenset(
        {
            "test_we_verify_what_mosquitto_passwd_writes",
            "test_we_hash_exactly_as_mosquitto_passwd_does",
            "test_legacy_sha512_hashes_verify",
            "test_dynsec_fields_are_the_same_hash_split",
        }
    ),
    "cli/test_cli.py": frozenset({"test_installed_console_script"}),
    "control/test_control.py": frozenset(
        {
            "test_energyhub_simulate_writes_nodes_and_summary",
            "test_a_weather_forecast_steers_the_plans_pv_and_a_bad_one_is_refused_with_its_line",
        }
    ),
    "domain/test_clock.py": frozenset({"test_the_environment_carries_one_clock_to_every_process"}),
    "domain/test_reference_community.py": frozenset(
        {
            "test_check_passes_on_the_committed_files",
            "test_check_names_a_changed_file",
            "test_same_seed_same_bytes_other_seed_other_estate",
        }
    ),
    "edge/test_edge_buffer.py": frozenset({"test_kill_9_loses_nothing_committed"}),
    "edge/test_edge_profiles.py": frozenset({"test_profiles_decode_the_simulated_devices"}),
    "edge/test_roles.py": frozenset(
        {"test_discovery_on_the_simulators_declares_roles_and_skips_an_unsteerable_chain"}
    ),
    "edge/test_word_order.py": frozenset(
        {"test_setpoints_reach_the_device_in_the_profiles_word_order_and_read_back"}
    ),
    "planning/test_plan.py": frozenset(
        {
            "test_energyhub_plan_writes_a_row_per_year_headroom_and_pictures",
            "test_the_sweep_finds_the_smallest_battery_that_meets_the_target",  # `planned` runs `energyhub plan`
            "test_plan_refuses_a_scenario_that_does_not_fit_without_simulating",
        }
    ),
    "planning/test_reports.py": frozenset(
        {
            "test_report_writes_passport_headroom_and_simultaneity",
            "test_settle_balances_to_the_wh_and_writes_statements",
            "test_settle_names_a_file_that_belongs_to_no_connection",
        }
    ),
    "simulators/test_sim_community.py": frozenset(
        {"test_energyhub_sim_command", "test_devices_are_served_and_setpoints_change_the_physics"}
    ),
    "simulators/test_sim_ev_charger.py": frozenset(
        {"test_session_current_limit_and_fallback", "test_only_the_max_current_is_writable"}
    ),
}


def _module(item: pytest.Item) -> str | None:
    """The item's module relative to tests/, e.g. ``planning/test_plan.py``."""
    try:
        return item.path.relative_to(TESTS).as_posix()
    except ValueError:
        return None


def _is_live(item: pytest.Item) -> bool:
    if LIVE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    module = _module(item)
    if module is None:
        return False
    if any(module == entry or (entry.endswith("/") and module.startswith(entry)) for entry in LIVE_MODULES):
        return True
    return getattr(item, "originalname", item.name) in LIVE_TESTS.get(module, ())


def _check_live_lists(items: list[pytest.Item]) -> None:
    """Every entry names a module or folder that exists, and a test its module defines: a renamed or moved test
    would otherwise drop out of the live marker without a word."""
    missing = sorted(entry for entry in LIVE_MODULES | LIVE_TESTS.keys() if not (TESTS / entry).exists())
    seen: dict[str, object] = {}
    for item in items:
        module = _module(item)
        if module in LIVE_TESTS and module not in seen:
            seen[module] = getattr(item, "module", None)
    for module, py in seen.items():
        missing += sorted(f"{module}::{name}" for name in LIVE_TESTS[module] if not hasattr(py, name))
    if missing:
        raise pytest.UsageError(
            f"tests/conftest.py marks as live what does not exist (renamed or moved?): {', '.join(missing)}"
        )


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _check_live_lists(items)
    for item in items:
        if _is_live(item):
            item.add_marker(pytest.mark.live)
    # Tests on the real-time estate go last: its quarter hour passes while the others run.
    items.sort(key=lambda item: item.get_closest_marker("real_time_estate") is not None)


# -- the estate at real time: one whole quarter hour takes 15 real minutes, so it runs beside the rest ----------
REAL_TIME_ESTATE = pytest.StashKey["object"]()


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
