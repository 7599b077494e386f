r"""InfluxDB line protocol, escaped as InfluxDB parses it.

Measurement names escape commas and spaces; tag keys, tag values and field keys also escape equals signs. A
backslash there is left as it is: InfluxDB reads ``\\`` in a tag as two backslashes, and only ``\,``, ``\=``
and ``\ `` as escapes. String field values are double-quoted with backslashes and quotes escaped. Integers carry
an ``i`` suffix so a field keeps one type. What InfluxDB cannot store in a name or tag is refused with a
``LineProtocolError``: a line break (it ends the point), a trailing backslash (it would escape the separator), and
an empty name. Checked against influxd 1.6 by ``tests/test_line_protocol.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache

from energyhub.domain.isp import ensure_utc

__all__ = [
    "FieldValue",
    "LineProtocolError",
    "encode_fields",
    "encode_floats",
    "encode_point",
    "escape_key",
    "escape_measurement",
    "json_number_fields",
    "timestamp_ns",
]

FieldValue = float | int | bool | str

_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ "})
_KEY = str.maketrans({",": "\\,", " ": "\\ ", "=": "\\="})


class LineProtocolError(ValueError):
    """A point that cannot be written as line protocol."""


def _check(text: str, what: str) -> str:
    if not text:
        raise LineProtocolError(f"{what} is empty")
    if "\n" in text or "\r" in text:
        raise LineProtocolError(f"{what} {text!r} contains a line break")
    if text.endswith("\\"):
        raise LineProtocolError(f"{what} {text!r} ends with a backslash, which InfluxDB cannot store there")
    return text


def escape_measurement(name: str) -> str:
    return _check(name, "measurement").translate(_MEASUREMENT)


@lru_cache(maxsize=65_536)
def escape_key(text: str, what: str = "tag") -> str:
    """Escape a tag key, tag value or field key. Cached: the same few hundred names come in every second."""
    return _check(text, what).translate(_KEY)


def _field_value(key: str, value: FieldValue) -> str:
    if type(value) is float:  # the common case first: measurement values
        if not math.isfinite(value):
            raise LineProtocolError(f"field {key!r} is {value}: InfluxDB stores finite numbers only")
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"field {key!r} is {value}: InfluxDB stores finite numbers only")
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise LineProtocolError(f"field {key!r} has unsupported type {type(value).__name__}")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_ns(t: datetime) -> int:
    if t.tzinfo is not UTC:
        ensure_utc(t)  # refuses a naive time; an aware one subtracts below in any zone
    # Integer arithmetic: float seconds lose sub-microsecond precision and can round across a second boundary.
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def encode_point(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], t: datetime | int
) -> str:
    """One line; tags sorted by key (what InfluxDB recommends for write performance); ``t`` in ns if an int."""
    if not fields:
        raise LineProtocolError(f"point of {measurement!r} has no fields")
    head = escape_measurement(measurement)
    for key in sorted(tags):
        value = tags[key]
        if value == "":
            continue  # InfluxDB has no empty tag values: an empty tag is an absent tag
        head += f",{escape_key(key, 'tag key')}={escape_key(value, 'tag value')}"
    ns = t if isinstance(t, int) else timestamp_ns(t)
    return f"{head} {encode_fields(fields)} {ns}"


@lru_cache(maxsize=4_096)
def _floats_template(names: tuple[str, ...]) -> str:
    """``key=%r,key=%r...`` for these field names: a device sends the same names every poll, so built once."""
    return ",".join(f"{escape_key(name, 'field key').replace('%', '%%')}=%r" for name in names)


def encode_floats(values: Mapping[str, float | None]) -> tuple[str, int]:
    """The field set of float values whose finiteness the caller has checked (a validated message), None left
    out (InfluxDB has no null): the text and its number of fields. One ``%`` format at C speed per message
    instead of one string per value; a message with a missing value takes the slower way."""
    floats = tuple(values.values())
    if None not in floats:
        return _floats_template(tuple(values)) % floats, len(floats)
    present = {key: value for key, value in values.items() if value is not None}
    if not present:
        return "", 0
    return _floats_template(tuple(present)) % tuple(present.values()), len(present)


_JSON_VALUES = b'"values":{'


def json_number_fields(payload: bytes, count: int) -> str | None:
    """The ``values`` object of a JSON payload already validated as ``count`` finite numbers under names that need
    no escaping (a Measurement), as line protocol fields, taken from the text as the sender wrote it; None when
    the text is not in the plain form this reads (escapes, whitespace, a null), and the caller encodes the parsed
    values instead.

    Why: formatting 20 floats again costs more than all the rest of a message's line (bench/ingest.py). InfluxDB
    parses a JSON number (``-1.5``, ``12``, ``1e-7``, ``2E+5``) to the same float64 as Python does
    (tests/io/test_json_number_fields.py); a number without a decimal point or an ``i`` is a float to it."""
    start = payload.find(_JSON_VALUES)
    end = payload.find(b"}", start)
    # Once only: with the key twice the parsed values need not be the first ones.
    if start < 0 or end < 0 or payload.count(_JSON_VALUES) != 1:
        return None
    inner = payload[start + len(_JSON_VALUES) : end]
    # No backslash: every name is written as it reads. No whitespace and no null: every pair is "name":number.
    # One colon per value: a repeated name (one value parsed) would leave fewer values than pairs.
    if (
        b"\\" in inner
        or b" " in inner
        or b"\n" in inner
        or b"\t" in inner
        or b"\r" in inner
        or b"null" in inner
        or inner.count(b":") != count
    ):
        return None
    return inner.replace(b'":', b"=").replace(b'"', b"").decode("ascii")


def encode_fields(fields: Mapping[str, FieldValue]) -> str:
    """The field set of a line: ``key=value`` pairs joined by commas."""
    if not fields:
        raise LineProtocolError("a point needs at least one field")
    parts = []
    for key, value in fields.items():
        # Finite floats, the bulk of every point, inline (x - x is 0.0 only for finite x).
        if type(value) is float and value - value == 0.0:
            parts.append(f"{escape_key(key, 'field key')}={value!r}")
        else:
            parts.append(f"{escape_key(key, 'field key')}={_field_value(key, value)}")
    return ",".join(parts)
