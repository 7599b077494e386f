"""Gas and water over M-Bus, end to end: a simulated TCP M-Bus gateway with a gas and a water meter, the edge
agent, the broker, the ingest with the community file, influxd, and ``energyhub report``'s passport.

Checked from outside: what influxd holds equals the simulated meters' own counters at the stored timestamps, and
the passport's use equals the counters' increase over the period read straight from influxd."""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from energyhub.domain.clock import Clock
from energyhub.edge.agent import Agent
from energyhub.edge.config import load_agent_config
from energyhub.io.influx import InfluxClient
from energyhub.simulators.mbus_meter import MbusMeterSim, serve_mbus
from tests.communities import ean
from tests.ingest.test_ingest import ingest_settings, running

REPO = Path(__file__).resolve().parents[2]
DAYS = 6
SPEED = DAYS * 86_400 / 12.0  # six days in twelve seconds


def community(site: str, gateway: str, port: int) -> dict:
    def meter(device: str, role: str, profile: str, address: int) -> dict:
        return {
            "id": device,
            "role": role,
            "profile": profile,
            "mbus": {"host": "127.0.0.1", "port": port, "address": address},
        }

    return {
        "version": 1,
        "community": {"id": site, "name": "M-Bus chain", "timezone": "Europe/Amsterdam"},
        "hub": {"id": "hub", "capacity_kva": 1000, "limits": {"import_kw": 500, "export_kw": 0}},
        "loops": [
            {
                "id": "loop-1",
                "connections": [
                    {
                        "id": "c-001",
                        "ean": ean(801),
                        "company": "Bakery",
                        "capacity_kva": 173,
                        "limits": {"import_kw": 150, "export_kw": 0},
                        "annual_use_kwh": 100_000,
                        "gateways": [{"id": gateway}],
                        "devices": [
                            # Its electricity meter (not run here: this test is about the other two).
                            {
                                "id": "meter",
                                "role": "meter",
                                "profile": "eastron_sdm630",
                                "modbus": {"host": "127.0.0.1", "port": 1502, "unit_id": 1},
                            },
                            meter("gas-1", "gas", "elster_bk_g4_mbus", 5),
                            meter("water-1", "water", "kamstrup_flowiq_2101", 6),
                        ],
                    }
                ],
            }
        ],
    }


@pytest.mark.timeout(180)
async def test_gas_and_water_over_mbus_reach_influxdb_and_the_passport(
    services, unique_id, gateway, tmp_path
):
    s = services.settings
    # The data clock runs days in seconds, ending before now: inside the raw retention, as a real week would be.
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=DAYS + 2)
    clock = Clock.simulated(start, SPEED)
    gas = MbusMeterSim.gas(5, clock=clock.timestamp)
    water = MbusMeterSim.water(6, clock=clock.timestamp)
    server = await serve_mbus("127.0.0.1", 0, [gas, water])
    doc = community(s.site, gateway, server.port)
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    check = subprocess.run(
        [sys.executable, "-m", "energyhub", "community", "check", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    config = {
        "gateway": gateway,
        "site": s.site,
        "mqtt": {"port": s.mqtt_port, "credentials_file": str(services.accounts.credentials_path(gateway))},
        "buffer_path": str(tmp_path / "buffer.db"),
        "devices": [
            {"id": d["id"], "profile": d["profile"], "mbus": d["mbus"], "interval_s": 0.1}
            for d in doc["loops"][0]["connections"][0]["devices"]
            if "mbus" in d
        ],
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    agent = Agent(load_agent_config(tmp_path / "gateway.yaml"), clock=clock)
    stop = asyncio.Event()
    influx = InfluxClient(url=s.influx_url, database=s.influx_db)
    where = f"\"site\" = '{s.site}' AND \"gateway\" = '{gateway}'"
    try:
        async with running(ingest_settings(services, unique_id, community=path)):
            task = asyncio.create_task(agent.run(stop))
            end = start + timedelta(days=DAYS)
            while clock.now() < end + timedelta(hours=2):
                await asyncio.sleep(0.2)  # the data clock's run, not a synchronisation
            # Nothing lost: every sequence number the agent gave so far is in influxd (counted there).
            polled = agent.seq
            session = agent.session
            count_q = f'SELECT count("seq") FROM "device" WHERE {where} AND "session" = {session} AND "seq" < {polled}'
            stored = 0
            for _ in range(100):
                found = await influx.query(count_q)
                stored = found[0].values[0][1] if found else 0
                if stored >= polled:
                    break
                await asyncio.sleep(0.1)
            assert stored == polled
            stop.set()
            await task
        series = await influx.query(
            f'SELECT "volume_m3" FROM "device" WHERE {where} GROUP BY "device", "role", "connection"',
            epoch="ms",
        )
    finally:
        await server.stop()
    points = sorted(
        (
            {**serie.tags, "ts": row[0] / 1000, "volume_m3": row[1]}
            for serie in series
            for row in serie.values
            if row[1] is not None
        ),
        key=lambda p: p["ts"],
    )
    assert {p["device"] for p in points} == {"gas-1", "water-1"}
    for p in points:
        assert p["role"] == ("gas" if p["device"] == "gas-1" else "water")
        assert p["connection"] == "c-001"
        meter = gas if p["device"] == "gas-1" else water
        # The counter the meter held when it was read: at most one poll (0.1 s, here two data hours) apart.
        before, after = meter.volume_m3(p["ts"] - 0.15 * SPEED), meter.volume_m3(p["ts"] + 0.15 * SPEED)
        assert before - 1e-9 <= p["volume_m3"] <= after + 1e-9, p
    gas_points = [p for p in points if p["device"] == "gas-1"]
    assert len(gas_points) > DAYS * 4  # readings all through the period

    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "energyhub",
            "report",
            "--community",
            str(path),
            "--influx-url",
            s.influx_url,
            "--database",
            s.influx_db,
            "--from",
            start.isoformat(),
            "--to",
            end.isoformat(),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    with (out / "passport.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if r["connection"] == "c-001")
    for device, column in (("gas-1", "gas_m3"), ("water-1", "water_m3")):
        inside = [
            p for p in points if p["device"] == device and start.timestamp() <= p["ts"] < end.timestamp()
        ]
        # The counters' increase from the first to the last reading of the period, as influxd holds them (the
        # passport takes each hour's last reading: the first hour's last one is where it starts).
        first_hour = [p for p in inside if p["ts"] < inside[0]["ts"] - inside[0]["ts"] % 3600 + 3600]
        expected = inside[-1]["volume_m3"] - first_hour[-1]["volume_m3"]
        assert expected > 0
        assert float(row[column]) == pytest.approx(expected, abs=0.051), (device, row)
    assert float(row["gas_m3"]) > 100  # 40 m³ a day for six days, less the first hour
