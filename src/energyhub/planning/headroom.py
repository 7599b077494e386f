"""Headroom per connection and per loop: how far physical capacity, contracted capacity and measured peaks lie
apart, and when spare capacity is there for another member to use.

From a year (or any span) of measured quarter hours (``MeterSeries``) and the community file:

- the monthly maximum quarter-hour offtake and feed-in (kW: the quarter hour's kWh times four, what the DSO
  measures);
- the 12-month utilisation, the highest quarter hour against the contracted capacity. The DSO may take back
  capacity that stays under half used; such a node is flagged.
- annual offtake and feed-in;
- spare capacity by hour of day, in the hour's busier quarter hours (the 10th percentile of what is left): the
  contracted offtake minus what was taken, which a night charger could use, and the contracted feed-in minus what
  was fed in, which a day producer could use (through a group agreement or a hub contract).

A loop's figures are those of the sum of its connections with data, against the loop's own limits; how many of
its connections had data is part of the row, since a loop with missing members is a lower bound.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from energyhub.domain.topology import Community
from energyhub.planning.meter_data import MeterSeries

__all__ = ["Headroom", "headroom_report", "node_headroom"]


@dataclass(frozen=True)
class Headroom:
    node: str
    level: str
    capacity_kva: float | None
    contracted_import_kw: float | None
    contracted_export_kw: float | None
    monthly_max_import_kw: dict[str, float]  # "YYYY-MM" -> kW
    monthly_max_export_kw: dict[str, float]
    utilisation_import: float | None  # highest quarter hour / contracted offtake
    utilisation_export: float | None
    annual_import_kwh: float
    annual_export_kwh: float
    spare_import_kw_by_hour: list[float]  # 24 values, local hours
    spare_export_kw_by_hour: list[float]
    quarter_hours: int
    gaps: int
    measured_connections: str = "1/1"  # a loop's connections with data, of all its connections

    @property
    def under_half_used(self) -> bool:
        return self.utilisation_import is not None and self.utilisation_import < 0.5

    def row(self) -> dict[str, object]:
        """One flat CSV row."""
        out: dict[str, object] = {
            "node": self.node,
            "level": self.level,
            "capacity_kva": self.capacity_kva,
            "contracted_import_kw": self.contracted_import_kw,
            "contracted_export_kw": self.contracted_export_kw,
            "peak_import_kw": max(self.monthly_max_import_kw.values(), default=math.nan),
            "peak_export_kw": max(self.monthly_max_export_kw.values(), default=math.nan),
            "utilisation_import": self.utilisation_import,
            "utilisation_export": self.utilisation_export,
            "under_half_used": self.under_half_used,
            "annual_import_kwh": round(self.annual_import_kwh, 1),
            "annual_export_kwh": round(self.annual_export_kwh, 1),
            "quarter_hours": self.quarter_hours,
            "gaps": self.gaps,
            "measured_connections": self.measured_connections,
        }
        for hour, spare in enumerate(self.spare_import_kw_by_hour):
            out[f"spare_import_kw_h{hour:02d}"] = round(spare, 1)
        for hour, spare in enumerate(self.spare_export_kw_by_hour):
            out[f"spare_export_kw_h{hour:02d}"] = round(spare, 1)
        return out


def node_headroom(
    node: str,
    level: str,
    series: MeterSeries,
    *,
    capacity_kva: float | None,
    import_kw: float | None,
    export_kw: float | None,
    timezone: str = "Europe/Amsterdam",
) -> Headroom:
    index = pd.DatetimeIndex(series.isp_starts)
    imp_kw = pd.Series(series.import_kwh * 4, index=index)
    exp_kw = pd.Series(series.export_kwh * 4, index=index)
    local = index.tz_convert(ZoneInfo(timezone))
    months = local.strftime("%Y-%m")
    monthly_imp = imp_kw.groupby(months).max().dropna()
    monthly_exp = exp_kw.groupby(months).max().dropna()
    peak_imp, peak_exp = imp_kw.max(), exp_kw.max()
    nothing = pd.Series(np.nan, index=index)
    spare_imp = (import_kw - imp_kw) if import_kw is not None else nothing
    spare_exp = (export_kw - exp_kw) if export_kw is not None else nothing
    imp_by_hour = spare_imp.groupby(local.hour).quantile(0.10)
    exp_by_hour = spare_exp.groupby(local.hour).quantile(0.10)
    return Headroom(
        node=node,
        level=level,
        capacity_kva=capacity_kva,
        contracted_import_kw=import_kw,
        contracted_export_kw=export_kw,
        monthly_max_import_kw={m: round(float(v), 3) for m, v in monthly_imp.items()},
        monthly_max_export_kw={m: round(float(v), 3) for m, v in monthly_exp.items()},
        utilisation_import=float(peak_imp / import_kw) if import_kw and not math.isnan(peak_imp) else None,
        utilisation_export=float(peak_exp / export_kw) if export_kw and not math.isnan(peak_exp) else None,
        annual_import_kwh=float(np.nansum(series.import_kwh)),
        annual_export_kwh=float(np.nansum(series.export_kwh)),
        spare_import_kw_by_hour=[float(imp_by_hour.get(h, math.nan)) for h in range(24)],
        spare_export_kw_by_hour=[float(exp_by_hour.get(h, math.nan)) for h in range(24)],
        quarter_hours=len(index),
        gaps=len(series.gaps),
    )


def _loop_series(parts: list[MeterSeries]) -> MeterSeries:
    """The sum of the members' series; a quarter hour missing at any member is missing for the loop."""
    index = sorted(set().union(*(p.isp_starts for p in parts)))
    position = {t: i for i, t in enumerate(index)}
    imp = np.zeros(len(index))
    exp = np.zeros(len(index))
    for part in parts:
        rows = [position[t] for t in part.isp_starts]
        full_imp = np.full(len(index), np.nan)
        full_exp = np.full(len(index), np.nan)
        full_imp[rows], full_exp[rows] = part.import_kwh, part.export_kwh
        imp, exp = imp + full_imp, exp + full_exp
    gaps = [t for t, a, b in zip(index, imp, exp, strict=True) if np.isnan(a) or np.isnan(b)]
    return MeterSeries(index, imp, exp, gaps)


def headroom_report(community: Community, measured: dict[str, MeterSeries]) -> list[Headroom]:
    """Every connection with data, then every loop as the sum of its connections with data."""
    tz = community.community.timezone
    out: list[Headroom] = []
    for _loop, _micro, connection in community.connections():
        series = measured.get(connection.id)
        if series is None:
            continue
        limits = connection.limits
        out.append(
            node_headroom(
                connection.id,
                "connection",
                series,
                capacity_kva=connection.capacity_kva,
                import_kw=limits.import_kw,
                export_kw=limits.export_kw,
                timezone=tz,
            )
        )
    for loop in community.loops:
        members = [c.id for c in loop.connections] + [c.id for m in loop.micro_groups for c in m.connections]
        parts = [measured[c] for c in members if c in measured]
        if not parts:
            continue
        found = node_headroom(
            loop.id,
            "loop",
            _loop_series(parts),
            capacity_kva=loop.capacity_kva,
            import_kw=loop.limits.import_kw,
            export_kw=loop.limits.export_kw,
            timezone=tz,
        )
        out.append(dataclasses.replace(found, measured_connections=f"{len(parts)}/{len(members)}"))
    return out
