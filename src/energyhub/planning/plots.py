"""The plan's results as pictures: what the area director looks at before reading a table.

matplotlib with the Agg backend (files only, no display: gateways and CI machines have none). Each function
writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plot_curtailment_by_month", "plot_headroom", "plot_sweep", "plot_years"]

PV_USED = "#f2b705"
CURTAILED = "#d9534f"
BATTERY = "#2a9d8f"
GRID = "#6c757d"


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_years(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Per year: PV used and curtailed (MWh), self-consumption, violations, battery cycles and EV service."""
    years = [str(r["year"]) for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    fig.suptitle(title)
    used = [(r["pv_offered_kwh"] - r["curtailed_kwh"]) / 1000 for r in rows]
    curtailed = [r["curtailed_kwh"] / 1000 for r in rows]
    ax = axes[0][0]
    ax.bar(years, used, color=PV_USED, label="PV used")
    ax.bar(years, curtailed, bottom=used, color=CURTAILED, label="PV curtailed")
    for x, (u, c, r) in enumerate(zip(used, curtailed, rows, strict=True)):
        ax.annotate(f"{r['curtailed_pct']:.1f} %", (x, u + c), ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("MWh")
    ax.set_title("PV on offer: used and curtailed")
    ax.legend(loc="lower right")
    ax = axes[0][1]
    ax.plot(years, [r["self_consumption_pct"] for r in rows], marker="o", color=BATTERY)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title("Self-consumption of the PV on offer")
    ax = axes[1][0]
    ax.bar(years, [r["violations"] for r in rows], color=GRID)
    for x, r in enumerate(rows):
        ax.annotate(
            f"{r['violation_kwh'] / 1000:.1f} MWh over",
            (x, r["violations"]),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_title("Limit violations (node quarter hours over a contract)")
    ax = axes[1][1]
    served = [
        100.0 * r["ev_served_kwh"] / r["ev_requested_kwh"] if r["ev_requested_kwh"] else 100.0 for r in rows
    ]
    ax.plot(years, served, marker="o", color=PV_USED, label="EV energy served, % of asked")
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    twin = ax.twinx()
    twin.bar(
        years, [r["battery_cycles"] for r in rows], color=BATTERY, alpha=0.4, label="battery full cycles"
    )
    twin.set_ylabel("equivalent full cycles")
    ax.set_title("EV service and battery use")
    lines = ax.get_legend_handles_labels()
    bars = twin.get_legend_handles_labels()
    ax.legend(lines[0] + bars[0], lines[1] + bars[1], loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_curtailment_by_month(monthly: dict[int, dict[str, float]], path: Path, title: str) -> Path:
    """Curtailed MWh per calendar month, one line per year."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for year, months in monthly.items():
        by_month = {int(key[5:7]): kwh / 1000 for key, kwh in months.items()}
        xs = sorted(by_month)
        ax.plot(xs, [by_month[m] for m in xs], marker="o", label=str(year))
    ax.set_xticks(range(1, 13), ["J", "F", "M", "A", "M", "J", "J", "A", "S", "O", "N", "D"])
    ax.set_ylabel("curtailed MWh")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_headroom(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Each loop's and the hub's highest quarter hour against its offtake limit, per year."""
    wanted = [r for r in rows if r["level"] in ("loop", "hub") and r.get("utilisation_import") is not None]
    nodes = sorted({r["node"] for r in wanted}, key=lambda n: (n != "hub", n))
    years = sorted({r["year"] for r in wanted})
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(years), 1)
    for j, year in enumerate(years):
        values = {r["node"]: 100.0 * r["utilisation_import"] for r in wanted if r["year"] == year}
        ax.bar(
            [i + j * width for i in range(len(nodes))],
            [values.get(n, 0.0) for n in nodes],
            width,
            label=str(year),
        )
    ax.axhline(100, color=CURTAILED, linestyle="--", linewidth=1, label="the limit")
    ax.axhline(50, color=GRID, linestyle=":", linewidth=1, label="half used")
    ax.set_xticks([i + width * (len(years) - 1) / 2 for i in range(len(nodes))], nodes)
    ax.set_ylabel("% of the offtake limit")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sweep(
    rows: list[dict[str, Any]], target_pct: float, chosen: float | None, kind: str, path: Path, title: str
) -> Path:
    """Curtailment against the swept size, the target, and the answer (the smallest battery or the most PV
    meeting it)."""
    rows = sorted(rows, key=lambda r: r["size"])
    battery = kind == "battery"
    scale, unit = (1000.0, "MWh") if battery else (1.0, "kWp")
    sizes = [r["size"] / scale for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(sizes, [r["curtailed_pct"] for r in rows], marker="o", color=CURTAILED, label="curtailed")
    ax.axhline(target_pct, color=GRID, linestyle="--", label=f"target {target_pct:g} %")
    if chosen is not None:
        what = "smallest meeting it" if battery else "most meeting it"
        ax.axvline(chosen / scale, color=BATTERY, label=f"{what}: {chosen / scale:g} {unit}")
    ax.set_xlabel(f"battery {unit}" if battery else f"PV added, {unit}")
    ax.set_ylabel("% of the PV on offer curtailed")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)
