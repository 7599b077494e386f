"""What each outcome costs the balancing engine: one table for the dispatch, the MPC plan and the oracle.

The costs are weights, not money, and their order is the policy: a kW over a limit weighs far more than a kWh of
PV curtailed, which weighs more than a kWh of EV energy left undelivered, which weighs more than wearing a battery.
Battery wear is configured in euros per kWh moved (``Battery.wear_eur_per_kwh``); ``WEIGHT_PER_EUR`` turns it into
a weight by valuing a curtailed kWh of PV at ``PV_VALUE_EUR_PER_KWH``, what the estate pays for a kWh it takes
from the grid instead.
"""

from __future__ import annotations

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
# A lithium-ion battery at about 300 EUR per kWh of capacity lasting 6,000 full cycles moves 12,000 kWh per kWh
# of capacity (in and out): 0.025 EUR per kWh moved. Storing a kWh of surplus PV and giving it back then costs
# about 0.05 EUR, half of what curtailing it loses, so a battery still takes what would be curtailed, but no
# longer cycles for nothing.
WEAR_EUR_PER_KWH = 0.025
