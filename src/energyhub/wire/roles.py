"""Device roles: which values a device of each role publishes and which setpoints it takes. Declared once, here.

A profile names the roles it serves (``roles: [pv]``); the profile loader refuses one that lacks what a role
needs, ``community check`` refuses a device whose profile does not serve its role, and control, the API and the
edge read and write the names below rather than strings of their own. A role's *required* values are what
control cannot do without (the grid meter's power, a battery's state of charge); its *optional* values make it
better where the device has them (a meter's energy counters, a charger's applied current).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from energyhub.domain.topology import DeviceRole

__all__ = [
    "APPLIED_CURRENT_A",
    "CHARGER_MAX_A",
    "CHARGER_W_PER_A",
    "CHARGE_RATE_PCT",
    "DEPARTURE_TS",
    "DISCHARGE_RATE_PCT",
    "ENERGY_DELIVERED_WH",
    "ENERGY_EXPORT_WH",
    "ENERGY_IMPORT_WH",
    "ENERGY_WANTED_WH",
    "MAX_CURRENT_A",
    "MODE3_STATE",
    "POWER_LIMIT_ENABLED",
    "POWER_LIMIT_PCT",
    "POWER_W",
    "PV_LIMIT_PCT",
    "ROLES",
    "SOC_PCT",
    "VOLUME_M3",
    "RoleSpec",
    "missing_for",
    "role_spec",
]

# Values (what a device publishes), import positive at the meter, charging positive at a battery.
POWER_W: Final = "power_w"
ENERGY_IMPORT_WH: Final = "energy_import_wh"
ENERGY_EXPORT_WH: Final = "energy_export_wh"
POWER_LIMIT_PCT: Final = "power_limit_pct"  # the limit an inverter reports it applies
POWER_LIMIT_ENABLED: Final = "power_limit_enabled"  # 1 while that limit is in force
SOC_PCT: Final = "soc_pct"
APPLIED_CURRENT_A: Final = "applied_current_a"  # what a charger offers the car now
ENERGY_DELIVERED_WH: Final = "energy_delivered_wh"
MODE3_STATE: Final = "mode3_state"  # IEC 61851 state of a charger's socket (A no car ... F error), as a code
# What a charging session says of itself (an ISO 15118 vehicle's charging needs, a plaza booking): the energy it
# still wants and when it leaves (UTC epoch s). Control's urgency uses them; without them every session counts as 1.
ENERGY_WANTED_WH: Final = "energy_wanted_wh"
DEPARTURE_TS: Final = "departure_ts"
VOLUME_M3: Final = "volume_m3"  # a gas or water meter's counter

# Setpoints (what control writes).
PV_LIMIT_PCT: Final = "active_power_limit_pct"
CHARGE_RATE_PCT: Final = "charge_rate_pct"
DISCHARGE_RATE_PCT: Final = "discharge_rate_pct"
MAX_CURRENT_A: Final = "max_current_a"
# A charger's current as power: three phases at 400 V. Control writes max_current_a with it, and a charger
# steered in W (an OCPP DC charger) gets control's kW back through the same factor.
CHARGER_W_PER_A: Final = 3**0.5 * 400
# The most current a charger over OCPP takes without a rating or bounds of its own (as the Alfen map's maximum).
CHARGER_MAX_A: Final = 600.0


@dataclass(frozen=True)
class RoleSpec:
    """What a device of one role must publish and take, and what it falls back to when control is quiet."""

    role: DeviceRole
    values: tuple[str, ...]
    optional_values: tuple[str, ...] = ()
    setpoints: tuple[str, ...] = ()
    # The gateway's failsafe setpoints when control's heartbeat stops (per setpoint name).
    failsafe: MappingProxyType[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def describe(self) -> str:
        parts = [f"values {', '.join(self.values)}"]
        if self.setpoints:
            parts.append(f"setpoints {', '.join(self.setpoints)}")
        return f"role {self.role.value!r} needs " + " and ".join(parts)


ROLES: Final[MappingProxyType[DeviceRole, RoleSpec]] = MappingProxyType(
    {
        DeviceRole.METER: RoleSpec(DeviceRole.METER, (POWER_W,), (ENERGY_IMPORT_WH, ENERGY_EXPORT_WH)),
        DeviceRole.PV: RoleSpec(
            DeviceRole.PV,
            (POWER_W,),
            (POWER_LIMIT_PCT, POWER_LIMIT_ENABLED),
            (PV_LIMIT_PCT,),
            # Dutch grid-code practice for a lost control signal: hold PV at a low share, never at zero output.
            MappingProxyType({PV_LIMIT_PCT: 30.0}),
        ),
        DeviceRole.BATTERY: RoleSpec(
            DeviceRole.BATTERY,
            (POWER_W, SOC_PCT),
            (),
            (CHARGE_RATE_PCT, DISCHARGE_RATE_PCT),
            MappingProxyType({CHARGE_RATE_PCT: 0.0, DISCHARGE_RATE_PCT: 0.0}),
        ),
        DeviceRole.EV: RoleSpec(
            DeviceRole.EV,
            (POWER_W,),
            (APPLIED_CURRENT_A, ENERGY_DELIVERED_WH, MODE3_STATE, ENERGY_WANTED_WH, DEPARTURE_TS),
            (MAX_CURRENT_A,),
            MappingProxyType(
                {MAX_CURRENT_A: 6.0}
            ),  # IEC 61851's lowest current: the car keeps charging slowly
        ),
        DeviceRole.LOAD: RoleSpec(DeviceRole.LOAD, (POWER_W,)),
        DeviceRole.GAS: RoleSpec(DeviceRole.GAS, (VOLUME_M3,)),
        DeviceRole.WATER: RoleSpec(DeviceRole.WATER, (VOLUME_M3,)),
    }
)


def role_spec(role: DeviceRole | str) -> RoleSpec:
    """The declaration of ``role``; a ``ValueError`` naming the known roles for one that is not."""
    try:
        return ROLES[DeviceRole(role)]
    except ValueError:
        known = ", ".join(r.value for r in ROLES)
        raise ValueError(f"unknown device role {role!r}: known roles are {known}") from None


def missing_for(role: DeviceRole | str, values: set[str], setpoints: set[str]) -> list[str]:
    """What a device with these value and setpoint names lacks for ``role``: ``[]`` when it serves it."""
    spec = role_spec(role)
    missing = [f"value {name!r}" for name in spec.values if name not in values]
    missing += [f"setpoint {name!r}" for name in spec.setpoints if name not in setpoints]
    return missing
