import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from energyhub.wire.messages import (
    ControllerHeartbeat,
    GatewayHealth,
    GatewayState,
    Measurement,
    MessageError,
    Quality,
    Setpoint,
    SetpointAck,
    SetpointStatus,
    decode,
    encode,
)

NOW = datetime(2026, 6, 1, 12, 0, 1, 250000, tzinfo=UTC)

EXAMPLES = [
    GatewayState(
        online=True,
        session=3,
        ts=NOW,
        agent_version="0.1.0",
        health=GatewayHealth(devices_ok=4, devices_failing=1, buffer_depth=12, last_publish=NOW),
    ),
    GatewayState(online=False, session=3, ts=NOW),
    Measurement(
        ts=NOW, session=3, seq=17, quality=Quality.PARTIAL, values={"p_w": -1250.5, "e_import_wh": None}
    ),
    Measurement(ts=NOW, session=3, seq=18, quality=Quality.GOOD, values={"p_w": 10.0}, replay=True),
    Setpoint(
        id="sp-1",
        name="active_power_limit_pct",
        value=40.0,
        created=NOW,
        expires=NOW + timedelta(seconds=30),
        reason="hub export limit",
    ),
    SetpointAck(id="sp-1", status=SetpointStatus.APPLIED, ts=NOW, readback=40.0),
    SetpointAck(id="sp-2", status=SetpointStatus.REJECTED, ts=NOW, reason="expired"),
    ControllerHeartbeat(alive=True, ts=NOW, cycle=99, period_s=1.0, policy="mpc"),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    assert decode(type(message), encode(message)) == message


def test_timestamps_are_utc_on_the_wire():
    local = datetime(2026, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    m = Measurement(ts=local, session=0, seq=0, quality=Quality.GOOD, values={"p_w": 1.0})
    assert b'"ts":"2026-06-01T12:00:00Z"' in encode(m)


GOOD = '{"ts":"2026-06-01T12:00:00Z","session":1,"seq":1,"quality":"good","values":{"p_w":1.5}}'


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (GOOD.replace('"good"', '"fine"'), "quality: Input should be 'good', 'partial' or 'bad'"),
        (GOOD.replace("Z", ""), "ts: Input should have timezone info"),
        (GOOD.replace('"session":1', '"session":"1"'), "session: Input should be a valid integer"),
        (GOOD.replace('"seq":1', '"seq":-1'), "seq: Input should be greater than or equal to 0"),
        (GOOD.replace("1.5", "NaN"), "values.p_w: Input should be a finite number"),
        (GOOD.replace("1.5", "true"), "values.p_w: Input should be a valid number"),
        (GOOD.replace("1.5", "1e999"), "values.p_w: Input should be a finite number"),
        (GOOD.replace('"p_w"', '"P W"'), "String should match pattern"),
        (GOOD.replace("}}", '},"extra":1}'), "extra: Extra inputs are not permitted"),
        (GOOD.replace("1.5", "null"), "quality is 'good' but 1 of 1 values are null, which is 'bad'"),
        (GOOD[:-5], "Invalid JSON"),
        ("[]", "Input should be an object"),
        ("", "Invalid JSON"),
        (b"\xff\xfe", "Invalid JSON"),
    ],
)
def test_bad_measurements_are_rejected_with_the_field(payload, reason):
    with pytest.raises(MessageError) as info:
        decode(Measurement, payload)
    assert str(info.value).startswith("Measurement: ")
    assert reason in str(info.value)


def test_setpoint_rules():
    with pytest.raises(MessageError, match="expires must be after created"):
        decode(
            Setpoint,
            '{"id":"a","name":"x","value":1,"created":"2026-06-01T12:00:00Z",'
            '"expires":"2026-06-01T12:00:00Z"}',
        )
    with pytest.raises(MessageError, match="a rejected setpoint needs a reason"):
        decode(SetpointAck, '{"id":"a","status":"rejected","ts":"2026-06-01T12:00:00Z"}')


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data):
    with contextlib.suppress(MessageError):
        decode(Measurement, data)


@given(
    values=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
        st.floats(allow_nan=False, allow_infinity=False),
        max_size=20,
    ),
    seq=st.integers(min_value=0, max_value=2**53),
)
def test_measurement_round_trip_property(values, seq):
    m = Measurement(ts=NOW, session=1, seq=seq, quality=Quality.GOOD, values=values)
    assert decode(Measurement, encode(m)) == m


def test_confirmations_are_exact_inclusive_ranges_within_their_bound():
    from datetime import UTC, datetime

    from energyhub.wire.messages import MAX_RANGES, DeliveryConfirmation, confirmations

    now = datetime(2026, 6, 1, tzinfo=UTC)
    (one,) = confirmations(3, [5, 1, 2, 3, 3, 9, 8], now)
    assert (one.session, one.ranges) == (3, [(1, 3), (5, 5), (8, 9)])
    many = confirmations(3, list(range(0, 4 * MAX_RANGES + 2, 2)), now)  # every other: no two join
    assert [len(c.ranges) for c in many] == [MAX_RANGES, MAX_RANGES, 1]
    assert {s for c in many for a, b in c.ranges for s in range(a, b + 1)} == set(
        range(0, 4 * MAX_RANGES + 2, 2)
    )
    with pytest.raises(MessageError, match="ends before it starts"):
        decode(DeliveryConfirmation, b'{"session": 1, "ranges": [[5, 4]], "ts": "2026-06-01T00:00:00Z"}')
