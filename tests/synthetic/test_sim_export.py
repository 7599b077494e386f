"""The quarter-hour export agrees with the live simulator and with itself."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime

import pytest

from energyhub.domain.community import load_community
from energyhub.simulators.community import CommunitySimulator
from energyhub.synthetic.export import export_quarter_hours
from tests.conftest import EXAMPLES

DAY = datetime(2026, 6, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    community = load_community(EXAMPLES / "de-koumen.yaml")
    out = tmp_path_factory.mktemp("export")
    summary = export_quarter_hours(
        community, start=DAY, end=datetime(2026, 6, 3, tzinfo=UTC), seed=11, out_dir=out
    )
    return community, out, summary


def read_kwh(path) -> list[float]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return [float(r["kwh"]) for r in rows]


def test_files_and_manifest(exported):
    community, out, summary = exported
    connections = [c for _l, _m, c in community.connections()]
    assert summary.isps == 96
    assert len(list(out.glob("*.load.csv"))) == len(connections)
    assert len(list(out.glob("*.pv.csv"))) == 20  # the 20 PV companies
    assert len(list(out.glob("*.ev.csv"))) == 1  # the plaza
    with (out / "c-001.load.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["isp_start", "kwh"]
    assert rows[1][0] == "2026-06-02T00:00:00Z"
    assert rows[-1][0] == "2026-06-02T23:45:00Z"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 11
    assert manifest["totals_kwh"]["pv"] == pytest.approx(summary.pv_kwh)
    assert sum(sum(read_kwh(p)) for p in out.glob("*.pv.csv")) == pytest.approx(summary.pv_kwh, rel=1e-4)
    assert 2_700 * 1.0 < summary.pv_kwh < 2_700 * 7.0  # a June day: 1-7 kWh per kWp
    assert summary.sessions >= 10


def test_export_matches_the_live_simulator(exported):
    community, out, _summary = exported
    sim = CommunitySimulator(community, seed=11, start=DAY, only={"gw-002", "gw-018"})
    for model in sim.models:
        for charger, _k, _v in model.chargers:
            charger.state.modbus_max_current_a = 10_000.0  # nothing limits charging, as in the export
            charger.state.setpoint_valid_for_s = 10**9
    for _ in range(24 * 60):
        sim.step(60.0)
    by_id = {m.connection.id: m for m in sim.models}
    shop, plaza = by_id["c-002"], by_id["c-018"]
    assert shop.load_energy_wh / 1000 == pytest.approx(sum(read_kwh(out / "c-002.load.csv")), rel=0.01)
    pv_wh = sum(i.state.energy_wh for i in shop.inverters)
    assert pv_wh / 1000 == pytest.approx(sum(read_kwh(out / "c-002.pv.csv")), rel=0.02)
    ev_wh = sum(c.state.energy_wh for c, _k, _v in plaza.chargers)
    ev_wh += sum(c.sim.energy_wh(c.connector_id) for c in plaza.ocpp_chargers)  # the plaza speaks OCPP
    assert ev_wh / 1000 == pytest.approx(sum(read_kwh(out / "c-018.ev.csv")), rel=0.02)
    assert plaza.load_energy_wh / 1000 == pytest.approx(sum(read_kwh(out / "c-018.load.csv")), rel=0.01)


def test_export_rejects_misaligned_span(tmp_path):
    community = load_community(EXAMPLES / "de-koumen.yaml")
    with pytest.raises(ValueError, match="quarter hours"):
        export_quarter_hours(
            community,
            start=datetime(2026, 6, 1, 0, 5, tzinfo=UTC),
            end=datetime(2026, 6, 2, tzinfo=UTC),
            seed=1,
            out_dir=tmp_path,
        )
