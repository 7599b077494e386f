"""SunSpec discovery: find ``SunS`` at 40000, 0 or 50000, walk the model chain, and build a profile from the SunSpec
model definitions, so any SunSpec inverter or battery works without a YAML profile (``profile: sunspec``).

The point tables come from pysunspec2 (the SunSpec Alliance's own Python package and its JSON model definitions);
only which points energyhub publishes, under which names and signs, is decided here.
"""

from __future__ import annotations

import logging
from typing import Any

from sunspec2.device import get_model_def  # type: ignore[import-untyped]

from energyhub.domain.topology import DeviceRole
from energyhub.edge.poller import Bus
from energyhub.edge.register_map import ReadBlock
from energyhub.wire.profile import DeviceProfile, SetpointSpec, ValueSpec
from energyhub.wire.registers import CODECS, RegisterType
from energyhub.wire.roles import (
    CHARGE_RATE_PCT,
    DISCHARGE_RATE_PCT,
    POWER_LIMIT_PCT,
    POWER_W,
    PV_LIMIT_PCT,
    SOC_PCT,
    missing_for,
)

__all__ = ["SUNSPEC_BASES", "SUNSPEC_ROLES", "discover_profile", "profile_from_models"]

log = logging.getLogger(__name__)

SUNSPEC_BASES = (40000, 0, 50000)
# What a discovered device can serve: an inverter with its power limit (101-103 and 123), storage (103 and 124).
SUNSPEC_ROLES = (DeviceRole.PV, DeviceRole.BATTERY)
_INT16 = CODECS[RegisterType.INT16]
_REPORTED: set[tuple[str, int]] = set()  # devices whose unusable chain was logged
_SUNS = [0x5375, 0x6E53]
_END = 0xFFFF

# (model, point) -> (published name, sign, slow). Inverter models 101-103 count production positive.
_PUBLISHED: dict[int, dict[str, tuple[str, int, bool]]] = {
    **{
        m: {
            "W": (POWER_W, -1, False),
            "A": ("current_a", 1, False),
            "PhVphA": ("voltage_l1_v", 1, False),
            "Hz": ("frequency_hz", 1, False),
            "WH": ("energy_produced_wh", 1, True),
            "St": ("state", 1, False),
        }
        for m in (101, 102, 103)
    },
    123: {"WMaxLimPct": (POWER_LIMIT_PCT, 1, False), "WMaxLim_Ena": ("power_limit_enabled", 1, False)},
    124: {
        "ChaState": (SOC_PCT, 1, False),
        "WChaMax": ("max_charge_w", 1, True),
        "ChaSt": ("charge_status", 1, False),
        "MinRsvPct": ("reserve_pct", 1, True),
        "StorCtl_Mod": ("storage_mode", 1, False),
    },
}
_TYPES = {
    "int16": "int16",
    "uint16": "uint16",
    "enum16": "uint16",
    "bitfield16": "uint16",
    "acc32": "uint32",
    "uint32": "uint32",
    "int32": "int32",
}
_NOT_IMPLEMENTED = {
    "int16": [-32768],
    "uint16": [65535],
    "enum16": [65535],
    "bitfield16": [65535],
    "acc32": [0],
    "uint32": [4294967295],
    "int32": [-2147483648],
}


def _offsets(model_id: int) -> dict[str, tuple[int, dict[str, Any]]]:
    """Point name -> (offset from the model's first point, definition), for the top-level points."""
    points = get_model_def(model_id)["group"]["points"]
    out, offset = {}, 0
    for point in points:
        if point["name"] not in ("ID", "L"):
            out[point["name"]] = (offset, point)
            offset += int(point.get("size", 1))
    return out


def _model_values(model_id: int, start: int) -> list[ValueSpec]:
    """The values energyhub publishes from one model whose first point is at ``start``."""
    offsets = _offsets(model_id)
    values = []
    for point, (name, sign, slow) in _PUBLISHED.get(model_id, {}).items():
        if point not in offsets:
            continue
        offset, definition = offsets[point]
        kind = definition["type"]
        if kind not in _TYPES:
            continue
        sf_name = definition.get("sf")
        sf_address = start + offsets[sf_name][0] if isinstance(sf_name, str) and sf_name in offsets else None
        values.append(
            ValueSpec(
                name=name,
                address=start + offset,
                type=_TYPES[kind],
                sf_address=sf_address,
                sign=sign,
                not_implemented=_NOT_IMPLEMENTED.get(kind, []),
                priority="slow" if slow else "fast",
                unit=definition.get("units"),
            )
        )
    return values


def _model_setpoints(
    model_id: int, start: int, scale_factors: dict[tuple[int, str], int]
) -> list[SetpointSpec]:
    """The setpoints of one model: 123's power limit, 124's charge and discharge rates."""
    offsets = _offsets(model_id) if model_id in (123, 124) else {}
    if model_id == 123 and "WMaxLimPct" in offsets:
        sf = scale_factors.get((123, "WMaxLimPct_SF"), 0)
        return [
            SetpointSpec(
                name=PV_LIMIT_PCT,
                address=start + offsets["WMaxLimPct"][0],
                type="uint16",
                scale=10.0**sf,
                min=0,
                max=100,
                unit="%",
                also_write=[(start + offsets["WMaxLim_Ena"][0], 1)],
            )
        ]
    if model_id == 124 and "InWRte" in offsets:
        sf = scale_factors.get((124, "InOutWRte_SF"), 0)
        mode = start + offsets["StorCtl_Mod"][0]
        return [
            SetpointSpec(
                name=name,
                address=start + offsets[point][0],
                type="int16",
                scale=10.0**sf,
                min=0,
                max=100,
                unit="%",
                also_write=[(mode, bit)],
            )
            for name, point, bit in ((CHARGE_RATE_PCT, "InWRte", 1), (DISCHARGE_RATE_PCT, "OutWRte", 2))
        ]
    return []


def profile_from_models(
    models: list[tuple[int, int]], scale_factors: dict[tuple[int, str], int]
) -> DeviceProfile:
    """A profile for a chain of (model id, address of its first point); ``scale_factors`` are the setpoints' SFs.

    It serves each role of ``SUNSPEC_ROLES`` whose values and setpoints the chain has; ``ValueError`` when it
    serves none (an inverter without model 123 cannot be curtailed, so it is no ``pv`` that control can steer).
    """
    values = [v for model_id, start in models for v in _model_values(model_id, start)]
    setpoints = [s for model_id, start in models for s in _model_setpoints(model_id, start, scale_factors)]
    chain = [m for m, _ in models]
    if not values:
        raise ValueError(f"no SunSpec model energyhub publishes in the chain {chain}")
    value_names, setpoint_names = {v.name for v in values}, {s.name for s in setpoints}
    missing = {role: missing_for(role, value_names, setpoint_names) for role in SUNSPEC_ROLES}
    roles = tuple(role for role in SUNSPEC_ROLES if not missing[role])
    if not roles:
        lacks = "; ".join(f"{role.value} lacks {', '.join(m)}" for role, m in missing.items())
        raise ValueError(f"the SunSpec chain {chain} serves no role: {lacks}")
    return DeviceProfile(
        name="sunspec",
        description="discovered SunSpec device",
        roles=roles,
        values=values,
        setpoints=setpoints,
        max_gap=16,
    )


async def discover_profile(bus: Bus, unit_id: int) -> DeviceProfile | None:
    """Walk the SunSpec model chain of one device; None when it does not answer or is not SunSpec."""
    for base in SUNSPEC_BASES:
        marker = await bus.read(ReadBlock("holding", base, 2, ()), unit_id)
        if marker != _SUNS:
            continue
        models: list[tuple[int, int]] = []
        address = base + 2
        while len(models) < 64:
            header = await bus.read(ReadBlock("holding", address, 2, ()), unit_id)
            if header is None or header[0] in (_END, 0):
                break
            models.append((header[0], address + 2))
            address += 2 + header[1]
        scale_factors: dict[tuple[int, str], int] = {}
        for model_id, start in models:
            for sf_point in {123: ("WMaxLimPct_SF",), 124: ("InOutWRte_SF",)}.get(model_id, ()):
                offset = _offsets(model_id)[sf_point][0]
                word = await bus.read(ReadBlock("holding", start + offset, 1, ()), unit_id)
                if word is not None and word[0] != 0x8000:
                    scale_factors[(model_id, sf_point)] = int(_INT16.decode(word))
        try:
            profile = profile_from_models(models, scale_factors)
        except ValueError as exc:
            # Not usable as found: reported once per device, and the poller keeps trying (a device that is
            # still starting up may show its whole chain later).
            if (bus.name, unit_id) not in _REPORTED:
                _REPORTED.add((bus.name, unit_id))
                log.error("unit %d on %s: %s", unit_id, bus.name, exc)
            return None
        log.info(
            "unit %d: SunSpec at %d with models %s, roles %s",
            unit_id,
            base,
            [m for m, _ in models],
            ", ".join(profile.roles),
        )
        return profile
    return None
