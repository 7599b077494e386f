"""Closed loop: simulated devices, real edge agents, the real broker, and `control` keeping the hub at zero feed-in."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest
import yaml
from chain import Estate
from communities import ean

from control.online import ControlSettings, OnlineController
from hub.community import load_community
from hub.influx import InfluxClient
from hub.messages import Measurement, decode
from hub.services import free_port
from hub.topics import Topics

REPO = Path(__file__).resolve().parent.parent


def community_doc(site: str, ports: list[int], gateway_prefix: str = "gw-loop") -> dict:
    def device(i: int, role: str, unit: int, port: int, **extra) -> dict:
        profile = {"meter": "eastron_sdm630", "pv": "sunspec"}[role]
        return {
            "id": f"{role}{i}",
            "role": role,
            "profile": profile,
            "modbus": {"host": "127.0.0.1", "port": port, "unit_id": unit},
            **extra,
        }

    def connection(n: int, devices: list[dict], use_kwh: float) -> dict:
        return {
            "id": f"c-{n:03d}",
            "ean": ean(900 + n),
            "company": f"Loop test {n}",
            "capacity_kva": 173,
            # An old feed-in right at the connection: the hub's zero is what binds.
            "limits": {"import_kw": 150, "export_kw": 100},
            "annual_use_kwh": use_kwh,
            "gateways": [{"id": f"{gateway_prefix}-{n}"}],
            "devices": devices,
        }

    return {
        "version": 1,
        "community": {"id": site, "name": "Closed-loop test estate", "timezone": "Europe/Amsterdam"},
        "hub": {"id": "hub", "capacity_kva": 1000, "limits": {"import_kw": 500, "export_kw": 0}},
        "loops": [
            {
                "id": "loop-1",
                "limits": {"import_kw": 400, "export_kw": 200},
                "connections": [
                    connection(
                        1, [device(1, "meter", 1, ports[0]), device(1, "pv", 2, ports[0], kwp=80)], 20_000
                    ),
                    connection(2, [device(2, "meter", 1, ports[1])], 40_000),
                ],
            }
        ],
    }


class Watch:
    """Latest meter and inverter readings, as the ingest account sees them on the broker."""

    def __init__(self) -> None:
        self.meters: dict[str, float] = {}
        self.pv_limit_pct: float | None = None
        self.pv_power_w: float | None = None
        self.hub_samples: list[float] = []

    async def run(self, port: int, creds, topics: Topics) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", port, username=creds.username, password=creds.password, identifier="loop-watch"
        ) as client:
            await client.subscribe(topics.all_measurements(), qos=0)
            async for message in client.messages:
                info = topics.parse(str(message.topic))
                m = decode(Measurement, bytes(message.payload))
                if info.device and info.device.startswith("meter") and m.values.get("power_w") is not None:
                    self.meters[info.gateway] = m.values["power_w"]
                    if len(self.meters) == 2:
                        self.hub_samples.append(sum(self.meters.values()))
                if info.device and info.device.startswith("pv"):
                    enabled = m.values.get("power_limit_enabled")
                    self.pv_limit_pct = m.values.get("power_limit_pct") if enabled else 100.0
                    self.pv_power_w = m.values.get("power_w")


async def until(condition, timeout_s: float, what: str, explain=lambda: "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{explain()}")
        await asyncio.sleep(0.1)  # poll interval of a condition wait


def community_keys(community) -> list[tuple[str, str, str]]:
    return [
        (community.gateway_of(c, d), d.id, "active_power_limit_pct")
        for c, d in community.devices()
        if d.role == "pv"
    ]


def diagnose(watch: Watch, control: OnlineController, tmp_path: Path) -> str:
    last = control.last
    snap = control.last_snapshot
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(tmp_path.glob("*.log"))
    )  # as Estate.logs
    return (
        f"meters {watch.meters}, pv limit {watch.pv_limit_pct}, pv power {watch.pv_power_w}\n"
        f"cycles {control.cycles}; binding {last.binding if last else None}; "
        f"pv used {last.pv_used_kw if last else None}; node {last.node_kw if last else None}\n"
        f"snapshot load {snap.load_kw if snap else None} pv {snap.pv_available_kw if snap else None} "
        f"stale {snap.stale if snap else None}\nsent {control._sent}\n{logs}"
    )


@pytest.mark.timeout(180)
async def test_control_keeps_the_hub_at_zero_feed_in_and_setpoints_expire_into_failsafe(services, tmp_path):
    settings = services.settings
    site = settings.site
    ports = [free_port(), free_port()]
    doc = community_doc(site, ports)
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    community = load_community(path)
    topics = Topics(site=site)
    estate = Estate(services, community, path, tmp_path)
    try:
        estate.start(
            speed=1,
            start="2026-06-15T10:30:00Z",
            seed=3,
            interval_s=0.5,
            timeout_s=0.2,
            heartbeat_timeout_s=3.0,
        )
        watch = Watch()
        watcher = asyncio.create_task(
            watch.run(settings.mqtt_port, services.accounts.credentials("ehub-ingest"), topics)
        )
        try:
            # Without control the estate feeds in: PV above load at midday (the agents hold PV at their safe 30 %
            # once they have waited for a heartbeat that never came, which may or may not be enough).
            await until(
                lambda: watch.pv_power_w is not None and len(watch.meters) == 2, 60, "readings of both"
            )
            control = OnlineController(
                ControlSettings(
                    community=path,
                    site=site,
                    cycle_s=0.5,
                    setpoint_ttl_s=5.0,
                    margin=0.02,
                    mqtt_port=settings.mqtt_port,
                    mqtt_credentials_file=services.accounts.credentials_path("ehub-control"),
                    influx_url=settings.influx_url,
                    influx_db=settings.influx_db,
                )
            )
            stop = asyncio.Event()
            running = asyncio.create_task(control.run(stop))
            # Control takes over: it limits the inverter itself (its own figure, not the safe 30 %).
            pv_key = next(k for k in community_keys(community) if k[2] == "active_power_limit_pct")

            def controlled() -> bool:
                sent = control._sent.get(pv_key)
                return (
                    sent is not None
                    and watch.pv_limit_pct is not None
                    and abs(watch.pv_limit_pct - 30.0) > 0.5
                    and watch.pv_limit_pct < 99.5
                )

            await until(
                controlled,
                40,
                "a control setpoint on the inverter",
                lambda: diagnose(watch, control, tmp_path),
            )
            # The hub's zero feed-in is what binds (cycle by cycle it may let go for a moment, after an overshoot).
            await until(
                lambda: (
                    control.last is not None
                    and any(
                        control.network.node_ids[n] == "hub" and d == "export"
                        for n, d in control.last.binding
                    )
                ),
                10,
                "the hub's export limit to bind",
                lambda: diagnose(watch, control, tmp_path),
            )
            # The inverter's output has followed its limit (the simulator steps once a second), and both meters
            # have been read since.
            await until(
                lambda: (
                    watch.pv_power_w is not None
                    and watch.pv_limit_pct is not None
                    and -watch.pv_power_w <= watch.pv_limit_pct / 100 * 80_000 + 500
                ),
                20,
                "the inverter's output to follow its limit",
                lambda: diagnose(watch, control, tmp_path),
            )
            followed = len(watch.hub_samples)
            await until(lambda: len(watch.hub_samples) >= followed + 4, 20, "fresh readings of both meters")
            # Settled: the substation takes no feed-in (a kW of slack for the half-second steps of a real loop).
            settled = len(watch.hub_samples)
            await until(lambda: len(watch.hub_samples) >= settled + 40, 30, "forty more hub readings")
            window = watch.hub_samples[settled:]
            # The DSO counts the quarter-hour average: on average nothing flows out (a few hundred W of slack for
            # readings that lag the loop by a poll), and single readings over a kW are rare transients.
            if sum(window) / len(window) < -300.0:
                # pytest.fail shows the whole diagnosis; an assert's message is cut short (a clean-clone run once
                # saw a steady -36.7 kW here and the cut left nothing to go on).
                pytest.fail(
                    f"the hub fed in {sum(window) / len(window):.0f} W on average: {[round(w) for w in window]}\n"
                    f"{diagnose(watch, control, tmp_path)}\ncontrol cycles {control.cycles}, infeasible "
                    f"{control.infeasible_cycles}, now {datetime.now(UTC).isoformat()}"
                )
            assert sum(w < -1_000.0 for w in window) <= len(window) // 10, [round(w) for w in window]
            # PV beyond the estate's own use was curtailed, not left to flow out.
            assert watch.pv_limit_pct < 99.5
            # Control stops: its heartbeat says so, setpoints expire, and the agents fall back to the safe 30 %.
            stop.set()
            await running
            await until(
                lambda: watch.pv_limit_pct is not None and abs(watch.pv_limit_pct - 30.0) < 0.5,
                20,
                "the inverter back in its safe mode",
                lambda: diagnose(watch, control, tmp_path),
            )
            cycles = sorted(control.cycle_ms)
            assert cycles[len(cycles) // 2] < 100  # a cycle of this small estate takes milliseconds
            # What dashboards will show: node flows against limits, and each cycle with its binding limit.
            async with InfluxClient(url=settings.influx_url, database=settings.influx_db) as influx:
                nodes = await influx.query(
                    f"SELECT flow_kw, limit_export_kw FROM control_node WHERE site = '{site}' AND node = 'hub'"
                )
                cycle_rows = await influx.query(
                    f"SELECT cycle_ms, binding FROM control_cycle WHERE site = '{site}'"
                )
            hub_rows = nodes[0].rows()
            assert len(hub_rows) >= control.cycles - 1
            assert all(r["limit_export_kw"] == 0 for r in hub_rows)
            assert any("hub:export" in r["binding"] for r in cycle_rows[0].rows())
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    finally:
        estate.stop()
