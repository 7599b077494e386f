"""M-Bus meter profiles as data: a YAML file per meter type says which RSP_UD data record gives which value.

A record is picked by its VIF (EN 13757-3 table 10, the unit and decimal exponent, extension bit cleared), its
storage number, tariff and function field; the value is what the VIF makes of the data (in the VIF's SI unit,
e.g. m³ for 0x10-0x17) times ``scale``. The profile also names the medium and manufacturer the meter announces in
its header, so a different meter at the configured address is refused instead of read, and the role it serves
(``gas`` or ``water``), checked against ``wire/roles.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from energyhub.domain.topology import DeviceRole
from energyhub.edge.config import validation_report
from energyhub.wire.roles import missing_for

__all__ = [
    "MEDIA",
    "PROFILE_DIR",
    "MbusProfile",
    "MbusProfileError",
    "MbusRecordSpec",
    "load_mbus_profile",
    "mbus_profile_names",
]

PROFILE_DIR = Path(__file__).parent / "mbus_profiles"

# EN 13757-3 medium codes each role may announce (water: water, warm water, hot water, cold water).
MEDIA: dict[DeviceRole, frozenset[int]] = {
    DeviceRole.GAS: frozenset({0x03}),
    DeviceRole.WATER: frozenset({0x07, 0x06, 0x15, 0x16}),
}

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
Function = Literal["instantaneous", "maximum", "minimum", "error"]
FUNCTION_CODES: dict[str, int] = {"instantaneous": 0, "maximum": 1, "minimum": 2, "error": 3}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MbusRecordSpec(_Strict):
    """Which data record gives one value, and how to scale it."""

    name: Name = Field(description="The value's name, as wire/roles.py spells it, e.g. volume_m3.")
    vif: int = Field(
        ge=0x00, le=0x7B, description="Primary VIF without the extension bit, e.g. 0x13 = m³ x 1e-3."
    )
    vife: tuple[int, ...] = Field((), description="VIF extensions that must follow (without extension bits).")
    storage: int = Field(0, ge=0, le=2**32, description="Storage number: 0 is the current value.")
    tariff: int = Field(0, ge=0, le=2**16)
    function: Function = "instantaneous"
    scale: float = Field(1.0, description="Multiplies the VIF's SI value (e.g. 1000 for m³ -> litres).")
    unit: str = Field(min_length=1, description="The unit after scaling, for people: m3, m3/h.")

    def matches(self, vib: list[int], storage: int, tariff: int, function: int) -> bool:
        if not vib or vib[0] & 0x7F != self.vif:
            return False
        extensions = tuple(part & 0x7F for part in vib[1 : 1 + len(self.vife)])
        return (
            extensions == self.vife
            and storage == self.storage
            and tariff == self.tariff
            and function == FUNCTION_CODES[self.function]
        )


class MbusProfile(_Strict):
    name: Name
    source: str = Field(
        min_length=1, description="The document the records come from (data sheet, standard)."
    )
    manufacturer: str | None = Field(
        None, pattern=r"^[A-Z]{3}$", description="FLAG code the meter announces (e.g. KAM); None: any."
    )
    medium: int = Field(ge=0, le=0xFF, description="EN 13757-3 medium code: gas 0x03, water 0x07, ...")
    role: DeviceRole
    values: tuple[MbusRecordSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.role not in MEDIA:
            raise ValueError(f"role {self.role.value!r} is not read over M-Bus: give gas or water")
        if self.medium not in MEDIA[self.role]:
            allowed = ", ".join(f"0x{m:02X}" for m in sorted(MEDIA[self.role]))
            raise ValueError(f"medium 0x{self.medium:02X} is not a {self.role.value} medium (use {allowed})")
        names = [v.name for v in self.values]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"values named twice: {', '.join(twice)}")
        missing = missing_for(self.role, set(names), set())
        if missing:
            raise ValueError(f"role {self.role.value!r} needs {', '.join(missing)}")
        return self

    @property
    def value_names(self) -> list[str]:
        return [v.name for v in self.values]


class MbusProfileError(ValueError):
    pass


def mbus_profile_names(directory: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_mbus_profile(name: str, *, directory: Path = PROFILE_DIR) -> MbusProfile:
    """The profile ``name`` from ``directory``; an ``MbusProfileError`` naming the file and field otherwise."""
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(mbus_profile_names(directory)) or "none"
        raise MbusProfileError(f"{path}: no such M-Bus profile (known: {known})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        profile = MbusProfile.model_validate(data)
    except yaml.YAMLError as exc:
        raise MbusProfileError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise MbusProfileError(validation_report(path, exc)) from None
    if profile.name != name:
        raise MbusProfileError(f"{path}: name: {profile.name!r} differs from the file's name {name!r}")
    return profile
