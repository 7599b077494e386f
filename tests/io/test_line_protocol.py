"""Line protocol round trip through the real influxd: what we write is what comes back, or a clear refusal."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from energyhub.io.influx import InfluxClient
from energyhub.io.line_protocol import LineProtocolError, encode_point

# Any unicode but surrogates (not encodable as UTF-8); line breaks and trailing backslashes are refused below.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=0, max_size=40)


def _refused(text: str, *, may_be_empty: bool = False) -> bool:
    return (not text and not may_be_empty) or "\n" in text or "\r" in text or text.endswith("\\")


@pytest.fixture(scope="module")
def influx(services):
    return services.settings


def test_refusals_name_what_and_why():
    with pytest.raises(LineProtocolError, match=r"tag value 'a\\\\' ends with a backslash"):
        encode_point("m", {"k": "a\\"}, {"v": 1.0}, 1)
    with pytest.raises(LineProtocolError, match="tag key 'a\\\\nb' contains a line break"):
        encode_point("m", {"a\nb": "x"}, {"v": 1.0}, 1)
    with pytest.raises(LineProtocolError, match="field 'v' is nan"):
        encode_point("m", {}, {"v": float("nan")}, 1)
    with pytest.raises(LineProtocolError, match="has no fields"):
        encode_point("m", {"k": "x"}, {}, 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tag=TEXT, text=TEXT, key=TEXT)
def test_tags_and_strings_survive_influxd_unchanged(influx, unique_id, tag, text, key):
    assume(key not in {"probe", "t", "s", "v", "time"})  # our own columns, and InfluxQL's reserved time
    if _refused(tag, may_be_empty=True) or _refused(key):
        with pytest.raises(LineProtocolError):
            encode_point("lp_roundtrip", {"probe": unique_id, "t": tag, key: "k"}, {"s": text}, 1)
        return
    tags = {"probe": unique_id, "t": tag}
    if key not in tags:
        tags[key] = "k"
    line = encode_point(
        "lp_roundtrip", tags, {"s": text, "v": 1.5}, 1_780_000_000_000_000_000
    )  # in raw's policy

    async def round_trip() -> list[dict]:
        async with InfluxClient(url=influx.influx_url, database=influx.influx_db) as client:
            await client.write(line)
            series = await client.query(f"SELECT * FROM lp_roundtrip WHERE probe = '{unique_id}'", epoch="ns")
            await client.query(f"DROP SERIES FROM lp_roundtrip WHERE probe = '{unique_id}'")
        return [row for s in series for row in s.rows()]

    rows = asyncio.run(round_trip())
    assert len(rows) == 1, line
    row = rows[0]
    assert row.get("t") == (tag or None), line  # an empty tag is an absent tag
    assert row["s"] == text, line
    assert row[key] == tags[key], line
    assert row["v"] == 1.5


def test_a_measurement_line_leaves_out_unread_values_and_round_trips_every_float():
    from datetime import UTC, datetime

    from energyhub.ingest.points import DeviceTags, measurement_point
    from energyhub.wire.messages import Measurement, Quality

    message = Measurement(
        ts=datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC),
        session=3,
        seq=41,
        quality=Quality.PARTIAL,
        values={"power_w": 0.1 + 0.2, "voltage_l1": None, "energy_import_wh": 1e21},
        replay=True,
    )
    line, fields = measurement_point(
        "s", "gw-1", "meter", message, {"gw-1/meter": DeviceTags("c-001", "meter")}
    )
    assert line == (
        "device,connection=c-001,device=meter,gateway=gw-1,role=meter,site=s "
        'power_w=0.30000000000000004,energy_import_wh=1e+21,seq=41i,session=3i,quality="partial",replay=true '
        "1780315200123456000"
    )
    assert fields == 6  # power, energy, seq, session, quality, replay
