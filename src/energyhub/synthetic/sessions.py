"""Charging sessions at the plaza: when trucks and cars arrive, stay and how much energy they want.

The simulators' chargers and the offline simulation draw the same sessions from the same seed, so a simulated
day live and offline sees the same cars.
"""

from __future__ import annotations

import zlib
from datetime import datetime

import numpy as np

__all__ = ["CAR_MAX_W", "plan_sessions", "rng_for", "vehicle_max_w"]


def rng_for(seed: int, key: str, *parts: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode()), *parts])


CAR_MAX_W = 11_000.0  # what a car's on-board charger takes from a three-phase AC point


def vehicle_max_w(vehicle: str, charger_w: float) -> float:
    """The most a session draws: a truck takes what the charger gives, a car at most its on-board charger."""
    return charger_w if vehicle == "truck" else min(charger_w, CAR_MAX_W)


def plan_sessions(seed: int, key: str, vehicle: str, day_start: datetime) -> list[tuple[float, float, float]]:
    """The day's sessions of one charger: (arrival epoch s, departure epoch s, energy wanted Wh)."""
    rng = rng_for(seed, key, int(day_start.timestamp()) // 86_400)
    base = day_start.timestamp()
    sessions = []
    if vehicle == "truck":
        t = base + 3600 * rng.uniform(5.0, 8.0)
        for _ in range(int(rng.integers(2, 5))):
            stay = 3600 * rng.uniform(0.75, 2.0)
            sessions.append((t, t + stay, float(rng.uniform(150_000, 350_000))))
            t += stay + 3600 * rng.uniform(0.5, 3.0)
    elif rng.random() < 0.85:  # a car on most days
        arrival = base + 3600 * rng.uniform(6.5, 9.5)
        sessions.append((arrival, arrival + 3600 * rng.uniform(6.0, 9.5), float(rng.uniform(10_000, 45_000))))
    return [s for s in sessions if s[0] < base + 86_400]
