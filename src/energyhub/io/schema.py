"""The names of what energyhub keeps in InfluxDB: one place for the ingest and control that write them, and the
API, the dashboards and planning that read them. The fields of each are described in ``docs/ingest.md``
(``device``, ``gateway_state``, ``setpoint_ack``, ``ingest``, ``ingest_gateway``) and ``docs/control.md``
(``control_node``, ``control_cycle``)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "CONTROL_CYCLE",
    "CONTROL_NODE",
    "DEVICE",
    "GATEWAY_STATE",
    "INGEST",
    "INGEST_GATEWAY",
    "SETPOINT_ACK",
    "SETPOINT_ACK_FIELDS",
]

# Written by the ingest, one point per message.
DEVICE: Final = "device"  # a measurement: tags site, gateway, device, session (+ connection, role)
GATEWAY_STATE: Final = "gateway_state"  # a gateway's birth, death and health: tags site, gateway
SETPOINT_ACK: Final = "setpoint_ack"  # a gateway's answer to a setpoint: tags site, gateway, device, status
# Its fields: the setpoint's id always, the others where the gateway gave them (SetpointAck's attributes).
SETPOINT_ACK_FIELDS: Final = ("id", "name", "value", "readback", "reason")
# The ingest's own figures.
INGEST: Final = "ingest"
INGEST_GATEWAY: Final = "ingest_gateway"
# Written by control, every cycle.
CONTROL_NODE: Final = "control_node"
CONTROL_CYCLE: Final = "control_cycle"
