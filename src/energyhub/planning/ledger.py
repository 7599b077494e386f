"""The settlement ledger: per quarter hour and member, who supplied whom inside the community, and the bill lines.

Each member's connection is metered per quarter hour: offtake and feed-in (a battery or the charging plaza is a
member with its own connection). Inside the community, energy fed in by some members while others take is shared:
``shared = min(sum of feed-in, sum of offtake)``. It is taken from the suppliers pro rata to their feed-in, and
given to the receivers by a key:

- ``use``: pro rata to what each takes;
- ``static``: agreed shares;
- ``contracted``: pro rata to contracted capacity.

Nobody receives more than they took; what a capped member cannot take goes to the others (water-filling). The rest
is grid exchange: offtake = received + grid import, feed-in = supplied + grid export.

Everything is counted in whole Wh, and rounding uses the largest remainders. So every identity holds exactly,
quarter hour by quarter hour: what members received equals what members supplied, and offtake and feed-in
split exactly into their parts. Money follows from the energy at configurable prices, and fixed costs are split by
capacity or by use.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

__all__ = ["Ledger", "Prices", "Statement", "allocate", "monthly_statements", "settle", "write_statements"]

IntArray = npt.NDArray[np.int64]
KEYS = ("use", "static", "contracted")


@dataclass(frozen=True)
class Prices:
    """EUR per kWh, and fixed costs per period."""

    grid_energy: float = 0.25  # bought from the supplier
    feed_in: float = 0.05  # paid for what goes to the grid
    community: float = 0.15  # paid by the receiver to the supplier, per kWh shared
    network: float = 0.04  # DSO transport, per kWh taken from the grid
    fixed_total: float = 0.0  # the community's fixed costs over the period
    fixed_split: str = "capacity"  # "capacity" or "use"


def _largest_remainder(total: int, weights: npt.NDArray[np.float64]) -> IntArray:
    """Split the integer ``total`` in proportion to ``weights`` so the parts add up to it exactly."""
    if total == 0 or weights.sum() <= 0:
        return np.zeros(len(weights), np.int64)
    exact = total * weights / weights.sum()
    floor: IntArray = np.floor(exact).astype(np.int64)
    left = int(total - floor.sum())
    order = np.argsort(-(exact - floor), kind="stable")
    floor[order[:left]] += 1
    return floor


def allocate(shared: int, caps: IntArray, weights: npt.NDArray[np.float64]) -> IntArray:
    """Give ``shared`` Wh by ``weights``, nobody above their cap; a capped member's excess goes to the others."""
    out = np.zeros(len(caps), np.int64)
    left = shared
    weights = np.asarray(weights, dtype=float)
    while left > 0:
        room = caps - out
        open_ = (room > 0) & (weights > 0)
        if not open_.any():
            # Everyone the key names is full (or the key names nobody): spread the rest by room left.
            weights = room.astype(float)
            open_ = room > 0
            if not open_.any():
                break
        give = np.minimum(_largest_remainder(left, np.where(open_, weights, 0.0)), room)
        if give.sum() == 0:
            weights = room.astype(float)
            continue
        out += give
        left -= int(give.sum())
    return out


@dataclass
class Ledger:
    members: list[str]
    isp_starts: list[datetime]
    offtake_wh: IntArray  # members x ISPs
    feed_in_wh: IntArray
    received_wh: IntArray
    supplied_wh: IntArray

    @property
    def grid_import_wh(self) -> IntArray:
        result: IntArray = self.offtake_wh - self.received_wh
        return result

    @property
    def grid_export_wh(self) -> IntArray:
        result: IntArray = self.feed_in_wh - self.supplied_wh
        return result

    def bills(self, prices: Prices, contracted_kw: npt.NDArray[np.float64]) -> list[dict[str, float | str]]:
        """One bill per member over the whole ledger, in EUR (positive: the member pays)."""
        kwh = 1 / 1000
        received = self.received_wh.sum(axis=1) * kwh
        supplied = self.supplied_wh.sum(axis=1) * kwh
        grid_import = self.grid_import_wh.sum(axis=1) * kwh
        grid_export = self.grid_export_wh.sum(axis=1) * kwh
        basis = (
            contracted_kw if prices.fixed_split == "capacity" else self.offtake_wh.sum(axis=1).astype(float)
        )
        fixed = prices.fixed_total * basis / basis.sum() if basis.sum() > 0 else np.zeros(len(self.members))
        out = []
        for i, member in enumerate(self.members):
            lines = {
                "grid energy": grid_import[i] * prices.grid_energy,
                "network": grid_import[i] * prices.network,
                "feed-in paid": -grid_export[i] * prices.feed_in,
                "community energy bought": received[i] * prices.community,
                "community energy sold": -supplied[i] * prices.community,
                "fixed costs": float(fixed[i]),
            }
            out.append(
                {
                    "member": member,
                    **{k: round(v, 2) for k, v in lines.items()},
                    "total": round(sum(lines.values()), 2),
                }
            )
        return out


def settle(
    members: list[str],
    isp_starts: list[datetime],
    offtake_wh: IntArray,
    feed_in_wh: IntArray,
    *,
    key: str = "use",
    static_shares: npt.NDArray[np.float64] | None = None,
    contracted_kw: npt.NDArray[np.float64] | None = None,
    shareable: npt.NDArray[np.bool_] | None = None,
) -> Ledger:
    """``shareable[t]`` False keeps quarter hour ``t`` out of sharing (a member's data has a gap there): every
    member's offtake and feed-in is grid exchange then."""
    if key not in KEYS:
        raise ValueError(f"unknown sharing key {key!r}: one of {', '.join(KEYS)}")
    if (offtake_wh < 0).any() or (feed_in_wh < 0).any():
        raise ValueError("offtake and feed-in are amounts of energy: none may be negative")
    n, T = offtake_wh.shape
    received = np.zeros((n, T), np.int64)
    supplied = np.zeros((n, T), np.int64)
    for t in range(T):
        if shareable is not None and not shareable[t]:
            continue
        take, give = offtake_wh[:, t], feed_in_wh[:, t]
        shared = int(min(take.sum(), give.sum()))
        if shared == 0:
            continue
        supplied[:, t] = allocate(shared, give, give.astype(float))
        if key == "use":
            weights = take.astype(float)
        elif key == "static":
            weights = np.asarray(static_shares, dtype=float)
        else:
            weights = np.asarray(contracted_kw, dtype=float)
        received[:, t] = allocate(shared, take, weights)
    return Ledger(members, isp_starts, offtake_wh, feed_in_wh, received, supplied)


@dataclass(frozen=True)
class Statement:
    """One member's month: energy by kind in Wh, and the bill lines in EUR."""

    member: str
    month: str  # "YYYY-MM", local time
    energy_wh: dict[str, int]
    bill: dict[str, float]


def monthly_statements(
    ledger: Ledger,
    prices: Prices,
    contracted_kw: npt.NDArray[np.float64],
    *,
    timezone: str = "Europe/Amsterdam",
) -> list[Statement]:
    """A statement per member and calendar month (local time), months in order."""
    tz = ZoneInfo(timezone)
    month_of = [t.astimezone(tz).strftime("%Y-%m") for t in ledger.isp_starts]
    out = []
    for month in sorted(set(month_of)):
        cols = [i for i, m in enumerate(month_of) if m == month]
        part = Ledger(
            ledger.members,
            [ledger.isp_starts[i] for i in cols],
            ledger.offtake_wh[:, cols],
            ledger.feed_in_wh[:, cols],
            ledger.received_wh[:, cols],
            ledger.supplied_wh[:, cols],
        )
        for i, bill in enumerate(part.bills(prices, contracted_kw)):
            energy = {
                "offtake": int(part.offtake_wh[i].sum()),
                "feed-in": int(part.feed_in_wh[i].sum()),
                "received in the community": int(part.received_wh[i].sum()),
                "supplied to the community": int(part.supplied_wh[i].sum()),
                "grid import": int(part.grid_import_wh[i].sum()),
                "grid export": int(part.grid_export_wh[i].sum()),
            }
            lines = {k: float(v) for k, v in bill.items() if k != "member"}
            out.append(Statement(ledger.members[i], month, energy, lines))
    return out


def write_statements(
    ledger: Ledger,
    prices: Prices,
    contracted_kw: npt.NDArray[np.float64],
    folder: Path,
    *,
    timezone: str = "Europe/Amsterdam",
) -> list[Path]:
    """A CSV statement per member and calendar month (local time): energy in kWh by kind, and the bill lines."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for statement in monthly_statements(ledger, prices, contracted_kw, timezone=timezone):
        path = folder / f"{statement.member}-{statement.month}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["item", "kWh", "EUR"])
            for item, wh in statement.energy_wh.items():
                writer.writerow([item, f"{wh / 1000:.3f}", ""])
            for item, eur in statement.bill.items():
                writer.writerow([item, "", eur])
        written.append(path)
    return written
