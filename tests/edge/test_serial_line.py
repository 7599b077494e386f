"""An RS-485 line as it behaves: six devices on one pseudo-terminal at 9600 baud, each byte taking its time on the
wire (simulators/rtu_line.py), polled by one agent through a real Mosquitto. One device dies: the other five keep
their interval, the dead one is tried with back-off, and it is back at its first answer. The line's timing is
checked from the line's own frame log, as a logic analyser on the wire would see it, not from the agent's
bookkeeping.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
from pathlib import Path

import pytest
import yaml

from energyhub.cli.services import free_port
from energyhub.edge import line_budget
from energyhub.edge.config import load_agent_config
from energyhub.simulators.devices import BatteryState, InverterState
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.simulators.profile_device import ProfileDevice
from energyhub.simulators.rtu_line import RtuLine
from energyhub.simulators.sdm630 import MeterState
from energyhub.wire.messages import Quality
from energyhub.wire.profile import load_profile
from tests.edge.test_edge_agent import broker, gateway_yaml, observing, running_agent

__all__ = ["broker"]  # the fixture, used by name

INTERVAL_S = 2.0
TIMEOUT_S = 0.4
BACKOFF_MAX_S = 8.0
PAUSE_S = 0.02
CONNECT_PAUSE_S = 0.3
DEAD = 3  # the unit id that stops answering
LINE = [  # (unit id, profile, state): what an installer finds on one RS-485 line
    (1, "eastron_sdm630", MeterState(power_w=42_000.0)),
    (2, "eastron_sdm630", MeterState(power_w=8_500.0)),
    (3, "eastron_sdm630", MeterState(power_w=3_100.0)),
    (4, "eastron_sdm630", MeterState(power_w=-1_200.0)),
    (5, "sunspec_inverter", InverterState(rated_w=30_000, available_w=12_000)),
    (6, "sunspec_battery", BatteryState(capacity_wh=60_000, max_w=30_000, setpoint_w=5_000)),
]


def line_config(tmp_path: Path, settings, accounts, port: str) -> Path:
    serial = {"port": port, "baudrate": 9600, "pause_s": PAUSE_S, "connect_pause_s": CONNECT_PAUSE_S}
    devices = [
        {"id": f"dev{unit}", "profile": profile, "unit_id": unit, "serial": serial}
        for unit, profile, _s in LINE
    ]
    return gateway_yaml(
        tmp_path,
        settings,
        accounts,
        devices,
        interval_s=INTERVAL_S,
        timeout_s=TIMEOUT_S,
        retries=1,
        backoff_max_s=BACKOFF_MAX_S,
    )


def gaps_of(starts: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(starts)]


def tries(frames, unit: int) -> list[float]:
    """Start times of the tries of ``unit``: a try is its frames less than half a poll apart."""
    starts: list[float] = []
    last = -1e9
    for frame in (f for f in frames if f.unit == unit):
        if frame.start - last > INTERVAL_S / 2:
            starts.append(frame.start)
        last = frame.start
    return starts


@pytest.mark.live
async def test_a_dead_device_on_a_9600_baud_line_does_not_slow_the_other_five(tmp_path, broker):
    settings, accounts, _supervisor, _process = broker
    devices = [ProfileDevice(unit_id=u, profile=load_profile(p), state=s) for u, p, s in LINE]
    loop = asyncio.get_running_loop()
    async with (
        GatewayServer(host="127.0.0.1", port=free_port(), devices=devices, framer="rtu") as server,
        RtuLine(server=("127.0.0.1", server.port), baudrate=9600) as line,
    ):
        path = line_config(tmp_path, settings, accounts, line.port)
        async with observing(settings, accounts) as observer:
            started = loop.time()
            async with running_agent(path):

                def good(device: str, after: float = 0.0) -> bool:
                    return any(
                        d == device and m.quality is Quality.GOOD and m.ts.timestamp() > after
                        for d, m in observer.messages
                    )

                await observer.wait_for(lambda: all(good(f"dev{u}") for u, _p, _s in LINE), 20)
                assert line.frames[0].start >= started + CONNECT_PAUSE_S  # the port's settling time kept

                # The line with every device alive, against what the budget says it carries.
                warm_from = loop.time()
                await observer.wait_for(lambda: loop.time() > warm_from + 3 * INTERVAL_S, 20)
                window = [f for f in line.frames if f.start >= warm_from]
                measured = (sum(f.end - f.start for f in window) + PAUSE_S * len(window)) / (
                    loop.time() - warm_from
                )
                config = load_agent_config(path)
                [budget] = line_budget.line_loads(config, {p: load_profile(p) for _u, p, _s in LINE})
                assert budget.load == pytest.approx(measured, rel=0.25), (budget.load, measured)

                # Unit 3 dies, as an unplugged meter does: it stays silent.
                line.silent.add(DEAD)
                died = loop.time()
                died_wall = observer.messages[-1][1].ts.timestamp()

                # Until its tries are BACKOFF_MAX_S apart: doubling from the interval takes 2 + 4 + 8 s.
                def backed_off_fully() -> bool:
                    starts = [t for t in tries(line.frames, DEAD) if t >= died]
                    gaps = gaps_of(starts)
                    return len(gaps) >= 4 and gaps[-1] >= BACKOFF_MAX_S - 0.5

                await observer.wait_for(backed_off_fully, 40)
                dead_tries = [t for t in tries(line.frames, DEAD) if t >= died]
                gaps = gaps_of(dead_tries)
                # Backed off on its own poll times: tried after 1, 2, 4 intervals, then every BACKOFF_MAX_S. The
                # first try can come an interval late: the poll that found it dead (two reads, each retried, all
                # timing out) made that cycle overrun, and an overrun cycle's missed polls are skipped.
                assert INTERVAL_S - 0.5 <= gaps[0] <= 2 * INTERVAL_S + 2 * 2 * TIMEOUT_S, gaps
                want = [2 * INTERVAL_S, BACKOFF_MAX_S] + [BACKOFF_MAX_S] * (len(gaps) - 3)
                assert gaps[1:] == pytest.approx(want, abs=0.5), gaps
                # A try while backed off is one request, no retry: the line carries little for the dead device.
                probes = [f for f in line.frames if f.unit == DEAD and f.start > dead_tries[1] - 0.1]
                assert len(probes) == len(dead_tries) - 1, probes

                # The other five kept their interval, read from the timestamps of what the broker delivered; the
                # first poll after the death (its reads and retries time out once) may be late by those timeouts.
                settled = died_wall + 2 * INTERVAL_S
                for unit, _p, _s in LINE:
                    if unit == DEAD:
                        continue
                    # A set: with no ingest confirming, the agent sends a measurement again (at least once).
                    stamps = sorted(
                        {
                            m.ts.timestamp()
                            for d, m in observer.messages
                            if d == f"dev{unit}" and m.ts.timestamp() > settled and m.quality is Quality.GOOD
                        }
                    )
                    intervals = [b - a for a, b in itertools.pairwise(stamps)]
                    assert len(intervals) >= 5, (unit, stamps)
                    assert statistics.median(intervals) == pytest.approx(INTERVAL_S, abs=0.1), (
                        unit,
                        intervals,
                    )
                    assert max(intervals) <= INTERVAL_S + TIMEOUT_S + 0.3, (unit, intervals)

                # The pause after every answer, seen on the wire: no request starts within pause_s of the last.
                ordered = sorted(line.frames, key=lambda f: f.start)
                quiet = [b.start - a.end for a, b in itertools.pairwise(ordered) if a.answered]
                assert min(quiet) >= PAUSE_S - 0.002, min(quiet)

                # It answers again: back at its next try, with its values, without anyone restarting anything.
                line.silent.discard(DEAD)
                revived = observer.messages[-1][1].ts.timestamp()
                await observer.wait_for(lambda: good(f"dev{DEAD}", after=revived), BACKOFF_MAX_S + 5)
                back = next(
                    m
                    for d, m in observer.messages
                    if d == f"dev{DEAD}" and m.quality is Quality.GOOD and m.ts.timestamp() > revived
                )
                assert back.values["power_w"] == pytest.approx(3_100.0)
                assert back.ts.timestamp() - revived <= BACKOFF_MAX_S + INTERVAL_S


def test_the_line_budget_warns_when_devices_cannot_fit_the_baud_rate(tmp_path):
    def config(devices: int, interval_s: float, baudrate: int):
        serial = {"port": "/dev/ttyUSB0", "baudrate": baudrate}
        path = tmp_path / "gw.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "gateway": "gw-1",
                    "site": "s",
                    "interval_s": interval_s,
                    "timeout_s": 0.2,
                    "devices": [
                        {"id": f"m{i}", "profile": "eastron_sdm630", "unit_id": i + 1, "serial": serial}
                        for i in range(devices)
                    ]
                    + [{"id": "inv", "profile": "sunspec", "unit_id": 99, "serial": serial}],
                }
            )
        )
        return load_agent_config(path)

    profiles = {"eastron_sdm630": load_profile("eastron_sdm630")}
    # An SDM630 poll is two reads, of 18 and 24 registers: (8 + 5 + 36 + 7) and (8 + 5 + 48 + 7) characters of
    # 10 bits at 9600 baud, plus the default 20 ms pause after each: 0.1692 s.
    [six] = line_budget.line_loads(config(6, 2.0, 9600), profiles)
    assert six.load == pytest.approx(6 * (124 * 10 / 9600 + 2 * 0.02) / 2.0, rel=1e-9)
    assert six.unplanned == ("inv",)
    assert [w for w in line_budget.warnings(config(6, 2.0, 9600), profiles) if "%" in w] == []
    full = line_budget.warnings(config(12, 1.0, 9600), profiles)[0]
    assert full.startswith("serial line /dev/ttyUSB0 at 9600 baud: 12 device(s) use 203% of the line")
    assert "cannot keep their intervals; lengthen the intervals, raise the baud rate or split" in full
    tight = line_budget.warnings(config(5, 1.0, 9600), profiles)[0]
    assert "85% of the line" in tight
    assert "will delay the others' polls" in tight
    # At 115200 baud the pauses are most of the line time: twelve meters every second fit.
    assert [w for w in line_budget.warnings(config(12, 1.0, 115200), profiles) if "%" in w] == []
    assert (
        "discover their registers when they answer"
        in line_budget.warnings(config(12, 1.0, 115200), profiles)[0]
    )
