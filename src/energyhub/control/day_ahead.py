"""The day-ahead reload: profiles uploaded through the API, merged into the contracts when their folder changes.

The API writes each DSO announcement into its ``state_dir/day_ahead``; control looks at the folder's stamp every
few seconds (not every cycle: a directory walk per second is wasted on a folder that changes once a day) and builds
a new ``LimitBook`` only when it changed. A profile that cannot be used is logged with its reason and left out; the
others still apply.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from energyhub.domain.day_ahead import DayAheadStore, with_profiles
from energyhub.domain.limits import LimitBook
from energyhub.domain.topology import Community

__all__ = ["DAY_AHEAD_CHECK_S", "DayAheadReload"]

log = logging.getLogger(__name__)
DAY_AHEAD_CHECK_S = 5.0  # how often the uploaded day-ahead folder is looked at


class DayAheadReload:
    """The contracts as the community file has them, plus what was uploaded; ``book`` is the current one."""

    def __init__(self, community: Community, folder: Path | None) -> None:
        self.community = community
        self.store = DayAheadStore(folder) if folder is not None else None
        self.book = LimitBook(community)
        self.problems: list[str] = []
        self._stamp: tuple[int, int] = (0, 0)
        self._checked = -math.inf

    def due(self, mono: float) -> bool:
        return self.store is not None and mono - self._checked > DAY_AHEAD_CHECK_S

    def reload(self, mono: float) -> bool:
        """Merge the folder's profiles into the contracts if it changed since the last look; True if it did."""
        if self.store is None:
            return False
        self._checked = mono
        stamp = self.store.stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        uploads, problems = self.store.load(self.community.community.timezone)
        merged, refused = with_profiles(self.community, uploads)
        self.book = LimitBook(merged)
        self.problems = problems + refused
        for problem in self.problems:
            log.warning("day-ahead profile not used: %s", problem)
        used = sum(len(p) for p in uploads.values())
        log.info("day-ahead profiles: %d uploaded for %s", used, ", ".join(sorted(uploads)) or "no node")
        return True
