"""Why a limit could not be kept: what more offtake, feed-in or storage would have kept it.

The dispatch and the oracle keep a limit with a slack that costs far more than anything else, so a slack above zero
is the least kW by which no action could stay inside. Consecutive quarter hours of one node in one direction form
an episode; its energy over the limit is what a battery at that node, charged (or emptied) beforehand, would have
needed to take.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["Shortfall", "explain"]

ISP = timedelta(minutes=15)
ISP_H = 0.25


@dataclass(frozen=True, slots=True)
class Shortfall:
    node: str
    direction: str  # "import": more offtake was needed; "export": more feed-in
    first: datetime  # start of the first quarter hour over
    last: datetime  # start of the last one
    peak_kw: float
    energy_kwh: float

    @property
    def quarter_hours(self) -> int:
        return int((self.last - self.first) / ISP) + 1

    def text(self) -> str:
        what = "offtake" if self.direction == "import" else "feed-in"
        storage = "storage charged before" if self.direction == "import" else "storage or load to take it"
        when = f"{self.first:%Y-%m-%d %H:%M}"
        if self.last != self.first:
            when += f"-{self.last + ISP:%H:%M}"
        return (
            f"{self.node} needs {self.peak_kw:,.0f} kW more {what} at {when} UTC, "
            f"or {self.energy_kwh:,.1f} kWh of {storage}"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "direction": self.direction,
            "first": self.first.isoformat(),
            "last": self.last.isoformat(),
            "quarter_hours": self.quarter_hours,
            "peak_kw": round(self.peak_kw, 3),
            "energy_kwh": round(self.energy_kwh, 3),
            "text": self.text(),
        }


def explain(
    events: list[tuple[int, int, str, float]], node_ids: list[str], isp_starts: list[datetime]
) -> list[Shortfall]:
    """Episodes from (node, quarter hour, direction, kW over) events, the largest energy first."""
    out: list[Shortfall] = []
    for (node, direction), isps in _grouped(events).items():
        run: list[tuple[int, float]] = []
        for t, kw in [*sorted(isps.items()), (-2, 0.0)]:
            if run and t != run[-1][0] + 1:
                out.append(
                    Shortfall(
                        node_ids[node],
                        direction,
                        isp_starts[run[0][0]],
                        isp_starts[run[-1][0]],
                        max(k for _, k in run),
                        sum(k for _, k in run) * ISP_H,
                    )
                )
                run = []
            run.append((t, kw))
    return sorted(out, key=lambda s: (-s.energy_kwh, s.first, s.node))


def _grouped(events: list[tuple[int, int, str, float]]) -> dict[tuple[int, str], dict[int, float]]:
    grouped: dict[tuple[int, str], dict[int, float]] = {}
    for node, t, direction, kw in events:
        isps = grouped.setdefault((node, direction), {})
        isps[t] = isps.get(t, 0.0) + kw
    return grouped
