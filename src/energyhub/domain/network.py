"""The community as the controller sees it: nodes over connections, and the assets it can steer.

Every node (hub, loop, micro group, connection, group agreement) is a set of connections: its flow is the sum of
theirs. ``incidence[n, c]`` is 1 when connection ``c`` sits under node ``n``, so all node flows are one matrix
product. Flows are in kW, positive = taken from the grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from energyhub.domain.topology import Community, DeviceRole, Level

__all__ = ["EFFICIENCY", "WEAR_EUR_PER_KWH", "Battery", "Charger", "Network"]

Array = npt.NDArray[np.float64]
# A lithium-ion battery at about 300 EUR per kWh of capacity lasting 6,000 full cycles moves 12,000 kWh per kWh
# of capacity (in and out): 0.025 EUR per kWh moved. Storing a kWh of surplus PV and giving it back then costs
# about 0.05 EUR, half of what curtailing it loses, so a battery still takes what would be curtailed, but no
# longer cycles for nothing.
WEAR_EUR_PER_KWH = 0.025
EFFICIENCY = 0.95  # a battery's one way: charging and discharging each lose this much


@dataclass(frozen=True, slots=True)
class Battery:
    id: str  # "<connection>/<device>"
    connection: int
    power_kw: float
    capacity_kwh: float
    efficiency: float = EFFICIENCY
    wear_eur_per_kwh: float = WEAR_EUR_PER_KWH  # per kWh moved in or out


@dataclass(frozen=True, slots=True)
class Charger:
    id: str
    connection: int
    power_kw: float


@dataclass
class Network:
    node_ids: list[str]
    levels: list[Level]
    connection_ids: list[str]
    incidence: Array  # nodes x connections
    kwp: Array  # per connection: PV peak power
    contracted_kw: Array  # per connection: contracted offtake, a curtailment-sharing key
    batteries: list[Battery] = field(default_factory=list)
    chargers: list[Charger] = field(default_factory=list)

    @classmethod
    def from_community(cls, community: Community) -> Network:
        nodes = community.nodes()
        connections = [c for _l, _m, c in community.connections()]
        index = {c.id: i for i, c in enumerate(connections)}
        members: dict[str, set[int]] = {c.id: {index[c.id]} for c in connections}

        def under(node_id: str) -> set[int]:
            if node_id not in members:
                node = nodes[node_id]
                members[node_id] = set().union(*(under(child) for child in node.children))
            return members[node_id]

        node_ids = list(nodes)
        incidence = np.zeros((len(node_ids), len(connections)))
        for n, node_id in enumerate(node_ids):
            for c in under(node_id):
                incidence[n, c] = 1.0
        kwp = np.zeros(len(connections))
        batteries, chargers = [], []
        for c, connection in enumerate(connections):
            for device in connection.devices:
                if device.role is DeviceRole.PV:
                    kwp[c] += device.kwp or 0.0
                elif device.role is DeviceRole.BATTERY and device.power_kw and device.capacity_kwh:
                    batteries.append(
                        Battery(
                            f"{connection.id}/{device.id}",
                            c,
                            device.power_kw,
                            device.capacity_kwh,
                            EFFICIENCY if device.efficiency is None else device.efficiency,
                            WEAR_EUR_PER_KWH if device.wear_eur_per_kwh is None else device.wear_eur_per_kwh,
                        )
                    )
                elif device.role is DeviceRole.EV and device.power_kw:
                    chargers.append(Charger(f"{connection.id}/{device.id}", c, device.power_kw))
        contracted = np.array([c.limits.import_kw or c.capacity_kva for c in connections], dtype=float)
        return cls(
            node_ids=node_ids,
            levels=[nodes[n].level for n in node_ids],
            connection_ids=[c.id for c in connections],
            incidence=incidence,
            kwp=kwp,
            contracted_kw=contracted,
            batteries=batteries,
            chargers=chargers,
        )

    def node_index(self, node_id: str) -> int:
        return self.node_ids.index(node_id)

    def flows(self, connection_kw: Array) -> Array:
        """Node flows (kW) from connection flows: one column per time step if 2-D."""
        result: Array = self.incidence @ connection_kw
        return result
