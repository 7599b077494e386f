"""The plaza gateway's OCPP server: chargers connect to it, their meter values become measurements, control's
limits become charging profiles.

Why on the gateway, not a central service: the plaza's chargers then depend on the same box, on the same LAN, as
every other device of that connection; its buffer keeps their meter values through a broker or WAN outage like any
Modbus reading; and the failsafe is local. A central CSMS would put the WAN between control's failsafe and the
chargers, and need a second "nothing lost" path.

The wire contract (OCPP-J, 1.6J and 2.0.1, with the maintained ``ocpp`` library):

- A station connects to ``ws[s]://<host>:<port>/<charge point id>`` with subprotocol ``ocpp1.6`` or
  ``ocpp2.0.1`` and HTTP Basic auth (identity, password): security profile 1, or 2 over TLS. An unknown identity
  gets HTTP 404, a wrong password 401, a version other than its device entry's 400; a second connection of the
  same identity replaces the first.
- Every meter value (MeterValues; StopTransaction's transaction data; TransactionEvent's meter values, also those
  a station queued while offline) becomes one measurement of the connector's device, with the station's
  timestamp and the agent's next sequence number, and is answered only once it is on the gateway's disk: a
  station that gets no answer sends it again, so nothing is lost between the two.
- Charging profiles (``W = A x 400 V x sqrt 3``, as control counts a charger's current):
  a permanent TxDefaultProfile at stack level 0 holds the device's safe current (``safe_mode.max_current_a``,
  else the EV role's failsafe): the failsafe; control's ``max_current_a`` is a TxDefaultProfile at stack level 1
  valid from now to the setpoint's expiry, so a station that loses the gateway, or a gateway that loses control,
  falls back to level 0 by the station's own clock; the gateway clears level 1 at once when control's heartbeat
  is lost. With ``setpoint_bounds.max_current_a`` given for all its connectors, a station maximum profile caps
  the station at their sum.
- A session's needs: an ISO 15118 vehicle's NotifyEVChargingNeeds (2.0.1) gives the energy it wants and its
  departure; the measurements carry the energy still wanted and the departure, for control's urgency.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import http
import itertools
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from energyhub.domain.clock import Clock
from energyhub.domain.topology import DeviceRole, OcppPoint
from energyhub.edge.charger_passwords import ChargerPasswords
from energyhub.edge.config import DeviceConfig, OcppServer
from energyhub.wire.messages import Quality, Setpoint, SetpointAck, SetpointStatus
from energyhub.wire.roles import (
    APPLIED_CURRENT_A,
    CHARGER_MAX_A,
    CHARGER_W_PER_A,
    DEPARTURE_TS,
    ENERGY_DELIVERED_WH,
    ENERGY_WANTED_WH,
    MAX_CURRENT_A,
    MODE3_STATE,
    POWER_W,
    ROLES,
)

__all__ = ["OcppControl", "OcppService", "Record"]

log = logging.getLogger(__name__)

SEEN_MAX = 1024  # transaction messages remembered per station, to store a repeated one once
MAX_MESSAGE_BYTES = 64 * 1024  # a meter value is under 2 kB; a station sending megabytes is misbehaving
CONTROL_LEVEL, FAILSAFE_LEVEL = 1, 0
STATION_MAX_ID = 90


def _profile_id(level: int, connector_id: int) -> int:
    """One profile id per (stack level, connector): a new limit replaces the old one at the station."""
    return 100 * (level + 1) + connector_id


# IEC 61851 codes as the Modbus chargers report them (A 0, B1 1, B2 2, C1 3, C2 4, D1 5, D2 6, E 7, F 8).
_MODE3_16 = {
    "Available": 0,
    "Preparing": 2,
    "Charging": 4,
    "SuspendedEV": 2,
    "SuspendedEVSE": 1,
    "Finishing": 2,
    "Reserved": 0,
    "Unavailable": 0,
    "Faulted": 8,
}
_MODE3_201_CHARGING = {"Charging": 4, "EVConnected": 2, "SuspendedEV": 2, "SuspendedEVSE": 1, "Idle": 2}

# (device id, values, timestamp): store one measurement; returns once it is on disk.
Record = Callable[[str, dict[str, float | None], Quality, float], Awaitable[None]]


@dataclass
class Connector:
    """What the gateway knows of one connector (one device)."""

    device: DeviceConfig
    failsafe_a: float
    max_a: float
    mode3: int | None = None
    transaction: str | None = None
    wanted_wh: float | None = None  # energy the session asked for, from ...
    wanted_from_wh: float | None = None  # ... the meter register when it asked
    departure_ts: float | None = None
    energy_wh: float | None = None
    limit_a: float | None = None  # control's limit the station accepted, valid until `limit_until`
    limit_until: float = 0.0

    @property
    def point(self) -> OcppPoint:
        assert self.device.ocpp is not None  # only OCPP devices have a connector
        return self.device.ocpp

    def offered_a(self, now: float) -> float:
        return min(
            self.limit_a if self.limit_a is not None and now < self.limit_until else self.failsafe_a,
            self.max_a,
        )

    def end_session(self) -> None:
        self.transaction = None
        self.wanted_wh = self.wanted_from_wh = self.departure_ts = None

    def values(self, power_w: float | None, energy_wh: float | None, now: float) -> dict[str, float | None]:
        if energy_wh is not None:
            self.energy_wh = energy_wh
        wanted = None
        if self.wanted_wh is not None:
            done = (self.energy_wh or 0.0) - (self.wanted_from_wh or 0.0)
            wanted = max(0.0, self.wanted_wh - done)
        values: dict[str, float | None] = {
            POWER_W: power_w,
            ENERGY_DELIVERED_WH: energy_wh,
            APPLIED_CURRENT_A: self.offered_a(now),
        }
        # What the station has not said is left out, not null: a null is a value that failed to read.
        for name, value in (
            (MODE3_STATE, self.mode3),
            (ENERGY_WANTED_WH, wanted),
            (DEPARTURE_TS, self.departure_ts),
        ):
            if value is not None:
                values[name] = float(value)
        return values


def _when(text: str | None, default: float) -> float:
    if not text:
        return default
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return default


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_SCALE = {"W": 1.0, "kW": 1000.0, "Wh": 1.0, "kWh": 1000.0}


def read_sample(sampled: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """Power (W) and the energy register (Wh) of one meter value's sampled values (1.6 or 2.0.1): the totals, or
    the sum of the phases where only those are given. A value that does not parse is missing."""
    totals: dict[str, float] = {}
    phases: dict[str, float] = {}
    for item in sampled:
        measurand = item.get("measurand") or "Energy.Active.Import.Register"
        if measurand not in ("Power.Active.Import", "Energy.Active.Import.Register"):
            continue
        unit_of = item.get("unit_of_measure") or {}
        unit = item.get("unit") or unit_of.get("unit") or ("W" if measurand.startswith("Power") else "Wh")
        try:
            value = (
                float(item["value"])
                * _SCALE.get(unit, float("nan"))
                * 10.0 ** int(unit_of.get("multiplier", 0))
            )
        except (KeyError, TypeError, ValueError):
            continue
        if value != value or abs(value) == float("inf"):
            continue
        if item.get("phase") in (None, "N"):
            totals[measurand] = value
        elif str(item["phase"]).startswith("L") and "-" not in str(item["phase"]):
            phases[measurand] = phases.get(measurand, 0.0) + value
    power = totals.get("Power.Active.Import", phases.get("Power.Active.Import"))
    energy = totals.get("Energy.Active.Import.Register", phases.get("Energy.Active.Import.Register"))
    return power, energy


class _Station:
    """What both versions' handlers share: the station's connectors, recording and profile calls."""

    version: str
    max_purpose: str  # the station maximum's purpose in this version
    rate_unit: str  # the unit of this version's profiles ...
    per_a: float  # ... and what one ampere of control's current is in it
    service: OcppService
    connectors: dict[int, Connector]
    # The library's ChargePoint provides these (annotations only: the class attributes stay the library's).
    id: str
    _connection: ServerConnection
    call: Callable[[Any], Awaitable[Any]]
    _send: Callable[[str], Awaitable[None]]
    start: Callable[[], Coroutine[Any, Any, None]]

    def _setup(self, service: OcppService, connectors: dict[int, Connector]) -> None:
        self.service, self.connectors = service, connectors
        self.booted = asyncio.Event()

    def _again(self, key: tuple[Any, ...]) -> bool:
        """Seen before: a station sends a transaction message again when its answer was lost with the connection.
        Answered again, stored once. Remembered per station across its reconnects."""
        seen = self.service.seen.setdefault(self.id, {})
        if key in seen:
            return True
        seen[key] = None
        if len(seen) > SEEN_MAX:
            del seen[next(iter(seen))]  # the oldest: a dict keeps insertion order
        return False

    async def _record(self, connector_id: int, meter_values: list[dict[str, Any]] | None) -> None:
        connector = self.connectors.get(connector_id)
        if connector is None:
            return  # connector 0 (the station's own meter) or one no device stands for
        now = self.service.clock.timestamp()
        stored = []
        for meter_value in meter_values or []:
            power, energy = read_sample(meter_value.get("sampled_value") or [])
            ts = _when(meter_value.get("timestamp"), now)
            # Never bad: the values always hold the current the gateway offers.
            quality = Quality.GOOD if power is not None and energy is not None else Quality.PARTIAL
            stored.append(
                self.service.record(connector.device.id, connector.values(power, energy, now), quality, ts)
            )
        await asyncio.gather(*stored)  # a message's meter values in order, in one disk transaction

    async def configure(self) -> None:
        """After boot: the sample interval, the failsafe default, the station maximum."""
        await self._sampling()
        station_max = self.service.station_max_a(self.connectors)
        if station_max is not None:
            await self._send_profile(0, STATION_MAX_ID, FAILSAFE_LEVEL, self.max_purpose, station_max, None)
        for connector in self.connectors.values():
            await self.set_limit(connector, connector.failsafe_a, FAILSAFE_LEVEL, None)

    async def set_limit(
        self, connector: Connector, amps: float, level: int, until: float | None
    ) -> str | None:
        cid = connector.point.connector_id
        return await self._send_profile(cid, _profile_id(level, cid), level, "TxDefaultProfile", amps, until)

    async def _send_profile(
        self, connector_id: int, profile_id: int, level: int, purpose: str, amps: float, until: float | None
    ) -> str | None:
        now = self.service.clock.timestamp()
        schedule = {
            "charging_rate_unit": self.rate_unit,
            "start_schedule": _iso(now),
            "charging_schedule_period": [{"start_period": 0, "limit": round(amps * self.per_a, 1)}],
        }
        profile: dict[str, Any] = {
            "stack_level": level,
            "charging_profile_purpose": purpose,
            "charging_profile_kind": "Absolute",
        }
        if until is not None:
            profile["valid_from"], profile["valid_to"] = _iso(now), _iso(until)
        answer = await self._ask(self._profile_call(connector_id, profile_id, profile, schedule))
        if answer is None:
            return f"charger {self.id} did not answer the charging profile"
        return None if answer.status == "Accepted" else f"charger {self.id} answered {answer.status}"

    async def clear_limit(self, connector: Connector) -> str | None:
        """Control's profile cleared: the station is at its level-0 failsafe."""
        answer = await self._ask(self._clear_call(_profile_id(CONTROL_LEVEL, connector.point.connector_id)))
        return None if answer is not None and answer.status in ("Accepted", "Unknown") else "not cleared"

    async def composite_a(self, connector: Connector) -> float | None:
        """The limit the station says is in force now (GetCompositeSchedule), in A: the read-back."""
        answer = await self._ask(self._composite_call(connector.point.connector_id))
        return _first_limit(answer, self.per_a)

    # What each version says differently.
    async def _sampling(self) -> None:
        raise NotImplementedError

    def _profile_call(
        self, connector_id: int, profile_id: int, profile: dict[str, Any], schedule: dict[str, Any]
    ) -> Any:
        raise NotImplementedError

    def _clear_call(self, profile_id: int) -> Any:
        raise NotImplementedError

    def _composite_call(self, connector_id: int) -> Any:
        raise NotImplementedError

    async def _ask(self, request: Any) -> Any:
        """One call; None and a log line when the station answers with an error or not in time."""
        try:
            return await self.call(request)
        except TimeoutError:
            log.warning("charger %s: no answer to %s in time", self.id, type(request).__name__)
        except ConnectionClosed:
            log.info("charger %s: connection closed during %s", self.id, type(request).__name__)
        return None

    async def route_message(self, raw_msg: str | bytes) -> None:
        # The library logs and drops what it cannot parse: a station must hear that its message was refused
        # (OCPP-J: a CALLERROR, with id "-1" when the message's id cannot be read).
        try:
            parsed = json.loads(raw_msg)
            shaped = isinstance(parsed, list) and len(parsed) >= 3 and parsed[0] in (2, 3, 4)
            if shaped and parsed[0] == 2 and not (len(parsed) == 4 and isinstance(parsed[3], dict)):
                shaped = False
        except (ValueError, UnicodeDecodeError):
            parsed, shaped = None, False
        if not shaped:
            unique = (
                parsed[1]
                if isinstance(parsed, list) and len(parsed) > 1 and isinstance(parsed[1], str)
                else "-1"
            )
            code = (
                "FormatViolation"
                if parsed is None
                else "ProtocolError"
                if self.version == "1.6"
                else "RpcFrameworkError"
            )
            log.warning(
                "charger %s: refused a message that is not an OCPP-J call or answer: %.200r", self.id, raw_msg
            )
            await self._send(json.dumps([4, unique[:36], code, "not an OCPP-J message", {}]))
            return
        try:
            await super().route_message(raw_msg)  # type: ignore[misc]
        except ConnectionClosed:
            raise  # the station is gone: its session ends, there is no one to answer
        except Exception as exc:  # a handler's bug must not end the station's session: refuse this message
            log.exception("charger %s: could not handle %.200r", self.id, raw_msg)
            if parsed[0] == 2:
                await self._send(json.dumps([4, str(parsed[1])[:36], "InternalError", str(exc)[:200], {}]))


class Station16(_Station, ChargePoint16):
    version = "1.6"
    max_purpose = "ChargePointMaxProfile"
    rate_unit, per_a = "A", 1.0  # 1.6 AC profiles in A
    _tx_ids = itertools.count(1)

    @on("BootNotification")
    async def on_boot(self, charge_point_vendor: str, charge_point_model: str, **_: Any) -> Any:
        self.booted.set()
        return result16.BootNotification(
            current_time=_iso(self.service.clock.timestamp()),
            interval=self.service.config.heartbeat_interval_s,
            status="Accepted",
        )

    @on("Heartbeat")
    def on_heartbeat(self) -> Any:
        return result16.Heartbeat(current_time=_iso(self.service.clock.timestamp()))

    @on("StatusNotification")
    def on_status(self, connector_id: int, error_code: str, status: str, **_: Any) -> Any:
        connector = self.connectors.get(connector_id)
        if connector is not None:
            connector.mode3 = _MODE3_16.get(status)
            if status == "Available":
                connector.end_session()
        return result16.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_tag: str) -> Any:
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    @on("StartTransaction")
    def on_start(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **_: Any) -> Any:
        known = self.service.started.get((self.id, connector_id, timestamp))
        if known is not None:  # the same start sent again: the same transaction
            return result16.StartTransaction(transaction_id=known, id_tag_info={"status": "Accepted"})
        tx = next(self._tx_ids)
        self.service.started[(self.id, connector_id, timestamp)] = tx
        if len(self.service.started) > SEEN_MAX:
            del self.service.started[next(iter(self.service.started))]
        connector = self.connectors.get(connector_id)
        if connector is not None:
            connector.transaction, connector.energy_wh = str(tx), float(meter_start)
        return result16.StartTransaction(transaction_id=tx, id_tag_info={"status": "Accepted"})

    @on("StopTransaction")
    async def on_stop(self, meter_stop: int, timestamp: str, transaction_id: int, **kw: Any) -> Any:
        if self._again(("stop", transaction_id)):
            return result16.StopTransaction(id_tag_info={"status": "Accepted"})
        for connector_id, connector in self.connectors.items():
            if connector.transaction == str(transaction_id):
                await self._record(connector_id, kw.get("transaction_data"))
                connector.end_session()
        return result16.StopTransaction(id_tag_info={"status": "Accepted"})

    @on("MeterValues")
    async def on_meter_values(self, connector_id: int, meter_value: list[dict[str, Any]], **kw: Any) -> Any:
        first = meter_value[0].get("timestamp") if meter_value else None
        if not self._again(("meter", connector_id, kw.get("transaction_id"), first)):
            await self._record(connector_id, meter_value)
        return result16.MeterValues()

    async def _sampling(self) -> None:
        interval = str(self.service.config.meter_interval_s)
        for key, value in (
            ("MeterValueSampleInterval", interval),
            ("MeterValuesSampledData", "Energy.Active.Import.Register,Power.Active.Import,Current.Import"),
        ):
            await self._ask(call16.ChangeConfiguration(key=key, value=value))

    def _profile_call(
        self, connector_id: int, profile_id: int, profile: dict[str, Any], schedule: dict[str, Any]
    ) -> Any:
        full = {"charging_profile_id": profile_id, **profile, "charging_schedule": schedule}
        return call16.SetChargingProfile(connector_id=connector_id, cs_charging_profiles=full)

    def _clear_call(self, profile_id: int) -> Any:
        return call16.ClearChargingProfile(id=profile_id)

    def _composite_call(self, connector_id: int) -> Any:
        return call16.GetCompositeSchedule(
            connector_id=connector_id, duration=60, charging_rate_unit=self.rate_unit
        )


class Station201(_Station, ChargePoint201):
    version = "2.0.1"
    max_purpose = "ChargingStationMaxProfile"
    rate_unit, per_a = "W", CHARGER_W_PER_A  # 2.0.1 DC profiles in W

    @on("BootNotification")
    async def on_boot(self, charging_station: dict[str, Any], reason: str, **_: Any) -> Any:
        self.booted.set()
        return result201.BootNotification(
            current_time=_iso(self.service.clock.timestamp()),
            interval=self.service.config.heartbeat_interval_s,
            status="Accepted",
        )

    @on("Heartbeat")
    def on_heartbeat(self) -> Any:
        return result201.Heartbeat(current_time=_iso(self.service.clock.timestamp()))

    @on("StatusNotification")
    def on_status(
        self, timestamp: str, connector_status: str, evse_id: int, connector_id: int, **_: Any
    ) -> Any:
        connector = self.connectors.get(evse_id)
        if connector is not None:
            if connector_status == "Occupied":
                connector.mode3 = connector.mode3 if connector.mode3 not in (None, 0, 8) else 2
            else:
                connector.mode3 = 8 if connector_status == "Faulted" else 0
                if connector_status == "Available":
                    connector.end_session()
        return result201.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        return result201.Authorize(id_token_info={"status": "Accepted"})

    @on("TransactionEvent")
    async def on_transaction(
        self,
        event_type: str,
        timestamp: str,
        trigger_reason: str,
        seq_no: int,
        transaction_info: dict[str, Any],
        **kw: Any,
    ) -> Any:
        evse = (kw.get("evse") or {}).get("id")
        tx = str(transaction_info.get("transaction_id"))
        connector_id = (
            evse
            if evse is not None
            else next((i for i, c in self.connectors.items() if c.transaction == tx), None)
        )
        connector = self.connectors.get(connector_id) if connector_id is not None else None
        if connector is not None and not self._again(("event", tx, seq_no)):
            if event_type != "Ended":
                connector.transaction = tx
            state = transaction_info.get("charging_state")
            if state in _MODE3_201_CHARGING:
                connector.mode3 = _MODE3_201_CHARGING[state]
            await self._record(connector_id, kw.get("meter_value"))  # type: ignore[arg-type]
            if event_type == "Ended":
                connector.end_session()
        answer: dict[str, Any] = {}
        if kw.get("id_token") is not None:
            answer["id_token_info"] = {"status": "Accepted"}
        return result201.TransactionEvent(**answer)

    @on("NotifyEVChargingNeeds")
    def on_needs(self, charging_needs: dict[str, Any], evse_id: int, **_: Any) -> Any:
        connector = self.connectors.get(evse_id)
        if connector is None:
            return result201.NotifyEVChargingNeeds(status="Rejected")
        params = (
            charging_needs.get("dc_charging_parameters") or charging_needs.get("ac_charging_parameters") or {}
        )
        energy = params.get("energy_amount")
        connector.wanted_wh = float(energy) if isinstance(energy, int | float) else None
        connector.wanted_from_wh = connector.energy_wh
        connector.departure_ts = _when(charging_needs.get("departure_time"), 0.0) or None
        log.info(
            "charger %s evse %d: vehicle wants %s Wh, leaves %s",
            self.id,
            evse_id,
            energy,
            charging_needs.get("departure_time"),
        )
        return result201.NotifyEVChargingNeeds(status="Accepted")

    @on("MeterValues")
    async def on_meter_values(self, evse_id: int, meter_value: list[dict[str, Any]], **_: Any) -> Any:
        first = meter_value[0].get("timestamp") if meter_value else None
        if not self._again(("meter", evse_id, first)):
            await self._record(evse_id, meter_value)
        return result201.MeterValues()

    async def _sampling(self) -> None:
        interval = str(self.service.config.meter_interval_s)
        await self._ask(
            call201.SetVariables(
                set_variable_data=[
                    {
                        "attribute_value": interval,
                        "component": {"name": component},
                        "variable": {"name": variable},
                    }
                    for component, variable in (
                        ("SampledDataCtrlr", "TxUpdatedInterval"),
                        ("AlignedDataCtrlr", "Interval"),
                    )
                ]
            )
        )

    def _profile_call(
        self, connector_id: int, profile_id: int, profile: dict[str, Any], schedule: dict[str, Any]
    ) -> Any:
        full = {"id": profile_id, **profile, "charging_schedule": [{"id": profile_id, **schedule}]}
        return call201.SetChargingProfile(evse_id=connector_id, charging_profile=full)

    def _clear_call(self, profile_id: int) -> Any:
        return call201.ClearChargingProfile(charging_profile_id=profile_id)

    def _composite_call(self, connector_id: int) -> Any:
        return call201.GetCompositeSchedule(
            duration=60, evse_id=connector_id, charging_rate_unit=self.rate_unit
        )


def _first_limit(answer: Any, per_a: float) -> float | None:
    """The limit in force now from a GetCompositeSchedule answer, in A."""
    if answer is None or getattr(answer, "status", None) != "Accepted":
        return None
    schedule = getattr(answer, "charging_schedule", None) or getattr(answer, "schedule", None) or {}
    periods = schedule.get("charging_schedule_period") or []
    try:
        return float(periods[0]["limit"]) / per_a
    except (IndexError, KeyError, TypeError, ValueError):
        return None


@dataclass
class OcppService:
    """The server, the stations connected now, and their connectors (one per OCPP device of the gateway)."""

    config: OcppServer
    devices: list[DeviceConfig]
    record: Record
    clock: Clock = field(default_factory=Clock)
    stations: dict[str, _Station] = field(default_factory=dict)
    connectors: dict[str, dict[int, Connector]] = field(default_factory=dict)  # by charge point id
    by_device: dict[str, Connector] = field(default_factory=dict)
    server: Server | None = None
    # Per station, the transaction messages stored (to store a repeated one once), and 1.6 starts by
    # (station, connector, timestamp): a start sent again gets the same transaction id.
    seen: dict[str, dict[tuple[Any, ...], None]] = field(default_factory=dict)
    started: dict[tuple[str, int, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.passwords = ChargerPasswords(self.config.credentials_file)
        ev_failsafe = ROLES[DeviceRole.EV].failsafe[MAX_CURRENT_A]
        for device in self.devices:
            point = device.ocpp
            assert point is not None
            max_a = device.setpoint_bounds.get(MAX_CURRENT_A, (0.0, CHARGER_MAX_A))[1]
            connector = Connector(device, device.safe_mode.get(MAX_CURRENT_A, ev_failsafe), max_a)
            self.connectors.setdefault(point.charge_point_id, {})[point.connector_id] = connector
            self.by_device[device.id] = connector
        self.versions = {d.ocpp.charge_point_id: d.ocpp.version for d in self.devices if d.ocpp is not None}

    def station_max_a(self, connectors: dict[int, Connector]) -> float | None:
        bounded = [c.device.setpoint_bounds.get(MAX_CURRENT_A) for c in connectors.values()]
        return sum(b[1] for b in bounded if b is not None) if all(bounded) else None

    @property
    def disconnected(self) -> int:
        """Devices whose station is not connected (and booted) now."""
        return sum(
            len(conns)
            for cp, conns in self.connectors.items()
            if cp not in self.stations or not self.stations[cp].booted.is_set()
        )

    # -- the server ------------------------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext | None:
        if self.config.security_profile == 1:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # OCPP security profile 2: TLS 1.2 or above
        context.load_cert_chain(self.config.cert_file, self.config.key_file)  # type: ignore[arg-type]
        return context

    async def start(self) -> Server:
        self.server = await serve(
            self._session,
            self.config.host,
            self.config.port,
            subprotocols=["ocpp2.0.1", "ocpp1.6"],  # type: ignore[list-item]
            process_request=self._admit,
            ssl=self._ssl(),
            max_size=MAX_MESSAGE_BYTES,
            ping_interval=30,
        )
        log.info(
            "OCPP server on %s:%d (security profile %d) for %d chargers",
            self.config.host,
            self.config.port,
            self.config.security_profile,
            len(self.connectors),
        )
        return self.server

    async def serve(self) -> None:
        server = await self.start()
        try:
            await server.serve_forever()
        finally:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """The handshake's checks: a known station, its password, its version."""
        charge_point_id = request.path.strip("/").split("/")[-1]
        if charge_point_id not in self.connectors:
            log.warning("OCPP: refused unknown charger %r", charge_point_id[:64])
            return connection.respond(http.HTTPStatus.NOT_FOUND, "unknown charge point\n")
        user, password = _basic_auth(request.headers.get("Authorization"))
        try:
            admitted = (
                user == charge_point_id and password is not None and self.passwords.check(user, password)
            )
        except ValueError as exc:
            log.error("OCPP: %s", exc)
            admitted = False
        if not admitted:
            log.warning("OCPP: refused charger %s: wrong or missing password", charge_point_id)
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "wrong or missing Basic auth\n")
        offered = [p.strip() for p in ",".join(request.headers.get_all("Sec-WebSocket-Protocol")).split(",")]
        wanted = f"ocpp{self.versions[charge_point_id]}"
        if wanted not in offered:
            log.warning("OCPP: charger %s offers %s, configured for %s", charge_point_id, offered, wanted)
            return connection.respond(
                http.HTTPStatus.BAD_REQUEST, f"this charge point is configured for {wanted}\n"
            )
        return None

    async def _session(self, connection: ServerConnection) -> None:
        charge_point_id = connection.request.path.strip("/").split("/")[-1]  # type: ignore[union-attr]
        cls: type[_Station] = Station201 if connection.subprotocol == "ocpp2.0.1" else Station16
        station = cls(charge_point_id, connection, response_timeout=self.config.call_timeout_s)  # type: ignore[call-arg]
        station._setup(self, self.connectors[charge_point_id])
        old = self.stations.get(charge_point_id)
        self.stations[charge_point_id] = station
        if old is not None:
            log.info("charger %s connected again: closing its older connection", charge_point_id)
            await old._connection.close()
        log.info("charger %s connected (OCPP %s)", charge_point_id, station.version)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(station.start())
                group.create_task(self._after_boot(station))
        except* ConnectionClosed:
            pass
        finally:
            if self.stations.get(charge_point_id) is station:
                del self.stations[charge_point_id]
            log.info("charger %s disconnected", charge_point_id)

    async def _after_boot(self, station: _Station) -> None:
        await station.booted.wait()
        await station.configure()
        now = self.clock.timestamp()
        for connector in station.connectors.values():
            # Control's limit still valid: the station gets it again (it may have restarted and lost it).
            if connector.limit_a is not None and now < connector.limit_until:
                await station.set_limit(connector, connector.limit_a, CONTROL_LEVEL, connector.limit_until)

    # -- control's limits ------------------------------------------------------------------------------------
    def _station_of(self, connector: Connector) -> _Station | None:
        station = self.stations.get(connector.point.charge_point_id)
        return station if station is not None and station.booted.is_set() else None

    async def limit(self, device_id: str, amps: float, until: float) -> tuple[str | None, float | None]:
        """Control's limit as the station's level-1 default profile until ``until``: (why not, composite A)."""
        connector = self.by_device[device_id]
        station = self._station_of(connector)
        if station is None:
            return f"charger {connector.point.charge_point_id} is not connected", None
        error = await station.set_limit(connector, amps, CONTROL_LEVEL, until)
        if error is not None:
            return error, None
        connector.limit_a, connector.limit_until = amps, until
        return None, await station.composite_a(connector)

    async def release(self, device_id: str) -> None:
        """Back to the failsafe profile now: control's level-1 profile cleared (it also expires by itself)."""
        connector = self.by_device[device_id]
        connector.limit_a, connector.limit_until = None, 0.0
        station = self._station_of(connector)
        if station is not None:
            error = await station.clear_limit(connector)
            if error is not None:
                log.warning("charger %s: control's profile %s; it expires by itself", station.id, error)


def _basic_auth(header: str | None) -> tuple[str | None, str | None]:
    if not header or not header.startswith("Basic "):
        return None, None
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return user, password


@dataclass
class OcppControl:
    """A charger's setpoints through the OCPP server: the same interface as a Modbus device's control."""

    config: DeviceConfig
    service: OcppService
    clock: Clock = field(default_factory=Clock)
    expires: float | None = None
    in_safe_mode: bool = False
    applied: dict[str, float] = field(default_factory=dict)

    def _reject(self, setpoint: Setpoint, reason: str) -> SetpointAck:
        log.warning("setpoint %s for %s rejected: %s", setpoint.id, self.config.id, reason)
        return SetpointAck(id=setpoint.id, status=SetpointStatus.REJECTED, ts=self.clock.now(), reason=reason)

    async def apply(self, setpoint: Setpoint) -> SetpointAck:
        if setpoint.name != MAX_CURRENT_A:
            return self._reject(
                setpoint, f"{self.config.id} has no setpoint {setpoint.name!r} (it has: {MAX_CURRENT_A})"
            )
        low, high = self.config.setpoint_bounds.get(MAX_CURRENT_A, (0.0, CHARGER_MAX_A))
        if not low <= setpoint.value <= high:
            return self._reject(
                setpoint, f"{setpoint.name} {setpoint.value:g} is outside [{low:g}, {high:g}]"
            )
        if setpoint.expires <= self.clock.now():
            return self._reject(setpoint, f"expired at {setpoint.expires.isoformat()}")
        error, readback = await self.service.limit(
            self.config.id, setpoint.value, setpoint.expires.timestamp()
        )
        if error is not None:
            return self._reject(setpoint, error)
        self.expires = setpoint.expires.timestamp()
        self.in_safe_mode = False
        self.applied[MAX_CURRENT_A] = setpoint.value
        return SetpointAck(
            id=setpoint.id, status=SetpointStatus.APPLIED, ts=self.clock.now(), readback=readback
        )

    async def enter_safe_mode(self, why: str, *, control_lost: bool = True) -> None:
        if self.in_safe_mode:
            return
        self.in_safe_mode = True
        self.expires = None
        await self.service.release(self.config.id)
        connector = self.service.by_device[self.config.id]
        self.applied[MAX_CURRENT_A] = connector.failsafe_a
        level = logging.WARNING if control_lost else logging.INFO
        log.log(
            level,
            "charger %s in safe mode (%s): its default profile, %g A",
            self.config.id,
            why,
            connector.failsafe_a,
        )

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (now or self.clock.timestamp()) >= self.expires
