"""What each outcome costs the balancing engine: one table for the dispatch, the MPC plan and the oracle.

The costs are weights, not money, and their order is the policy: a kW over a limit weighs far more than a kWh of
PV curtailed, which weighs more than a kWh of EV energy left undelivered, which weighs more than wearing a battery.
Battery wear is configured in euros per kWh moved (``Battery.wear_eur_per_kwh``); ``WEIGHT_PER_EUR`` turns it into
a weight by valuing a curtailed kWh of PV at ``PV_VALUE_EUR_PER_KWH``, what the estate pays for a kWh it takes
from the grid instead.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from energyhub.domain.network import WEAR_EUR_PER_KWH, Network

__all__ = [
    "COST_CURTAIL",
    "COST_DEVIATION",
    "COST_EV",
    "COST_EV_EXTRA",
    "COST_EV_WAIT",
    "COST_FAIRNESS",
    "COST_GRID",
    "COST_OVER_IMPORT",
    "COST_VIOLATION",
    "PV_VALUE_EUR_PER_KWH",
    "WEAR_EUR_PER_KWH",
    "WEIGHT_PER_EUR",
    "battery_wear",
]

COST_VIOLATION = 1e5  # per kW over a limit for a quarter hour (per 0.25 kWh)
COST_CURTAIL = 100.0  # per kWh of PV curtailed
COST_OVER_IMPORT = (
    1e4  # per kWh a plan expects over an import limit: nothing but a car's or a battery's power helps
)
COST_FAIRNESS = 1.0  # per unit of the largest curtailed share (dispatch)
COST_EV = 10.0  # per kWh undelivered, times the session's urgency (1..5)
COST_EV_WAIT = 0.05  # per kWh a plan lets a car wait, per hour: as soon as it can, unless waiting saves more
COST_EV_EXTRA = 0.01  # per kWh a car takes beyond its plan: only where that saves curtailment
COST_DEVIATION = 1.0  # per kW away from the battery plan (dispatch)
COST_GRID = 1.0  # per kWh taken from the grid at the hub: a battery empties into the estate's own use first

PV_VALUE_EUR_PER_KWH = 0.10
WEIGHT_PER_EUR = COST_CURTAIL / PV_VALUE_EUR_PER_KWH


def battery_wear(network: Network) -> npt.NDArray[np.float64]:
    """Per battery, the weight of a kWh moved in or out; a trace where wear is free, so a battery never moves for
    nothing at all."""
    return np.maximum([b.wear_eur_per_kwh * WEIGHT_PER_EUR for b in network.batteries], 1e-3).astype(float)
