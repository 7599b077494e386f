"""Sequence gaps per gateway session: a measurement that never arrives is a gap, counted where it is seen.

The agent sends each session's messages in order (its buffer is first in, first out, replays included), so a
sequence number above the next expected one means the ones between are missing. Redeliveries (at or below what was
seen) are not gaps. Exact for one ingest worker; in a shared group each worker sees only its share, so there the
tracker is off and ``audit_gaps`` counts from the database instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SequenceTracker"]


@dataclass
class SequenceTracker:
    next_seq: dict[tuple[str, int], int] = field(default_factory=dict)
    gaps: dict[str, int] = field(default_factory=dict)  # gateway -> messages missing so far

    def birth(self, gateway: str, session: int) -> None:
        """A live birth message: this session starts at sequence 0 (a retained one may be long under way)."""
        self.next_seq.setdefault((gateway, session), 0)

    def see(self, gateway: str, session: int, seq: int) -> int:
        """Record one message; return how many are newly known to be missing before it."""
        key = (gateway, session)
        expected = self.next_seq.get(key)
        if expected is None:
            # A session whose birth this worker did not see (it started, or restarted, mid-session): count from here.
            missing = 0
        elif seq < expected:
            return 0  # a redelivery
        else:
            missing = seq - expected
        self.next_seq[key] = seq + 1
        if missing:
            self.gaps[gateway] = self.gaps.get(gateway, 0) + missing
        return missing
