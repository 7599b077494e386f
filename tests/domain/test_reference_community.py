"""The reference community De Koumen: the three generated files load, carry the published figures exactly, stay in
step with their generator (examples/generate_de_koumen.py), and have contracts that cover the simulated loads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from energyhub.control.limits import LimitTable
from energyhub.domain.community import load_community, summarize
from energyhub.domain.ean import validate_ean
from energyhub.domain.isp import isps_in_local_day
from energyhub.domain.limits import LimitBook
from energyhub.domain.topology import Community, Connection, DeviceRole
from energyhub.synthetic.loads import load_power_w

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
GENERATOR = EXAMPLES / "generate_de_koumen.py"
TODAY = EXAMPLES / "de-koumen.yaml"
SCENARIO = EXAMPLES / "de-koumen-2026.yaml"
SHARING = EXAMPLES / "de-koumen-2026-sharing.yaml"
FILES = (TODAY.name, SCENARIO.name, SHARING.name)
AMS = ZoneInfo("Europe/Amsterdam")


@pytest.fixture(scope="module")
def today() -> Community:
    return load_community(TODAY)


@pytest.fixture(scope="module")
def scenario() -> Community:
    return load_community(SCENARIO)


@pytest.fixture(scope="module")
def sharing() -> Community:
    return load_community(SHARING)


def connections(community: Community) -> list[Connection]:
    return [c for _loop, _micro, c in community.connections()]


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=60, check=False
    )


def the_one(community: Community, has: str) -> Connection:
    found = [c for c in connections(community) if getattr(c.limits, has)]
    assert len(found) == 1, f"expected one connection with {has}, found {[c.id for c in found]}"
    return found[0]


@pytest.mark.parametrize(
    ("path", "pv_kwp", "pv_companies"),
    [(TODAY, 2700.0, 20), (SCENARIO, 10700.0, 60), (SHARING, 10700.0, 60)],
    ids=FILES,
)
def test_published_figures(path: Path, pv_kwp: float, pv_companies: int) -> None:
    community = load_community(path)
    summary = summarize(community)
    assert summary.pv_kwp == pv_kwp
    assert summary.pv_companies == pv_companies
    assert 95 <= summary.companies <= 110
    assert [loop.id for loop in community.loops] == [f"loop-{i}" for i in range(1, 7)]
    assert community.community.id == "de-koumen"
    assert community.community.timezone == "Europe/Amsterdam"
    assert community.hub.id == "huskensweg"
    assert community.hub.limits.export_kw == 0
    # The offtake limit sits below what the companies have contracted together: the grid is full.
    assert community.hub.limits.import_kw is not None
    assert community.hub.limits.import_kw < summary.contracted_import_kw
    assert 350 <= sum(summary.devices.values()) - summary.devices["gas"] - summary.devices["water"] <= 500
    assert summary.devices["gas"] == summary.devices["water"] == 23  # a quarter of the companies, on M-Bus
    assert any(loop.micro_groups for loop in community.loops)
    for loop in community.loops:
        assert loop.capacity_kva is not None
        assert 6000 <= loop.capacity_kva <= 10000
        assert loop.limits.import_kw is not None
        assert loop.limits.export_kw is not None
        assert loop.limits.export_kw < loop.limits.import_kw


@pytest.mark.parametrize("path", [TODAY, SCENARIO, SHARING], ids=FILES)
def test_every_company_has_a_gateway_and_a_grid_meter(path: Path) -> None:
    community = load_community(path)
    for n, connection in enumerate(connections(community), start=1):
        assert connection.id == f"c-{n:03d}"
        assert [g.id for g in connection.gateways] == [f"gw-{n:03d}"]
        meter = connection.devices[0]
        assert meter.role is DeviceRole.METER
        assert meter.profile == "eastron_sdm630"
        assert (meter.modbus.host, meter.modbus.port, meter.modbus.unit_id) == ("127.0.0.1", 20000 + n, 1)
        on_modbus = [d for d in connection.devices if d.modbus is not None]
        assert [d.modbus.unit_id for d in on_modbus if d.modbus] == list(range(1, len(on_modbus) + 1))
        assert {d.modbus.port for d in on_modbus if d.modbus} == {20000 + n}
        # The rest are the plaza's chargers, which speak OCPP to their gateway, and gas and water meters on M-Bus.
        assert all(d.ocpp or d.mbus for d in connection.devices if d.modbus is None)
        assert connection.limits.import_kw is not None
        assert connection.limits.import_kw <= connection.capacity_kva
        for device in connection.devices:
            if device.role is DeviceRole.PV:
                assert device.profile == "sunspec_inverter"
                assert device.kwp is not None
                assert 40 <= device.kwp <= 150
                assert device.ac_kw is not None
                assert device.ac_kw < device.kwp


@pytest.mark.parametrize("path", [TODAY, SCENARIO, SHARING], ids=FILES)
def test_eans_are_valid_and_unique(path: Path) -> None:
    eans = [c.ean for c in connections(load_community(path))]
    assert all(validate_ean(ean) == ean and ean.startswith("8716") for ean in eans)
    assert len(set(eans)) == len(eans)


def test_scenario_is_today_plus_planned_pv(today: Community, scenario: Community) -> None:
    before = {c.id: c for c in connections(today)}
    after = {c.id: c for c in connections(scenario)}
    assert before.keys() == after.keys()
    grown = []
    for cid, old in before.items():
        new = after[cid]
        assert (new.ean, new.company, new.capacity_kva, new.limits) == (
            old.ean,
            old.company,
            old.capacity_kva,
            old.limits,
        )
        assert new.devices[: len(old.devices)] == old.devices  # existing devices keep their addresses
        added = new.devices[len(old.devices) :]
        assert all(d.role is DeviceRole.PV for d in added)
        if added:
            assert old.pv_kwp == 0, f"{cid} had PV already"
            grown.append(sum(d.kwp or 0 for d in added))
    assert len(grown) == 40
    assert sum(grown) == 8000.0
    assert today.hub == scenario.hub
    assert today.group_agreements == scenario.group_agreements


def test_sharing_is_the_scenario_with_feed_in_inside_the_estate(
    scenario: Community, sharing: Community
) -> None:
    before = {c.id: c for c in connections(scenario)}
    after = {c.id: c for c in connections(sharing)}
    assert before.keys() == after.keys()
    # The substation, the loops and the micro group keep their limits: no feed-in past the substation.
    assert sharing.hub == scenario.hub
    assert sharing.hub.limits.export_kw == 0
    for old_loop, new_loop in zip(scenario.loops, sharing.loops, strict=True):
        assert (new_loop.id, new_loop.capacity_kva, new_loop.limits) == (
            old_loop.id,
            old_loop.capacity_kva,
            old_loop.limits,
        )
        assert [(m.id, m.limits) for m in new_loop.micro_groups] == [
            (m.id, m.limits) for m in old_loop.micro_groups
        ]
    # The neighbours' group agreements stay; the estate's own covers every other connection.
    *kept, estate = sharing.group_agreements
    assert kept == scenario.group_agreements
    grouped = {m for g in kept for m in g.connections}
    assert estate.id == "de-koumen"
    assert set(estate.connections) == before.keys() - grouped
    assert (estate.limits.import_kw, estate.limits.export_kw) == (sharing.hub.limits.import_kw, 0)
    for cid, old in before.items():
        new = after[cid]
        assert (new.ean, new.company, new.devices, new.annual_use_kwh) == (
            old.ean,
            old.company,
            old.devices,
            old.annual_use_kwh,
        )
        # Only the feed-in changes: up to the connection's size for the members of the estate's agreement.
        assert new.limits.model_dump(exclude={"export_kw"}) == old.limits.model_dump(exclude={"export_kw"})
        expected = new.capacity_kva if cid in estate.connections else old.limits.export_kw
        assert new.limits.export_kw == expected, cid


@pytest.fixture(scope="module")
def year_of_load(scenario: Community) -> tuple[list[str], list[datetime], np.ndarray]:
    """Every connection's load alone (before PV, batteries and EVs) per quarter hour of 2026, kW, as the export."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    samples = (
        np.arange(start.timestamp(), datetime(2027, 1, 1, tzinfo=UTC).timestamp(), 60, dtype=np.int64) + 30
    )
    ids, rows = [], []
    for c in connections(scenario):
        power_w = load_power_w(
            samples, profile=c.load_profile, annual_kwh=c.annual_use_kwh or 0.0, seed=0, key=c.id
        )
        ids.append(c.id)
        rows.append(power_w.reshape(-1, 15).mean(axis=1) / 1000.0)
    isps = [start + timedelta(minutes=15 * i) for i in range(len(rows[0]))]
    return ids, isps, np.array(rows)


def test_load_alone_stays_inside_firm_contracts_and_time_blocks(scenario: Community, year_of_load) -> None:
    """A company's own contract covers its normal peak; only the CBC window and an announced day-ahead restriction
    are meant to bind, and they do."""
    ids, isps, load_kw = year_of_load
    limits = LimitTable.build(scenario, ids, isps)
    by_id = {c.id: c for c in connections(scenario)}
    bound: Counter[str] = Counter()
    for n, t in zip(*np.nonzero(load_kw > limits.import_kw + 1e-9), strict=True):
        connection = by_id[ids[n]]
        announced = (
            {p.date for p in connection.limits.day_ahead.profiles} if connection.limits.day_ahead else set()
        )
        if limits.source(n, t, "import").startswith("capacity_limitation"):
            bound["capacity_limitation"] += 1
        elif isps[t].astimezone(AMS).date() in announced:
            bound["day_ahead"] += 1
        else:
            raise AssertionError(
                f"{ids[n]} loads {load_kw[n, t]:.1f} kW over its {limits.import_kw[n, t]:.1f} kW at {isps[t]}"
            )
    assert bound["capacity_limitation"] > 0, "the CBC window binds on purpose"
    assert bound["day_ahead"] > 0, "the announced day-ahead restriction binds on purpose"


def test_group_agreement_caps_neighbours_below_their_contracts(today: Community) -> None:
    assert today.group_agreements
    loop_of = {c.id: loop.id for loop, _micro, c in today.connections()}
    by_id = {c.id: c for c in connections(today)}
    for group in today.group_agreements:
        assert 2 <= len(group.connections) <= 4
        assert len({loop_of[m] for m in group.connections}) == 1, "neighbours share one loop"
        contracted = sum(by_id[m].limits.import_kw or 0 for m in group.connections)
        assert group.limits.import_kw is not None
        assert group.limits.import_kw < contracted


def test_special_contracts(today: Community) -> None:
    blocks = the_one(today, "time_blocks")
    assert blocks.limits.import_kw == 100
    assert all(block.import_kw == 400 for block in blocks.limits.time_blocks)

    nonfirm = the_one(today, "day_ahead")
    day_ahead = nonfirm.limits.day_ahead
    assert day_ahead is not None
    assert day_ahead.unannounced == "full"
    assert day_ahead.import_kw > 0
    lengths = {p.date: len(p.import_kw or []) for p in day_ahead.profiles}
    assert lengths.pop(date(2026, 10, 25)) == 100  # daylight saving ends: 25 hours
    assert list(lengths.values()) == [96]

    cbc = the_one(today, "capacity_limitation")
    assert cbc.limits.capacity_limitation is not None
    (window,) = cbc.limits.capacity_limitation.windows
    assert window.months == [11, 12, 1, 2]
    assert window.import_kw is not None
    assert window.import_kw < (cbc.limits.import_kw or 0)
    limited = [node for node in today.nodes().values() if node.limits.capacity_limitation]
    assert [node.id for node in limited] == [cbc.id]


def test_battery_and_charging_plaza(today: Community) -> None:
    by_company = {c.company: c for c in connections(today)}
    battery = by_company["Energiecoöperatie De Koumen — collectieve batterij"]
    (storage,) = [d for d in battery.devices if d.role is DeviceRole.BATTERY]
    assert storage.profile == "sunspec_battery"
    assert (storage.power_kw, storage.capacity_kwh) == (1000.0, 2000.0)

    plaza = by_company["Laadplein De Koumen"]
    chargers = [d for d in plaza.devices if d.role is DeviceRole.EV]
    # Over OCPP, as a plaza's chargers are: trucks on 2.0.1 stations of their own, cars on 1.6J twin sockets.
    assert all(d.profile == "ocpp" and d.ocpp is not None for d in chargers)
    assert {d.ocpp.version for d in chargers if d.ocpp and d.vehicle == "truck"} == {"2.0.1"}
    assert {d.ocpp.version for d in chargers if d.ocpp and d.vehicle == "car"} == {"1.6"}
    points = Counter(d.ocpp.charge_point_id for d in chargers if d.ocpp)
    assert max(points.values()) == 2
    assert [g.ocpp for g in plaza.gateways if g.ocpp]  # the gateway says where chargers connect
    kinds = Counter((d.vehicle, d.power_kw) for d in chargers)
    assert 4 <= kinds[("truck", 350.0)] <= 6
    assert 10 <= kinds[("car", 22.0)] <= 12
    assert sum(kinds.values()) == len(chargers)
    assert [d.role for d in plaza.devices].count(DeviceRole.METER) == 1


def test_limits_of_the_special_contracts(today: Community) -> None:
    book = LimitBook(today)
    blocks = the_one(today, "time_blocks")
    firm_w = (blocks.limits.import_kw or 0) * 1000
    # Wednesday 2026-03-11 and the weekend that follows.
    assert book.limit_at(blocks.id, datetime(2026, 3, 11, 12, 0, tzinfo=AMS)).import_w == firm_w
    night = book.limit_at(blocks.id, datetime(2026, 3, 11, 23, 0, tzinfo=AMS))
    assert night.import_w == firm_w + 400_000
    assert night.import_source == "firm+time_blocks[0]"
    assert book.limit_at(blocks.id, datetime(2026, 3, 14, 12, 0, tzinfo=AMS)).import_w == firm_w + 400_000
    assert book.limit_at(blocks.id, datetime(2026, 3, 16, 5, 45, tzinfo=AMS)).import_w == firm_w + 400_000
    assert book.limit_at(blocks.id, datetime(2026, 3, 16, 6, 0, tzinfo=AMS)).import_w == firm_w

    nonfirm = the_one(today, "day_ahead")
    assert nonfirm.limits.day_ahead is not None
    firm_w = (nonfirm.limits.import_kw or 0) * 1000
    extra_w = nonfirm.limits.day_ahead.import_kw * 1000
    normal = next(p.date for p in nonfirm.limits.day_ahead.profiles if len(p.import_kw or []) == 96)
    assert isps_in_local_day(normal, AMS) == 96
    evening = datetime(normal.year, normal.month, normal.day, 18, 0, tzinfo=AMS)
    restricted = book.limit_at(nonfirm.id, evening)
    assert restricted.import_w == firm_w < firm_w + extra_w
    noon = book.limit_at(nonfirm.id, evening - timedelta(hours=6))
    assert (noon.import_w, noon.import_source) == (firm_w + extra_w, "firm+day_ahead")
    # The day daylight saving ends: 18:00 local is the 73rd quarter hour (index 72), 4 later than usual.
    assert book.limit_at(nonfirm.id, datetime(2026, 10, 25, 18, 0, tzinfo=AMS)).import_w == firm_w
    # A day without an announcement gives the full non-firm right.
    assert book.limit_at(nonfirm.id, datetime(2026, 2, 3, 18, 0, tzinfo=AMS)).import_w == firm_w + extra_w

    cbc = the_one(today, "capacity_limitation")
    winter = book.limit_at(cbc.id, datetime(2026, 12, 1, 17, 30, tzinfo=AMS))
    assert winter.import_source == "capacity_limitation.windows[0]"
    assert winter.import_w < (cbc.limits.import_kw or 0) * 1000
    summer = book.limit_at(cbc.id, datetime(2026, 7, 7, 17, 30, tzinfo=AMS))
    assert summer.import_w == (cbc.limits.import_kw or 0) * 1000

    assert book.limit_at(today.hub.id, datetime(2026, 6, 1, 13, 0, tzinfo=AMS)).export_w == 0


def test_check_passes_on_the_committed_files() -> None:
    result = generate("--check")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_check_names_a_changed_file(tmp_path: Path) -> None:
    for name in FILES:
        shutil.copy(EXAMPLES / name, tmp_path / name)
    assert generate("--check", "--out-dir", str(tmp_path)).returncode == 0
    changed = tmp_path / SCENARIO.name
    text = changed.read_text(encoding="utf-8")
    edited = text.replace("kwp: 1", "kwp: 2", 1)
    assert edited != text
    changed.write_text(edited, encoding="utf-8")
    result = generate("--check", "--out-dir", str(tmp_path))
    assert result.returncode == 1
    assert SCENARIO.name in result.stderr
    assert f"{TODAY.name}:" not in result.stderr
    (tmp_path / TODAY.name).unlink()
    result = generate("--check", "--out-dir", str(tmp_path))
    assert result.returncode == 1
    assert TODAY.name in result.stderr
    assert "missing" in result.stderr


def test_same_seed_same_bytes_other_seed_other_estate(tmp_path: Path) -> None:
    runs = {}
    for run, seed in (("a", "2026"), ("b", "2026"), ("c", "7")):
        out = tmp_path / run
        result = generate("--seed", seed, "--out-dir", str(out))
        assert result.returncode == 0, result.stderr
        runs[run] = {name: (out / name).read_bytes() for name in FILES}
    assert runs["a"] == runs["b"]
    assert runs["a"] == {name: (EXAMPLES / name).read_bytes() for name in FILES}
    for name in FILES:
        assert runs["c"][name] != runs["a"][name]
    # Another seed draws another estate with the same published figures.
    other = load_community(tmp_path / "c" / SCENARIO.name)
    assert summarize(other).pv_kwp == 10700.0
    assert {c.ean for c in connections(other)}.isdisjoint(
        c.ean for c in connections(load_community(SCENARIO))
    )
