"""Closed loop: simulated devices, real edge agents, the real broker, and `control` keeping the hub at zero feed-in."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from energyhub.cli.services import free_port
from energyhub.control.online import (
    ControlSettings,
    OnlineController,
    load_control_settings,
    will_after_s,
)
from energyhub.domain.clock import Clock
from energyhub.domain.community import load_community
from energyhub.io.influx import InfluxClient
from energyhub.io.mqtt import MqttLink
from energyhub.runtime.layered_settings import SettingsError
from energyhub.wire.messages import ControllerHeartbeat, GatewayState, Measurement, Quality, decode, encode
from energyhub.wire.readings import MeasurementGate
from energyhub.wire.roles import POWER_LIMIT_PCT, POWER_W, PV_LIMIT_PCT
from energyhub.wire.topics import Topics
from tests.chain import Estate
from tests.communities import ean
from tests.mqtt_helpers import can_log_in, link_as

REPO = Path(__file__).resolve().parents[2]


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

    async def run(self, services, topics: Topics) -> None:
        link = await link_as(services, "ehub-ingest")
        try:
            await link.subscribe([(topics.all_measurements(), 0)])
            while True:
                message = await link.next_message()
                info = topics.parse(message.topic)
                m = decode(Measurement, message.payload)
                if info.device and info.device.startswith("meter") and m.values.get(POWER_W) is not None:
                    self.meters[info.gateway] = m.values[POWER_W]
                    if len(self.meters) == 2:
                        self.hub_samples.append(sum(self.meters.values()))
                if info.device and info.device.startswith("pv"):
                    enabled = m.values.get("power_limit_enabled")
                    self.pv_limit_pct = m.values.get(POWER_LIMIT_PCT) if enabled else 100.0
                    self.pv_power_w = m.values.get(POWER_W)
        finally:
            link.abort()


async def until(condition, timeout_s: float, what: str, explain=lambda: "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{explain()}")
        await asyncio.sleep(0.1)  # poll interval of a condition wait


def community_keys(community) -> list[tuple[str, str, str]]:
    return [
        (community.gateway_of(c, d), d.id, PV_LIMIT_PCT) for c, d in community.devices() if d.role == "pv"
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
        f"stale {snap.stale if snap else None}\nsent {control.sent}\n{logs}"
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
        watcher = asyncio.create_task(watch.run(services, topics))
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
            pv_key = next(k for k in community_keys(community) if k[2] == PV_LIMIT_PCT)

            def controlled() -> bool:
                sent = control.sent.get(pv_key)
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


# -- a hung control, and measurements that are not readings (issue 14) ------------------------------------------


def control_argv(path: Path, services, cycle_s: float, day_ahead: Path) -> list[str]:
    settings = services.settings
    return [
        sys.executable,
        "-m",
        "energyhub.cli.main",
        "control",
        "--community",
        str(path),
        "--site",
        settings.site,
        "--cycle-s",
        str(cycle_s),
        "--mqtt-port",
        str(settings.mqtt_port),
        "--mqtt-credentials-file",
        str(services.accounts.credentials_path("ehub-control")),
        "--influx-url",
        settings.influx_url,
        "--influx-db",
        settings.influx_db,
        "--day-ahead-dir",
        str(day_ahead),
    ]


FAILSAFE_S = 10.0  # the gateways' heartbeat_timeout_s by default (src/energyhub/edge/gateway_config.py)


@pytest.mark.timeout(120)
async def test_a_hung_control_s_last_will_comes_within_the_failsafe_timeout(services, tmp_path):
    """Control stopped with SIGSTOP keeps its connection open: only the keepalive tells the broker it is gone."""
    settings = services.settings
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(community_doc(settings.site, [free_port(), free_port()], "gw-hung")))
    topics = Topics(site=settings.site)
    cycle_s = 0.7  # its heartbeats' period_s: tells this control's apart from any other's
    log = (tmp_path / "control.log").open("w")
    control = subprocess.Popen(
        control_argv(path, services, cycle_s, tmp_path / "day_ahead"),  # the keepalive as it comes by default
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    beats: list[tuple[float, ControllerHeartbeat]] = []

    async def listen(link: MqttLink) -> None:
        while True:
            message = await link.next_message()
            beat = decode(ControllerHeartbeat, message.payload)
            if not message.retained and beat.period_s == cycle_s:  # live, from this control
                beats.append((time.monotonic(), beat))

    def output() -> str:
        log.flush()
        return (tmp_path / "control.log").read_text()[-3000:]

    try:
        link = await link_as(services, "ehub-ingest")
        try:
            await link.subscribe([(topics.heartbeat(), 1)])
            listener = asyncio.create_task(listen(link))
            try:
                await until(lambda: any(b.alive for _, b in beats), 30, "control's heartbeat", output)
                control.send_signal(signal.SIGSTOP)
                hung = time.monotonic()
                await until(
                    lambda: any(not b.alive for _, b in beats), 3 * FAILSAFE_S, "control's Last Will", output
                )
                will_at = next(t for t, b in beats if not b.alive)
                print(f"Last Will {will_at - hung:.1f} s after SIGSTOP")
                assert will_at - hung < FAILSAFE_S
                # The last heartbeat before the Will said alive; the Will is the broker's, not control's own.
                assert [b.alive for _, b in beats][-2:] == [True, False]
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
        finally:
            link.abort()
    finally:
        control.send_signal(signal.SIGCONT)
        control.kill()
        control.wait(timeout=10)
        log.close()


@pytest.mark.timeout(150)
async def test_a_hung_control_puts_every_gateway_in_failsafe_until_it_beats_again(services, tmp_path):
    """Real agents and a real control; control SIGSTOPped. Read from the gateways' own states on the broker: each
    is in failsafe within its timeout, an agent restarted meanwhile (the broker hands it control's last
    heartbeat, retained) is in failsafe too, and none leaves it before control beats again."""
    settings = services.settings
    ports = [free_port(), free_port()]
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(community_doc(settings.site, ports, "gw-stop")))
    community = load_community(path)
    topics = Topics(site=settings.site)
    gateways = ["gw-stop-1", "gw-stop-2"]
    states: list[tuple[float, str, GatewayState]] = []

    async def listen(link: MqttLink) -> None:
        while True:
            message = await link.next_message()
            info = topics.parse(message.topic)
            if info.gateway in gateways and not message.retained:
                states.append((time.monotonic(), info.gateway, decode(GatewayState, message.payload)))

    def failsafe(gateway: str, since: float) -> bool | None:
        """The newest failsafe flag ``gateway`` reported after ``since`` (None: no state since)."""
        flags = [st.health.failsafe for t, g, st in states if g == gateway and t > since and st.health]
        return flags[-1] if flags else None

    estate = Estate(services, community, path, tmp_path)
    log = (tmp_path / "control.log").open("w")
    control: subprocess.Popen[bytes] | None = None
    try:
        link = await link_as(services, "ehub-api")
        try:
            await link.subscribe([(topics.all_states(), 1)])
            listener = asyncio.create_task(listen(link))
            try:
                estate.start(speed=1, start="2026-06-15T10:30:00Z", seed=5, interval_s=0.5, timeout_s=0.2)
                control = subprocess.Popen(
                    control_argv(path, services, 0.5, tmp_path / "day_ahead"),
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                start = time.monotonic()
                await until(
                    lambda: (
                        all(failsafe(g, start) is False for g in gateways) and time.monotonic() - start > 12
                    ),
                    60,
                    "both gateways live under control",
                    estate.logs,
                )
                control.send_signal(signal.SIGSTOP)
                hung = time.monotonic()
                await until(
                    lambda: all(failsafe(g, hung) for g in gateways), 3 * FAILSAFE_S, "failsafe", estate.logs
                )
                engaged = {
                    g: min(
                        t for t, gw, st in states if gw == g and t > hung and st.health and st.health.failsafe
                    )
                    for g in gateways
                }
                print("failsafe after SIGSTOP:", {g: round(t - hung, 1) for g, t in engaged.items()})
                assert max(engaged.values()) - hung < FAILSAFE_S + 1.5, (
                    engaged
                )  # the timeout, a watchdog tick
                # One agent restarted while control hangs: killed, started again with its config.
                victim = estate.processes[1]
                victim.kill()
                victim.wait()
                restarted = time.monotonic()
                estate.processes[1] = subprocess.Popen(
                    victim.args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
                )
                await until(
                    lambda: failsafe(gateways[0], restarted) is True, 15, "the restarted one in failsafe"
                )
                stays = time.monotonic()
                await until(lambda: time.monotonic() - stays > 12, 15, "a while of hung control")
                # Nobody left failsafe while control hung: every state since each engaged says so (but the
                # restarted agent's birth, sent before it has heard anything).
                reborn = [t for t, g, st in states if g == gateways[0] and t > restarted and st.health]
                after = [
                    (g, st.health.failsafe)
                    for t, g, st in states
                    if st.health and t > engaged[g] and (g != gateways[0] or t < restarted or t > reborn[0])
                ]
                assert len(after) >= 4, after  # states every 10 s and on each change: some to judge by
                assert all(flag for _g, flag in after), after
                control.send_signal(signal.SIGCONT)
                back = time.monotonic()
                await until(
                    lambda: all(failsafe(g, back) is False for g in gateways),
                    30,
                    "failsafe left",
                    estate.logs,
                )
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
        finally:
            link.abort()
    finally:
        if control is not None:
            control.send_signal(signal.SIGCONT)
            control.kill()
            control.wait(timeout=10)
        estate.stop()
        log.close()


@pytest.mark.parametrize(
    ("speed", "ahead_s", "retained", "admitted"),
    [
        (1, 0, False, True),
        (1, 0, True, False),
        (1, -3600, False, True),  # old is fine (a replayed buffer)
        (1, 30, False, True),  # clocks differ by seconds
        (1, 120, False, False),
        # At 60x a real minute is an hour of data: the tolerance is in real seconds.
        (60, 30 * 60, False, True),
        (60, 2 * 3600, False, False),
        (1, 75 * 365 * 86400, False, False),  # dated 2099
    ],
)
def test_the_gate_refuses_retained_and_future_measurements(speed, ahead_s, retained, admitted):
    clock = Clock.simulated(datetime(2026, 6, 1, 10, tzinfo=UTC), speed)
    gate = MeasurementGate(clock, 60.0)
    m = Measurement(
        ts=clock.now() + timedelta(seconds=ahead_s),
        session=1,
        seq=0,
        quality=Quality.GOOD,
        values={"power_w": 1},
    )
    assert (gate.admit("t", encode(m), retained=retained) is not None) is admitted
    assert (gate.retained, gate.misdated) == (int(retained), int(not admitted and not retained))


async def test_control_ignores_retained_and_future_measurements(services, tmp_path, unique_id):
    settings = services.settings
    prefix = f"gw-{unique_id}"
    path = tmp_path / "community.yaml"
    path.write_text(yaml.safe_dump(community_doc(settings.site, [free_port(), free_port()], prefix)))
    topics = Topics(site=settings.site)
    gw1, gw2 = f"{prefix}-1", f"{prefix}-2"
    for gateway in (gw1, gw2):
        services.accounts.add_gateway(gateway)
    services.accounts.reload_broker()
    for gateway in (gw1, gw2):
        await can_log_in(services, gateway)

    async def publish(gateway: str, device: str, watts: float, *, ts=None, retain=False) -> None:
        link = await link_as(services, gateway)
        m = Measurement(
            ts=ts or datetime.now(UTC), session=1, seq=0, quality=Quality.GOOD, values={"power_w": watts}
        )
        await link.wait(
            link.publish_batch([(topics.measurement(gateway, device), encode(m))], retain=retain).done
        )
        await link.disconnect()

    # A gateway's bug: a retained reading (dated now: only its retain flag gives it away), -9.9 MW.
    await publish(gw1, "meter1", -9_900_000.0, retain=True)
    control = OnlineController(
        ControlSettings(
            community=path,
            site=settings.site,
            cycle_s=0.5,
            mqtt_port=settings.mqtt_port,
            mqtt_credentials_file=services.accounts.credentials_path("ehub-control"),
            influx_url=settings.influx_url,
            influx_db=settings.influx_db,
            day_ahead_dir=None,
        )
    )
    stop = asyncio.Event()
    running = asyncio.create_task(control.run(stop))
    latest = control.state.latest
    try:
        # Subscribed (and handed the retained reading) once a live one of the other meter is in: sent until then,
        # as control subscribes in its own time.
        async with asyncio.timeout(20):
            while (gw2, "meter2") not in latest:
                await publish(gw2, "meter2", 8_000.0)
                await asyncio.sleep(0.2)  # poll interval of a condition wait
        assert (gw1, "meter1") not in latest
        # Live, but dated 2099; and live but retained (seen as such: control subscribes retain-as-published).
        await publish(gw1, "meter1", -9_900_000.0, ts=datetime(2099, 1, 1, tzinfo=UTC))
        await publish(gw1, "meter1", -9_800_000.0, retain=True)
        await publish(gw2, "meter2", 9_000.0)
        await until(
            lambda: latest[(gw2, "meter2")][1].values["power_w"] == 9_000.0, 10, "meter2's next reading"
        )
        assert (gw1, "meter1") not in latest
        assert (control.gate.retained, control.gate.misdated) == (2, 1)
        # A good reading of meter1, a few seconds ahead (clocks differ that much), counts.
        await publish(gw1, "meter1", -5_000.0, ts=datetime.now(UTC) + timedelta(seconds=5))
        await until(lambda: (gw1, "meter1") in latest, 10, "meter1's good reading")
        assert latest[(gw1, "meter1")][1].values["power_w"] == -5_000.0
    finally:
        stop.set()
        await running
        link = await link_as(services, gw1)  # clear the retained reading
        await link.wait(link.publish_batch([(topics.measurement(gw1, "meter1"), b"")], retain=True).done)
        await link.disconnect()


@pytest.mark.parametrize(
    ("given", "words"),
    [
        (
            {"mqtt_keepalive_s": 3},
            "Will could come after 11 s, not within failsafe_timeout_s 10; take at most 2 s",
        ),
        ({"mqtt_keepalive_s": 30, "failsafe_timeout_s": 30}, "take at most 15 s"),
        ({"mqtt_keepalive_s": 4, "failsafe_timeout_s": 5}, "no keepalive can: raise failsafe_timeout_s"),
        ({"cycle_s": 3}, "cycle_s 3 is longer than mqtt_keepalive_s 2"),
        ({"mqtt_keepalive_s": 1}, "mqtt_keepalive_s: Input should be greater than or equal to 2"),
    ],
)
def test_the_keepalive_must_bring_the_will_within_the_failsafe_timeout(given, words):
    with pytest.raises(SettingsError) as caught:
        load_control_settings(**given)
    assert words in str(caught.value)


def test_the_default_keepalive_brings_the_will_within_the_gateways_default_failsafe():
    from energyhub.edge.config import AgentConfig

    control = ControlSettings()
    assert will_after_s(control.mqtt_keepalive_s) <= control.failsafe_timeout_s
    assert control.failsafe_timeout_s == AgentConfig.model_fields["heartbeat_timeout_s"].default
    slower = ControlSettings(mqtt_keepalive_s=12, failsafe_timeout_s=25, cycle_s=5)
    assert slower.mqtt_keepalive_s == 12


async def test_a_clean_stop_says_goodbye_itself_and_leaves_no_will(services, tmp_path, unique_id):
    """Stopped, control publishes alive=false with its last cycle before it disconnects cleanly (so the broker sends
    no Will), rather than leave the gateways to the Will or the timeout."""
    settings = services.settings
    path = tmp_path / "community.yaml"
    path.write_text(
        yaml.safe_dump(community_doc(settings.site, [free_port(), free_port()], f"gw-{unique_id}"))
    )
    topics = Topics(site=settings.site)
    cycle_s = 0.3  # its heartbeats' period_s: tells this control's apart from any other's
    control = OnlineController(
        ControlSettings(
            community=path,
            site=settings.site,
            cycle_s=cycle_s,
            mqtt_port=settings.mqtt_port,
            mqtt_credentials_file=services.accounts.credentials_path("ehub-control"),
            influx_url=settings.influx_url,
            influx_db=settings.influx_db,
            day_ahead_dir=None,
        )
    )
    beats: list[ControllerHeartbeat] = []

    async def listen(link: MqttLink) -> None:
        while True:
            message = await link.next_message()
            beat = decode(ControllerHeartbeat, message.payload)
            if not message.retained and beat.period_s == cycle_s:
                beats.append(beat)

    link = await link_as(services, "ehub-ingest")
    listener: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    running = asyncio.create_task(control.run(stop))
    try:
        await link.subscribe([(topics.heartbeat(), 1)])
        listener = asyncio.create_task(listen(link))
        await until(lambda: sum(b.alive for b in beats) >= 3, 20, "three heartbeats")
        stop.set()
        await running
        await until(lambda: any(not b.alive for b in beats), 10, "the goodbye")
        # Control's own, with its last cycle: a Will would carry the cycle of its connect (0).
        gone = [b for b in beats if not b.alive]
        assert [(b.cycle, b.policy) for b in gone] == [(control.cycles, "mpc")], beats[-4:]
        assert control.cycles >= 3
    finally:
        stop.set()
        await running
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        link.abort()
