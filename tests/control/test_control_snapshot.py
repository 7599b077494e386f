"""The process image: what a plugged-in vehicle takes at most, learned from what it takes when offered more."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml

from energyhub.control.snapshot import LiveState
from energyhub.domain.community import load_community
from energyhub.domain.network import Network
from energyhub.wire.messages import Measurement, Quality
from tests.whole.test_estate_live import estate

MODE3 = {"A": 0, "B1": 1, "B2": 2, "C2": 4}


@pytest.fixture
def state(tmp_path) -> LiveState:
    path = tmp_path / "estate.yaml"
    path.write_text(yaml.safe_dump(estate([20_001 + i for i in range(5)])))
    community = load_community(path)
    return LiveState(community, Network.from_community(community))


def reading(seq: int, mode3: str, power_w: float, offered_a: float) -> Measurement:
    return Measurement(
        ts=datetime.now(UTC),
        session=1,
        seq=seq,
        quality=Quality.GOOD,
        values={"power_w": power_w, "mode3_state": MODE3[mode3], "applied_current_a": offered_a},
    )


@pytest.mark.parametrize(
    ("steps", "expected_kw"),
    [
        # Nothing plugged in: the charger's rating (22 kW).
        ([("A", 0, 6)], 22.0),
        # A car behind a 22 kW point offered 32 A takes its on-board 11 kW: planned as 12 kW, not 22.
        ([("C2", 11_000, 32)], 12.0),
        # ... and keeps that when control offers it just what it takes.
        ([("C2", 11_000, 32), ("C2", 11_000, 16)], 12.0),
        # Offered what it takes, nothing is learned: the rating.
        ([("C2", 4_140, 6)], 22.0),
        # Full (B2) while offered: it takes nothing, none is planned.
        ([("B2", 0, 16)], 0.0),
        # A vehicle that takes more than was learned (a taper lifted): the rating again.
        ([("C2", 5_000, 32), ("C2", 9_000, 32)], 10.0),
        ([("C2", 5_000, 32), ("C2", 9_000, 13)], 22.0),
        # It leaves: forgotten, the next one starts from the rating.
        ([("C2", 11_000, 32), ("A", 0, 32)], 22.0),
    ],
)
def test_what_a_vehicle_takes_at_most(state, steps, expected_kw):
    charger = next(r for r in state.devices if r.device == "ev-3")
    index = state.charger_index[f"c-003/{charger.device}"]
    for seq, (mode3, power_w, offered_a) in enumerate(steps):
        state.update(charger.gateway, charger.device, reading(seq, mode3, power_w, offered_a))
        snap = state.snapshot()
    assert snap.charger_max_kw[index] == pytest.approx(expected_kw)
