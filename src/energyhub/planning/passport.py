"""The area passport ("gebiedspaspoort"): one row per company connection, one table for the whole estate.

What the area director needs on one page: the connection and its contracts, PV installed and its potential
(both in kWp and in kWh a year from the simulators' PV model), use from the community file and, when measured
data is given, measured use, peaks and utilisation, and how the company takes part (gateway, group agreement,
battery, chargers). Gas and water use come from the connection's gas and water meters' counters over the
measured period (``energyhub.planning.utility_use``), with the share of the period their readings cover. The
potential comes from a second community file, the planned estate (e.g.
``examples/de-koumen-2026.yaml``); without it the columns stay empty.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from energyhub.domain.topology import Community, DeviceRole
from energyhub.planning.headroom import Headroom
from energyhub.planning.pv_yield import annual_pv_kwh
from energyhub.planning.utility_use import CounterUse, UtilityUse

__all__ = ["COLUMNS", "PERCENT", "passport", "write_passport"]

COLUMNS = {
    "company": "company",
    "connection": "connection",
    "ean": "EAN",
    "loop": "loop",
    "micro_group": "micro group",
    "capacity_kva": "connection kVA",
    "contracted_import_kw": "contracted offtake kW",
    "contracted_export_kw": "contracted feed-in kW",
    "contract_parts": "contract parts",
    "group_agreement": "group agreement",
    "annual_use_kwh": "use kWh/yr (file)",
    "measured_import_kwh": "measured offtake kWh",
    "measured_export_kwh": "measured feed-in kWh",
    "peak_import_kw": "peak offtake kW",
    "utilisation_import": "utilisation",
    "under_half_used": "under half used",
    "gas_m3": "gas m³/yr (measured)",
    "gas_coverage": "gas data coverage",
    "water_m3": "water m³/yr (measured)",
    "water_coverage": "water data coverage",
    "pv_kwp": "PV kWp",
    "pv_kwh_year": "PV kWh/yr",
    "potential_kwp": "potential kWp",
    "potential_kwh_year": "potential kWh/yr",
    "battery_kw": "battery kW",
    "battery_kwh": "battery kWh",
    "chargers": "chargers",
    "charger_kw": "charger kW",
    "gateway": "gateway",
    "participates": "participates",
}
_SUMMED = (
    "capacity_kva",
    "contracted_import_kw",
    "contracted_export_kw",
    "annual_use_kwh",
    "measured_import_kwh",
    "measured_export_kwh",
    "gas_m3",
    "water_m3",
    "pv_kwp",
    "pv_kwh_year",
    "potential_kwp",
    "potential_kwh_year",
    "battery_kw",
    "battery_kwh",
    "chargers",
    "charger_kw",
)
# Shares (0-1), shown as percentages.
PERCENT = ("utilisation_import", "gas_coverage", "water_coverage")


def _parts(limits: Any) -> str:
    parts = []
    if limits.time_blocks:
        parts.append("time blocks")
    if limits.day_ahead:
        parts.append("day-ahead")
    if limits.capacity_limitation:
        parts.append("capacity limitation")
    return ", ".join(parts) or "firm"


def _utility_columns(kind: str, use: CounterUse | None) -> dict[str, Any]:
    if use is None:
        return {f"{kind}_m3": None, f"{kind}_coverage": None}
    return {f"{kind}_m3": round(use.use_m3, 1), f"{kind}_coverage": round(use.coverage, 3)}


def passport(
    community: Community,
    *,
    year: int,
    seed: int = 0,
    planned: Community | None = None,
    measured: list[Headroom] | None = None,
    utilities: dict[str, UtilityUse] | None = None,
) -> list[dict[str, Any]]:
    """One row per connection, in the community file's order; ``utilities``: connection id -> its measured gas
    and water use (``utility_use.read_utility_use``), a connection not in it without either."""
    yield_kwh = annual_pv_kwh(community, year=year, seed=seed)
    potential_kwh = annual_pv_kwh(planned, year=year, seed=seed) if planned is not None else {}
    potential_kwp = {c.id: c.pv_kwp for _l, _m, c in planned.connections()} if planned is not None else {}
    groups = {member: g.id for g in community.group_agreements for member in g.connections}
    found = {h.node: h for h in measured or [] if h.level == "connection"}
    rows = []
    for loop, micro, connection in community.connections():
        devices = connection.devices
        batteries = [d for d in devices if d.role is DeviceRole.BATTERY]
        chargers = [d for d in devices if d.role is DeviceRole.EV]
        head = found.get(connection.id)
        utility = (utilities or {}).get(connection.id, UtilityUse())
        peak = max(head.monthly_max_import_kw.values(), default=math.nan) if head else None
        row: dict[str, Any] = {
            "company": connection.company,
            "connection": connection.id,
            "ean": connection.ean,
            "loop": loop.id,
            "micro_group": micro.id if micro else "",
            "capacity_kva": connection.capacity_kva,
            "contracted_import_kw": connection.limits.import_kw,
            "contracted_export_kw": connection.limits.export_kw,
            "contract_parts": _parts(connection.limits),
            "group_agreement": groups.get(connection.id, ""),
            "annual_use_kwh": connection.annual_use_kwh,
            "measured_import_kwh": round(head.annual_import_kwh, 1) if head else None,
            "measured_export_kwh": round(head.annual_export_kwh, 1) if head else None,
            "peak_import_kw": round(peak, 1) if peak is not None and not math.isnan(peak) else None,
            "utilisation_import": round(head.utilisation_import, 3)
            if head and head.utilisation_import is not None
            else None,
            "under_half_used": head.under_half_used if head else None,
            **_utility_columns("gas", utility.gas),
            **_utility_columns("water", utility.water),
            "pv_kwp": connection.pv_kwp,
            "pv_kwh_year": round(yield_kwh.get(connection.id, 0.0)),
            "potential_kwp": potential_kwp.get(connection.id) if planned is not None else None,
            "potential_kwh_year": round(potential_kwh.get(connection.id, 0.0))
            if planned is not None
            else None,
            "battery_kw": sum(d.power_kw or 0.0 for d in batteries),
            "battery_kwh": sum(d.capacity_kwh or 0.0 for d in batteries),
            "chargers": len(chargers),
            "charger_kw": sum(d.power_kw or 0.0 for d in chargers),
            "gateway": ", ".join(g.id for g in connection.gateways),
            "participates": any(d.role is DeviceRole.METER for d in devices),
        }
        rows.append(row)
    return rows


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"company": f"{len(rows)} connections"}
    for column in _SUMMED:
        values = [
            r[column] for r in rows if isinstance(r[column], int | float) and not isinstance(r[column], bool)
        ]
        out[column] = round(sum(values), 1) if values else None
    out["participates"] = sum(1 for r in rows if r["participates"])
    out["under_half_used"] = sum(1 for r in rows if r["under_half_used"])
    return out


def write_passport(rows: list[dict[str, Any]], folder: Path, *, title: str) -> list[Path]:
    """``passport.csv`` (one row per connection) and ``passport.html`` (the same with a totals row)."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "passport.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    env = Environment(
        loader=PackageLoader("energyhub.planning"), autoescape=select_autoescape(["html", "j2"])
    )
    html = env.get_template("passport.html.j2").render(
        title=title,
        columns=COLUMNS,
        rows=rows,
        totals=totals(rows),
        numeric=set(_SUMMED) | {"peak_import_kw"},
        percent=set(PERCENT),
    )
    html_path = folder / "passport.html"
    html_path.write_text(html, encoding="utf-8")
    return [csv_path, html_path]
