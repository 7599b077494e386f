"""Device profiles as data: a YAML file per device type says which roles it serves and which registers hold which
values and setpoints.

A new meter is a new YAML file in ``edge/profiles/`` (see ``docs/profiles.md``), validated on load with errors that
name the file, the line and the field. A profile names the roles it serves (``roles: [meter, load]``) and is refused
if it lacks a value or setpoint that one of them needs (``wire/roles.py``). The profile decides how registers
decode; ``register_map.py`` plans the reads.
"""

from __future__ import annotations

import difflib
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from energyhub.domain.community import ConfigFileError, ConfigIssue, format_path, line_of, read_yaml
from energyhub.domain.topology import DeviceRole
from energyhub.wire.messages import RESERVED_VALUE_NAMES
from energyhub.wire.registers import CODECS, RegisterType, WordOrder
from energyhub.wire.roles import missing_for, role_spec

__all__ = [
    "PROFILE_DIR",
    "DeviceProfile",
    "ProfileError",
    "ProfileSource",
    "RegisterType",
    "SetpointSpec",
    "ValueSpec",
    "load_profile",
    "profile_path",
    "shipped_profiles",
]

# The shipped profiles are files of the edge package, where a gateway's installer looks for them; the model is
# here, below the edge and the simulators, because the simulators serve the same files.
PROFILE_DIR = Path(__file__).resolve().parents[1] / "edge" / "profiles"
SUNSPEC = "sunspec"  # the profile name that means "discover it from the device's SunSpec model chain"

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
Address = Annotated[int, Field(ge=0, le=65535)]
_ROLE_NAMES = ", ".join(role.value for role in DeviceRole)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Register(_Strict):
    function: Literal["holding", "input"] = "holding"
    address: Address
    type: RegisterType
    count: int | None = Field(None, ge=1, le=64, description="Registers of a string.")
    word_order: WordOrder | None = Field(None, description="Overrides the profile's word order.")

    @property
    def registers(self) -> int:
        if self.type is RegisterType.STRING:
            return self.count or 1
        return CODECS[self.type].registers

    def order(self, profile_order: WordOrder) -> WordOrder:
        """The word order this register is read and written in: its own, else its profile's."""
        return self.word_order or profile_order

    @model_validator(mode="after")
    def _count_fits_type(self) -> Self:
        if self.type is RegisterType.STRING:
            if self.count is None:
                raise ValueError("a string needs count (registers)")
        elif self.count not in (None, CODECS[self.type].registers):
            raise ValueError(
                f"count {self.count} does not fit {self.type.value}, which takes "
                f"{CODECS[self.type].registers} register(s)"
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
        if self.type is RegisterType.STRING:
            raise ValueError("a setpoint is a number: give it a numeric type, not string")
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class ProfileSource(_Strict):
    """The manufacturer's document a profile's registers come from, so a reviewer can check every address."""

    document: str = Field(min_length=3, description="Title of the published register map or manual.")
    version: str = Field(min_length=1, description="Its version, revision or date, as printed on it.")
    url: str | None = None
    notes: str | None = Field(
        None, description="What the document leaves open and how the profile decides it."
    )


class DeviceProfile(_Strict):
    name: Name
    description: str
    source: ProfileSource | None = Field(
        None, description="The register map's document; every shipped profile names one (tests/edge)."
    )
    # validate_default: a profile without `roles:` gets _roles_named's message saying what to add.
    roles: tuple[DeviceRole, ...] = Field(
        (), validate_default=True, description="The device roles this profile serves (wire/roles.py)."
    )
    products: list[str] = Field(default_factory=list)
    word_order: WordOrder = "big"
    max_gap: int = Field(8, ge=0, le=100, description="Unused registers a merged read may span.")
    max_registers: int = Field(120, ge=1, le=125, description="Registers per request (Modbus allows 125).")
    slow_every: int = Field(10, ge=1, description="Read slow values on every n-th poll.")
    values: list[ValueSpec] = Field(min_length=1)
    setpoints: list[SetpointSpec] = Field(default_factory=list)

    @field_validator("roles")
    @classmethod
    def _roles_named(cls, roles: tuple[DeviceRole, ...]) -> tuple[DeviceRole, ...]:
        if not roles:
            raise PydanticCustomError(
                "roles_missing",
                "is missing: add `roles: [...]` with the roles this profile serves ({known}), e.g. "
                "`roles: [meter, load]` for a meter",
                {"known": _ROLE_NAMES},
            )
        twice = sorted({role.value for role in roles if roles.count(role) > 1})
        if twice:
            raise ValueError(f"names role {', '.join(twice)} twice: keep one")
        return roles

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

    @model_validator(mode="after")
    def _serves_its_roles(self) -> Self:
        unserved = self.unserved_roles()
        if unserved:
            # One error for all; the loader turns `unserved` into one issue per role, on that role's line.
            raise PydanticCustomError(
                "role_unserved",
                "{summary}",
                {"summary": "; ".join(f"roles[{i}]: {why}" for i, why in unserved), "unserved": unserved},
            )
        return self

    def unserved_roles(self) -> list[tuple[int, str]]:
        """(index in ``roles``, what is missing) for each role this profile names but cannot serve."""
        values = {v.name for v in self.values}
        setpoints = {s.name for s in self.setpoints}
        out = []
        for index, role in enumerate(self.roles):
            missing = missing_for(role, values, setpoints)
            if missing:
                out.append(
                    (
                        index,
                        f"lacks {', '.join(missing)}: {role_spec(role).describe()}; add them to the profile "
                        "or remove the role",
                    )
                )
        return out

    def serves(self, role: DeviceRole | str) -> bool:
        return DeviceRole(role) in self.roles


class ProfileError(ConfigFileError):
    """A profile that cannot be used; the message names the file, the line, the field and the problem."""


def shipped_profiles() -> list[str]:
    """The names of the profiles in ``edge/profiles/``."""
    return sorted(path.stem for path in PROFILE_DIR.glob("*.yaml"))


def profile_path(name: str) -> Path:
    return PROFILE_DIR / f"{name}.yaml"


def load_profile(source: str | Path) -> DeviceProfile:
    """Load a profile by name (``eastron_sdm630``) or by path (a name ending in .yaml or .yml, relative to the
    working directory); each file is parsed once per process (a gateway with 200 meters shares one profile)."""
    if isinstance(source, Path) or source.endswith((".yaml", ".yml")):
        return _load(Path(source).resolve())
    path = profile_path(source)
    if not path.is_file():
        shipped = shipped_profiles()
        close = difflib.get_close_matches(source, shipped, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ProfileError(
            str(path),
            [
                ConfigIssue(
                    0,
                    "",
                    f"unknown profile {source!r}{hint}: the shipped profiles are {', '.join(shipped)}; "
                    f"{SUNSPEC!r} discovers a SunSpec device; or give the path of a profile file (ending in .yaml)",
                )
            ],
        )
    return _load(path.resolve())


@cache
def _load(path: Path) -> DeviceProfile:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(file, [ConfigIssue(0, "", f"cannot be read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ProfileError(file, [ConfigIssue(0, "", f"is not UTF-8 text ({exc.reason})")]) from None
    data, lines, issues = read_yaml(text, file=file, error=ProfileError)
    try:
        profile = DeviceProfile.model_validate(data)
    except ValidationError as exc:
        issues += _issues(exc, lines)
        raise ProfileError(file, issues) from None
    if issues:  # duplicate keys
        raise ProfileError(file, issues)
    return profile


def _issues(exc: ValidationError, lines: dict[tuple[str | int, ...], int]) -> list[ConfigIssue]:
    out = []
    for error in exc.errors(include_url=False):
        context: dict[str, Any] = error.get("ctx") or {}
        if error["type"] == "role_unserved":
            for index, why in context["unserved"]:
                out.append(ConfigIssue(line_of(("roles", index), lines), f"roles[{index}]", why))
            continue
        path = tuple(error["loc"])
        out.append(
            ConfigIssue(line_of(path, lines), format_path(path), error["msg"].removeprefix("Value error, "))
        )
    return out
