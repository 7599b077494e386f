"""Word order, end to end: a setpoint written through a profile lands on a real Modbus server in the profile's word
order, and reads back through the same profile's decoding as the value written.

The expected registers are spelled out in hex here, not computed with the code under test, so the test fails if
the writer and the reader were wrong the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes

from energyhub.cli.services import free_port
from energyhub.edge.config import DeviceConfig
from energyhub.edge.poller import Bus, DevicePoller
from energyhub.edge.setpoints import DeviceControl
from energyhub.simulators.devices import SimulatedDevice
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.wire.messages import Setpoint, SetpointStatus
from energyhub.wire.profile import load_profile
from energyhub.wire.registers import CODECS, RegisterType, codec, decode_string, encode_string, pack_words

# 16.0 = 0x41800000, 100000 = 0x000186A0, -100000 = 0xFFFE7960, 6.0 = 0x40C00000: high word first ...
BIG = {
    "current": [0x4180, 0x0000],
    "limit": [0x0001, 0x86A0],
    "offset": [0xFFFE, 0x7960],
    "safe": [0x40C0, 0],
}
# ... and low word first.
LITTLE = {k: words[::-1] for k, words in BIG.items()}


class RegisterBank(SimulatedDevice):
    """Plain holding registers that keep what is written (the server stores it), and a log of the writes."""

    def __init__(self, *, unit_id: int, size: int) -> None:
        super().__init__(unit_id=unit_id, size=size)
        self.written: list[tuple[int, list[int]]] = []

    def apply_write(self, offset: int, values: list[int], registers: list[int]) -> ExcCodes | None:
        self.written.append((offset, list(values)))
        return None


def profile_file(folder: Path, word_order: str) -> Path:
    path = folder / f"words_{word_order}.yaml"
    path.write_text(
        f"""name: words_{word_order}
description: a charger-like register bank in {word_order} word order
roles: [ev]
word_order: {word_order}
values:
  - {{name: power_w, address: 0, type: float32}}
  - {{name: applied_current_a, address: 10, type: float32}}
  - {{name: session_limit_read_wh, address: 12, type: uint32}}
  - {{name: power_offset_read_w, address: 14, type: int32}}
setpoints:
  - {{name: max_current_a, address: 10, type: float32, min: 0, max: 600}}
  - {{name: session_limit_wh, address: 12, type: uint32, scale: 10, min: 0, max: 4.0e9}}
  - {{name: power_offset_w, address: 14, type: int32, min: -1.0e6, max: 1.0e6}}
"""
    )
    return path


def setpoint(name: str, value: float) -> Setpoint:
    now = datetime.now(UTC)
    return Setpoint(id=f"sp-{name}", name=name, value=value, created=now, expires=now + timedelta(minutes=5))


@pytest.mark.live  # a Modbus server on loopback
@pytest.mark.parametrize(("word_order", "expected"), [("big", BIG), ("little", LITTLE)])
async def test_setpoints_reach_the_device_in_the_profiles_word_order_and_read_back(
    tmp_path, word_order, expected
):
    path = profile_file(tmp_path, word_order)
    profile = load_profile(path)
    bank = RegisterBank(unit_id=1, size=32)
    config = DeviceConfig(
        id="dev", profile=str(path), host="127.0.0.1", port=1, safe_mode={"max_current_a": 6}
    )
    async with GatewayServer(host="127.0.0.1", port=free_port(), devices=[bank]) as server:
        bus = Bus.tcp("127.0.0.1", server.port, timeout_s=2.0)
        control = DeviceControl(config, profile, bus)
        acks = [
            await control.apply(setpoint("max_current_a", 16.0)),
            await control.apply(setpoint("session_limit_wh", 1_000_000)),  # raw 100000 at scale 10
            await control.apply(setpoint("power_offset_w", -100_000)),
        ]
        polled = await DevicePoller("dev", profile, bus, 1).poll()
        # The registers as any Modbus client sees them, apart from the edge's bus.
        raw = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=2)
        await raw.connect()
        held = (await raw.read_holding_registers(10, count=6, device_id=1)).registers
        await control.enter_safe_mode("test")
        after_safe_mode = (await raw.read_holding_registers(10, count=2, device_id=1)).registers
        raw.close()
        bus.close()
    assert [a.status for a in acks] == [SetpointStatus.APPLIED] * 3, [a.reason for a in acks]
    assert [a.readback for a in acks] == [16.0, 1_000_000, -100_000]
    assert polled.values["applied_current_a"] == 16.0
    assert polled.values["session_limit_read_wh"] == 100_000
    assert polled.values["power_offset_read_w"] == -100_000
    assert held == expected["current"] + expected["limit"] + expected["offset"]
    assert bank.written[:3] == [(10, expected["current"]), (12, expected["limit"]), (14, expected["offset"])]
    assert after_safe_mode == expected["safe"]


def test_a_register_may_override_the_profiles_word_order(tmp_path):
    text = profile_file(tmp_path, "little").read_text()
    text = text.replace("type: float32, min: 0", "type: float32, word_order: big, min: 0")
    path = tmp_path / "mixed.yaml"
    path.write_text(text.replace("name: words_little", "name: mixed"))
    profile = load_profile(path)
    current = next(s for s in profile.setpoints if s.name == "max_current_a")
    limit = next(s for s in profile.setpoints if s.name == "session_limit_wh")
    assert current.order(profile.word_order) == "big"
    assert limit.order(profile.word_order) == "little"


@pytest.mark.parametrize(
    ("kind", "value", "big"),
    [
        (RegisterType.INT16, -2, [0xFFFE]),
        (RegisterType.UINT16, 65_000, [0xFDE8]),
        (RegisterType.INT32, -100_000, [0xFFFE, 0x7960]),
        (RegisterType.UINT32, 100_000, [0x0001, 0x86A0]),
        (RegisterType.FLOAT32, 16.0, [0x4180, 0x0000]),
        (RegisterType.FLOAT64, 4_321.5, [0x40B0, 0xE180, 0x0000, 0x0000]),
    ],
)
def test_the_register_table_encodes_and_decodes_in_both_word_orders(kind, value, big):
    table = codec(kind)
    assert table.registers == len(big)
    assert table.encode(value) == big
    assert table.encode(value, "little") == big[::-1]
    assert table.decode(big) == value
    assert table.decode(big[::-1], "little") == value
    # Offsets into a block of registers, as the poller decodes them.
    block = pack_words([0xAAAA, *big[::-1], 0xBBBB])
    assert table.unpack_from(block, 2, "little") == value


def test_the_register_table_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="raw value 70000 does not fit type int16"):
        CODECS[RegisterType.INT16].encode(70_000)
    with pytest.raises(ValueError, match="does not fit type uint32"):
        CODECS[RegisterType.UINT32].encode(-1)
    with pytest.raises(ValueError, match="does not fit type float32"):
        CODECS[RegisterType.FLOAT32].encode(1e40)
    with pytest.raises(ValueError, match="takes 2 register"):
        CODECS[RegisterType.FLOAT32].decode([1])
    with pytest.raises(ValueError, match="'string' is not a numeric register type"):
        codec("string")
    assert decode_string(pack_words(encode_string("C2", 5))) == "C2"


async def test_a_setpoint_whose_raw_value_overflows_its_register_is_rejected_not_wrapped(tmp_path):
    path = tmp_path / "tenths.yaml"
    path.write_text(
        "name: tenths\ndescription: a limit in tenths of a percent, in an int16\nroles: [load]\n"
        "values:\n  - {name: power_w, address: 0, type: int16}\n"
        "setpoints:\n  - {name: limit_pct, address: 1, type: int16, scale: 0.001, min: 0, max: 100}\n"
    )
    config = DeviceConfig(id="dev", profile=str(path), host="127.0.0.1", port=1)
    bus = Bus.tcp("127.0.0.1", free_port(), timeout_s=0.5)  # never reached: refused before writing
    ack = await DeviceControl(config, load_profile(path), bus).apply(setpoint("limit_pct", 50.0))
    bus.close()
    assert ack.status is SetpointStatus.REJECTED
    assert ack.reason == "limit_pct 50: raw value 50000 does not fit type int16"
