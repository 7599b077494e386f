"""The settlement ledger balances to the Wh, for any members and any quarter hours."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from energyhub.planning.ledger import Prices, allocate, settle, write_statements

T0 = datetime(2026, 6, 30, 21, 30, tzinfo=UTC)  # 23:30 in Amsterdam: the third quarter hour is in July


@st.composite
def communities(draw):
    n = draw(st.integers(1, 6))
    T = draw(st.integers(1, 12))
    wh = st.integers(0, 500_000)
    offtake = np.array(draw(st.lists(st.lists(wh, min_size=T, max_size=T), min_size=n, max_size=n)), np.int64)
    feed_in = np.array(draw(st.lists(st.lists(wh, min_size=T, max_size=T), min_size=n, max_size=n)), np.int64)
    key = draw(st.sampled_from(["use", "static", "contracted"]))
    shares = np.array(draw(st.lists(st.floats(0, 10), min_size=n, max_size=n)))
    contracted = np.array(draw(st.lists(st.floats(1, 1000), min_size=n, max_size=n)))
    return offtake, feed_in, key, shares, contracted


@settings(max_examples=200, deadline=None)
@given(case=communities())
def test_the_ledger_balances_to_the_wh(case):
    offtake, feed_in, key, shares, contracted = case
    n, T = offtake.shape
    members = [f"m{i}" for i in range(n)]
    ledger = settle(
        members,
        [T0 + timedelta(minutes=15 * t) for t in range(T)],
        offtake,
        feed_in,
        key=key,
        static_shares=shares,
        contracted_kw=contracted,
    )
    # Per quarter hour: what members received is what members supplied, and it is all that could be shared.
    assert (ledger.received_wh.sum(axis=0) == ledger.supplied_wh.sum(axis=0)).all()
    assert (ledger.received_wh.sum(axis=0) == np.minimum(offtake.sum(axis=0), feed_in.sum(axis=0))).all()
    # Per member: nobody receives more than they took or supplies more than they fed in; the rest is the grid.
    assert (ledger.received_wh <= offtake).all()
    assert (ledger.supplied_wh <= feed_in).all()
    assert (ledger.grid_import_wh >= 0).all()
    assert (ledger.grid_export_wh >= 0).all()
    assert (ledger.received_wh + ledger.grid_import_wh == offtake).all()
    assert (ledger.supplied_wh + ledger.grid_export_wh == feed_in).all()
    # Money inside the community only changes hands: bought equals sold, to the cent (rounding aside).
    bills = ledger.bills(Prices(fixed_total=100.0), contracted)
    bought = sum(b["community energy bought"] for b in bills)
    sold = -sum(b["community energy sold"] for b in bills)
    assert bought == pytest.approx(sold, abs=0.01 * n)
    assert sum(b["fixed costs"] for b in bills) == pytest.approx(100.0, abs=0.01 * n)


def test_capped_members_pass_their_share_on():
    # 300 Wh shared by static shares 2:1:1, but the first took only 50 Wh: the others get the rest.
    got = allocate(300, np.array([50, 400, 400]), np.array([2.0, 1.0, 1.0]))
    assert got.tolist() == [50, 125, 125]
    assert allocate(7, np.array([10, 10, 10]), np.array([1.0, 1.0, 1.0])).sum() == 7  # largest remainders


def test_statements_per_member_and_month(tmp_path):
    offtake = np.array([[1000, 1000, 0], [0, 0, 4000]], np.int64)
    feed_in = np.array([[0, 0, 2000], [500, 3000, 0]], np.int64)
    starts = [T0 + timedelta(minutes=15 * t) for t in range(3)]
    ledger = settle(["bakery", "roofs"], starts, offtake, feed_in)
    files = write_statements(ledger, Prices(), np.array([100.0, 50.0]), tmp_path)
    assert sorted(p.name for p in files) == [
        "bakery-2026-06.csv",
        "bakery-2026-07.csv",
        "roofs-2026-06.csv",
        "roofs-2026-07.csv",
    ]
    rows = {r[0]: r for r in csv.reader((tmp_path / "bakery-2026-06.csv").open())}
    assert rows["received in the community"][1] == "1.500"  # 500 + 1000 Wh from the roofs
    assert rows["grid import"][1] == "0.500"
    assert float(rows["community energy bought"][2]) == pytest.approx(1.5 * 0.15, abs=0.01)
    with pytest.raises(ValueError, match="unknown sharing key"):
        settle(["a"], starts[:1], offtake[:1, :1], feed_in[:1, :1], key="random")
