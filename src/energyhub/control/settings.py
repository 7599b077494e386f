"""Control's settings, and the check that a hung control's Last Will comes within the gateways' failsafe timeout.

A hung control (stopped, not dead: its connection stays open) is noticed by the broker through the MQTT keepalive:
after 1.5 x ``mqtt_keepalive_s`` of silence, at its next keepalive check (every 6 s in Mosquitto 2.0), it sends the
Last Will; so the keepalive is short (2 s: the Will within 10 s) and checked against the gateways' failsafe
timeout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from energyhub.control.registry import DEFAULT_POLICY, online_policies, online_policy
from energyhub.runtime.connection import ConnectedSettings
from energyhub.runtime.layered_settings import load_layered
from energyhub.wire.messages import HEARTBEAT_TIMEOUT_S
from energyhub.wire.readings import MAX_AHEAD_S
from energyhub.wire.topics import DEFAULT_ROOT

__all__ = ["BROKER_KEEPALIVE_CHECK_S", "ControlSettings", "load_control_settings", "will_after_s"]

# Mosquitto 2.0 looks at its clients' keepalives every 6 s (src/keepalive.c: last_keepalive_check + 5 < now), so a
# Will comes up to 6 s after the 1.5 x keepalive of silence (measured here with 2.0.11: keepalive 4 s, 7.6-11.4 s).
BROKER_KEEPALIVE_CHECK_S = 6


class ControlSettings(ConnectedSettings):
    model_config = SettingsConfigDict(env_prefix="EHUB_CONTROL_", extra="forbid")

    community: Path = Field(Path("examples/de-koumen.yaml"), description="Community file.")
    site: str | None = Field(None, description="Site id; the community id when left out.")
    topic_root: str = DEFAULT_ROOT
    policy: str = Field(
        DEFAULT_POLICY,
        description=f"The online policy: {', '.join(online_policies())} (control/registry.py).",
    )
    cycle_s: float = Field(1.0, gt=0, le=60)
    margin: float = Field(
        0.02, ge=0, lt=1, description="Safety margin below each contract limit, a fraction."
    )
    margin_kw: float = Field(
        1.0,
        ge=0,
        description="The smallest reserve below each limit, in kW: a zero feed-in limit needs one too (then as an "
        "import of at most half the node's own load).",
    )
    share_key: str = Field("kwp", pattern="^(kwp|contracted|priority)$")
    priority: dict[str, float] = Field(
        default_factory=dict,
        description="With share_key priority: connection id -> weight on its kWp (2 = curtailed twice as hard).",
    )
    setpoint_ttl_s: float = Field(30.0, gt=1, description="A setpoint expires this long after it is sent.")
    stale_after_s: float = Field(5.0, gt=0, description="A measurement older than this counts as missing.")
    load_smoothing_s: float = Field(
        5.0, ge=0, description="Time constant of the filter on the inferred load."
    )
    bookings_dir: Path | None = Field(
        Path("var/api/bookings"),
        description="Plaza bookings made through the API (its state_dir/bookings): a charger's energy wanted and "
        "departure where its session says nothing. None: not read.",
    )
    day_ahead_dir: Path | None = Field(
        Path("var/api/day_ahead"),
        description="Day-ahead profiles uploaded through the API (its state_dir/day_ahead); read every few "
        "seconds and merged into the contracts. None: only the community file's.",
    )
    mqtt_keepalive_s: int = Field(
        2,
        ge=2,
        le=600,
        description="MQTT keepalive, seconds. The broker sends a hung control's Last Will (heartbeat "
        "alive=false) once it has heard nothing for more than 1.5 x this, checking every 6 s (Mosquitto 2.0): "
        "so within 1.5 x keepalive + 1 + 6 s, which must not pass failsafe_timeout_s. cycle_s may not be longer: "
        "the heartbeat of every cycle keeps the connection alive.",
    )
    failsafe_timeout_s: float = Field(
        HEARTBEAT_TIMEOUT_S,
        gt=0,
        description="The gateways' heartbeat_timeout_s (edge config, 10 s by default): a hung control's Last "
        "Will must come within it.",
    )
    max_ahead_s: float = Field(
        MAX_AHEAD_S,
        gt=0,
        le=3600,
        description="A measurement dated more than this many real seconds ahead of the data clock is ignored "
        "(and counted); at 60x that is 60 minutes of data.",
    )

    @field_validator("policy")
    @classmethod
    def _an_online_policy(cls, name: str) -> str:
        online_policy(name)  # refuses an unknown or offline-only name, listing the online ones
        return name

    @model_validator(mode="after")
    def _will_within_the_failsafe_timeout(self) -> Self:
        will_s = will_after_s(self.mqtt_keepalive_s)
        if will_s > self.failsafe_timeout_s:
            fits = [k for k in range(2, self.mqtt_keepalive_s) if will_after_s(k) <= self.failsafe_timeout_s]
            fix = f"take at most {fits[-1]} s" if fits else "no keepalive can: raise failsafe_timeout_s"
            raise ValueError(
                f"mqtt_keepalive_s {self.mqtt_keepalive_s}: a hung control's Last Will could come after "
                f"{will_s} s, not within failsafe_timeout_s {self.failsafe_timeout_s:g}; {fix}"
            )
        if self.cycle_s > self.mqtt_keepalive_s:
            raise ValueError(
                f"cycle_s {self.cycle_s:g} is longer than mqtt_keepalive_s {self.mqtt_keepalive_s}: the heartbeat "
                "of each cycle keeps control's connection alive; take a shorter cycle or a longer keepalive"
            )
        return self


def will_after_s(keepalive_s: int) -> int:
    """At most how long after control's last packet the broker sends its Last Will: once it has heard nothing for
    more than 1.5 x keepalive (counted in whole seconds: up to one more), at its next keepalive check."""
    return (3 * keepalive_s) // 2 + 1 + BROKER_KEEPALIVE_CHECK_S


def load_control_settings(file: Path | None = None, **flags: object) -> ControlSettings:
    return load_layered(ControlSettings, file, **flags)
