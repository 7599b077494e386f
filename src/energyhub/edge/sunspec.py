"""SunSpec discovery: find ``SunS`` at 40000, 0 or 50000, walk the model chain, and build a profile from the SunSpec
model definitions, so any SunSpec inverter or battery works without a YAML profile (``profile: sunspec``).

The point tables come from pysunspec2 (the SunSpec Alliance's own Python package and its JSON model definitions);
only which points energyhub publishes, under which names and signs, is decided here.
"""

from __future__ import annotations

import logging
from typing import Any

from sunspec2.device import get_model_def  # type: ignore[import-untyped]

from energyhub.edge.poller import Bus
from energyhub.edge.profile import DeviceProfile, SetpointSpec, ValueSpec
from energyhub.edge.register_map import ReadBlock

__all__ = ["SUNSPEC_BASES", "discover_profile", "profile_from_models"]

log = logging.getLogger(__name__)

SUNSPEC_BASES = (40000, 0, 50000)
_SUNS = [0x5375, 0x6E53]
_END = 0xFFFF

# (model, point) -> (published name, sign, slow). Inverter models 101-103 count production positive.
_PUBLISHED: dict[int, dict[str, tuple[str, int, bool]]] = {
    **{
        m: {
            "W": ("power_w", -1, False),
            "A": ("current_a", 1, False),
            "PhVphA": ("voltage_l1_v", 1, False),
            "Hz": ("frequency_hz", 1, False),
            "WH": ("energy_produced_wh", 1, True),
            "St": ("state", 1, False),
        }
        for m in (101, 102, 103)
    },
    123: {"WMaxLimPct": ("power_limit_pct", 1, False), "WMaxLim_Ena": ("power_limit_enabled", 1, False)},
    124: {
        "ChaState": ("soc_pct", 1, False),
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


def profile_from_models(
    models: list[tuple[int, int]], scale_factors: dict[tuple[int, str], int]
) -> DeviceProfile:
    """A profile for a chain of (model id, address of its first point); ``scale_factors`` are the setpoints' SFs."""
    values: list[ValueSpec] = []
    setpoints: list[SetpointSpec] = []
    for model_id, start in models:
        published = _PUBLISHED.get(model_id)
        if not published:
            continue
        offsets = _offsets(model_id)
        for point, (name, sign, slow) in published.items():
            if point not in offsets:
                continue
            offset, definition = offsets[point]
            kind = definition["type"]
            if kind not in _TYPES:
                continue
            sf_name = definition.get("sf")
            sf_address = (
                start + offsets[sf_name][0] if isinstance(sf_name, str) and sf_name in offsets else None
            )
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
        if model_id == 123 and "WMaxLimPct" in offsets:
            sf = scale_factors.get((123, "WMaxLimPct_SF"), 0)
            setpoints.append(
                SetpointSpec(
                    name="active_power_limit_pct",
                    address=start + offsets["WMaxLimPct"][0],
                    type="uint16",
                    scale=10.0**sf,
                    min=0,
                    max=100,
                    unit="%",
                    also_write=[(start + offsets["WMaxLim_Ena"][0], 1)],
                )
            )
        if model_id == 124 and "InWRte" in offsets:
            sf = scale_factors.get((124, "InOutWRte_SF"), 0)
            mode = start + offsets["StorCtl_Mod"][0]
            for name, point, bit in (("charge_rate_pct", "InWRte", 1), ("discharge_rate_pct", "OutWRte", 2)):
                setpoints.append(
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
                )
    if not values:
        raise ValueError(f"no SunSpec model energyhub publishes in the chain {[m for m, _ in models]}")
    return DeviceProfile(
        name="sunspec",
        description="discovered SunSpec device",
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
                    scale_factors[(model_id, sf_point)] = word[0] - 0x10000 if word[0] & 0x8000 else word[0]
        log.info("unit %d: SunSpec at %d with models %s", unit_id, base, [m for m, _ in models])
        return profile_from_models(models, scale_factors)
    return None
