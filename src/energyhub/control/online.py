"""The online loop: measurements in, one decision per cycle, setpoints with expiry and a heartbeat out.

Each cycle (``cycle_s``, 1 s by default) freezes the latest state of every device (``snapshot.py``), turns the
contract limits into what may still flow for the rest of the quarter hour (the DSO measures the quarter-hour
average: energy so far plus the plan for the rest), runs the same policy as the offline simulation, and publishes
the setpoints that changed (or are about to expire). The heartbeat is retained, and its Last Will (alive=false)
tells every gateway at once that control is gone; setpoints expire on their own, so the edge falls back to its safe
mode when this process stops. Node flows, limits, decisions and the cycle time go to InfluxDB.

A hung control (stopped, not dead: its connection stays open) is noticed by the broker through the MQTT keepalive:
after 1.5 x ``mqtt_keepalive_s`` of silence, at its next keepalive check (every 6 s in Mosquitto 2.0), it sends the
Last Will; so the keepalive is short (2 s: the Will within 10 s) and checked against the gateways' failsafe
timeout. A measurement is never retained, so a retained one (which the broker hands every new subscriber) is not a
reading, nor is one dated well ahead of the data clock (``MeasurementGate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple, Self

import aiomqtt
import numpy as np
import numpy.typing as npt
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from energyhub.control.costs import battery_wear
from energyhub.control.dispatch import DispatchInput, DispatchResult
from energyhub.control.policies import Greedy, Mpc, Policy, Step
from energyhub.control.simulate import ShareKeyError, share_key
from energyhub.control.snapshot import LiveState, Snapshot
from energyhub.domain.clock import Clock, clock_from_env
from energyhub.domain.community import load_community
from energyhub.domain.day_ahead import DayAheadStore, with_profiles
from energyhub.domain.isp import isp_start
from energyhub.domain.limits import LimitBook
from energyhub.domain.network import Network
from energyhub.domain.topology import DeviceRole
from energyhub.io.influx import InfluxClient, InfluxError
from energyhub.io.line_protocol import encode_point
from energyhub.runtime.connection import ConnectedSettings
from energyhub.runtime.layered_settings import SettingsError, load_layered
from energyhub.wire.messages import HEARTBEAT_TIMEOUT_S, ControllerHeartbeat, MessageError, Setpoint, encode
from energyhub.wire.readings import MAX_AHEAD_S, MeasurementGate
from energyhub.wire.topics import DEFAULT_ROOT, TopicError, TopicKind, Topics

__all__ = ["ControlSettings", "OnlineController", "load_control_settings", "will_after_s"]

log = logging.getLogger(__name__)
Array = npt.NDArray[np.float64]
ISP_S = 900.0
ISP_H = 0.25
HISTORY = 672 + 96  # a week and a day of quarter-hour averages: what the MPC's forecasts look back on
DAY_AHEAD_CHECK_S = 5.0  # how often the uploaded day-ahead folder is looked at
SEND_THRESHOLD_KW = 0.1  # a changed setpoint goes out at once when it moves this much power
# Mosquitto 2.0 looks at its clients' keepalives every 6 s (src/keepalive.c: last_keepalive_check + 5 < now), so a
# Will comes up to 6 s after the 1.5 x keepalive of silence (measured here with 2.0.11: keepalive 4 s, 7.6-11.4 s).
BROKER_KEEPALIVE_CHECK_S = 6


class ControlSettings(ConnectedSettings):
    model_config = SettingsConfigDict(env_prefix="EHUB_CONTROL_", extra="forbid")

    community: Path = Field(Path("examples/de-koumen.yaml"), description="Community file.")
    site: str | None = Field(None, description="Site id; the community id when left out.")
    topic_root: str = DEFAULT_ROOT
    policy: str = Field("mpc", pattern="^(mpc|greedy)$")
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


class SetpointOut(NamedTuple):
    gateway: str
    device: str
    name: str
    value: float
    unit_kw: float  # the kW that one unit of the value moves
    why: str


@dataclass
class _Sent:
    value: float
    at: float


class OnlineController:
    def __init__(self, settings: ControlSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        # Quarter hours, contract windows and timestamps on the data clock; the cycle and TTLs in real time.
        self.clock = clock or clock_from_env()
        self.community = load_community(settings.community)
        self.network = Network.from_community(self.community)
        self.topics = Topics(site=settings.site or self.community.community.id, root=settings.topic_root)
        self.book = LimitBook(self.community)
        self.day_ahead = DayAheadStore(settings.day_ahead_dir) if settings.day_ahead_dir else None
        self._day_ahead_stamp: tuple[int, int] = (0, 0)
        self._day_ahead_checked = -math.inf
        self.day_ahead_problems: list[str] = []
        self.refresh_day_ahead()
        self.state = LiveState(self.community, self.network, stale_after_s=settings.stale_after_s)
        self.gate = MeasurementGate(self.clock, settings.max_ahead_s)
        self.policy: Policy = Mpc(self.network) if settings.policy == "mpc" else Greedy(self.network)
        try:
            self.keys = share_key(self.network, settings.share_key, settings.priority)
        except ShareKeyError as exc:
            raise SettingsError(f"priority: {exc}") from None
        n_c, n_n = len(self.network.connection_ids), len(self.network.node_ids)
        # Quarter-hour averages so far (the MPC's history) and this quarter hour's energy per node.
        self.load_history = np.zeros((n_c, HISTORY))
        self.pv_history = np.zeros((n_c, HISTORY))
        self._isp: datetime | None = None
        self._isp_energy_kwh = np.zeros(n_n)
        self.contract_kw: tuple[Array, Array] = (np.full(n_n, np.inf), np.full(n_n, np.inf))
        self._isp_power_kwh = np.zeros(n_c)  # per connection: the meter's power integrated, where no counter
        self.metered_connections = 0
        self.node_metered = np.zeros(n_n, dtype=bool)
        self._isp_load_kwh = np.zeros(n_c)
        self._isp_pv_kwh = np.zeros(n_c)
        self._last_cycle: float | None = None
        self._sent: dict[tuple[str, str, str], _Sent] = {}
        self.cycles = 0
        self.infeasible_cycles = 0
        self._infeasible_logged = -1e9
        self.cycle_ms: list[float] = []
        self.last: DispatchResult | None = None
        self.last_snapshot: Snapshot | None = None
        self._load_estimate: Array | None = None
        self.influx = InfluxClient(
            url=settings.influx_url, database=settings.influx_db, token=settings.influx_token
        )

    # -- limits for the rest of the quarter hour ----------------------------------------------------------------
    def refresh_day_ahead(self) -> bool:
        """Merge the uploaded day-ahead profiles into the contracts if the folder changed; True if it did. A
        profile that cannot be used is logged with its reason and left out; the others still apply."""
        if self.day_ahead is None:
            return False
        self._day_ahead_checked = time.monotonic()
        stamp = self.day_ahead.stamp()
        if stamp == self._day_ahead_stamp:
            return False
        self._day_ahead_stamp = stamp
        tz = self.community.community.timezone
        uploads, problems = self.day_ahead.load(tz)
        merged, refused = with_profiles(self.community, uploads)
        self.book = LimitBook(merged)
        self.day_ahead_problems = problems + refused
        for problem in self.day_ahead_problems:
            log.warning("day-ahead profile not used: %s", problem)
        used = sum(len(p) for p in uploads.values())
        log.info("day-ahead profiles: %d uploaded for %s", used, ", ".join(sorted(uploads)) or "no node")
        return True

    def _limits_now(self, now: datetime, load_kw: Array | None = None) -> tuple[Array, Array, Array, Array]:
        """Contract limits with the margin, turned into the average allowed for the rest of the quarter hour."""
        if time.monotonic() - self._day_ahead_checked > DAY_AHEAD_CHECK_S:
            self.refresh_day_ahead()
        m, floor = self.settings.margin, self.settings.margin_kw
        found = [self.book.limit_at(n, now) for n in self.network.node_ids]
        imp = np.array([f.import_w / 1000 for f in found])
        exp = np.array([f.export_w / 1000 for f in found])
        self.contract_kw = (imp, exp)  # as agreed, for the record; control aims inside them
        imp = np.maximum(np.minimum(imp * (1 - m), imp - floor), 0.0)
        # A zero feed-in limit needs its reserve too: aimed at exactly 0, the flow between two cycles lands below
        # it as often as above, and the quarter hour ends a few hundred watts fed in. So such a node aims at a
        # small import, but only as much as half its own load: with all its PV curtailed it can do no more, and a
        # PV roof without load must not be told to import.
        reach = self.network.flows(load_kw) if load_kw is not None else np.zeros(len(exp))
        exp = np.maximum(np.minimum(exp * (1 - m), exp - floor), np.minimum(exp * (1 - m), -0.5 * reach))
        physical = np.array([f.physical_w / 1000 for f in found])
        start = isp_start(now)
        left_h = max((start + timedelta(seconds=ISP_S) - now).total_seconds(), 1.0) / 3600
        imported = np.maximum(self._isp_energy_kwh, 0)
        exported = np.maximum(-self._isp_energy_kwh, 0)
        # (limit x 15 min - energy so far) / time left: less than the limit after an overshoot, to bring the
        # average back; never more than the limit itself (a budget saved early is not spent as a peak later, which
        # would make the loop swing), nor the physical capacity.
        imp_rest = np.minimum(np.minimum((imp * ISP_H - imported + exported) / left_h, imp), physical)
        exp_rest = np.minimum(np.minimum((exp * ISP_H - exported + imported) / left_h, exp), physical)
        return imp_rest, exp_rest, imp, exp

    def _account(self, now: datetime, snap: Snapshot) -> None:
        """This quarter hour's energy per node so far, as the grid meters count it (their energy registers,
        ``isp_energy.py``); where a meter's counter is not known for this quarter hour, the meter's power integrated
        over the data clock since the last cycle. Rolls the quarter hour."""
        start = isp_start(now)
        if self._isp is not None and start != self._isp:
            self.load_history = np.roll(self.load_history, -1, axis=1)
            self.pv_history = np.roll(self.pv_history, -1, axis=1)
            self.load_history[:, -1] = self._isp_load_kwh / ISP_H
            self.pv_history[:, -1] = self._isp_pv_kwh / ISP_H
            self._isp_power_kwh[:] = 0
            self._isp_load_kwh[:] = 0
            self._isp_pv_kwh[:] = 0
        self._isp = start
        t = now.timestamp()
        if self._last_cycle is not None:
            # Only the part in this quarter hour, and at most 10 real seconds' worth: after a pause, an old
            # reading must not fill a whole quarter hour.
            since = t - max(self._last_cycle, start.timestamp())
            hours = min(max(since, 0.0), self.clock.data_s(10.0)) / 3600
            self._isp_power_kwh += snap.grid_kw * hours
            self._isp_load_kwh += snap.load_kw * hours
            self._isp_pv_kwh += snap.pv_available_kw * hours
        self._last_cycle = t
        metered = [
            self.state.energy.so_far_kwh(c, t, float(snap.grid_kw[c])) for c in range(len(snap.grid_kw))
        ]
        self.metered_connections = sum(m is not None for m in metered)
        unmetered = np.array([m is None for m in metered], dtype=float)
        # A node is counted from the registers when all its connections are (else partly by integrated power).
        self.node_metered = (self.network.incidence @ unmetered) == 0
        connection_kwh = np.array(
            [m if m is not None else float(self._isp_power_kwh[c]) for c, m in enumerate(metered)]
        )
        self._isp_energy_kwh = self.network.flows(connection_kwh)

    # -- one cycle ----------------------------------------------------------------------------------------------
    def decide(self, now: datetime) -> tuple[DispatchResult, Snapshot, Array, Array]:
        snap = self.state.snapshot()
        self._account(now, snap)
        # The load is inferred (meter minus devices), and a meter and an inverter are never read at the same
        # instant: a step in PV shows in one a poll before the other. Acting on that difference at once makes
        # the loop swing, so the inferred load is smoothed over a few seconds (a first-order filter).
        if self._load_estimate is None:
            self._load_estimate = snap.load_kw.copy()
        else:
            alpha = self.settings.cycle_s / (self.settings.cycle_s + self.settings.load_smoothing_s)
            self._load_estimate += alpha * (snap.load_kw - self._load_estimate)
        snap.load_kw = self._load_estimate.copy()
        imp_rest, exp_rest, imp, exp = self._limits_now(now, snap.load_kw)
        net = self.network
        chargers = net.chargers
        plugged = np.flatnonzero(snap.charger_connected)
        batteries = net.batteries
        power = np.array([b.power_kw for b in batteries])
        capacity = np.array([b.capacity_kwh for b in batteries])
        eff = np.array([b.efficiency for b in batteries])
        d = DispatchInput(
            load_kw=snap.load_kw,
            pv_kw=snap.pv_available_kw,
            imp_kw=imp_rest,
            exp_kw=exp_rest,
            incidence=net.incidence,
            session_connection=np.array([chargers[c].connection for c in plugged], dtype=np.int64),
            session_max_kwh=np.array([snap.charger_max_kw[c] * ISP_H for c in plugged]),
            session_urgency=np.ones(len(plugged)),
            battery_connection=np.array([b.connection for b in batteries], dtype=np.int64),
            battery_charge_max_kw=np.minimum(power, (capacity - snap.battery_soc_kwh) / (eff * ISP_H)),
            battery_discharge_max_kw=np.minimum(power, snap.battery_soc_kwh * eff / ISP_H),
            battery_target_kw=np.zeros(len(batteries)),
            share_key=self.keys,
            battery_wear=battery_wear(net),
        )
        history_t = HISTORY - 1
        load_hist, pv_hist = self.load_history.copy(), self.pv_history.copy()
        load_hist[:, history_t], pv_hist[:, history_t] = snap.load_kw, snap.pv_available_kw
        step = Step(
            t=history_t,
            d=d,
            soc_kwh=snap.battery_soc_kwh,
            load_history=load_hist,
            pv_history=pv_hist,
            imp_plan=np.repeat(imp[:, None], HISTORY, axis=1),
            exp_plan=np.repeat(exp[:, None], HISTORY, axis=1),
        )
        return self.policy.decide(step), snap, imp, exp

    def setpoints(self, decision: DispatchResult, snap: Snapshot) -> list[SetpointOut]:
        """Every setpoint the decision steers, with the kW one unit of it moves (for the send threshold)."""
        out = []
        net = self.network
        binding = ", ".join(f"{net.node_ids[n]} {d}" for n, d in decision.binding) or "no limit binding"
        for ref in self.state.devices:
            c = ref.connection
            if ref.role is DeviceRole.PV and ref.rating_kw > 0:
                available = snap.pv_available_kw[c]
                share = decision.pv_used_kw[c] / available if available > 1e-9 else 1.0
                rating = self._pv_rating(c)
                # Down to the inverter's 0.1 % step, never up: rounded up, every inverter of a node let a little
                # more out than planned, and at a zero limit the quarter hour ended fed in.
                pct = (
                    100.0
                    if share >= 0.999
                    else math.floor(max(0.0, min(1.0, share * available / rating)) * 1000) / 10
                )
                out.append(
                    SetpointOut(
                        ref.gateway, ref.device, "active_power_limit_pct", pct, ref.rating_kw / 100, binding
                    )
                )
            elif ref.role is DeviceRole.BATTERY:
                b = self.state.battery_index.get(f"{net.connection_ids[c]}/{ref.device}")
                if b is None:
                    continue
                kw = decision.battery_kw[b]
                rate = round(100 * abs(kw) / net.batteries[b].power_kw, 1)
                name = "charge_rate_pct" if kw >= 0 else "discharge_rate_pct"
                out.append(
                    SetpointOut(ref.gateway, ref.device, name, rate, net.batteries[b].power_kw / 100, binding)
                )
            elif ref.role is DeviceRole.EV:
                i = self.state.charger_index.get(f"{net.connection_ids[c]}/{ref.device}")
                if i is None or not snap.charger_connected[i]:
                    continue
                plugged = [int(p) for p in np.flatnonzero(snap.charger_connected)]
                kw = decision.session_kwh[plugged.index(i)] / ISP_H
                amps = kw * 1000 / (3**0.5 * 400)  # three phases at 400 V
                out.append(
                    SetpointOut(
                        ref.gateway, ref.device, "max_current_a", round(max(amps, 6.0), 1), 0.69, binding
                    )
                )
        return out

    def _pv_rating(self, connection: int) -> float:
        return sum(
            r.rating_kw for r in self.state.devices if r.connection == connection and r.role is DeviceRole.PV
        )

    # -- MQTT and InfluxDB --------------------------------------------------------------------------------------
    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                info = self.topics.parse(str(message.topic))
                if info.kind is TopicKind.MEASUREMENT and info.gateway and info.device:
                    topic, payload = str(message.topic), bytes(message.payload)
                    measurement = self.gate.admit(topic, payload, retained=message.retain)
                    if measurement is not None:
                        self.state.update(info.gateway, info.device, measurement)
            except (TopicError, MessageError) as exc:
                log.debug("ignoring %s: %s", message.topic, exc)  # the ingest dead-letters these

    async def _publish(self, client: aiomqtt.Client, decision: DispatchResult, snap: Snapshot) -> int:
        now, mono = self.clock.now(), time.monotonic()
        ttl = self.settings.setpoint_ttl_s
        outgoing: list[tuple[str, bytes]] = []
        for gateway, device, name, value, unit_kw, why in self.setpoints(decision, snap):
            key = (gateway, device, name)
            last = self._sent.get(key)
            # Unchanged setpoints are sent again well before they expire, changed ones at once: changed by what
            # moves SEND_THRESHOLD_KW (a fixed 0.5 % step once let 2 kW of four inverters' PV out at a zero limit).
            unchanged = last is not None and abs(last.value - value) * unit_kw < SEND_THRESHOLD_KW
            if last is not None and unchanged and mono - last.at < ttl / 3:
                continue
            setpoint = Setpoint(
                id=uuid.uuid4().hex[:16],
                name=name,
                value=value,
                created=now,
                expires=now + timedelta(seconds=self.clock.data_s(ttl)),  # lasts ttl real seconds
                reason=why[:200],
            )
            outgoing.append((self.topics.setpoint(gateway, device), encode(setpoint)))
            self._sent[key] = _Sent(value, mono)
        # All at once: awaited one by one, each PUBACK's round trip added up to a quarter second a cycle with
        # the whole estate's inverters changing.
        await asyncio.gather(*(client.publish(topic, payload, qos=1) for topic, payload in outgoing))
        return len(outgoing)

    async def _record(
        self, now: datetime, decision: DispatchResult, imp: Array, exp: Array, ms: float, sent: int
    ) -> None:
        ts = int(now.timestamp() * 1e9)
        net = self.network
        site = self.topics.site
        # The flow is what the grid meters say (their sum under each node), as a dashboard next to the meters
        # must show; what the decision expects after its setpoints is kept apart as planned_kw.
        measured = net.flows(self.last_snapshot.grid_kw) if self.last_snapshot else decision.node_kw
        limit_imp, limit_exp = self.contract_kw
        lines = [
            encode_point(
                "control_node",
                {"site": site, "node": node, "level": str(net.levels[n])},
                {
                    "flow_kw": float(measured[n]),
                    "planned_kw": float(decision.node_kw[n]),
                    **({"limit_import_kw": float(limit_imp[n])} if np.isfinite(limit_imp[n]) else {}),
                    **({"limit_export_kw": float(limit_exp[n])} if np.isfinite(limit_exp[n]) else {}),
                    # What control aims at: the limits less the margin (a zero feed-in aims at a small import).
                    **({"aim_import_kw": float(imp[n])} if np.isfinite(imp[n]) else {}),
                    **({"aim_export_kw": float(exp[n])} if np.isfinite(exp[n]) else {}),
                    "isp_energy_kwh": float(self._isp_energy_kwh[n]),
                    "metered": int(self.node_metered[n]),  # 1: counted from the meters' energy registers
                },
                ts,
            )
            for n, node in enumerate(net.node_ids)
        ]
        binding = ";".join(f"{net.node_ids[n]}:{d}" for n, d in decision.binding)
        curtailed = (
            float((self.last_snapshot.pv_available_kw - decision.pv_used_kw).sum())
            if self.last_snapshot
            else 0.0
        )
        lines.append(
            encode_point(
                "control_cycle",
                {"site": site, "policy": self.policy.name},
                {
                    "cycle_ms": ms,
                    # 0/1 integers rather than booleans: a dashboard sums them per interval.
                    "lp": int(decision.solved),
                    "infeasible": int(decision.infeasible),
                    "setpoints": sent,
                    "curtailed_kw": curtailed,
                    "binding": binding or "none",
                    "stale_devices": len(self.last_snapshot.stale) if self.last_snapshot else 0,
                    "metered_connections": self.metered_connections,
                },
                ts,
            )
        )
        try:
            await self.influx.write(lines)
        except InfluxError as exc:
            log.warning("could not write control figures: %s", exc)

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        username, password = s.mqtt_login()
        will = ControllerHeartbeat(alive=False, ts=self.clock.now(), cycle=0, period_s=s.cycle_s)
        while not stop.is_set():
            try:
                async with aiomqtt.Client(
                    s.mqtt_host,
                    s.mqtt_port,
                    username=username,
                    password=password,
                    identifier=f"ehub-control-{uuid.uuid4().hex[:6]}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    # Short: the broker sends the Will after 1.5 x keepalive of silence (a hung process).
                    keepalive=s.mqtt_keepalive_s,
                    will=aiomqtt.Will(self.topics.heartbeat(), encode(will), qos=1, retain=True),
                ) as client:
                    # Retain as published: a measurement published retained shows as such live too, not only
                    # when the broker hands it out from its store.
                    await client.subscribe(
                        self.topics.all_measurements(),
                        options=SubscribeOptions(qos=0, retainAsPublished=True),
                    )
                    receiver = asyncio.create_task(self._receive(client))
                    try:
                        await self._cycles(client, stop)
                    finally:
                        receiver.cancel()
                        # A clean stop: say so at once, rather than let the gateways wait for the timeout.
                        gone = ControllerHeartbeat(
                            alive=False,
                            ts=self.clock.now(),
                            cycle=self.cycles,
                            period_s=s.cycle_s,
                            policy=self.policy.name,
                        )
                        if stop.is_set():
                            await client.publish(self.topics.heartbeat(), encode(gone), qos=1, retain=True)
            except aiomqtt.MqttError as exc:
                log.warning("broker connection lost (%s); retrying", exc)
                await asyncio.sleep(1.0)
        await self.influx.aclose()

    async def _cycles(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        s = self.settings
        next_at = time.monotonic()
        while not stop.is_set():
            started = time.perf_counter()
            now = self.clock.now()
            decision, snap, imp, exp = self.decide(now)
            self.last, self.last_snapshot = decision, snap
            if decision.infeasible:
                self.infeasible_cycles += 1
                if time.monotonic() - self._infeasible_logged > 60:
                    self._infeasible_logged = time.monotonic()
                    over = [
                        self.network.node_ids[n]
                        for n in np.flatnonzero(
                            (decision.node_kw > imp + 1e-6) | (-decision.node_kw > exp + 1e-6)
                        )
                    ]
                    log.warning(
                        "no action keeps every limit (%d cycles so far): over at %s; doing the least harm",
                        self.infeasible_cycles,
                        ", ".join(over) or "the rest-of-quarter-hour budget",
                    )
            # The heartbeat before the setpoints: a gateway in failsafe refuses setpoints until a fresh heartbeat,
            # and the broker keeps one publisher's messages in order, so this cycle's setpoints are taken.
            beat = ControllerHeartbeat(
                alive=True, ts=now, cycle=self.cycles, period_s=s.cycle_s, policy=self.policy.name
            )
            await client.publish(self.topics.heartbeat(), encode(beat), qos=1, retain=True)
            sent = await self._publish(client, decision, snap)
            ms = (time.perf_counter() - started) * 1000
            self.cycle_ms.append(ms)
            self.cycles += 1
            await self._record(now, decision, imp, exp, ms, sent)
            next_at += s.cycle_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
