"""Planning scenarios: each year's community, growth, errors, and `energyhub plan` with its battery sweep."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from energyhub.control.inputs import Inputs
from energyhub.control.limits import LimitTable
from energyhub.control.policies import Mpc
from energyhub.control.simulate import simulate
from energyhub.domain.community import parse_community
from energyhub.domain.network import Network
from energyhub.domain.topology import Community, DeviceRole
from energyhub.planning.plan import WARMUP, period, sweep_community
from energyhub.planning.scenario import (
    ScenarioError,
    community_for_year,
    dump_community,
    growth_factors,
    parse_scenario,
)
from energyhub.synthetic.export import export_quarter_hours
from tests.communities import base, dump

REPO = Path(__file__).resolve().parents[2]


def estate() -> dict[str, Any]:
    """The small test estate with some use at every connection and no group agreement (which would keep c-001
    and c-002's surplus to themselves)."""
    doc = base()
    for loop in doc["loops"]:
        members = loop.get("connections", []) + [
            c for m in loop.get("micro_groups", []) for c in m["connections"]
        ]
        for connection in members:
            connection["annual_use_kwh"] = 250_000
    doc["group_agreements"] = []
    return doc


SCENARIO = """\
name: small estate
years: [2026, 2027, 2028]
seed: 3
start: "06-20"
days: 2
changes:
  2026:
    growth: {"*": 0.10}
    contracts:
      - {node: "*", export_kw: capacity}
  2027:
    pv:
      - {connection: c-005, kwp: 100}
    batteries:
      - {id: store-1, at: loop-1, power_kw: 50, capacity_kwh: 100}
      - {id: store-2, at: hub, power_kw: 20, capacity_kwh: 40}
      - {id: home, at: c-002, power_kw: 10, capacity_kwh: 20}
    plaza:
      - {connection: c-004, trucks: 1, cars: 2}
  2028:
    remove_pv: [c-003]
    remove_batteries: [store-1, c-002/home]
    growth: {c-001: -0.5}
"""


def _connection(community: Community, cid: str) -> Any:
    return next(c for _l, _m, c in community.connections() if c.id == cid)


def test_a_years_community_has_every_change_up_to_that_year() -> None:
    community = parse_community(dump(estate()))
    scenario, _lines = parse_scenario(SCENARIO)
    first, _ = community_for_year(community, scenario, 2026)
    assert _connection(first, "c-001").limits.export_kw == 173  # "capacity"
    assert sum(c.pv_kwp for _l, _m, c in first.connections()) == 200

    second, doc = community_for_year(community, scenario, 2027)
    c5 = _connection(second, "c-005")
    assert c5.pv_kwp == 100
    assert [d.role for d in c5.devices] == [DeviceRole.METER, DeviceRole.PV]
    assert c5.devices[1].ac_kw == pytest.approx(100 / 1.15, abs=0.1)
    loop1 = next(loop for loop in second.loops if loop.id == "loop-1")
    store = next(c for c in loop1.connections if c.id == "store-1")
    assert [(d.role, d.power_kw, d.capacity_kwh) for d in store.devices][1] == (DeviceRole.BATTERY, 50, 100)
    assert store.limits.import_kw == store.limits.export_kw == 50
    busbar = next(loop for loop in second.loops if loop.id == "store-2-busbar")
    assert [c.id for c in busbar.connections] == ["store-2"]
    vehicles = sorted(
        d.vehicle or "" for d in _connection(second, "c-004").devices if d.role is DeviceRole.EV
    )
    assert vehicles == ["car", "car", "truck"]
    assert any(d.id == "home" for d in _connection(second, "c-002").devices)
    # The year's document is a community file a person could write: unique addresses, one meter each.
    reparsed = parse_community(dump_community(doc))
    assert reparsed == second

    third, _ = community_for_year(community, scenario, 2028)
    assert _connection(third, "c-003").pv_kwp == 0
    assert not any(c.id == "store-1" for _l, _m, c in third.connections())
    assert not any(d.id == "home" for d in _connection(third, "c-002").devices)
    assert any(c.id == "store-2" for _l, _m, c in third.connections())


def test_growth_compounds_from_the_year_after_it_is_set() -> None:
    scenario, _ = parse_scenario(SCENARIO)
    ids = ["c-001", "c-002"]
    assert growth_factors(scenario, ids, 2026) == {"c-001": 1.0, "c-002": 1.0}
    assert growth_factors(scenario, ids, 2027) == pytest.approx({"c-001": 1.1, "c-002": 1.1})
    assert growth_factors(scenario, ids, 2028) == pytest.approx({"c-001": 0.55, "c-002": 1.21})
    community = parse_community(dump(estate()))
    third, _ = community_for_year(community, scenario, 2028)
    assert _connection(third, "c-001").annual_use_kwh == pytest.approx(250_000 * 0.55)
    assert _connection(third, "c-004").annual_use_kwh == pytest.approx(250_000 * 1.21)


@pytest.mark.parametrize(
    ("change", "where", "problem"),
    [
        ("pv: [{connection: c-999, kwp: 10}]", "changes.2027.pv[0].connection", "unknown connection 'c-999'"),
        (
            "batteries: [{id: b, at: nowhere, power_kw: 1, capacity_kwh: 2}]",
            "changes.2027.batteries[0].at",
            "unknown place",
        ),
        (
            "batteries: [{id: loop-1, at: hub, power_kw: 1, capacity_kwh: 2}]",
            "changes.2027.batteries[0].id",
            "already a node id",
        ),
        ("remove_batteries: [c-001/none]", "changes.2027.remove_batteries[0]", "no battery 'c-001/none'"),
        (
            "contracts: [{node: loop-1, export_kw: capacity}]",
            "changes.2027.contracts[0].export_kw",
            "for connections",
        ),
        ("growth: {c-404: 0.1}", "changes.2027.growth.c-404", "unknown connection 'c-404'"),
    ],
)
def test_a_change_that_does_not_fit_the_community_names_file_line_and_change(
    change: str, where: str, problem: str
) -> None:
    text = f"name: x\nyears: [2026, 2027]\nchanges:\n  2027:\n    {change}\n"
    scenario, lines = parse_scenario(text, file="plan.yaml")
    community = parse_community(dump(estate()))
    with pytest.raises(ScenarioError) as caught:
        community_for_year(community, scenario, 2027, file="plan.yaml", lines=lines)
    message = str(caught.value)
    assert f"plan.yaml:5: {where}: " in message, message
    assert problem in message, message


def test_priority_weights_must_name_connections() -> None:
    text = "name: x\nyears: [2026]\nkey: priority\npriority:\n  c-001: 2\n  c-404: 3\n"
    scenario, lines = parse_scenario(text, file="plan.yaml")
    with pytest.raises(ScenarioError, match=r"plan.yaml:6: priority.c-404: unknown connection 'c-404'"):
        community_for_year(parse_community(dump(estate())), scenario, 2026, file="plan.yaml", lines=lines)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nyears: [2027, 2026]\n", "years must be increasing"),
        ("name: x\nyears: [2026]\nchanges:\n  2030: {}\n", "come after the last year"),
        ("name: x\nyears: [2026]\npolicy: clever\n", "policy"),
        ("name: x\nyears: [2026]\npolicy: oracle\n", "give days of at most 31"),
        ('name: x\nyears: [2026]\nstart: "02-29"\n', "not a month-day that every year has"),
        ("name: x\nyears: [2026]\nchanges:\n  2026:\n    growth: {'*': -1.5}\n", "not a yearly fraction"),
        (
            "name: x\nyears: [2026]\nchanges:\n  2026:\n    pv: [{connection: c-001, kwp: -3}]\n",
            "plan.yaml:5: changes.2026.pv[0].kwp: must be more than 0, got -3",
        ),
        (
            "name: x\nyears: [2026]\nsweep: {at: hub, sizes: [10], target_curtailed_pct: 5, year: 2031}\n",
            "sweep.year 2031",
        ),
        ("name: x\nyears: [2026]\nname: y\n", "duplicate key"),
        ("name: x\nyears: [2026\n", "not valid YAML"),
    ],
)
def test_a_bad_scenario_file_gets_an_error_naming_what(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, file="plan.yaml")
    assert "plan.yaml" in str(caught.value)
    assert expected in str(caught.value), str(caught.value)


SWEEP = """\
name: sweep test
years: [2026, 2027]
seed: 3
start: "06-20"
days: 2
changes:
  2026:
    contracts:
      - {node: "*", export_kw: capacity}
  2027:
    plaza:
      - {connection: c-004, cars: 2}
sweep:
  at: hub
  year: 2026
  sizes: [0, 50, 100, 200, 400, 800]
  target_curtailed_pct: 5
"""


def _plan(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`energyhub plan` on ``folder``'s community.yaml and scenario.yaml, into ``folder/out``."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "energyhub.cli.main",
            "plan",
            "--community",
            str(folder / "community.yaml"),
            "--scenario",
            str(folder / "scenario.yaml"),
            "--out",
            str(folder / "out"),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plan")
    (folder / "community.yaml").write_text(dump(estate()))
    (folder / "scenario.yaml").write_text(SWEEP)
    run = _plan(folder, "--workers", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "smallest battery at hub keeping curtailment at or under 5 %" in run.stdout, run.stdout
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_energyhub_plan_writes_a_row_per_year_headroom_and_pictures(planned: Path) -> None:
    out = planned / "out"
    years = _rows(out / "years.csv")
    assert [r["year"] for r in years] == ["2026", "2027"]
    assert [r["chargers"] for r in years] == ["0", "2"]
    assert float(years[1]["plaza_requested_kwh"]) == 0  # c-004 is not the plaza (load profile ev_plaza)
    assert float(years[1]["ev_requested_kwh"]) > 0
    assert float(years[1]["ev_served_kwh"]) > 0
    for row in years:
        assert float(row["pv_offered_kwh"]) > 0
        used = float(row["pv_offered_kwh"]) - float(row["curtailed_kwh"])
        assert 0 <= used <= float(row["pv_offered_kwh"])
    headroom = _rows(out / "headroom.csv")
    assert {(r["year"], r["level"]) for r in headroom} >= {
        ("2026", "hub"),
        ("2026", "loop"),
        ("2027", "connection"),
    }
    hub = next(r for r in headroom if r["year"] == "2026" and r["level"] == "hub")
    assert float(hub["utilisation_import"]) == pytest.approx(float(hub["peak_import_kw"]) / 5000, rel=1e-4)
    months = _rows(out / "curtailment_by_month.csv")
    assert {r["month"] for r in months} == {"2026-06", "2027-06"}
    for name in ("years.png", "curtailment_by_month.png", "headroom.png", "sweep.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 20_000, name
    for year in (2026, 2027):
        parse_community((out / str(year) / "community.yaml").read_text())


def exported_with_history(
    community: Community, network: Network, start: datetime, end: datetime, folder: Path
) -> tuple[Inputs, Inputs]:
    """The period's inputs through the simulators' CSV export, and the week before it as the planner gives mpc's
    forecasts (``energyhub.planning.plan.WARMUP``)."""
    export_quarter_hours(community, start=start - WARMUP, end=end, seed=3, out_dir=folder)
    everything = Inputs.from_folder(folder, network, start - WARMUP, end)
    k = int(WARMUP / timedelta(minutes=15))
    return everything.window(k, everything.isps), everything.window(0, k)


def test_the_sweep_finds_the_smallest_battery_that_meets_the_target(planned: Path) -> None:
    out = planned / "out"
    plan = json.loads((out / "plan.json").read_text())["sweep"]
    sweep = {float(r["size"]): float(r["curtailed_pct"]) for r in _rows(out / "sweep.csv")}
    chosen = plan["answer"]
    assert sweep[0.0] > 5, (
        "without a battery the estate must curtail more than the target, or this tests nothing"
    )
    assert chosen is not None
    assert sweep[chosen] <= 5
    assert all(pct > 5 for size, pct in sweep.items() if size < chosen)
    assert plan["power_kw"] == chosen * 0.5

    # The answer is what the simulation gives: the chosen size run again through the simulators' CSV export
    # and `Inputs.from_folder`, not the planner's in-memory path.
    scenario, _ = parse_scenario(SWEEP)
    base_2026 = parse_community((out / "2026" / "community.yaml").read_text())
    doc = base_2026.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    community = sweep_community(doc, scenario, chosen, "Europe/Amsterdam")
    start, end = period(scenario, 2026, "Europe/Amsterdam")
    network = Network.from_community(community)
    inputs, history = exported_with_history(community, network, start, end, planned / "inputs")
    limits = LimitTable.build(community, network.node_ids, inputs.isp_starts)
    result = simulate(network, inputs, limits, Mpc(network), margin=scenario.margin, history=history)
    assert 100 * result.curtailed_kwh / result.pv_available_kwh == pytest.approx(sweep[chosen], abs=0.01)
    assert result.violations == 0
    assert start == datetime(2026, 6, 19, 22, tzinfo=UTC)
    assert np.isclose(inputs.pv_kw.sum() * 0.25, result.pv_available_kwh)


def test_plan_refuses_a_scenario_that_does_not_fit_without_simulating(tmp_path: Path) -> None:
    (tmp_path / "community.yaml").write_text(dump(estate()))
    (tmp_path / "scenario.yaml").write_text(
        "name: x\nyears: [2026]\nchanges:\n  2026:\n    pv:\n      - {connection: c-404, kwp: 5}\n"
    )
    run = _plan(tmp_path)
    assert run.returncode == 1
    assert (
        f"{tmp_path / 'scenario.yaml'}:6: changes.2026.pv[0].connection: unknown connection 'c-404'"
        in run.stderr
    )
    assert not (tmp_path / "out").exists()


def test_the_period_of_a_year_is_local_calendar_time() -> None:
    scenario, _ = parse_scenario("name: x\nyears: [2026]\n")
    start, end = period(scenario, 2026, "Europe/Amsterdam")
    assert (start, end) == (datetime(2025, 12, 31, 23, tzinfo=UTC), datetime(2026, 12, 31, 23, tzinfo=UTC))


def test_the_example_scenario_fits_the_reference_community() -> None:
    from energyhub.domain.community import load_community
    from energyhub.planning.scenario import load_scenario

    base_2026 = load_community(REPO / "examples" / "de-koumen-2026.yaml")
    scenario, lines = load_scenario(REPO / "examples" / "plan-de-koumen.yaml")
    built = {y: community_for_year(base_2026, scenario, y, lines=lines)[0] for y in scenario.years}
    connections = {y: {c.id: c for _l, _m, c in community.connections()} for y, community in built.items()}
    assert connections[2026]["c-001"].limits.export_kw == 0
    assert connections[2027]["c-001"].limits.export_kw == connections[2027]["c-001"].capacity_kva
    assert len([d for d in connections[2028]["c-018"].devices if d.role is DeviceRole.EV]) == 18 + 10
    assert not any(d.role is DeviceRole.BATTERY for d in connections[2029]["c-049"].devices)
    assert "hub-battery" in connections[2029]


def test_the_oracle_plans_a_short_period_and_curtails_no_more_than_mpc() -> None:
    from energyhub.planning.plan import run_plan

    community = parse_community(dump(estate()))
    text = SWEEP.split("sweep:")[0]
    results = {}
    for policy in ("mpc", "oracle"):
        scenario, _ = parse_scenario(text.replace("seed: 3", f"seed: 3\npolicy: {policy}"))
        done: Counter[str] = Counter()
        plan = run_plan(community, scenario, progress=lambda kind, n, c=done: c.update({kind: n}))
        results[policy] = plan.years[0].figures
        assert done["quarter hours"] == 2 * 2 * 96  # two years of two days, all reported
    assert results["oracle"]["pv_offered_kwh"] == results["mpc"]["pv_offered_kwh"]
    assert results["oracle"]["curtailed_kwh"] <= results["mpc"]["curtailed_kwh"] + 1e-3
    assert results["oracle"]["violations"] == results["mpc"]["violations"] == 0


def test_a_pv_sweep_finds_the_most_pv_a_connection_can_take(tmp_path: Path) -> None:
    """How much PV fits on c-005 (no roofs yet, no gateway) before curtailment passes 3 %: the answer is the
    largest size meeting it, and its figure is what a full simulation of that community gives, so the roof's
    inputs (one kWp's output times the size) are what the simulators would make."""
    from energyhub.planning.plan import run_plan

    community = parse_community(dump(estate()))
    text = (
        'name: pv sweep\nyears: [2026]\nseed: 3\nstart: "06-20"\ndays: 2\nchanges:\n  2026:\n'
        '    contracts:\n      - {node: "*", export_kw: capacity}\n'
        "    batteries:\n      - {id: store, at: hub, power_kw: 200, capacity_kwh: 400}\n"
        "sweep:\n  kind: pv\n  at: c-005\n  sizes: [0, 25, 50, 100, 200, 400, 800]\n  target_curtailed_pct: 3\n"
    )
    scenario, _ = parse_scenario(text)
    plan = run_plan(community, scenario, sweep_only=True)
    curtailed = {o.figures["size"]: o.figures["curtailed_pct"] for o in plan.sweep}
    assert all(o.figures["unit"] == "kWp" for o in plan.sweep)
    assert plan.chosen is not None
    assert curtailed[plan.chosen] <= 3
    assert all(pct > 3 for size, pct in curtailed.items() if size > plan.chosen)
    assert curtailed[800] > 3, "the largest size must not fit, or this tests nothing"
    assert plan.chosen > 0

    doc = community_for_year(community, scenario, 2026)[1]
    chosen = sweep_community(doc, scenario, plan.chosen, "Europe/Amsterdam")
    c5 = next(c for _l, _m, c in chosen.connections() if c.id == "c-005")
    assert c5.pv_kwp == plan.chosen
    start, end = period(scenario, 2026, "Europe/Amsterdam")
    network = Network.from_community(chosen)
    inputs, history = exported_with_history(chosen, network, start, end, tmp_path / "inputs")
    limits = LimitTable.build(chosen, network.node_ids, inputs.isp_starts)
    result = simulate(network, inputs, limits, Mpc(network), margin=scenario.margin, history=history)
    assert 100 * result.curtailed_kwh / result.pv_available_kwh == pytest.approx(
        curtailed[plan.chosen], abs=0.01
    )


def test_a_pv_sweep_needs_a_connection() -> None:
    from energyhub.planning.plan import run_plan

    text = "name: x\nyears: [2026]\ndays: 1\nsweep:\n  kind: pv\n  at: loop-1\n  sizes: [10]\n  target_curtailed_pct: 3\n"
    scenario, lines = parse_scenario(text, file="plan.yaml")
    with pytest.raises(ScenarioError, match=r"plan.yaml:6: sweep.at: 'loop-1' is not a connection"):
        run_plan(parse_community(dump(estate())), scenario, file="plan.yaml", lines=lines)
