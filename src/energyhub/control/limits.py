"""Every node's limits for every quarter hour of a period, as arrays the dispatch can compare flows with.

The contract limits come from ``energyhub.domain.limits`` (firm, time blocks, day-ahead profile, capacity limitation, group
agreements are nodes too). Control keeps a safety margin below them: ``margin`` is a fraction of each limit, so the
quarter-hour average the DSO measures stays inside even when the last minutes of a quarter hour surprise. Physical
capacity is enforced on the instantaneous flow, without a margin of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from energyhub.domain.limits import LimitBook
from energyhub.domain.topology import Community

__all__ = ["LimitTable"]

Array = npt.NDArray[np.float64]


def _constant(limits: object) -> bool:
    return not (
        getattr(limits, "time_blocks", None)
        or getattr(limits, "day_ahead", None)
        or getattr(limits, "capacity_limitation", None)
    )


@dataclass
class LimitTable:
    node_ids: list[str]
    isp_starts: list[datetime]
    import_kw: Array  # nodes x ISPs, contract; inf where there is none
    export_kw: Array  # nodes x ISPs, contract, as a positive amount of feed-in; inf where there is none
    physical_kw: Array  # nodes
    book: LimitBook

    @classmethod
    def build(cls, community: Community, node_ids: list[str], isp_starts: list[datetime]) -> LimitTable:
        book = LimitBook(community)
        imp = np.empty((len(node_ids), len(isp_starts)))
        exp = np.empty_like(imp)
        physical = np.empty(len(node_ids))
        for n, node_id in enumerate(node_ids):
            node = book.node(node_id)
            # A firm-only node is the same every quarter hour: one lookup, not 35,040.
            times = isp_starts[:1] if _constant(node.limits) else isp_starts
            found = [book.limit_at(node_id, t) for t in times]
            imp[n, :] = [f.import_w / 1000.0 for f in found]
            exp[n, :] = [f.export_w / 1000.0 for f in found]
            physical[n] = found[0].physical_w / 1000.0
        return cls(node_ids, isp_starts, imp, exp, physical, book)

    def with_margin(self, margin: float) -> tuple[Array, Array]:
        """Import and export limits (kW) that control steers to: the contract less ``margin`` of it, and never
        above the physical capacity."""
        if not 0 <= margin < 1:
            raise ValueError(f"margin {margin} must be a fraction in [0, 1)")
        cap = self.physical_kw[:, None]
        return (
            np.minimum(self.import_kw * (1 - margin), cap),
            np.minimum(self.export_kw * (1 - margin), cap),
        )

    def source(self, node: int, isp: int, direction: str) -> str:
        """Which contract part sets this limit (for the record of a binding limit)."""
        found = self.book.limit_at(self.node_ids[node], self.isp_starts[isp])
        return found.import_source if direction == "import" else found.export_source


def finite_or_blank(value: float) -> str:
    return "" if math.isinf(value) else f"{value:.3f}"
