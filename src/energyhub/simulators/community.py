"""The community simulator: every device of a community file as a Modbus device, driven by one physics clock.

Chargers with ``ocpp:`` are simulated OCPP charge points instead (``ocpp_station.py``), connecting to their
gateway's OCPP server with the passwords (and CA) given in ``ocpp_chargers``; their sessions come from the same
plaza model, and their power is in their connection's grid meter like any device's.

Each company's grid meter reads the net of everything behind it (load + EV + battery - PV), so the sum of all grid
meters is the flow at the substation, and every meter integrates its own energy. The clock runs ``speed`` times real
time from ``start``; everything random is drawn from (seed, device, time), so a run is the same for a given seed and
start whatever subset (``only``) is simulated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import numpy as np

from energyhub.domain.clock import Clock
from energyhub.domain.topology import Community, Connection, Device, DeviceRole, OcppEndpoint
from energyhub.simulators.devices import (
    BatteryDevice,
    BatteryState,
    InverterDevice,
    InverterState,
    MeterDevice,
    SimulatedDevice,
)
from energyhub.simulators.ev_charger import ChargerDevice, ChargerState, Session
from energyhub.simulators.mbus_meter import MbusMeterSim, MbusServer, serve_mbus
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.simulators.ocpp_station import (
    ChargePointSim,
    ConnectorSpec,
    PlazaCharger,
    PlazaPlans,
    plaza_step,
)
from energyhub.simulators.profile_device import ProfileDevice
from energyhub.simulators.sdm630 import MeterState
from energyhub.synthetic.loads import load_power_w
from energyhub.synthetic.sessions import plan_sessions, rng_for, vehicle_max_w
from energyhub.synthetic.solar import SolarOnline
from energyhub.wire.profile import SUNSPEC, load_profile

__all__ = ["ChargerAccess", "CommunitySimulator", "ConnectionModel", "Endpoint", "simulated_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    gateway: str
    device: str
    role: str
    profile: str
    host: str
    port: int
    unit_id: int


@dataclass
class ConnectionModel:
    """One connection's devices and the physics that links them."""

    connection: Connection
    meter: SimulatedDevice[MeterState] | None
    sub_meters: list[tuple[SimulatedDevice[MeterState], float]] = field(
        default_factory=list
    )  # (meter, load share)
    inverters: list[SimulatedDevice[InverterState]] = field(default_factory=list)
    batteries: list[SimulatedDevice[BatteryState]] = field(default_factory=list)
    chargers: list[tuple[SimulatedDevice[ChargerState], str, str]] = field(
        default_factory=list
    )  # (device, key, vehicle)
    ocpp_chargers: list[PlazaCharger] = field(default_factory=list)  # connectors of OCPP charge points
    load_w: float = 0.0
    load_energy_wh: float = 0.0

    @property
    def net_w(self) -> float:
        pv = sum(i.state.output_w for i in self.inverters)
        battery = sum(b.state.power_w for b in self.batteries)
        ev = sum(c.state.power_w for c, _k, _v in self.chargers)
        ev += sum(c.sim.power_w(c.connector_id) for c in self.ocpp_chargers)
        return self.load_w - pv + battery + ev


@dataclass(frozen=True)
class ChargerAccess:
    """How a simulated charge point logs in to its gateway: its password, and the CA to trust for TLS (security
    profile 2; None: plain WebSocket, profile 1)."""

    password: str
    ca_file: Path | None = None


S = TypeVar("S", MeterState, InverterState, BatteryState, ChargerState)


def simulated_device(profile: str, unit_id: int, state: S) -> SimulatedDevice[S]:
    """The device a community file's ``profile`` names, showing ``state``: the hand-written model of the
    products the simulators model in full (SDM630, SunSpec, Alfen), any other profile served from its YAML."""
    made: SimulatedDevice[Any]
    if isinstance(state, MeterState) and profile == "eastron_sdm630":
        made = MeterDevice(unit_id=unit_id, state=state)
    elif isinstance(state, InverterState) and profile in (SUNSPEC, "sunspec_inverter"):
        made = InverterDevice(unit_id=unit_id, state=state)
    elif isinstance(state, BatteryState) and profile in (SUNSPEC, "sunspec_battery"):
        made = BatteryDevice(unit_id=unit_id, state=state)
    elif isinstance(state, ChargerState) and profile == "ev_charger":
        made = ChargerDevice(unit_id=unit_id, state=state)
    else:
        made = ProfileDevice(unit_id=unit_id, profile=load_profile(profile), state=state)
    return cast("SimulatedDevice[S]", made)  # each branch above made the device of ``state``'s type


class CommunitySimulator:
    def __init__(
        self,
        community: Community,
        *,
        seed: int = 0,
        start: datetime,
        speed: float = 1.0,
        only: set[str] | None = None,
        ocpp_chargers: dict[str, ChargerAccess] | None = None,
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("start needs a timezone")
        self.community = community
        self.seed = seed
        self.start = start.astimezone(UTC)
        self.speed = speed
        self.now = self.start
        self.clock: Clock | None = None  # set by run(): what the physics follows
        self.models: list[ConnectionModel] = []
        self._endpoints: list[Endpoint] = []
        self._by_address: dict[tuple[str, int], list[SimulatedDevice[Any]]] = {}
        self._session_plans: dict[str, list[tuple[float, float, float]]] = {}
        self._plan_day: dict[str, int] = {}
        self._roofs: list[float] = []  # kWp of every simulated inverter, in model order
        self._devices: dict[tuple[str, str], SimulatedDevice[Any]] = {}
        self._ocpp_access = ocpp_chargers or {}
        self.stations: dict[str, ChargePointSim] = {}  # the OCPP charge points, by identity
        self.mbus_meters: dict[tuple[str, int], list[MbusMeterSim]] = {}  # gas and water, per M-Bus converter
        self._plaza_plans: PlazaPlans | None = None
        self._online = False  # run(): the charge points run their own meter loop, online
        self._ocpp_counted: dict[
            str, float
        ] = {}  # per connector, its register as the grid meter last counted it
        known = {gw.id for _l, _m, c in community.connections() for gw in c.gateways}
        unknown = (only or set()) - known
        if unknown:
            raise ValueError(f"--only names unknown gateways: {', '.join(sorted(unknown))}")
        for _loop, _micro, connection in community.connections():
            if not connection.devices:
                continue
            gateways = {community.gateway_of(connection, d) for d in connection.devices}
            if only is not None and not gateways & only:
                continue
            self.models.append(self._build(connection, only))
        # One solar table for every roof: the estate shares one sky, and one table costs far less than many.
        self._solar = SolarOnline(np.array(self._roofs), seed=seed) if self._roofs else None

    # -- building --------------------------------------------------------------------------------------------
    def _build(self, connection: Connection, only: set[str] | None) -> ConnectionModel:
        model = ConnectionModel(connection=connection, meter=None)
        pv_kwp: list[float] = []
        loads = [d for d in connection.devices if d.role is DeviceRole.LOAD]
        # Each sub-meter sees a seeded share of the load; the rest is unmetered.
        shares: list[float] = (
            [
                float(x)
                for x in rng_for(self.seed, connection.id, 0).dirichlet([2.0] * (len(loads) + 1))[
                    : len(loads)
                ]
            ]
            if loads
            else []
        )
        for device in connection.devices:
            gateway = self.community.gateway_of(connection, device)
            if only is not None and gateway not in only:
                continue
            if device.ocpp is not None:
                self._add_station(model, connection, device, gateway)
                continue
            if device.mbus is not None:
                self._add_mbus_meter(connection, device)
                continue
            if device.modbus is None:  # pragma: no cover - a device has one transport (the community checks)
                continue
            unit = device.modbus.unit_id
            sim: SimulatedDevice[Any]
            profile = device.profile
            if device.role is DeviceRole.METER:
                meter = model.meter = simulated_device(profile, unit, MeterState())
                sim = meter
            elif device.role is DeviceRole.LOAD:
                sub = simulated_device(profile, unit, MeterState())
                model.sub_meters.append((sub, float(shares[len(model.sub_meters)])))
                sim = sub
            elif device.role is DeviceRole.PV:
                kwp = device.kwp or 0.0
                rated = (device.ac_kw or kwp) * 1000.0
                inverter = simulated_device(
                    profile, unit, InverterState(rated_w=rated, serial=f"{gateway}-{device.id}")
                )
                model.inverters.append(inverter)
                sim = inverter
                pv_kwp.append(kwp)
            elif device.role is DeviceRole.BATTERY:
                state = BatteryState(
                    capacity_wh=(device.capacity_kwh or 0) * 1000,
                    max_w=(device.power_kw or 0) * 1000,
                    serial=f"{gateway}-{device.id}",
                )
                battery = simulated_device(profile, unit, state)
                model.batteries.append(battery)
                sim = battery
            elif device.role is DeviceRole.EV:
                charger = simulated_device(profile, unit, ChargerState(max_w=(device.power_kw or 0) * 1000))
                model.chargers.append((charger, f"{connection.id}/{device.id}", device.vehicle or "car"))
                sim = charger
            else:  # pragma: no cover - every role is handled above
                raise ValueError(device.role)
            self._devices[(gateway, device.id)] = sim
            address = (device.modbus.host, device.modbus.port)
            self._by_address.setdefault(address, []).append(sim)
            self._endpoints.append(
                Endpoint(
                    gateway,
                    device.id,
                    device.role.value,
                    device.profile,
                    device.modbus.host,
                    device.modbus.port,
                    unit,
                )
            )
        self._roofs.extend(pv_kwp)
        return model

    def _add_station(
        self, model: ConnectionModel, connection: Connection, device: Device, gateway: str
    ) -> None:
        """A connector of an OCPP charge point; the charge point is made at its first connector."""
        point = device.ocpp
        assert point is not None
        # Without its password a charge point still charges in the physics, but does not connect.
        access = self._ocpp_access.get(point.charge_point_id) or ChargerAccess("", None)
        spec = ConnectorSpec(
            connector_id=point.connector_id,
            kind="dc" if point.version == "2.0.1" else "ac",
            max_power_w=(device.power_kw or 0.0) * 1000,
        )
        station = self.stations.get(point.charge_point_id)
        if station is None:
            endpoint = next((g.ocpp for g in connection.gateways if g.id == gateway and g.ocpp), None)
            endpoint = endpoint or OcppEndpoint()
            host = "127.0.0.1" if endpoint.host in ("0.0.0.0", "::") else endpoint.host
            tls = ssl.create_default_context(cafile=access.ca_file) if access.ca_file is not None else None
            station = ChargePointSim(
                point.charge_point_id,
                f"{'wss' if tls else 'ws'}://{host}:{endpoint.port}",
                version=point.version,
                connectors=[spec],
                password=access.password or None,
                ssl_context=tls,
                clock=self._data_time,
            )
            self.stations[point.charge_point_id] = station
        else:
            station.add_connector(spec)
        vehicle: Literal["car", "truck"] = "truck" if device.vehicle == "truck" else "car"
        model.ocpp_chargers.append(
            PlazaCharger(
                sim=station,
                connector_id=point.connector_id,
                vehicle=vehicle,
                key=f"{connection.id}/{device.id}",
            )
        )

    def _add_mbus_meter(self, connection: Connection, device: Device) -> None:
        """A gas or water meter behind its connection's M-Bus converter; its use follows the connection's size."""
        line = device.mbus
        assert line is not None
        per_day = (connection.annual_use_kwh or 100_000.0) / 365.0
        make = MbusMeterSim.gas if device.role is DeviceRole.GAS else MbusMeterSim.water
        # Gas: about 0.05 m³ per kWh of electricity a day for these trades; water: 0.01 m³.
        share = 0.05 if device.role is DeviceRole.GAS else 0.01
        meter = make(line.address, clock=self._data_time, m3_per_day=per_day * share)
        self.mbus_meters.setdefault((line.host, line.port), []).append(meter)

    def _data_time(self) -> float:
        return self.clock.timestamp() if self.clock is not None else self.now.timestamp()

    def device(self, gateway: str, device: str) -> SimulatedDevice[Any] | None:
        return self._devices.get((gateway, device))

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    def write_endpoints(self, path: Path) -> None:
        path.write_text(json.dumps([asdict(e) for e in self._endpoints], indent=2) + "\n")

    # -- physics -----------------------------------------------------------------------------------------------
    def _sessions(self, key: str, vehicle: str, t: datetime) -> list[tuple[float, float, float]]:
        day = int(t.timestamp()) // 86_400
        if self._plan_day.get(key) != day:
            day_start = datetime.fromtimestamp(day * 86_400, UTC)
            previous = [s for s in self._session_plans.get(key, []) if s[1] > t.timestamp()]
            self._session_plans[key] = previous + plan_sessions(self.seed, key, vehicle, day_start)
            self._plan_day[key] = day
        return self._session_plans[key]

    def step(self, dt_s: float, *, real_s: float | None = None) -> None:
        """Advance the physics by ``dt_s`` simulated seconds from ``self.now`` (in which ``real_s`` real seconds
        passed: the devices' own timers count those), then set every meter."""
        t = self.now
        epoch = np.array([int(t.timestamp())], dtype=np.int64)
        roofs_w = self._solar.power_kw(t) * 1000.0 if self._solar is not None else np.zeros(0)
        available = iter(np.atleast_1d(roofs_w).tolist())
        for model in self.models:
            c = model.connection
            model.load_w = float(
                load_power_w(
                    epoch,
                    profile=c.load_profile,
                    annual_kwh=c.annual_use_kwh or 0.0,
                    seed=self.seed,
                    key=c.id,
                )[0]
            )
            for inverter in model.inverters:
                inverter.state.available_w = float(next(available))
            if model.ocpp_chargers:
                self._plaza_plans = plaza_step(
                    model.ocpp_chargers, t.timestamp(), seed=self.seed, plans=self._plaza_plans
                )
                if not self._online:  # stepped by hand: the charge points' meters step with the physics
                    for station in {id(c.sim): c.sim for c in model.ocpp_chargers}.values():
                        station.tick()
            for charger, key, vehicle in model.chargers:
                now_s = t.timestamp()
                state = charger.state
                if state.session is not None and now_s >= state.session.departure_s:
                    state.session = None
                if state.session is None:
                    for arrival, departure, wanted in self._sessions(key, vehicle, t):
                        if arrival <= now_s < departure:
                            state.session = Session(
                                energy_wanted_wh=wanted,
                                departure_s=departure,
                                vehicle_max_w=vehicle_max_w(vehicle, state.max_w),
                            )
                            self._session_plans[key].remove((arrival, departure, wanted))
                            break
            # Power is what the devices do at the start of the step; the grid meter counts the energy they really
            # exchanged during it (a battery that fills or a car that is done stops part-way).
            net = model.net_w
            load_wh = model.load_w * dt_s / 3600.0
            model.load_energy_wh += load_wh
            energy_wh = load_wh
            for sub, share in model.sub_meters:
                sub.state.power_w = model.load_w * share
                sub.state.advance(dt_s)
            for inverter in model.inverters:
                energy_wh += inverter.state.advance(dt_s)
            for battery in model.batteries:
                energy_wh += battery.state.advance(dt_s)
            for charger, _key, _vehicle in model.chargers:
                energy_wh += charger.state.advance(dt_s, real_s=real_s)
            for plaza in model.ocpp_chargers:  # the charge point counts its own energy; the meter sees it too
                register = plaza.sim.energy_wh(plaza.connector_id)
                energy_wh += register - self._ocpp_counted.get(plaza.key, 0.0)
                self._ocpp_counted[plaza.key] = register
            if model.meter is not None:
                model.meter.state.power_w = net
                model.meter.state.add_energy(energy_wh)
        self.now = t + timedelta(seconds=dt_s)

    def hub_flow_w(self) -> float:
        """The flow at the substation of what is simulated: the sum of every grid meter."""
        return sum(m.meter.state.power_w for m in self.models if m.meter is not None)

    # -- serving ------------------------------------------------------------------------------------------------
    async def run(
        self,
        *,
        stop: asyncio.Event,
        tick_s: float = 1.0,
        ready: asyncio.Event | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Serve every device and advance the physics every ``tick_s`` real seconds until ``stop`` is set.

        The physics follows ``clock`` (by default one that reads ``start`` now and runs ``speed``x): each step
        advances by what the clock advanced, so the meters count the energy of the data clock's time that every
        other process of the run stamps its data with. A clock jump (the fault API) shifts ``now`` on top of it.
        """
        self.clock = clock or Clock.simulated(self.start, self.speed)
        self.now = self.clock.now()
        self.step(0.0)
        servers = [GatewayServer(host=h, port=p, devices=d) for (h, p), d in sorted(self._by_address.items())]
        started: list[GatewayServer] = []
        stations = [
            asyncio.create_task(station.run(stop), name=f"ocpp-{station.id}")
            for station in self.stations.values()
        ]
        converters: list[MbusServer] = []
        try:
            for (host, port), meters in sorted(self.mbus_meters.items()):
                converters.append(await serve_mbus(host, port, meters))
            for server in servers:
                await server.start()
                started.append(server)
            log.info(
                "simulating %d devices on %d ports from %s at %gx",
                len(self._endpoints),
                len(servers),
                self.now.isoformat(),
                self.speed,
            )
            if ready is not None:
                ready.set()
            loop = asyncio.get_running_loop()
            last, last_data = loop.time(), self.clock.timestamp()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=tick_s)
                now, data = loop.time(), self.clock.timestamp()
                self.step(max(0.0, data - last_data), real_s=now - last)
                last, last_data = now, data
        finally:
            for task in stations:
                task.cancel()
            for task in stations:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for server in started:
                await server.stop()
            for converter in converters:
                await converter.stop()
