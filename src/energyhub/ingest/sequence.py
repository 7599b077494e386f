"""Sequence gaps per gateway session: the sequence numbers not stored (yet), counted exactly.

Per session the tracker keeps the runs of sequence numbers it saw and where counting starts; missing are the
numbers between that start and the highest seen that no run covers. A redelivery fills its hole, so the count
falls again when a gateway sends what the broker lost: it tells what is missing now, not how often something
was late.

Where counting starts comes from the gateway's state (birth and every health report): ``held_from`` is the lowest
sequence number the gateway still holds unconfirmed, so every lower one is stored (or dropped and reported by the
gateway itself). An ingest restarted mid-session therefore neither counts the whole past as missing nor misses
what goes missing after. A session with no such state (an older agent) counts from the first number seen.

Exact for one ingest worker; in a shared group each worker sees only its share, so there the tracker is off and
``audit_gaps`` counts from the database instead.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

__all__ = ["SequenceTracker"]

SESSIONS_KEPT = 8  # per gateway: older sessions' missing numbers are frozen into one count


@dataclass
class _Session:
    low: int  # counting starts here
    starts: list[int] = field(default_factory=list)  # runs of seen numbers: starts[i]..ends[i], sorted, apart
    ends: list[int] = field(default_factory=list)

    def add(self, seq: int) -> int:
        """Record ``seq``; return how many numbers it newly shows missing (those between it and the last run)."""
        starts, ends = self.starts, self.ends
        if ends and seq == ends[-1] + 1:  # the common case: the next one
            ends[-1] = seq
            return 0
        if not ends or seq > ends[-1] + 1:
            newly = seq - max(self.low, ends[-1] + 1 if ends else self.low)
            starts.append(seq)
            ends.append(seq)
            return max(newly, 0)
        i = bisect.bisect_right(starts, seq) - 1
        if i >= 0 and seq <= ends[i]:
            return 0  # a redelivery of one already seen
        # Fills (part of) a hole: join the run before and/or after it.
        joins_before = i >= 0 and ends[i] == seq - 1
        joins_after = i + 1 < len(starts) and starts[i + 1] == seq + 1
        if joins_before and joins_after:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_before:
            ends[i] = seq
        elif joins_after:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            ends.insert(i + 1, seq)
        return 0

    def missing(self) -> int:
        if not self.ends:
            return 0
        seen = 0
        for start, end in zip(self.starts, self.ends, strict=True):
            if end >= self.low:
                seen += end - max(start, self.low) + 1
        return max(0, self.ends[-1] - self.low + 1 - seen)


@dataclass
class SequenceTracker:
    sessions: dict[str, dict[int, _Session]] = field(default_factory=lambda: defaultdict(dict))
    frozen: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # missing in sessions let go

    def _session(self, gateway: str, session: int, low: int) -> _Session:
        known = self.sessions[gateway]
        entry = known.get(session)
        if entry is None:
            entry = known[session] = _Session(low)
            if len(known) > SESSIONS_KEPT:
                oldest = min(known)
                self.frozen[gateway] += known.pop(oldest).missing()
        return entry

    def state(self, gateway: str, session: int, held_from: int | None) -> None:
        """A live state of the gateway: everything of ``session`` below ``held_from`` is stored."""
        if held_from is None:
            return
        entry = self._session(gateway, session, held_from)
        # Lower only: numbers between held_from and the first one seen are held by the gateway, so they come.
        entry.low = min(entry.low, held_from)

    def see(self, gateway: str, session: int, seq: int) -> int:
        """Record one stored measurement; return how many numbers it newly shows missing."""
        entry = self._session(gateway, session, seq)
        if seq < entry.low:
            return 0  # below where counting starts: stored long ago, sent again
        return entry.add(seq)

    def missing(self, gateway: str) -> int:
        """Sequence numbers of this gateway's sessions not stored now."""
        return self.frozen.get(gateway, 0) + sum(s.missing() for s in self.sessions.get(gateway, {}).values())

    def gateways(self) -> list[str]:
        return sorted(set(self.sessions) | set(self.frozen))
