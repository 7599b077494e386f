"""Quarter hours per device and per node from what was read for them: the decide step of the aggregator, pure.

A device's quarter hour has its power's mean, peak and minimum over the readings inside it, how many readings,
the share of its minutes that had one (``coverage``), and, for a device with energy counters, the imported and
exported energy counted by them (``counters.py``), with every reset found.

A node's quarter hour is the sum of its connections, each counted by its grid meter (the device of role
``meter``): the connection's net energy from the counters where the meter has them (``metered``), else its mean
power over the quarter hour. At a connection, imported and exported energy are its meter's two registers, as the
DSO settles them; at a node above (loop, micro group, hub), the node imports what its connections take together
less what they feed in, per quarter hour: a loop's import is ``max(net, 0)``, its feed-in ``max(-net, 0)``, the
quarter-hour balance its contract is measured on (and what control budgets, ``control/quarter_hour.py``). The
peak is the highest one-minute mean of the summed meters' power. The node's limits in force then come with it,
and the energy beyond each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from energyhub.aggregates.counters import Reset, counter_energy
from energyhub.domain.isp import ISP
from energyhub.domain.limits import LimitBook
from energyhub.domain.network import Network
from energyhub.wire.roles import ENERGY_EXPORT_WH, ENERGY_IMPORT_WH

__all__ = [
    "COUNTERS",
    "DeviceKey",
    "DeviceQuarter",
    "MinutePower",
    "NodeQuarter",
    "PowerStats",
    "device_quarters",
    "node_quarters",
]

ISP_S = ISP.total_seconds()
ISP_H = ISP_S / 3600
COUNTERS = (ENERGY_IMPORT_WH, ENERGY_EXPORT_WH)


@dataclass(frozen=True, slots=True, order=True)
class DeviceKey:
    gateway: str
    device: str


@dataclass(frozen=True, slots=True)
class PowerStats:
    """A device's power over one quarter hour, as InfluxDB aggregated it."""

    mean_w: float
    max_w: float
    min_w: float
    count: int


@dataclass(frozen=True, slots=True)
class MinutePower:
    """A device's mean power in one minute (epoch s of its start)."""

    t: float
    mean_w: float | None  # None: a minute with readings but none of power


@dataclass
class DeviceQuarter:
    key: DeviceKey
    start: float  # epoch s
    power: PowerStats | None = None
    minutes: int = 0  # minutes of the 15 with a reading
    import_wh: float | None = None
    export_wh: float | None = None
    resets: list[tuple[str, Reset]] = field(default_factory=list)  # (counter, reset)

    @property
    def coverage(self) -> float:
        return self.minutes / 15

    @property
    def net_wh(self) -> float | None:
        if self.import_wh is None or self.export_wh is None:
            return None
        return self.import_wh - self.export_wh


def device_quarters(
    starts: Sequence[float],
    counters: Mapping[DeviceKey, Mapping[str, Sequence[tuple[float, float]]]],
    power: Mapping[DeviceKey, Mapping[float, PowerStats]],
    minutes: Mapping[DeviceKey, Sequence[MinutePower]],
) -> dict[DeviceKey, dict[float, DeviceQuarter]]:
    """Every device's quarter hours that have anything (a reading inside, or a counter interval over it)."""
    out: dict[DeviceKey, dict[float, DeviceQuarter]] = {}
    for key in sorted(set(counters) | set(power) | set(minutes)):
        per: dict[float, DeviceQuarter] = {}
        stats = power.get(key, {})
        counted = minutes.get(key, ())
        for start in starts:
            quarter = DeviceQuarter(key, start, power=stats.get(start))
            quarter.minutes = sum(1 for m in counted if start <= m.t < start + ISP_S)
            for name in COUNTERS:
                energy = counter_energy(counters.get(key, {}).get(name, ()), start, start + ISP_S)
                if energy is None:
                    continue
                setattr(quarter, "import_wh" if name == ENERGY_IMPORT_WH else "export_wh", energy.wh)
                quarter.resets.extend((name, r) for r in energy.resets)
            if quarter.power is not None or quarter.import_wh is not None or quarter.export_wh is not None:
                per[start] = quarter
        if per:
            out[key] = per
    return out


@dataclass
class NodeQuarter:
    node: str
    level: str
    start: float
    net_wh: float
    import_wh: float
    export_wh: float
    peak_kw: float | None
    limit_import_kw: float | None
    limit_export_kw: float | None
    connections: int  # under the node
    measured: int  # of them with a reading this quarter hour
    metered: int  # of them counted from the meter's energy counters
    resets: int

    @property
    def mean_kw(self) -> float:
        return self.net_wh / 1000 / ISP_H

    @property
    def over_import_wh(self) -> float:
        return _beyond(self.import_wh, self.limit_import_kw)

    @property
    def over_export_wh(self) -> float:
        return _beyond(self.export_wh, self.limit_export_kw)


def _beyond(wh: float, limit_kw: float | None) -> float:
    """The energy of a quarter hour beyond what ``limit_kw`` allows in it (0 within it, or with no limit)."""
    return 0.0 if limit_kw is None else max(0.0, wh - limit_kw * 1000 * ISP_H)


@dataclass
class _Connection:
    """One connection's quarter hour, from its grid meters."""

    net_wh: float = 0.0
    import_wh: float = 0.0
    export_wh: float = 0.0
    metered: bool = True
    resets: int = 0
    minutes: dict[float, float] = field(default_factory=dict)  # minute start -> summed mean power, W


def _connection(
    meters: Sequence[DeviceKey],
    quarters: Mapping[DeviceKey, Mapping[float, DeviceQuarter]],
    minutes: Mapping[DeviceKey, Sequence[MinutePower]],
    start: float,
) -> _Connection | None:
    out = _Connection()
    seen = False
    for key in meters:
        quarter = quarters.get(key, {}).get(start)
        if quarter is None:
            continue
        net = quarter.net_wh
        if net is not None and quarter.import_wh is not None and quarter.export_wh is not None:
            out.import_wh += quarter.import_wh
            out.export_wh += quarter.export_wh
        elif quarter.power is not None:
            net = quarter.power.mean_w * ISP_H  # no counters: the mean power over the quarter hour
            out.import_wh += max(net, 0.0)
            out.export_wh += max(-net, 0.0)
            out.metered = False
        else:
            continue
        seen = True
        out.net_wh += net
        out.resets += len(quarter.resets)
        for m in minutes.get(key, ()):
            if m.mean_w is not None and start <= m.t < start + ISP_S:
                out.minutes[m.t] = out.minutes.get(m.t, 0.0) + m.mean_w
    return out if seen else None


def _finite_kw(watts: float) -> float | None:
    return None if math.isinf(watts) else watts / 1000


def node_quarters(
    network: Network,
    meters: Mapping[str, Sequence[DeviceKey]],
    quarters: Mapping[DeviceKey, Mapping[float, DeviceQuarter]],
    minutes: Mapping[DeviceKey, Sequence[MinutePower]],
    limits: LimitBook,
    starts: Sequence[float],
) -> list[NodeQuarter]:
    """Every node's quarter hours in which at least one of its connections was measured."""
    out: list[NodeQuarter] = []
    for start in starts:
        per_connection = [
            _connection(meters.get(cid, ()), quarters, minutes, start) for cid in network.connection_ids
        ]
        for n, node in enumerate(network.node_ids):
            under = [c for c in range(len(network.connection_ids)) if network.incidence[n, c] > 0]
            parts = [p for p in (per_connection[c] for c in under) if p is not None]
            if not parts:
                continue  # nothing known: no point, rather than a zero
            net = sum(p.net_wh for p in parts)
            level = str(network.levels[n])
            if level == "connection":
                imp, exp = sum(p.import_wh for p in parts), sum(p.export_wh for p in parts)
            else:
                imp, exp = max(net, 0.0), max(-net, 0.0)
            # The peak over the minutes every measured connection has: a minute missing one would read low.
            shared = set.intersection(*(set(p.minutes) for p in parts))
            peak = max((sum(p.minutes[t] for p in parts) / 1000 for t in shared), default=None)
            limit = limits.limit_at(node, datetime.fromtimestamp(start, UTC))
            out.append(
                NodeQuarter(
                    node=node,
                    level=level,
                    start=start,
                    net_wh=net,
                    import_wh=imp,
                    export_wh=exp,
                    peak_kw=peak,
                    limit_import_kw=_finite_kw(limit.import_w),
                    limit_export_kw=_finite_kw(limit.export_w),
                    connections=len(under),
                    measured=len(parts),
                    metered=sum(1 for p in parts if p.metered),
                    resets=sum(p.resets for p in parts),
                )
            )
    return out
