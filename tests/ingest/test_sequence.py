"""The ingest's gap count: exact per session, falls when a redelivery fills a hole, right after a restart."""

from __future__ import annotations

import random

from energyhub.ingest.sequence import SESSIONS_KEPT, SequenceTracker


def test_holes_are_counted_and_filled_by_redeliveries():
    t = SequenceTracker()
    t.state("gw", 5, 0)  # a new session: counting starts at 0
    for seq in (0, 1, 2, 6, 7, 9):
        t.see("gw", 5, seq)
    assert t.missing("gw") == 4  # 3, 4, 5 and 8
    assert t.see("gw", 5, 2) == 0  # a redelivery of one already stored
    for seq in (4, 8, 3):
        t.see("gw", 5, seq)
    assert t.missing("gw") == 1  # 5 only
    t.see("gw", 5, 5)
    assert t.missing("gw") == 0


def test_a_restarted_ingest_counts_from_what_the_gateway_still_holds():
    t = SequenceTracker()
    # Mid-session: the gateway holds 4,000 and up unconfirmed; the first message this worker sees is 4,200.
    t.see("gw", 9, 4200)
    t.state("gw", 9, 4000)
    assert t.missing("gw") == 200  # 4,000-4,199: held by the gateway, coming
    for seq in range(4000, 4200):
        t.see("gw", 9, seq)
    assert t.missing("gw") == 0
    t.see("gw", 9, 3990)  # confirmed long ago, sent again before the delete: no hole below counting's start
    assert t.missing("gw") == 0
    t.state("gw", 9, 4100)  # a later state never raises the start
    t.see("gw", 9, 4202)
    assert t.missing("gw") == 1


def test_a_session_without_a_state_counts_from_its_first_number():
    t = SequenceTracker()
    t.state("gw", 1, None)  # an agent that does not say (older version)
    t.see("gw", 1, 500)
    t.see("gw", 1, 503)
    assert t.missing("gw") == 2


def test_shuffled_delivery_gives_the_exact_count():
    rng = random.Random(4)
    t = SequenceTracker()
    t.state("gw", 1, 0)
    seqs = [s for s in range(2000) if s % 97]  # every 97th never arrives
    arrivals = seqs + rng.sample(seqs, 300)  # plus redeliveries
    rng.shuffle(arrivals)
    for seq in arrivals:
        t.see("gw", 1, seq)
    assert t.missing("gw") == len(range(0, 2000, 97))  # 0, 97, ..., 1940: 21 never arrived
    assert t.sessions["gw"][1].starts == sorted(t.sessions["gw"][1].starts)


def test_old_sessions_are_let_go_with_their_count_kept():
    t = SequenceTracker()
    for session in range(SESSIONS_KEPT + 3):
        t.state("gw", session, 0)
        t.see("gw", session, 0)
        t.see("gw", session, 2)  # one missing in each
    assert len(t.sessions["gw"]) == SESSIONS_KEPT
    assert t.missing("gw") == SESSIONS_KEPT + 3
