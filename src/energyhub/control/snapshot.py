"""The frozen state of one control cycle, from the latest measurement of every device.

Like a process image: the receive task keeps the newest message per device; a cycle copies what it needs into
arrays per connection and decides on that copy only. A value that is missing, stale or of bad quality counts as the
worst case for the limits the estate fights with (feed-in): no load to offset it and the PV at its peak power, and
never as zero PV.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from energyhub.domain.bookings import Booking
from energyhub.domain.isp_energy import IspEnergy
from energyhub.domain.network import Network
from energyhub.domain.topology import Community, DeviceRole
from energyhub.wire.messages import Measurement, Quality
from energyhub.wire.roles import (
    APPLIED_CURRENT_A,
    DEPARTURE_TS,
    ENERGY_DELIVERED_WH,
    ENERGY_EXPORT_WH,
    ENERGY_IMPORT_WH,
    ENERGY_WANTED_WH,
    MODE3_STATE,
    POWER_LIMIT_ENABLED,
    POWER_LIMIT_PCT,
    POWER_W,
    SOC_PCT,
)

__all__ = ["DeviceRef", "LiveState", "Snapshot"]

Array = npt.NDArray[np.float64]
VEHICLE_SLACK_KW = 1.0  # a vehicle drawing this much less than offered is taking what it can
# Optional values that wire/roles.py does not declare (yet): the SunSpec inverter's limit switch (WMaxLim_Ena)
# and a charger's IEC 61851 state as a number (A = 0, B1 = 1 ... F).


@dataclass(frozen=True, slots=True)
class DeviceRef:
    gateway: str
    device: str
    connection: int
    role: DeviceRole
    rating_kw: float  # PV: AC rating; battery and charger: power


@dataclass
class Snapshot:
    load_kw: Array
    pv_available_kw: Array
    pv_output_kw: Array
    battery_kw: Array  # per battery, + charging
    charger_kw: Array  # per charger
    charger_connected: npt.NDArray[np.bool_]
    charger_max_kw: Array  # per charger: what its vehicle takes at most (its rating, or less as measured)
    battery_soc_kwh: Array
    grid_kw: Array  # per connection, as the meter says (worst case where it says nothing)
    stale: list[str] = field(default_factory=list)
    # Per charger, what its session says of itself (NaN where it says nothing): the energy it still wants
    # (kWh) and when it leaves (data-clock epoch s).
    charger_wanted_kwh: Array | None = None
    charger_departure_ts: Array | None = None


@dataclass
class _Frame:
    """A snapshot while it is being read, device by device."""

    grid: Array
    pv_out: Array
    pv_avail: Array
    battery: Array
    soc: Array
    charger: Array
    connected: npt.NDArray[np.bool_]
    charger_max: Array
    wanted: Array
    departure: Array
    stale: list[str] = field(default_factory=list)
    limited: list[tuple[int, float, float]] = field(default_factory=list)  # (connection, output, rating)
    free_yield: list[float] = field(default_factory=list)  # per unlimited inverter: output per kW of rating


@dataclass
class LiveState:
    community: Community
    network: Network
    stale_after_s: float = 5.0
    latest: dict[tuple[str, str], tuple[float, Measurement]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.devices: list[DeviceRef] = []
        index = {c: i for i, c in enumerate(self.network.connection_ids)}
        for connection, device in self.community.devices():
            rating = device.ac_kw or device.kwp or device.power_kw or 0.0
            self.devices.append(
                DeviceRef(
                    self.community.gateway_of(connection, device),
                    device.id,
                    index[connection.id],
                    device.role,
                    float(rating),
                )
            )
        self.battery_index = {b.id: i for i, b in enumerate(self.network.batteries)}
        self.charger_index = {c.id: i for i, c in enumerate(self.network.chargers)}
        self.grid_meters = {
            (r.gateway, r.device): r.connection for r in self.devices if r.role is DeviceRole.METER
        }
        self.energy = IspEnergy()  # the quarter hour's energy per connection, from the meters' own counters
        self.vehicle_kw: dict[int, float] = {}  # per charger: the most its present vehicle was seen to take
        # Plaza bookings by charger key ("connection/device"), for sessions that say nothing of themselves; and
        # the charger's energy register when its booked vehicle was first seen plugged in.
        self.bookings: dict[str, Booking] = {}
        self.booked_from_wh: dict[str, float] = {}

    def update(self, gateway: str, device: str, message: Measurement) -> None:
        self.latest[(gateway, device)] = (time.monotonic(), message)
        connection = self.grid_meters.get((gateway, device))
        if connection is not None and message.quality is not Quality.BAD:
            imported = message.values.get(ENERGY_IMPORT_WH)
            exported = message.values.get(ENERGY_EXPORT_WH)
            if imported is not None and exported is not None:
                self.energy.count(connection, message.ts.timestamp(), imported, exported)

    def _value(self, ref: DeviceRef, name: str, now: float) -> float | None:
        found = self.latest.get((ref.gateway, ref.device))
        if found is None or now - found[0] > self.stale_after_s or found[1].quality is Quality.BAD:
            return None
        value = found[1].values.get(name)
        return value if value is not None and math.isfinite(value) else None

    def snapshot(self, now: float | None = None) -> Snapshot:
        """The arrays of this cycle; ``now`` (monotonic seconds, now by default) tells what is stale."""
        now = time.monotonic() if now is None else now
        net = self.network
        n_c = len(net.connection_ids)
        frame = _Frame(
            grid=np.full(n_c, np.nan),
            pv_out=np.zeros(n_c),
            pv_avail=np.zeros(n_c),
            battery=np.zeros(len(net.batteries)),
            soc=np.array([b.capacity_kwh / 2 for b in net.batteries]),
            charger=np.zeros(len(net.chargers)),
            connected=np.zeros(len(net.chargers), bool),
            charger_max=np.array([c.power_kw for c in net.chargers], dtype=float),
            wanted=np.full(len(net.chargers), np.nan),
            departure=np.full(len(net.chargers), np.nan),
        )
        for ref in self.devices:
            if ref.role is DeviceRole.METER:
                self._meter(ref, now, frame)
            elif ref.role is DeviceRole.PV:
                self._pv(ref, now, frame)
            elif ref.role is DeviceRole.BATTERY:
                self._battery(ref, now, frame)
            elif ref.role is DeviceRole.EV:
                self._charger(ref, now, frame)
        # A limited inverter hides what the sun offers: take the best yield per kW of the free ones, at least
        # what it gives now and at most its rating.
        best = max(frame.free_yield, default=1.0)
        for connection, produced, rating in frame.limited:
            frame.pv_avail[connection] += min(rating, max(produced, best * rating))
        # Missing meter: no load to count on (worst case for feed-in).
        flex = np.bincount([b.connection for b in net.batteries], frame.battery, minlength=n_c) + np.bincount(
            [c.connection for c in net.chargers], frame.charger, minlength=n_c
        )
        grid_known = np.where(np.isnan(frame.grid), -frame.pv_out + flex, frame.grid)
        load = np.maximum(grid_known + frame.pv_out - flex, 0.0)
        return Snapshot(
            load,
            frame.pv_avail,
            frame.pv_out,
            frame.battery,
            frame.charger,
            frame.connected,
            frame.charger_max,
            frame.soc,
            grid_known,
            frame.stale,
            frame.wanted,
            frame.departure,
        )

    def _meter(self, ref: DeviceRef, now: float, frame: _Frame) -> None:
        value = self._value(ref, POWER_W, now)
        if value is None:
            frame.stale.append(f"{ref.gateway}/{ref.device}")
        else:
            frame.grid[ref.connection] = value / 1000.0

    def _pv(self, ref: DeviceRef, now: float, frame: _Frame) -> None:
        value = self._value(ref, POWER_W, now)
        if value is None:
            frame.stale.append(f"{ref.gateway}/{ref.device}")
            frame.pv_avail[ref.connection] += ref.rating_kw  # worst case for feed-in: all of it
            return
        produced = max(-value / 1000.0, 0.0)
        frame.pv_out[ref.connection] += produced
        limit = self._value(ref, POWER_LIMIT_PCT, now)
        enabled = self._value(ref, POWER_LIMIT_ENABLED, now)
        # A limit of 0 % is a limit (the least-harm answer when nothing else keeps the hub's zero feed-in),
        # not a missing value: read as "unlimited", the inverter's 0 kW once made control lift it to 100 %.
        fraction = (100.0 if limit is None else limit) / 100.0 if enabled else 1.0
        if fraction < 0.999 and produced >= 0.98 * fraction * ref.rating_kw:
            frame.limited.append((ref.connection, produced, ref.rating_kw))
        else:
            frame.pv_avail[ref.connection] += produced
            if ref.rating_kw > 0:
                frame.free_yield.append(produced / ref.rating_kw)

    def _battery(self, ref: DeviceRef, now: float, frame: _Frame) -> None:
        b = self.battery_index.get(f"{self.community_connection(ref)}/{ref.device}")
        value = self._value(ref, POWER_W, now)
        if b is not None and value is not None:
            frame.battery[b] = value / 1000.0
            level = self._value(ref, SOC_PCT, now)
            if level is not None:
                frame.soc[b] = self.network.batteries[b].capacity_kwh * level / 100.0

    def _charger(self, ref: DeviceRef, now: float, frame: _Frame) -> None:
        c = self.charger_index.get(f"{self.community_connection(ref)}/{ref.device}")
        value = self._value(ref, POWER_W, now)
        state = self._value(ref, MODE3_STATE, now)
        if c is not None and value is not None:
            frame.charger[c] = value / 1000.0
            frame.connected[c] = state is not None and 1 <= state <= 6  # B1 to D2: a vehicle is plugged in
            offered = self._value(ref, APPLIED_CURRENT_A, now)
            frame.charger_max[c] = self._vehicle_max(
                c, frame.charger[c], offered, state, frame.charger_max[c]
            )
            wanted = self._value(ref, ENERGY_WANTED_WH, now)
            departure = self._value(ref, DEPARTURE_TS, now)
            key = f"{self.community_connection(ref)}/{ref.device}"
            if not frame.connected[c]:
                self.booked_from_wh.pop(key, None)
                return
            booking = self.bookings.get(key)
            if (wanted is None or departure is None) and booking is not None:
                # The session says nothing of itself: its booking says it, less what it has taken since.
                register = self._value(ref, ENERGY_DELIVERED_WH, now)
                start = self.booked_from_wh.setdefault(key, register or 0.0)
                wanted = booking.energy_kwh * 1000 - max(0.0, (register or start) - start)
                departure = booking.departure.timestamp()
            frame.wanted[c] = np.nan if wanted is None else max(wanted, 0.0) / 1000.0
            frame.departure[c] = np.nan if departure is None else departure

    def _vehicle_max(
        self, charger: int, taking_kw: float, offered_a: float | None, state: float | None, rating_kw: float
    ) -> float:
        """What the plugged-in vehicle takes at most. A car's on-board charger (11 kW behind a 22 kW point), a
        battery near full or a paused vehicle takes less than it is offered; counted at the charger's rating,
        the power it does not take would be planned as absorbed, and PV would flow out instead. Learned per
        vehicle: forgotten when it leaves, raised when it takes more."""
        if state is None or not 1 <= state <= 6:
            self.vehicle_kw.pop(charger, None)  # no vehicle (A) or a fault (E, F)
            return rating_kw
        known = self.vehicle_kw.get(charger)
        if known is not None and taking_kw > known + VEHICLE_SLACK_KW / 2:
            known = None  # it takes more than thought: it was tapering, or the offer was lower
        offered_kw = (offered_a or 0.0) * 3 * 230.0 / 1000.0
        if offered_a is not None and offered_a >= 6.0 and taking_kw < offered_kw - VEHICLE_SLACK_KW:
            known = max(taking_kw, 0.0)  # offered more than it takes: the vehicle is the limit
        if known is None:
            self.vehicle_kw.pop(charger, None)
            return rating_kw
        self.vehicle_kw[charger] = known
        return min(rating_kw, known + VEHICLE_SLACK_KW) if known > 0 else 0.0

    def community_connection(self, ref: DeviceRef) -> str:
        return self.network.connection_ids[ref.connection]
