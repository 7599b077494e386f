"""The settlement on paper: the full ledger as CSV, the month's balance, and a statement per member and month as
HTML (printable; a browser's print to PDF gives the PDF).

``ledger.csv`` is the auditable record: one row per quarter hour and member with offtake, feed-in, what was
received from and supplied to the community, and grid import and export, all in whole Wh. ``balance.csv`` sums a
month over all members and states the identities that must hold (received = supplied; offtake = received + grid
import; feed-in = supplied + grid export) with their differences, which are 0 Wh by construction.
"""

from __future__ import annotations

import csv
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]
from jinja2 import Environment, PackageLoader, select_autoescape

from energyhub.planning.ledger import Ledger, Prices, monthly_statements, write_statements

__all__ = ["write_balance", "write_ledger", "write_settlement"]


def write_ledger(ledger: Ledger, path: Path) -> Path:
    n, T = ledger.offtake_wh.shape
    frame = pd.DataFrame(
        {
            "isp_start": np.tile(pd.DatetimeIndex(ledger.isp_starts).strftime("%Y-%m-%dT%H:%M:%SZ"), n),
            "member": np.repeat(ledger.members, T),
            "offtake_wh": ledger.offtake_wh.ravel(),
            "feed_in_wh": ledger.feed_in_wh.ravel(),
            "received_wh": ledger.received_wh.ravel(),
            "supplied_wh": ledger.supplied_wh.ravel(),
            "grid_import_wh": ledger.grid_import_wh.ravel(),
            "grid_export_wh": ledger.grid_export_wh.ravel(),
        }
    )
    frame.to_csv(path, index=False)
    return path


def write_balance(
    ledger: Ledger,
    path: Path,
    *,
    timezone: str,
    storage: set[str] | frozenset[str] = frozenset(),
    plaza: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, int | str]]:
    """Per month: totals, storage and plaza apart, and the identities' differences (0 Wh by construction). With
    storage members (a battery's own connection) apart, the community's balance reads: what the other members
    took = what they fed in + storage discharge - storage charge + grid import - grid export."""
    tz = ZoneInfo(timezone)
    is_storage = np.array([m in storage for m in ledger.members])
    is_plaza = np.array([m in plaza for m in ledger.members])
    months = np.array([t.astimezone(tz).strftime("%Y-%m") for t in ledger.isp_starts])
    rows: list[dict[str, int | str]] = []
    for month in sorted(set(months)):
        cols = months == month

        def total(
            a: npt.NDArray[np.int64],
            cols: npt.NDArray[np.bool_] = cols,
            rows: npt.NDArray[np.bool_] | None = None,
        ) -> int:
            return int(a[:, cols].sum() if rows is None else a[rows][:, cols].sum())

        offtake, feed_in = total(ledger.offtake_wh), total(ledger.feed_in_wh)
        received, supplied = total(ledger.received_wh), total(ledger.supplied_wh)
        grid_import, grid_export = total(ledger.grid_import_wh), total(ledger.grid_export_wh)
        charge, discharge = (
            total(ledger.offtake_wh, rows=is_storage),
            total(ledger.feed_in_wh, rows=is_storage),
        )
        rows.append(
            {
                "month": month,
                "offtake_wh": offtake,
                "feed_in_wh": feed_in,
                "received_wh": received,
                "supplied_wh": supplied,
                "grid_import_wh": grid_import,
                "grid_export_wh": grid_export,
                "received_minus_supplied_wh": received - supplied,
                "offtake_minus_parts_wh": offtake - received - grid_import,
                "feed_in_minus_parts_wh": feed_in - supplied - grid_export,
                "storage_charge_wh": charge,
                "storage_discharge_wh": discharge,
                "plaza_offtake_wh": total(ledger.offtake_wh, rows=is_plaza),
                "use_minus_sources_wh": (offtake - charge)
                - (feed_in - discharge)
                - (discharge - charge)
                - (grid_import - grid_export),
            }
        )
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def write_settlement(
    ledger: Ledger,
    prices: Prices,
    contracted_kw: npt.NDArray[np.float64],
    out: Path,
    *,
    community: str,
    key: str,
    timezone: str,
    names: dict[str, str] | None = None,
    storage: set[str] | frozenset[str] = frozenset(),
    plaza: set[str] | frozenset[str] = frozenset(),
) -> list[Path]:
    """``ledger.csv``, ``balance.csv`` and ``statements/<member>-<month>.csv`` and ``.html`` in ``out``;
    ``names`` gives a member's company name for the statement's heading."""
    out.mkdir(parents=True, exist_ok=True)
    written = [write_ledger(ledger, out / "ledger.csv")]
    write_balance(ledger, out / "balance.csv", timezone=timezone, storage=storage, plaza=plaza)
    written.append(out / "balance.csv")
    written += write_statements(ledger, prices, contracted_kw, out / "statements", timezone=timezone)
    names = names or {}
    template = Environment(
        loader=PackageLoader("energyhub.planning"), autoescape=select_autoescape(["html", "j2"])
    ).get_template("statement.html.j2")
    for statement in monthly_statements(ledger, prices, contracted_kw, timezone=timezone):
        path = out / "statements" / f"{statement.member}-{statement.month}.html"
        name = names.get(statement.member, statement.member)
        title = f"{community}: {name} ({statement.member}), {statement.month}"
        path.write_text(
            template.render(title=title, statement=statement, prices=prices, key=key), encoding="utf-8"
        )
        written.append(path)
    return written
