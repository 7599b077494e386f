"""What the API shows live: the latest reading of every device and gateway, and every node's flow against its limits.

It is fed by the API's one MQTT connection (``energyhub.api.link.BrokerLink``, the ``ehub-api`` account, which reads
the whole site) and keeps the newest measurement per device and the newest state per gateway; node flows are the
sums of the grid meters under each node, limits are the contracts' for this quarter hour. A node whose meters are
all silent has no flow (shown as unknown, not zero). Setpoint acknowledgements go to ``AckBook``.

What is not a reading (a retained measurement, one dated well ahead of the data clock or before 2000) is ignored
and counted by ``energyhub.wire.readings.MeasurementGate``, as control does. A retained acknowledgement is ignored
too: a gateway never retains one, and one from the broker's store was not sent since the API started.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from energyhub.api.acks import AckBook
from energyhub.domain.clock import Clock, clock_from_env
from energyhub.domain.isp import isp_start_s
from energyhub.domain.isp_energy import IspEnergy
from energyhub.domain.limits import LimitBook
from energyhub.domain.network import Network
from energyhub.domain.topology import Community, DeviceRole
from energyhub.io.mqtt import IncomingMessage
from energyhub.wire.messages import GatewayState, Measurement, MessageError, SetpointAck, decode
from energyhub.wire.readings import MAX_AHEAD_S, MeasurementGate
from energyhub.wire.roles import (
    ENERGY_EXPORT_WH,
    ENERGY_IMPORT_WH,
    MODE3_STATE,
    POWER_LIMIT_ENABLED,
    POWER_LIMIT_PCT,
    POWER_W,
    SOC_PCT,
)
from energyhub.wire.topics import TopicError, TopicKind, Topics

__all__ = ["LiveView"]

ISP_H = 0.25  # a quarter hour, in hours

log = logging.getLogger(__name__)


@dataclass
class LiveView:
    community: Community
    topics: Topics
    stale_after_s: float = 10.0
    meters: dict[tuple[str, str], int] = field(default_factory=dict)  # (gateway, device) -> connection index
    latest: dict[tuple[str, str], tuple[float, Measurement]] = field(default_factory=dict)
    states: dict[str, GatewayState] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    received: int = 0
    clock: Clock = field(default_factory=clock_from_env)  # the limits in force are the data clock's
    max_ahead_s: float = MAX_AHEAD_S  # real seconds; on the data clock this times its speed
    acks: AckBook = field(default_factory=AckBook)
    retained_acks: int = 0  # ignored: see the module's docstring

    def __post_init__(self) -> None:
        self.energy = IspEnergy()  # this quarter hour per connection, from the grid meters' own counters
        self.gate = MeasurementGate(self.clock, self.max_ahead_s)
        self.network = Network.from_community(self.community)
        self.book = LimitBook(self.community)
        index = {c: i for i, c in enumerate(self.network.connection_ids)}
        # What else a connection has (PV, batteries, chargers): shown beside its flow.
        self.behind: dict[tuple[str, str], tuple[str, DeviceRole]] = {}
        for connection, device in self.community.devices():
            key = (self.community.gateway_of(connection, device), device.id)
            if device.role is DeviceRole.METER:
                self.meters[key] = index[connection.id]
            elif device.role in (DeviceRole.PV, DeviceRole.BATTERY, DeviceRole.EV):
                self.behind[key] = (connection.id, device.role)

    def filters(self) -> list[tuple[str, int]]:
        """What to subscribe to: readings and states at QoS 0 (the next one replaces a lost one), acks at QoS 1."""
        return [
            (self.topics.all_measurements(), 0),
            (self.topics.all_states(), 0),
            (self.topics.all_acks(), 1),
        ]

    def take_message(self, message: IncomingMessage) -> None:
        self.take(message.topic, message.payload, retained=message.retained)

    def take(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        """One message off the broker; ``retained``: it came from the broker's store (MQTT's retain flag)."""
        try:
            info = self.topics.parse(topic)
            if info.kind is TopicKind.ACK and info.gateway and info.device:
                if retained:
                    self.retained_acks += 1
                else:
                    self.acks.take(info.gateway, info.device, decode(SetpointAck, payload))
                return  # not a flow: the live page need not redraw
            if info.kind is TopicKind.MEASUREMENT and info.gateway and info.device:
                measurement = self.gate.admit(topic, payload, retained=retained)
                if measurement is None:
                    return
                self.latest[(info.gateway, info.device)] = (time.monotonic(), measurement)
                connection = self.meters.get((info.gateway, info.device))
                imported = measurement.values.get(ENERGY_IMPORT_WH)
                exported = measurement.values.get(ENERGY_EXPORT_WH)
                if connection is not None and imported is not None and exported is not None:
                    self.energy.count(connection, measurement.ts.timestamp(), imported, exported)
            elif info.kind is TopicKind.STATE and info.gateway:
                self.states[info.gateway] = decode(GatewayState, payload)
            else:
                return
        except (TopicError, MessageError) as exc:
            log.debug("ignoring %s: %s", topic, exc)
            return
        self.received += 1
        self.changed.set()

    def clock_now(self) -> dict[str, Any]:
        """Which time the figures are of: the data clock now, and whether it is a simulation's."""
        return {
            "now": self.clock.now().isoformat(),
            "simulated": self.clock.is_simulated,
            "speed": self.clock.speed,
            "clock": self.clock.describe(),
        }

    def flows(self) -> list[dict[str, Any]]:
        """Every node: flow (kW, + taken), its limits now, and the headroom left to the nearer limit (0..1)."""
        now, mono = self.clock.now(), time.monotonic()
        n_c = len(self.network.connection_ids)
        isp_kwh = np.full(n_c, np.nan)  # this quarter hour so far, as each grid meter's counters say
        connection_kw = np.zeros(n_c)
        known = np.zeros(n_c, bool)
        for key, c in self.meters.items():
            found = self.latest.get(key)
            if found is None or mono - found[0] > self.stale_after_s:
                continue
            power = found[1].values.get(POWER_W)
            if power is not None:
                connection_kw[c] += power / 1000.0
                known[c] = True
            so_far = self.energy.so_far_kwh(c, now.timestamp(), None if power is None else power / 1000.0)
            if so_far is not None:
                isp_kwh[c] = so_far
        parts = self._parts(mono)
        out = []
        for n, node_id in enumerate(self.network.node_ids):
            members = self.network.incidence[n] > 0
            limit = self.book.limit_at(node_id, now)
            flow = float(connection_kw[members].sum()) if known[members].any() else None
            imp = limit.import_w / 1000.0
            exp = limit.export_w / 1000.0
            headroom = None
            if flow is not None:
                room = imp - flow if flow >= 0 else exp + flow
                scale = imp if flow >= 0 else exp
                headroom = (
                    max(0.0, min(1.0, room / scale))
                    if math.isfinite(scale) and scale > 0
                    else (1.0 if room > 0 or not math.isfinite(room) else 0.0)
                )
            out.append(
                {
                    "node": node_id,
                    "level": str(self.network.levels[n]),
                    "flow_kw": None if flow is None else round(flow, 3),
                    "limit_import_kw": imp if math.isfinite(imp) else None,
                    "limit_export_kw": exp if math.isfinite(exp) else None,
                    "import_source": limit.import_source,
                    "export_source": limit.export_source,
                    "headroom": None if headroom is None else round(headroom, 3),
                    "metered_connections": int(known[members].sum()),
                    # The quarter hour so far against what its limits allow over the whole of it: what the DSO
                    # settles. Null until every member's counter is known for this quarter hour.
                    "isp_start": datetime.fromtimestamp(isp_start_s(now.timestamp()), UTC).isoformat(),
                    "isp_kwh": None
                    if np.isnan(isp_kwh[members]).any()
                    else round(float(isp_kwh[members].sum()), 3),
                    "isp_limit_import_kwh": imp * ISP_H if math.isfinite(imp) else None,
                    "isp_limit_export_kwh": exp * ISP_H if math.isfinite(exp) else None,
                    **({"devices": parts[node_id]} if node_id in parts else {}),
                }
            )
        return out

    def _parts(self, mono: float) -> dict[str, dict[str, float | int | None]]:
        """Per connection, from its devices' fresh readings: PV output (kW) and the lowest limit in force (%),
        battery power (+ charging) and state of charge, chargers' power and how many have a vehicle."""
        out: dict[str, dict[str, float | int | None]] = {}
        for key, (connection, role) in self.behind.items():
            found = self.latest.get(key)
            if found is None or mono - found[0] > self.stale_after_s:
                continue
            values = found[1].values
            power = values.get(POWER_W)
            if power is None:
                continue
            d = out.setdefault(connection, {})
            if role is DeviceRole.PV:
                d["pv_kw"] = round(float(d.get("pv_kw") or 0.0) + max(-power, 0.0) / 1000, 3)
                pct = values.get(POWER_LIMIT_PCT)
                if values.get(POWER_LIMIT_ENABLED) and pct is not None and pct < 99.95:
                    d["pv_limit_pct"] = min(float(d.get("pv_limit_pct") or 100.0), pct)
            elif role is DeviceRole.BATTERY:
                d["battery_kw"] = round(float(d.get("battery_kw") or 0.0) + power / 1000, 3)
                if values.get(SOC_PCT) is not None:
                    d["soc_pct"] = values[SOC_PCT]
            else:
                d["ev_kw"] = round(float(d.get("ev_kw") or 0.0) + power / 1000, 3)
                state = values.get(MODE3_STATE)
                d["vehicles"] = int(d.get("vehicles") or 0) + (state is not None and 1 <= state <= 6)
        return out
