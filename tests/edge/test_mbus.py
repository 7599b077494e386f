"""M-Bus meters: profiles as data, the link layer's checks, and polls of simulated meters over loopback TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import meterbus
import pytest

from energyhub.edge.config import DeviceConfig
from energyhub.edge.mbus import (
    MbusError,
    MbusGateway,
    MbusPoller,
    check_rsp_ud,
    checksum,
    decode_values,
    parse_rsp_ud,
    short_frame,
)
from energyhub.edge.mbus_profile import (
    PROFILE_DIR,
    MbusProfileError,
    load_mbus_profile,
    mbus_profile_names,
)
from energyhub.simulators.mbus_meter import MbusMeterSim, MbusServer, bcd, manufacturer_code, serve_mbus
from energyhub.wire.messages import Quality
from energyhub.wire.roles import VOLUME_M3

pytestmark = pytest.mark.live  # TCP servers on loopback

GAS, WATER = "elster_bk_g4_mbus", "kamstrup_flowiq_2101"
T0 = 1_780_000_000.0  # 2026-05-28, a weekday


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def line(clock: Clock) -> AsyncIterator[tuple[MbusServer, MbusMeterSim, MbusMeterSim]]:
    gas = MbusMeterSim.gas(5, clock=clock)
    water = MbusMeterSim.water(7, clock=clock)
    server = await serve_mbus("127.0.0.1", 0, [gas, water], reply_delay_s=0.005)
    yield server, gas, water
    await server.stop()


def device(profile: str, port: int, address: int) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {
            "id": f"m-{address}",
            "profile": profile,
            "mbus": {"host": "127.0.0.1", "port": port, "address": address},
        }
    )


def poller(
    profile: str, server: MbusServer, address: int, clock: Clock, *, gateway: MbusGateway | None = None
) -> MbusPoller:
    dev = device(profile, server.port, address)
    bus = gateway or MbusGateway.for_device(dev, timeout_s=0.3)
    return MbusPoller.for_device(dev, bus, interval_s=60.0, backoff_max_s=240.0, clock=clock)


# -- profiles ----------------------------------------------------------------------------------------------------


def test_shipped_profiles_load_and_serve_their_roles() -> None:
    assert {GAS, WATER} <= set(mbus_profile_names())
    gas, water = load_mbus_profile(GAS), load_mbus_profile(WATER)
    assert (gas.role.value, gas.medium, gas.manufacturer) == ("gas", 0x03, "ELS")
    assert (water.role.value, water.medium, water.manufacturer) == ("water", 0x07, "KAM")
    assert VOLUME_M3 in gas.value_names
    assert VOLUME_M3 in water.value_names
    for name in mbus_profile_names():
        assert load_mbus_profile(name).source


GOOD_YAML = """
name: {name}
source: EN 13757-3
medium: 0x07
role: water
values:
  - {{name: volume_m3, vif: 0x13, unit: m3}}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD_YAML.replace("volume_m3", "flow_m3h"), "value 'volume_m3'"),  # role's required value missing
        (GOOD_YAML.replace("medium: 0x07", "medium: 0x03"), "medium 0x03 is not a water medium"),
        (GOOD_YAML.replace("role: water", "role: pv"), "not read over M-Bus"),
        (GOOD_YAML.replace("vif: 0x13", "vif: 0x99"), "values.0.vif"),
        (GOOD_YAML.replace("source: EN 13757-3\n", ""), "source"),
        (GOOD_YAML + "colour: red\n", "colour"),
        ("name: [unclosed", "not valid YAML"),
    ],
)
def test_bad_profile_names_the_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "bad.yaml").write_text(text.format(name="bad"), encoding="utf-8")
    with pytest.raises(MbusProfileError) as err:
        load_mbus_profile("bad", directory=tmp_path)
    assert str(tmp_path / "bad.yaml") in str(err.value)
    assert expected in str(err.value)


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text(GOOD_YAML.format(name="wrong_name"), encoding="utf-8")
    with pytest.raises(MbusProfileError, match="known: other"):
        load_mbus_profile("nope", directory=tmp_path)
    with pytest.raises(MbusProfileError, match="differs from the file's name"):
        load_mbus_profile("other", directory=tmp_path)
    assert PROFILE_DIR.name == "mbus_profiles"


# -- frames ------------------------------------------------------------------------------------------------------


def test_encodings() -> None:
    assert bcd(12345678, 4) == bytes([0x78, 0x56, 0x34, 0x12])
    assert manufacturer_code("KAM") == bytes([0x2D, 0x2C])  # Kamstrup's well-known 0x2C2D
    assert short_frame(0x5B, 5) == bytes([0x10, 0x5B, 0x05, 0x60, 0x16])
    assert checksum(bytes([0xFF, 0x02])) == 0x01


def test_sim_frames_parse_with_pymeterbus(clock: Clock) -> None:
    water = MbusMeterSim.water(7, clock=clock)
    clock.t += 5 * 3600
    frame = meterbus.load(water.rsp_ud())
    assert isinstance(frame, meterbus.TelegramLong)
    assert frame.manufacturer == "KAM"
    assert frame.body.bodyHeader.measure_medium_field.parts[0] == 0x07
    assert frame.secondary_address.startswith("87654321")
    current = [r for r in frame.records if r.dib.parse_dife()[0] == 0 and r.vib.parts[0] == 0x13]
    assert round(float(current[0].parsed_value) * 1000) == water.counts() > round(321.987 * 1000)
    gas = MbusMeterSim.gas(5, clock=clock)
    clock.t += 3600
    records = meterbus.load(gas.rsp_ud()).records
    by_storage = {r.dib.parse_dife()[0]: float(r.parsed_value) for r in records}
    assert by_storage[1] == pytest.approx(1234.56)
    assert round(by_storage[0] * 100) == gas.counts() > 123456


def test_a_frame_of_length_0x44_is_read_as_wired(clock: Clock) -> None:
    # meterbus.load takes L = 0x44 (the wireless SND_NR C field) for a wireless frame; the poller must not.
    water = MbusMeterSim.water(7, clock=clock)
    frame = water.rsp_ud()
    body = frame[4:-2] + bytes([0x2F] * (0x44 - (len(frame) - 6)))  # fill bytes up to L = 0x44
    padded = _long(body)
    assert padded[1] == 0x44
    values = decode_values(load_mbus_profile(WATER), parse_rsp_ud(padded, 7).telegram)
    assert values[VOLUME_M3] == pytest.approx(water.volume_m3())


def _long(body: bytes) -> bytes:
    return bytes([0x68, len(body), len(body), 0x68]) + body + bytes([checksum(body), 0x16])


RSP = bytes([0x08, 0x05, 0x72]) + bytes(12) + bytes([0x04, 0x13, 1, 0, 0, 0])


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"\xe5", "not a long frame"),
        (_long(RSP)[:-3] + _long(RSP)[-2:], "length field"),
        (_long(RSP)[:1] + b"\x20" + _long(RSP)[2:], "two length fields differ"),
        (_long(RSP)[:-2] + bytes([(checksum(RSP) + 1) & 0xFF, 0x16]), "checksum"),
        (_long(RSP)[:-1] + b"\x17", "stop"),
        (_long(bytes([0x53]) + RSP[1:]), "not RSP_UD"),
        (_long(RSP[:1] + b"\x06" + RSP[2:]), "answer from address 6, asked 5"),
        (_long(RSP[:2] + b"\x78" + RSP[3:]), "CI 0x78"),
    ],
)
def test_rsp_ud_checks(frame: bytes, why: str) -> None:
    with pytest.raises(MbusError, match=why):
        check_rsp_ud(frame, 5)
    check_rsp_ud(_long(RSP), 5)  # the good frame passes


# -- polls -------------------------------------------------------------------------------------------------------


async def test_poll_gas_and_water_give_the_sims_counters(
    line: tuple[MbusServer, MbusMeterSim, MbusMeterSim], clock: Clock
) -> None:
    server, gas, water = line
    gas_poller, water_poller = poller(GAS, server, 5, clock), poller(WATER, server, 7, clock)
    assert gas_poller.profile is None
    try:
        for _ in range(3):
            clock.t += 2 * 3600
            for meter, p, per_m3 in ((gas, gas_poller, 100), (water, water_poller, 1000)):
                result = await p.poll()
                assert result is not None
                assert result.quality is Quality.GOOD
                assert result.ts == clock.t
                volume = result.values[VOLUME_M3]
                assert volume is not None
                assert round(volume * per_m3) == meter.counts()  # the sim's own state
                # and what pyMeterBus reads from the frame the sim sends now
                direct = [r for r in meterbus.load(meter.rsp_ud()).records if r.dib.parse_dife()[0] == 0]
                assert volume == pytest.approx(float(direct[0].parsed_value))
        assert water.counts() > round(321.987 * 1000)
        assert not gas_poller.failing
        assert gas_poller.last_success is not None
    finally:
        gas_poller.bus.close()
        water_poller.bus.close()


async def test_meters_behind_one_gateway_never_overlap(
    line: tuple[MbusServer, MbusMeterSim, MbusMeterSim], clock: Clock
) -> None:
    server, gas, water = line
    shared = MbusGateway("127.0.0.1", server.port, timeout_s=1.0)
    pollers = [poller(GAS, server, 5, clock, gateway=shared), poller(WATER, server, 7, clock, gateway=shared)]
    assert pollers[0].bus is pollers[1].bus
    try:
        for _ in range(4):
            results = await asyncio.gather(*(p.poll() for p in pollers))
            assert all(r is not None and r.quality is Quality.GOOD for r in results)
        assert server.overlaps == 0
        assert gas.requests == water.requests == 8  # SND_NKE + REQ_UD2 per poll
        # The check can fail: two gateways (two locks) on the same line do overlap.
        server.reply_delay_s = 0.05  # a wide window, so the overlap shows on a busy machine too
        other = MbusGateway("127.0.0.1", server.port, timeout_s=1.0)
        rogue = poller(WATER, server, 7, clock, gateway=other)
        await asyncio.gather(*(p.poll() for p in (pollers[0], rogue)))
        other.close()
        assert server.overlaps > 0
    finally:
        shared.close()


async def test_silent_meter_is_bad_backed_off_and_recovers(
    line: tuple[MbusServer, MbusMeterSim, MbusMeterSim], clock: Clock
) -> None:
    server, gas, _water = line
    p = poller(GAS, server, 5, clock, gateway=MbusGateway("127.0.0.1", server.port, timeout_s=0.1))
    gas.fault = "silent"
    outcomes: list[Quality | None] = []
    try:
        for _ in range(8):
            result = await p.poll()
            if result is not None:
                assert result.values == {VOLUME_M3: None}  # never the last good value
            outcomes.append(None if result is None else result.quality)
        bad = Quality.BAD
        # tries at polls 1, 2, 4, 8: the back-off doubles (60, 120, 240 s) up to backoff_max_s
        assert outcomes == [bad, bad, None, bad, None, None, None, bad]
        assert p.failing
        assert p.last_error is not None
        assert "no answer" in p.last_error
        assert p.backoff_s == 240.0
        gas.fault = None
        results = [await p.poll() for _ in range(4)]
        good = [r for r in results if r is not None]
        assert len(good) == 1
        assert good[0].quality is Quality.GOOD
        assert good[0].values[VOLUME_M3] == pytest.approx(gas.volume_m3())
        assert not p.failing
        assert p.backoff_s == 0
    finally:
        p.bus.close()


@pytest.mark.parametrize(
    ("fault", "why"), [("garbled", "checksum"), ("wrong_address", "answer from address 6, asked 5")]
)
async def test_bad_frame_is_bad_and_the_next_good_one_reads(
    line: tuple[MbusServer, MbusMeterSim, MbusMeterSim], clock: Clock, fault: str, why: str
) -> None:
    server, gas, _water = line
    p = poller(GAS, server, 5, clock)
    gas.fault = fault  # type: ignore[assignment]
    try:
        result = await p.poll()
        assert result is not None
        assert (result.quality, result.values) == (Quality.BAD, {VOLUME_M3: None})
        assert p.last_error is not None
        assert why in p.last_error
        assert "address 5" in p.last_error
        gas.fault = None
        p.skip = 0  # the next poll is the retry
        result = await p.poll()
        assert result is not None
        assert result.quality is Quality.GOOD
        assert not p.failing
    finally:
        p.bus.close()


async def test_another_meter_at_the_address_is_refused(
    line: tuple[MbusServer, MbusMeterSim, MbusMeterSim], clock: Clock
) -> None:
    server, _gas, _water = line
    p = poller(GAS, server, 7, clock)  # a gas profile for the water meter's address
    try:
        result = await p.poll()
        assert result is not None
        assert result.quality is Quality.BAD
        assert p.last_error is not None
        assert "manufacturer KAM" in p.last_error
    finally:
        p.bus.close()


async def test_value_missing_from_the_telegram_is_partial(
    line: tuple[MbusServer, MbusMeterSim, MbusMeterSim], clock: Clock, tmp_path: Path
) -> None:
    server, _gas, water = line
    text = GOOD_YAML.format(name="two") + "  - {name: tariff2_m3, vif: 0x13, tariff: 2, unit: m3}\n"
    (tmp_path / "two.yaml").write_text(text, encoding="utf-8")
    bus = MbusGateway("127.0.0.1", server.port, timeout_s=0.5)
    p = MbusPoller(
        device_id="w", bus=bus, address=7, mbus_profile=load_mbus_profile("two", directory=tmp_path)
    )
    try:
        result = await p.poll()
        assert result is not None
        assert result.quality is Quality.PARTIAL
        assert result.values["tariff2_m3"] is None
        assert result.values[VOLUME_M3] == pytest.approx(water.volume_m3())
    finally:
        bus.close()


async def test_gateway_down_is_bad_not_an_exception(clock: Clock) -> None:
    server = await serve_mbus("127.0.0.1", 0, [])
    port = server.port
    await server.stop()  # nothing listens there now
    dev = device(WATER, port, 3)
    p = MbusPoller.for_device(
        dev, MbusGateway.for_device(dev, timeout_s=0.3), interval_s=60, backoff_max_s=600, clock=clock
    )
    result = await p.poll()
    assert result is not None
    assert result.quality is Quality.BAD
    assert p.last_error is not None
    assert "connection failed" in p.last_error
    p.bus.close()
