"""The ingest's shortcut from a measurement's JSON to line protocol: the values as the sender wrote them, stored by
the real influxd as the same float64 the parsed message holds, or no shortcut at all."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from energyhub.io.influx import InfluxClient
from energyhub.io.line_protocol import json_number_fields
from energyhub.wire.messages import Measurement, MessageError, Quality, decode, encode

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HEAD = '{"ts":"2026-06-01T12:00:00Z","session":1,"seq":1,"quality":"good","values":'

# JSON numbers of every shape a sender may write, and the edges of float64.
NUMBERS = [
    "0",
    "-0",
    "12",
    "-1.5",
    "0.1",
    "1e-7",
    "2E+5",
    "1.0E-5",
    "123456789012345678901234567890",
    "1.7976931348623157e308",
    "4.9e-324",
    "1e-320",
    "1e-400",  # below the smallest float64: 0.0 to both
    "2.2250738585072014e-308",
    "3.141592653589793238462643383279",
]


def _fields(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in (pair.split("=") for pair in text.split(","))}


def test_our_encoding_reads_as_the_parsed_values():
    m = Measurement(ts=NOW, session=1, seq=1, quality=Quality.GOOD, values={"p_w": -1250.5, "e_wh": 1e-7})
    payload = encode(m)
    text = json_number_fields(payload, len(decode(Measurement, payload).values))
    assert text is not None
    assert _fields(text) == m.values


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ('{"p_w": 1.5}', "whitespace"),
        ('{"p_w":1.5,\n"q_w":2.0}', "a line break"),
        ('{"p\\u005fw":1.5}', "an escape"),
        ('{"p_w":1.5,"q_w":null}', "a null"),
        ('{"p_w":1.5,"p_w":2.5}', "a repeated name"),
    ],
)
def test_what_it_does_not_read_it_leaves_to_the_parsed_values(values, why):
    head = HEAD.replace('"good"', '"partial"') if "null" in values else HEAD
    payload = (head + values + "}").encode()
    parsed = decode(Measurement, payload)  # valid: the shortcut only ever sees validated payloads
    assert json_number_fields(payload, len(parsed.values)) is None, why


def test_a_repeated_values_key_takes_no_shortcut():
    payload = (HEAD + '{"p_w":1.5},"values":{"p_w":2.5}}').encode()
    parsed = decode(Measurement, payload)  # JSON keeps the last
    assert parsed.values == {"p_w": 2.5}
    assert json_number_fields(payload, len(parsed.values)) is None


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
        st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**20), 10**20),
        max_size=20,
    )
)
def test_any_valid_payload_reads_as_its_parsed_values(values):
    payload = (HEAD + json.dumps(values, separators=(",", ":")) + "}").encode()
    try:
        parsed = decode(Measurement, payload)
    except MessageError:
        return  # e.g. a reserved name: a dead letter, never a line
    text = json_number_fields(payload, len(parsed.values))
    if text is None:
        return
    assert (_fields(text) if text else {}) == parsed.values


def test_influxd_stores_each_json_number_as_python_parses_it(services, unique_id):
    payload = (HEAD + "{" + ",".join(f'"v{i}":{n}' for i, n in enumerate(NUMBERS)) + "}}").encode()
    parsed = decode(Measurement, payload)
    text = json_number_fields(payload, len(parsed.values))
    assert text is not None
    s = services.settings

    async def round_trip() -> dict:
        async with InfluxClient(url=s.influx_url, database=s.influx_db) as client:
            await client.write(f"json_numbers,probe={unique_id} {text} {int(NOW.timestamp()) * 10**9}")
            series = await client.query(f"SELECT * FROM json_numbers WHERE probe = '{unique_id}'")
        return series[0].rows()[0]

    row = asyncio.run(round_trip())
    for i, number in enumerate(NUMBERS):
        assert row[f"v{i}"] == parsed.values[f"v{i}"] == float(number), number
