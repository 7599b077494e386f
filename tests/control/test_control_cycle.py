"""The decide phase without a broker, a database or a clock: a snapshot built by hand in, setpoints that keep the
limits out."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from energyhub.control.cycle import ControlState, Decision, decide
from energyhub.control.quarter_hour import QuarterHourBook
from energyhub.control.registry import make_policy, online_policies
from energyhub.control.simulate import share_key
from energyhub.control.snapshot import LiveState, Snapshot
from energyhub.domain.community import load_community
from energyhub.domain.limits import LimitBook
from energyhub.domain.network import Network
from energyhub.wire.roles import PV_LIMIT_PCT
from tests.communities import ean

NOW = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)  # a quarter hour's start: all of it is left
RATED_KW = {"gw-1": 80.0, "gw-2": 40.0}


def estate(path: Path) -> Path:
    """Two companies with PV behind a substation that takes no feed-in (their own connections may feed 100 kW)."""

    def company(n: int, kwp: float) -> dict:
        modbus = {"host": "127.0.0.1", "port": 20_000 + n}
        return {
            "id": f"c-{n:03d}",
            "ean": ean(700 + n),
            "company": f"Decide {n}",
            "capacity_kva": 173,
            "limits": {"import_kw": 150, "export_kw": 100},
            "annual_use_kwh": 50_000,
            "gateways": [{"id": f"gw-{n}"}],
            "devices": [
                {
                    "id": "meter",
                    "role": "meter",
                    "profile": "eastron_sdm630",
                    "modbus": {**modbus, "unit_id": 1},
                },
                {
                    "id": "pv",
                    "role": "pv",
                    "profile": "sunspec",
                    "kwp": kwp,
                    "modbus": {**modbus, "unit_id": 2},
                },
            ],
        }

    doc = {
        "version": 1,
        "community": {"id": "decide", "name": "Decide by hand", "timezone": "Europe/Amsterdam"},
        "hub": {"id": "hub", "capacity_kva": 1000, "limits": {"import_kw": 500, "export_kw": 0}},
        "loops": [{"id": "loop-1", "connections": [company(1, 80), company(2, 40)]}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def control_state(path: Path, policy: str) -> ControlState:
    community = load_community(path)
    network = Network.from_community(community)
    devices = LiveState(community, network)  # only for the device list: nothing is received
    return ControlState(
        network=network,
        devices=devices.devices,
        battery_index=devices.battery_index,
        charger_index=devices.charger_index,
        policy=make_policy(policy, network),
        keys=share_key(network, "kwp"),
        book=LimitBook(community),
        quarter=QuarterHourBook(network),
        margin=0.02,
        margin_kw=1.0,
    )


def snapshot(load_kw: list[float], pv_kw: list[float]) -> Snapshot:
    load, pv = np.array(load_kw), np.array(pv_kw)
    nothing = np.zeros(0)
    return Snapshot(
        load_kw=load,
        pv_available_kw=pv,
        pv_output_kw=pv,
        battery_kw=nothing,
        charger_kw=nothing,
        charger_connected=np.zeros(0, bool),
        charger_max_kw=nothing,
        battery_soc_kwh=nothing,
        grid_kw=load - pv,
    )


@contextlib.contextmanager
def no_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any read of the clock through ``time`` fails: the decision must take its time from its caller."""

    def read(*_args: object) -> float:
        raise AssertionError("the decide phase read the clock")

    with monkeypatch.context() as patch:
        for name in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns"):
            patch.setattr(time, name, read)
        yield


def pv_allowed_kw(decision: Decision, snap: Snapshot) -> dict[str, float]:
    """Per gateway, the PV its inverter may give under the decided limit (at most what the sun offers)."""
    out = {}
    for sp in decision.setpoints:
        assert (sp.device, sp.name) == ("pv", PV_LIMIT_PCT), sp
        connection = int(sp.gateway.removeprefix("gw-")) - 1
        out[sp.gateway] = min(float(snap.pv_available_kw[connection]), sp.value / 100 * RATED_KW[sp.gateway])
    return out


@pytest.mark.parametrize("policy", online_policies())
def test_the_decided_setpoints_keep_the_substations_zero_feed_in(tmp_path, monkeypatch, policy):
    state = control_state(estate(tmp_path / "estate.yaml"), policy)
    snap = snapshot(load_kw=[10.0, 15.0], pv_kw=[60.0, 30.0])  # 90 kW of sun for 25 kW of load
    with no_clock(monkeypatch):
        decision = decide(state, snap, NOW)
    allowed = pv_allowed_kw(decision, snap)
    assert set(allowed) == {"gw-1", "gw-2"}
    # The hub aims at a small import (its reserve below a zero limit: 1 kW); the inverters' limits, rounded down
    # to their 0.1 % step, keep it there and curtail no more than that needs.
    hub_import_kw = 25.0 - sum(allowed.values())
    assert 1.0 - 1e-6 <= hub_import_kw <= 1.3, (allowed, decision.setpoints)
    # Shared by kWp: both give up the same share of their rating (80 and 40 kWp, each with 75 % on offer).
    pct = {sp.gateway: sp.value for sp in decision.setpoints}
    assert pct["gw-1"] == pytest.approx(pct["gw-2"], abs=0.2), pct


@pytest.mark.parametrize("policy", online_policies())
def test_energy_fed_in_earlier_in_the_quarter_hour_is_made_up_for_in_the_rest_of_it(tmp_path, policy):
    """2 kWh fed in over the first ten minutes: the average stays at zero only if the last five import 24 kW on
    top of the reserve, so the decision lets out that much less PV than the present alone would."""
    state = control_state(estate(tmp_path / "estate.yaml"), policy)
    state.quarter.energy_kwh = state.network.flows(np.array([-1.0, -1.0]))  # each company fed in 1 kWh
    snap = snapshot(load_kw=[20.0, 20.0], pv_kw=[60.0, 30.0])
    decision = decide(state, snap, NOW + timedelta(minutes=10))
    hub = state.network.node_ids.index("hub")
    # The reserve (1 kW) over the quarter hour plus the 2 kWh, in the 5 minutes left: 27 kW on average.
    assert decision.aims.exp_rest[hub] == pytest.approx(-(1.0 * 0.25 + 2.0) * 12)
    assert decision.result.node_kw[hub] >= 27.0 - 1e-6
    assert sum(pv_allowed_kw(decision, snap).values()) <= 40.0 - 27.0 + 1e-6


def test_online_urgency_comes_from_what_the_sessions_say_of_themselves():
    from energyhub.control.cycle import online_urgency

    hour = 3600.0
    snap = snapshot(load_kw=[0.0, 0.0], pv_kw=[0.0, 0.0])
    snap.charger_max_kw = np.array([50.0, 50.0, 50.0, 50.0])
    # A truck that needs two hours at full power and leaves in two; one with hours to spare; one that says
    # nothing; one whose departure is past with energy still wanted.
    snap.charger_wanted_kwh = np.array([100.0, 10.0, np.nan, 5.0])
    now = NOW.timestamp()
    snap.charger_departure_ts = np.array([now + 2 * hour, now + 10 * hour, np.nan, now - hour])
    urgency = online_urgency(snap, np.arange(4), NOW)
    assert urgency[0] == pytest.approx(5.0)  # no slack: the planner's highest
    assert urgency[1] == pytest.approx(1.0 + 4.0 / (1.0 + 9.8))
    assert urgency[2] == 1.0  # nothing known: no hurry assumed, as before
    assert urgency[3] == pytest.approx(5.0)
    # Only the plugged-in ones are asked for, in their order.
    assert online_urgency(snap, np.array([1, 0]), NOW) == pytest.approx([urgency[1], urgency[0]])
    snap.charger_wanted_kwh = None
    assert list(online_urgency(snap, np.arange(4), NOW)) == [1.0] * 4
