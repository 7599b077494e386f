"""A simulated OCPP charge point (1.6J car charger or 2.0.1 truck charger) on the maintained ``ocpp`` library.

It connects to the edge agent's CSMS (``energyhub.edge.ocpp_server``) and is used in tests, the demo and a
benchmark. Sessions reuse the Modbus charger simulator's ``Session`` (energy wanted, departure, vehicle maximum)
and the plaza's session plans (``energyhub.synthetic.sessions``).

The wire contract (both sides follow it):

- Connect to ``ws://host:port/<charge_point_id>`` (or ``wss://`` with an ``ssl.SSLContext`` trusting a CA file),
  subprotocol ``ocpp1.6`` or ``ocpp2.0.1``, HTTP Basic auth with username = charge_point_id and a password (OCPP
  security profiles 1 and 2). Reconnect with jittered, doubling backoff when the connection drops.
- On connect: BootNotification (vendor ``energyhub-sim``, model ``DC-350`` for DC / ``AC-22`` for AC) until
  Accepted, then StatusNotification per connector, then Heartbeat at the interval the answer gives.
- 1.6J (AC, 230 V x phases): a session is StatusNotification Preparing -> StartTransaction(connector_id, id_tag,
  meter_start Wh, timestamp) -> Charging; MeterValues every ``meter_interval_s`` with connector_id,
  transaction_id and sampled values "Energy.Active.Import.Register" (Wh), "Power.Active.Import" (W),
  "Current.Import" (A), context "Sample.Periodic"; StopTransaction (reason Local when the vehicle is full,
  EVDisconnected when it leaves) -> Finishing; Available when it has left. Without a transaction MeterValues
  carry connector_id and no transaction_id, so the meter is read without a session too.
- 2.0.1 (DC): StatusNotification(evse_id, connector_id 1, Occupied/Available); TransactionEvent Started
  (CablePluggedIn) / Updated (MeterValuePeriodic, or ChargingStateChanged when the charging state changes; the
  same measurands plus "SoC" Percent) / Ended (EVDeparted or EnergyLimitReached), seq_no counting from 0 per
  transaction, transaction_info{transaction_id, charging_state}; after Started, NotifyEVChargingNeeds(evse_id,
  charging_needs{requested_energy_transfer "DC", departure_time, dc_charging_parameters{ev_max_current,
  ev_max_voltage, energy_amount Wh, ev_max_power, state_of_charge}}). Meter values outside a transaction go in
  MeterValues(evse_id).
- Smart charging: SetChargingProfile (1.6 connector_id + cs_charging_profiles; 2.0.1 evse_id +
  charging_profile), ClearChargingProfile, GetCompositeSchedule; the composite limit is
  ``ocpp_schedule.composite_limit_w`` by the charger's own (injected) clock, so a limit whose valid_to passes
  falls back to the level-0 TxDefaultProfile / station maximum. Power follows min(vehicle's wish, composite
  limit) from the next meter tick; energy integrates power over the data clock; when several connectors draw,
  they share the station maximum in proportion.
- Offline: transaction messages (1.6 StartTransaction, StopTransaction and a transaction's MeterValues; 2.0.1
  TransactionEvent, flagged ``offline=True``) are queued in order and sent after reconnect; other messages are
  dropped while offline. A queued message answered with a CallError is dropped (logged), one not answered is
  tried ``tx_attempts`` times.

Clocks: ``clock`` (the data clock, epoch s) stamps messages, judges profile validity and departures and
integrates energy; ``meter_interval_s`` paces the meter loop in real seconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from ocpp.exceptions import OCPPError
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from energyhub.simulators.ev_charger import Session
from energyhub.simulators.ocpp_schedule import (
    PHASE_VOLTAGE,
    Profile,
    ProfileError,
    Purpose,
    clear_profiles,
    composite_limit_w,
    composite_schedule,
    install_profile,
    parse_profile,
)
from energyhub.synthetic.sessions import plan_sessions, vehicle_max_w

__all__ = [
    "VENDOR",
    "ChargePointSim",
    "ConnectorSpec",
    "PlazaCharger",
    "PlazaPlans",
    "Version",
    "plaza_step",
    "run_plaza",
]

LOG = logging.getLogger(__name__)
VENDOR = "energyhub-sim"
Version = Literal["1.6", "2.0.1"]
_SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
_DC_VOLTAGE = 800.0  # a truck's battery voltage, for NotifyEVChargingNeeds' ev_max_current
_DEFAULT_DC_SOC = 20.0


@dataclass(frozen=True, kw_only=True)
class ConnectorSpec:
    """One connector (1.6) or EVSE with one connector (2.0.1)."""

    connector_id: int  # 1.6 connector id; 2.0.1 evse id (its connector is 1)
    kind: Literal["ac", "dc"]
    max_power_w: float  # hardware rating
    phases: int = 3

    def __post_init__(self) -> None:
        if self.connector_id < 1:
            raise ValueError(f"connector {self.connector_id}: ids start at 1 (0 is the whole station)")
        if self.kind not in ("ac", "dc"):
            raise ValueError(f"connector {self.connector_id}: kind must be 'ac' or 'dc', not {self.kind!r}")
        if not (self.max_power_w > 0 and math.isfinite(self.max_power_w)):
            raise ValueError(
                f"connector {self.connector_id}: max_power_w must be > 0, got {self.max_power_w}"
            )
        if self.phases not in (1, 2, 3):
            raise ValueError(f"connector {self.connector_id}: phases must be 1, 2 or 3, got {self.phases}")


@dataclass
class _Tx:
    local_id: str  # 2.0.1 transaction id (the charger's); in 1.6 only for logs
    started_at: float
    meter_start_wh: float
    remote_id: int | None = None  # 1.6: the CSMS's transaction id from StartTransaction's answer
    seq_no: int = 0
    charging_state: str = "EVConnected"


@dataclass
class _Connector:
    spec: ConnectorSpec
    energy_wh: float = 0.0
    power_w: float = 0.0
    session: Session | None = None
    id_tag: str = "SIM"
    soc_start_pct: float | None = None
    capacity_wh: float | None = None
    tx: _Tx | None = None
    plugged: bool = False

    @property
    def soc_pct(self) -> float | None:
        if self.soc_start_pct is None or self.capacity_wh is None or self.session is None:
            return None
        return min(100.0, self.soc_start_pct + 100.0 * self.session.delivered_wh / self.capacity_wh)


@dataclass
class _Outgoing:
    action: str
    build: Callable[
        [], Any
    ]  # the payload, built at send time (a 1.6 transaction id arrives late); None: skip
    transactional: bool
    on_result: Callable[[Any], None] | None = None
    attempts: int = 0


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fixed(payload: Any) -> Callable[[], Any]:
    """A message built already: its builder hands it back."""
    return lambda: payload


async def _wait(stop: asyncio.Event, timeout_s: float) -> None:
    """Sleep ``timeout_s`` or until ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)


class ChargePointSim:
    """One simulated charge point. Call ``plug_in``/``unplug`` from the same event loop as ``run``."""

    def __init__(
        self,
        charge_point_id: str,
        url: str,
        *,
        version: Version,
        connectors: Sequence[ConnectorSpec],
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        meter_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        response_timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.1, 10.0),
        tx_attempts: int = 3,
    ) -> None:
        if version not in _SUBPROTOCOL:
            raise ValueError(
                f"charge point {charge_point_id}: version must be '1.6' or '2.0.1', not {version!r}"
            )
        ids = [c.connector_id for c in connectors]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"charge point {charge_point_id}: connectors need distinct ids, got {ids}")
        if meter_interval_s <= 0:
            raise ValueError(f"charge point {charge_point_id}: meter_interval_s must be > 0")
        self.id = charge_point_id
        self.url = url.rstrip("/") + "/" + charge_point_id
        self.version: Version = version
        self.password = password
        self.ssl_context = ssl_context
        self.meter_interval_s = meter_interval_s
        self.clock = clock
        self.response_timeout_s = response_timeout_s
        self.backoff_s = backoff_s
        self.tx_attempts = tx_attempts
        self.reject_profiles = False  # test hook: answer SetChargingProfile with Rejected
        self.connected = asyncio.Event()  # set while connected and booted
        self.profiles: list[Profile] = []
        self.heartbeat_interval_s: float | None = None
        self.dropped_offline = 0  # non-transaction messages not sent because the charger was offline
        self.call_errors = 0  # calls answered with a CallError (or given up after timeouts)
        self._connectors = {c.connector_id: _Connector(spec=c) for c in connectors}
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_changed = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._away_until = 0.0  # loop time before which the charger stays offline (drop_connection)
        self._last_tick: float | None = None
        self._tx_counter = 0

    # -- what tests, the demo and the plaza read and do ------------------------------------------------------
    @property
    def model(self) -> str:
        return "DC-350" if any(c.spec.kind == "dc" for c in self._connectors.values()) else "AC-22"

    @property
    def queued(self) -> int:
        """Transaction messages waiting to be sent (and answered)."""
        return sum(1 for m in self._outbox if m.transactional)

    def _connector(self, connector_id: int) -> _Connector:
        try:
            return self._connectors[connector_id]
        except KeyError:
            raise ValueError(f"charge point {self.id} has no connector {connector_id}") from None

    def connector_spec(self, connector_id: int) -> ConnectorSpec:
        return self._connector(connector_id).spec

    def add_connector(self, spec: ConnectorSpec) -> None:
        """One more connector (before ``run``): a station is built from the devices that stand for its
        connectors, one by one."""
        if spec.connector_id in self._connectors:
            raise ValueError(f"charge point {self.id} has connector {spec.connector_id} already")
        self._connectors[spec.connector_id] = _Connector(spec=spec)

    def power_w(self, connector_id: int) -> float:
        return self._connector(connector_id).power_w

    def energy_wh(self, connector_id: int) -> float:
        """The connector's meter register (Wh), across sessions."""
        return self._connector(connector_id).energy_wh

    def soc_pct(self, connector_id: int) -> float | None:
        return self._connector(connector_id).soc_pct

    def session(self, connector_id: int) -> Session | None:
        return self._connector(connector_id).session

    def in_transaction(self, connector_id: int) -> bool:
        return self._connector(connector_id).tx is not None

    def limit_w(self, connector_id: int) -> float:
        """The composite limit (W) of a connector now, by the charger's clock; 0: the station's maximum."""
        now = self.clock()
        if connector_id == 0:
            total = sum(c.spec.max_power_w for c in self._connectors.values())
            phases = max(c.spec.phases for c in self._connectors.values())
            return composite_limit_w(self.profiles, 0, now, max_power_w=total, phases=phases)
        c = self._connector(connector_id)
        return composite_limit_w(
            self.profiles,
            connector_id,
            now,
            max_power_w=c.spec.max_power_w,
            phases=c.spec.phases,
            tx_start=None if c.tx is None else c.tx.started_at,
            in_transaction=c.tx is not None,
        )

    def plug_in(
        self,
        connector_id: int,
        *,
        energy_wanted_wh: float,
        departure_ts: float,
        soc_pct: float | None = None,
        max_power_w: float | None = None,
        id_tag: str = "SIM",
    ) -> None:
        """A vehicle arrives: it wants ``energy_wanted_wh`` and leaves at ``departure_ts`` (data clock). A
        transaction starts at once (authorisation is not simulated)."""
        c = self._connector(connector_id)
        if c.plugged:
            raise ValueError(
                f"charge point {self.id} connector {connector_id}: a vehicle is already plugged in"
            )
        if energy_wanted_wh <= 0:
            raise ValueError(f"charge point {self.id} connector {connector_id}: energy_wanted_wh must be > 0")
        vehicle_w = c.spec.max_power_w if max_power_w is None else min(max_power_w, c.spec.max_power_w)
        c.session = Session(
            energy_wanted_wh=energy_wanted_wh, departure_s=departure_ts, vehicle_max_w=vehicle_w
        )
        c.plugged, c.id_tag = True, id_tag
        if soc_pct is None and c.spec.kind == "dc":
            soc_pct = _DEFAULT_DC_SOC
        c.soc_start_pct = soc_pct
        # The energy wanted fills the battery from its state of charge: that fixes its capacity.
        c.capacity_wh = None if soc_pct is None else energy_wanted_wh / max(0.01, 1.0 - soc_pct / 100.0)
        now = self.clock()
        self._tx_counter += 1
        c.tx = _Tx(
            local_id=f"{self.id}-{connector_id}-{self._tx_counter}",
            started_at=now,
            meter_start_wh=c.energy_wh,
        )
        if self.version == "1.6":
            self._start_16(c, now)
        else:
            self._start_201(c, now)

    def unplug(self, connector_id: int) -> None:
        """The vehicle leaves (ends its transaction if one runs)."""
        c = self._connector(connector_id)
        if not c.plugged:
            return
        self._end(c, self.clock(), left=True)

    def drop_connection(self, for_s: float) -> None:
        """Test hook: close the socket now and stay offline ``for_s`` real seconds."""
        self._away_until = asyncio.get_running_loop().time() + for_s
        self.connected.clear()
        if self._ws is not None:
            asyncio.get_running_loop().create_task(self._ws.close(), name=f"{self.id}-drop")

    # -- the run ------------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run the meter and the connection until ``stop`` is set."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._meter_loop(stop), name=f"{self.id}-meter")
            tg.create_task(self._connection_loop(stop), name=f"{self.id}-connection")

    async def _meter_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.tick()
            await _wait(stop, self.meter_interval_s)

    def tick(self) -> None:
        """One meter interval: integrate energy, end sessions that are done, set power, send meter values."""
        now = self.clock()
        dt = 0.0 if self._last_tick is None else max(0.0, now - self._last_tick)
        self._last_tick = now
        for c in self._connectors.values():
            self._integrate(c, dt)
            s = c.session
            if s is not None and now >= s.departure_s:
                self._end(c, now, left=True)
            elif c.tx is not None and s is not None and s.remaining_wh <= 0:
                self._end(c, now, left=False)
        self._set_power(now)
        for c in self._connectors.values():
            self._meter(c, now)

    @staticmethod
    def _integrate(c: _Connector, dt: float) -> None:
        energy = c.power_w * dt / 3600.0
        if c.session is not None:
            energy = min(energy, c.session.remaining_wh)  # the vehicle stops when it has what it wanted
            c.session.delivered_wh += energy
        c.energy_wh += energy

    def _set_power(self, now: float) -> None:
        for c in self._connectors.values():
            s = c.session
            wish = 0.0 if s is None or c.tx is None or s.remaining_wh <= 0 else s.vehicle_max_w
            c.power_w = min(wish, self.limit_w(c.spec.connector_id))
        total = sum(c.power_w for c in self._connectors.values())
        station = self.limit_w(0)
        if total > station > 0 or (station <= 0 < total):
            share = max(0.0, station) / total
            for c in self._connectors.values():
                c.power_w *= share

    # -- messages -----------------------------------------------------------------------------------------------
    def _emit(self, message: _Outgoing) -> None:
        if not message.transactional and not self.connected.is_set():
            self.dropped_offline += 1  # as real chargers do: only transaction messages are kept
            return
        self._outbox.append(message)
        self._outbox_changed.set()

    def _samples(self, c: _Connector) -> list[tuple[str, float, str]]:
        current = c.power_w / (PHASE_VOLTAGE * c.spec.phases)
        samples = [
            ("Energy.Active.Import.Register", c.energy_wh, "Wh"),
            ("Power.Active.Import", c.power_w, "W"),
            ("Current.Import", current, "A"),
        ]
        soc = c.soc_pct
        if self.version == "2.0.1" and soc is not None:
            samples.append(("SoC", soc, "Percent"))
        return samples

    def _meter_value(self, c: _Connector, now: float, context: str = "Sample.Periodic") -> dict[str, Any]:
        if self.version == "1.6":
            values: list[dict[str, Any]] = [
                {"value": f"{v:.3f}", "measurand": m, "unit": u, "context": context}
                for m, v, u in self._samples(c)
            ]
        else:
            values = [
                {"value": round(v, 3), "measurand": m, "unit_of_measure": {"unit": u}, "context": context}
                for m, v, u in self._samples(c)
            ]
        return {"timestamp": _iso(now), "sampled_value": values}

    def _meter(self, c: _Connector, now: float) -> None:
        cid = c.spec.connector_id
        if c.tx is None:
            value = self._meter_value(c, now)
            if self.version == "1.6":
                payload: Any = call16.MeterValues(connector_id=cid, meter_value=[value])
            else:
                payload = call201.MeterValues(evse_id=cid, meter_value=[value])
            self._emit(_Outgoing("MeterValues", lambda: payload, transactional=False))
        elif self.version == "1.6":
            tx, value = c.tx, self._meter_value(c, now)
            self._emit(
                _Outgoing(
                    "MeterValues",
                    lambda: call16.MeterValues(
                        connector_id=cid, meter_value=[value], transaction_id=tx.remote_id
                    ),
                    transactional=True,
                )
            )
        else:
            state = (
                "Charging"
                if c.power_w > 0
                else ("SuspendedEVSE" if self.limit_w(cid) <= 0 else "SuspendedEV")
            )
            trigger = "MeterValuePeriodic" if state == c.tx.charging_state else "ChargingStateChanged"
            c.tx.charging_state = state
            self._event_201(c, now, "Updated", trigger)

    def _status(self, c: _Connector, status: str, now: float) -> None:
        self._emit(
            _Outgoing("StatusNotification", lambda: self._status_payload(c, status, now), transactional=False)
        )

    def _status_payload(self, c: _Connector, status: str, now: float) -> Any:
        if self.version == "1.6":
            return call16.StatusNotification(
                connector_id=c.spec.connector_id, error_code="NoError", status=status, timestamp=_iso(now)
            )
        return call201.StatusNotification(
            timestamp=_iso(now), connector_status=status, evse_id=c.spec.connector_id, connector_id=1
        )

    def _current_status(self, c: _Connector) -> str:
        if self.version == "2.0.1":
            return "Occupied" if c.plugged else "Available"
        if not c.plugged:
            return "Available"
        return "Charging" if c.tx is not None else "Finishing"

    # 1.6 transactions
    def _start_16(self, c: _Connector, now: float) -> None:
        tx = c.tx
        assert tx is not None
        self._status(c, "Preparing", now)

        def answered(result: Any) -> None:
            tx.remote_id = int(result.transaction_id)

        start = call16.StartTransaction(
            connector_id=c.spec.connector_id,
            id_tag=c.id_tag,
            meter_start=round(c.energy_wh),
            timestamp=_iso(now),
        )
        self._emit(_Outgoing("StartTransaction", lambda: start, transactional=True, on_result=answered))
        self._status(c, "Charging", now)

    def _stop_16(self, tx: _Tx, c: _Connector, now: float, reason: str) -> None:
        meter_stop, id_tag = round(c.energy_wh), c.id_tag

        def build() -> Any:
            if tx.remote_id is None:  # StartTransaction was refused: there is nothing to stop
                LOG.warning(
                    "%s: transaction %s has no id from the CSMS; StopTransaction skipped",
                    self.id,
                    tx.local_id,
                )
                return None
            return call16.StopTransaction(
                meter_stop=meter_stop,
                timestamp=_iso(now),
                transaction_id=tx.remote_id,
                reason=reason,
                id_tag=id_tag,
            )

        self._emit(_Outgoing("StopTransaction", build, transactional=True))

    # 2.0.1 transactions
    def _event_201(
        self, c: _Connector, now: float, event: str, trigger: str, *, reason: str | None = None
    ) -> None:
        tx = c.tx
        assert tx is not None
        seq = tx.seq_no
        tx.seq_no += 1
        info: dict[str, Any] = {"transaction_id": tx.local_id, "charging_state": tx.charging_state}
        if reason is not None:
            info["stopped_reason"] = reason
        extra: dict[str, Any] = {}
        if event == "Started":
            extra = {
                "evse": {"id": c.spec.connector_id, "connector_id": 1},
                "id_token": {"id_token": c.id_tag, "type": "Central"},
            }
        payload = call201.TransactionEvent(
            event_type=event,
            timestamp=_iso(now),
            trigger_reason=trigger,
            seq_no=seq,
            transaction_info=info,
            meter_value=[
                self._meter_value(c, now, "Transaction.Begin" if event == "Started" else "Sample.Periodic")
            ]
            if event != "Ended"
            else [self._meter_value(c, now, "Transaction.End")],
            offline=True if not self.connected.is_set() else None,
            **extra,
        )
        self._emit(_Outgoing("TransactionEvent", lambda: payload, transactional=True))

    def _start_201(self, c: _Connector, now: float) -> None:
        self._status(c, "Occupied", now)
        self._event_201(c, now, "Started", "CablePluggedIn")
        s = c.session
        assert s is not None
        if c.spec.kind != "dc":
            return
        soc = c.soc_pct
        needs = {
            "requested_energy_transfer": "DC",
            "departure_time": _iso(s.departure_s),
            "dc_charging_parameters": {
                "ev_max_current": round(s.vehicle_max_w / _DC_VOLTAGE),
                "ev_max_voltage": round(_DC_VOLTAGE),
                "energy_amount": round(s.energy_wanted_wh),
                "ev_max_power": round(s.vehicle_max_w),
                "state_of_charge": None if soc is None else round(soc),
            },
        }
        payload = call201.NotifyEVChargingNeeds(charging_needs=needs, evse_id=c.spec.connector_id)
        self._emit(_Outgoing("NotifyEVChargingNeeds", lambda: payload, transactional=False))

    def _end(self, c: _Connector, now: float, *, left: bool) -> None:
        """End the transaction (the vehicle is full or left) and, if it left, free the connector."""
        tx = c.tx
        if tx is not None:
            c.power_w = 0.0
            if self.version == "1.6":
                self._stop_16(tx, c, now, "EVDisconnected" if left else "Local")
                self._status(c, "Finishing", now)
            else:
                tx.charging_state = "Idle" if left else "EVConnected"
                trigger, reason = ("EVDeparted", "EVDisconnected") if left else ("EnergyLimitReached",) * 2
                self._event_201(c, now, "Ended", trigger, reason=reason)
            c.tx = None
            # A TxProfile lives as long as its transaction (1.6 §3.13.1, 2.0.1 K01.FR.05).
            self.profiles = [
                p
                for p in self.profiles
                if not (p.purpose is Purpose.TX and p.connector_id == c.spec.connector_id)
            ]
        if left:
            c.plugged, c.session = False, None
            c.soc_start_pct = c.capacity_wh = None
            self._status(c, "Available", now)

    # -- the connection -----------------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        if self.password is None:
            return {}
        token = base64.b64encode(f"{self.id}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _connection_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.backoff_s[0]
        last_error: str | None = None
        while not stop.is_set():
            away = self._away_until - loop.time()
            if away > 0:
                await _wait(stop, away)
                continue
            try:
                async with connect(
                    self.url,
                    subprotocols=[Subprotocol(_SUBPROTOCOL[self.version])],
                    additional_headers=self._headers(),
                    ssl=self.ssl_context,
                    open_timeout=self.response_timeout_s,
                    proxy=None,
                ) as ws:
                    backoff, last_error = self.backoff_s[0], None
                    LOG.info("%s: connected to %s", self.id, self.url)
                    await self._serve(ws, stop)
            except* (OSError, InvalidHandshake, ConnectionClosed, TimeoutError, OCPPError) as group:
                error = "; ".join(f"{type(e).__name__}: {e}" for e in group.exceptions)
                if error != last_error:  # log on change, not every retry
                    LOG.warning("%s: connection to %s failed or dropped: %s", self.id, self.url, error)
                last_error = error
            finally:
                self._offline()
            if not stop.is_set() and self._away_until <= loop.time():
                await _wait(stop, backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.backoff_s[1])

    def _offline(self) -> None:
        self.connected.clear()
        self._ws = None
        kept = [m for m in self._outbox if m.transactional]
        self.dropped_offline += len(self._outbox) - len(kept)
        self._outbox = deque(kept)

    async def _serve(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        self._ws = ws
        cp = (_Cp16 if self.version == "1.6" else _Cp201)(
            self.id, ws, response_timeout=self.response_timeout_s
        )
        cp.sim = self
        async with asyncio.TaskGroup() as tg:
            tg.create_task(cp.start(), name=f"{self.id}-receive")
            tg.create_task(self._close_on_stop(ws, stop), name=f"{self.id}-stop")
            await self._boot(cp, stop)
            now = self.clock()
            for c in self._connectors.values():
                status = self._status_payload(c, self._current_status(c), now)
                await self._call(cp, _Outgoing("StatusNotification", _fixed(status), transactional=False))
            self.connected.set()
            tg.create_task(self._heartbeat(stop), name=f"{self.id}-heartbeat")
            tg.create_task(self._send_loop(cp), name=f"{self.id}-send")

    async def _close_on_stop(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        await stop.wait()
        await ws.close()

    async def _boot(self, cp: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.version == "1.6":
                payload: Any = call16.BootNotification(
                    charge_point_model=self.model, charge_point_vendor=VENDOR
                )
            else:
                payload = call201.BootNotification(
                    charging_station={"model": self.model, "vendor_name": VENDOR}, reason="PowerUp"
                )
            result = await self._call(cp, _Outgoing("BootNotification", _fixed(payload), transactional=False))
            interval = float(getattr(result, "interval", 0) or 0)
            if result is not None and result.status == "Accepted":
                self.heartbeat_interval_s = interval if interval > 0 else 300.0
                return
            LOG.warning(
                "%s: BootNotification not accepted (%s); retrying", self.id, getattr(result, "status", None)
            )
            await _wait(stop, interval if interval > 0 else self.backoff_s[1])

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _wait(stop, self.heartbeat_interval_s or 300.0)
            payload: Any = call16.Heartbeat() if self.version == "1.6" else call201.Heartbeat()
            self._emit(_Outgoing("Heartbeat", _fixed(payload), transactional=False))

    async def _call(self, cp: Any, message: _Outgoing) -> Any:
        """Send one message and return its answer; None when it got a CallError or was skipped. A timeout raises
        ``TimeoutError``; a closed socket ``ConnectionClosed``."""
        payload = message.build()
        if payload is None:
            return None
        try:
            return await cp.call(payload, suppress=False)
        except OCPPError as exc:
            self.call_errors += 1
            LOG.warning("%s: %s answered with a CallError (%s); not resent", self.id, message.action, exc)
            return None

    async def _send_loop(self, cp: Any) -> None:
        """Send the outbox in order; a message leaves it once answered (or refused, or tried too often)."""
        while True:
            if not self._outbox:
                self._outbox_changed.clear()
                await self._outbox_changed.wait()
                continue
            message = self._outbox[0]
            try:
                result = await self._call(cp, message)
            except TimeoutError:
                message.attempts += 1
                if message.transactional and message.attempts < self.tx_attempts:
                    LOG.warning("%s: %s not answered; trying again", self.id, message.action)
                    continue
                self.call_errors += 1
                LOG.warning(
                    "%s: %s not answered after %d tries; dropped", self.id, message.action, message.attempts
                )
                result = None
            if self._outbox and self._outbox[0] is message:
                self._outbox.popleft()
            if result is not None and message.on_result is not None:
                message.on_result(result)

    # -- smart charging (called by the handlers) ----------------------------------------------------------------
    def _install(self, connector_id: int, raw: dict[str, Any]) -> str:
        if self.reject_profiles:
            return "Rejected"
        try:
            if connector_id != 0:
                self._connector(connector_id)
            profile = parse_profile(connector_id, raw)
        except (ProfileError, ValueError) as exc:
            LOG.warning("%s: SetChargingProfile rejected: %s", self.id, exc)
            return "Rejected"
        if profile.purpose is Purpose.TX and self._connectors[connector_id].tx is None:
            LOG.warning(
                "%s: a TxProfile for connector %d without a transaction: rejected", self.id, connector_id
            )
            return "Rejected"
        if profile.kind == "Absolute" and profile.start_s is None:  # anchored at receipt, as chargers do
            start = profile.valid_from if profile.valid_from is not None else self.clock()
            profile = replace(profile, start_s=start)
        self.profiles = install_profile(self.profiles, profile)
        return "Accepted"

    def _clear(
        self,
        *,
        profile_id: int | None,
        connector_id: int | None,
        purpose: str | None,
        stack_level: int | None,
    ) -> str:
        self.profiles, removed = clear_profiles(
            self.profiles,
            profile_id=profile_id,
            connector_id=connector_id,
            purpose=purpose,
            stack_level=stack_level,
        )
        return "Accepted" if removed else "Unknown"

    def composite(self, connector_id: int, duration_s: int) -> tuple[float, list[tuple[float, float]]]:
        """GetCompositeSchedule's answer in W: (schedule start, [(start_period_s, limit_w)])."""
        now = self.clock()
        if connector_id == 0:
            total = sum(c.spec.max_power_w for c in self._connectors.values())
            return now, composite_schedule(self.profiles, 0, now, duration_s, max_power_w=total)
        c = self._connector(connector_id)
        return now, composite_schedule(
            self.profiles,
            connector_id,
            now,
            duration_s,
            max_power_w=c.spec.max_power_w,
            phases=c.spec.phases,
            tx_start=None if c.tx is None else c.tx.started_at,
            in_transaction=c.tx is not None,
        )

    def composite_payload(
        self, connector_id: int, duration_s: int, unit: str | None
    ) -> dict[str, Any] | None:
        try:
            start, periods = self.composite(connector_id, duration_s)
        except ValueError:
            return None
        phases = self._connectors[connector_id].spec.phases if connector_id else 3
        dc = connector_id != 0 and self._connectors[connector_id].spec.kind == "dc"
        unit = unit or ("W" if dc else "A")
        scale = 1.0 if unit == "W" else 1.0 / (PHASE_VOLTAGE * phases)
        return {
            "start": _iso(start),
            "unit": unit,
            "periods": [{"start_period": round(t), "limit": round(w * scale, 1)} for t, w in periods],
        }


# -- the ocpp library's charge points, one per version: handlers hand over to the simulator --------------------
class _Cp16(ChargePoint16):
    sim: ChargePointSim

    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        # The sampling settings a CSMS sends after boot: taken (the simulator samples at meter_interval_s).
        known = key in ("MeterValueSampleInterval", "MeterValuesSampledData", "HeartbeatInterval")
        return result16.ChangeConfiguration(status="Accepted" if known else "NotSupported")

    @on("SetChargingProfile")
    def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any
    ) -> Any:
        return result16.SetChargingProfile(status=self.sim._install(connector_id, cs_charging_profiles))

    @on("ClearChargingProfile")
    def on_clear_charging_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> Any:
        status = self.sim._clear(
            profile_id=id,
            connector_id=connector_id,
            purpose=charging_profile_purpose,
            stack_level=stack_level,
        )
        return result16.ClearChargingProfile(status=status)

    @on("GetCompositeSchedule")
    def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        answer = self.sim.composite_payload(connector_id, duration, charging_rate_unit)
        if answer is None:
            return result16.GetCompositeSchedule(status="Rejected")
        schedule = {
            "duration": duration,
            "start_schedule": answer["start"],
            "charging_rate_unit": answer["unit"],
            "charging_schedule_period": answer["periods"],
        }
        return result16.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=answer["start"],
            charging_schedule=schedule,
        )


class _Cp201(ChargePoint201):
    sim: ChargePointSim

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        known = {("SampledDataCtrlr", "TxUpdatedInterval"), ("AlignedDataCtrlr", "Interval")}
        results = [
            {
                "attribute_status": "Accepted"
                if (d["component"]["name"], d["variable"]["name"]) in known
                else "UnknownVariable",
                "component": d["component"],
                "variable": d["variable"],
            }
            for d in set_variable_data
        ]
        return result201.SetVariables(set_variable_result=results)

    @on("SetChargingProfile")
    def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        return result201.SetChargingProfile(status=self.sim._install(evse_id, charging_profile))

    @on("ClearChargingProfile")
    def on_clear_charging_profile(
        self,
        charging_profile_id: int | None = None,
        charging_profile_criteria: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        criteria = charging_profile_criteria or {}
        status = self.sim._clear(
            profile_id=charging_profile_id,
            connector_id=criteria.get("evse_id"),
            purpose=criteria.get("charging_profile_purpose"),
            stack_level=criteria.get("stack_level"),
        )
        return result201.ClearChargingProfile(status=status)

    @on("GetCompositeSchedule")
    def on_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        answer = self.sim.composite_payload(evse_id, duration, charging_rate_unit)
        if answer is None:
            return result201.GetCompositeSchedule(status="Rejected")
        schedule = {
            "evse_id": evse_id,
            "duration": duration,
            "schedule_start": answer["start"],
            "charging_rate_unit": answer["unit"],
            "charging_schedule_period": answer["periods"],
        }
        return result201.GetCompositeSchedule(status="Accepted", schedule=schedule)


# -- the plaza: sessions from the simulators' plan, fed to charge points ----------------------------------------
@dataclass(frozen=True, kw_only=True)
class PlazaCharger:
    """One connector of a charge point on the plaza, and whose sessions it gets (``plan_sessions``' key)."""

    sim: ChargePointSim
    connector_id: int
    vehicle: Literal["car", "truck"]
    key: str


@dataclass
class PlazaPlans:
    """The planned sessions per key not yet plugged in, and the day they were planned for."""

    day: dict[str, int] = field(default_factory=dict)
    sessions: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)


def plaza_step(
    chargers: Sequence[PlazaCharger], now: float, *, seed: int, plans: PlazaPlans | None = None
) -> PlazaPlans:
    """Plug in every vehicle whose planned session (same seed and key as the Modbus plaza) runs at ``now`` on a
    free connector; the charge point unplugs it at its departure. Returns the plans to pass to the next step."""
    plans = plans or PlazaPlans()
    day = int(now) // 86_400
    for charger in chargers:
        if plans.day.get(charger.key) != day:
            day_start = datetime.fromtimestamp(day * 86_400, UTC)
            previous = [s for s in plans.sessions.get(charger.key, []) if s[1] > now]
            plans.sessions[charger.key] = previous + plan_sessions(
                seed, charger.key, charger.vehicle, day_start
            )
            plans.day[charger.key] = day
        if charger.sim.session(charger.connector_id) is not None:
            continue
        for planned in plans.sessions[charger.key]:
            arrival, departure, wanted = planned
            if arrival <= now < departure:
                rating = charger.sim.connector_spec(charger.connector_id).max_power_w
                charger.sim.plug_in(
                    charger.connector_id,
                    energy_wanted_wh=wanted,
                    departure_ts=departure,
                    max_power_w=vehicle_max_w(charger.vehicle, rating),
                )
                plans.sessions[charger.key].remove(planned)
                break
    return plans


async def run_plaza(
    chargers: Sequence[PlazaCharger],
    *,
    seed: int,
    stop: asyncio.Event,
    clock: Callable[[], float] = time.time,
    poll_s: float = 1.0,
) -> None:
    """Run the charge points of ``chargers`` and feed them the plaza's sessions until ``stop`` is set."""
    async with asyncio.TaskGroup() as tg:
        for sim in {id(c.sim): c.sim for c in chargers}.values():
            tg.create_task(sim.run(stop), name=f"plaza-{sim.id}")
        plans = None
        while not stop.is_set():
            plans = plaza_step(chargers, clock(), seed=seed, plans=plans)
            await _wait(stop, poll_s)
