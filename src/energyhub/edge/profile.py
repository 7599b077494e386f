"""Device profiles as data: a YAML file per device type says which registers hold which values and setpoints.

A new meter is a new YAML file in ``edge/profiles/`` (see ``docs/profiles.md``), validated on load with errors that
name the file and the field. The profile decides how registers decode; ``register_map.py`` plans the reads.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Annotated, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from energyhub.wire.messages import RESERVED_VALUE_NAMES

__all__ = [
    "DeviceProfile",
    "ProfileError",
    "RegisterType",
    "SetpointSpec",
    "ValueSpec",
    "load_profile",
    "profile_path",
]

PROFILE_DIR = Path(__file__).parent / "profiles"


class RegisterType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


REGISTERS = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
Address = Annotated[int, Field(ge=0, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Register(_Strict):
    function: Literal["holding", "input"] = "holding"
    address: Address
    type: RegisterType
    count: int | None = Field(None, ge=1, le=64, description="Registers of a string.")
    word_order: Literal["big", "little"] | None = Field(
        None, description="Overrides the profile's word order."
    )

    @property
    def registers(self) -> int:
        return (
            self.count
            if self.type is RegisterType.STRING and self.count
            else REGISTERS.get(self.type.value, 1)
        )

    @model_validator(mode="after")
    def _count_fits_type(self) -> Self:
        if self.type is RegisterType.STRING and self.count is None:
            raise ValueError("a string needs count (registers)")
        if self.type is not RegisterType.STRING and self.count not in (None, REGISTERS[self.type.value]):
            raise ValueError(
                f"count {self.count} does not fit {self.type.value}, which takes "
                f"{REGISTERS[self.type.value]} register(s)"
            )
        if self.address + self.registers - 1 > 65535:
            raise ValueError("runs past register 65535")
        return self


class ValueSpec(_Register):
    """One published value: where it is and how it becomes W, Wh, V, A, Hz or %."""

    name: Name
    unit: str | None = None
    scale: float = Field(1.0, description="Multiply the raw value (e.g. 1000 for kWh -> Wh).")
    sf_address: Address | None = Field(
        None, description="SunSpec scale-factor register (int16, value x 10^sf)."
    )
    sign: Literal[1, -1] = Field(1, description="-1 turns the device's sign into import-positive.")
    not_implemented: list[int] = Field(default_factory=list, description="Raw values meaning 'no value'.")
    priority: Literal["fast", "slow"] = Field(
        "fast", description="slow values are read every slow_every polls."
    )
    codes: dict[str, float] | None = Field(
        None, description="For a string: the number published for each text."
    )

    @model_validator(mode="after")
    def _not_reserved(self) -> Self:
        if self.name in RESERVED_VALUE_NAMES:
            raise ValueError(
                f"value name {self.name!r} is reserved (the message's own fields: seq, session, ...)"
            )
        return self

    @model_validator(mode="after")
    def _strings_have_codes(self) -> Self:
        if self.type is RegisterType.STRING and not self.codes:
            raise ValueError("a string value needs codes (text -> number): measurements carry numbers only")
        return self


class SetpointSpec(_Register):
    """A register that takes a setpoint, with its bounds in real units."""

    name: Name
    unit: str | None = None
    scale: float = 1.0
    min: float
    max: float
    also_write: list[tuple[Address, int]] = Field(
        default_factory=list,
        description="(address, value) pairs written after the setpoint, e.g. an enable flag.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class DeviceProfile(_Strict):
    name: Name
    description: str
    products: list[str] = Field(default_factory=list)
    word_order: Literal["big", "little"] = "big"
    max_gap: int = Field(8, ge=0, le=100, description="Unused registers a merged read may span.")
    max_registers: int = Field(120, ge=1, le=125, description="Registers per request (Modbus allows 125).")
    slow_every: int = Field(10, ge=1, description="Read slow values on every n-th poll.")
    values: list[ValueSpec] = Field(min_length=1)
    setpoints: list[SetpointSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = Counter([v.name for v in self.values] + [s.name for s in self.setpoints])
        twice = sorted(n for n, c in names.items() if c > 1)
        if twice:
            raise ValueError(f"names used twice: {', '.join(twice)}")
        for value in self.values:
            if value.registers > self.max_registers:
                raise ValueError(
                    f"value {value.name} takes {value.registers} registers, more than max_registers"
                )
        return self


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file, the field and the problem."""


def profile_path(name: str) -> Path:
    return PROFILE_DIR / f"{name}.yaml"


def load_profile(source: str | Path) -> DeviceProfile:
    """Load a profile by name (``eastron_sdm630``) or by path; each file is parsed once per process (a gateway
    with 200 meters shares one profile)."""
    path = (
        Path(source)
        if isinstance(source, Path) or str(source).endswith((".yaml", ".yml"))
        else profile_path(str(source))
    )
    return _load(path.resolve())


@cache
def _load(path: Path) -> DeviceProfile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
            lines.append(f"  {path}: {where or '(document)'}: {error['msg'].removeprefix('Value error, ')}")
        raise ProfileError(f"{path}: {len(lines)} error(s)\n" + "\n".join(lines)) from None
