"""The names of what energyhub keeps in InfluxDB: one place for the ingest and control that write them, and the
API, the dashboards and planning that read them. The fields of each are described in ``docs/ingest.md``
(``device``, ``gateway_state``, ``setpoint_ack``, ``ingest``, ``ingest_gateway``) and ``docs/control.md``
(``control_node``, ``control_cycle``)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "AGGREGATE_LATE",
    "AGGREGATE_PROGRESS",
    "CONTROL_CYCLE",
    "CONTROL_NODE",
    "CONTROL_NODE_MINUTE",
    "COUNTER_RESET",
    "DEVICE",
    "DEVICE_MINUTE",
    "DEVICE_QUARTER",
    "GATEWAY_STATE",
    "INGEST",
    "INGEST_GATEWAY",
    "MINUTE_RP",
    "NODE_QUARTER",
    "QUARTER_RP",
    "RAW_RP",
    "SETPOINT_ACK",
    "SETPOINT_ACK_FIELDS",
]

# Written by the ingest, one point per message.
DEVICE: Final = (
    "device"  # a measurement: tags site, gateway, device (+ connection, role); seq, session fields
)
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

# Retention policies (InfluxDB 1.x): raw points for a configurable time (the database's default policy), one-minute
# data for a year, quarter hours forever. Queries of raw data name no policy; of the others, "<policy>"."<name>".
RAW_RP: Final = "raw"
MINUTE_RP: Final = "year"
QUARTER_RP: Final = "forever"
# Written by the aggregator (``docs/data.md``).
DEVICE_MINUTE: Final = "device_1m"  # in MINUTE_RP: mean_<value>, max_power_w, min_power_w; the device's tags
CONTROL_NODE_MINUTE: Final = "control_node_1m"  # in MINUTE_RP: mean_<field> of control_node; its tags
DEVICE_QUARTER: Final = "device_qh"  # in QUARTER_RP: a device's quarter hour; tags site, gateway, device, ...
NODE_QUARTER: Final = (
    "node_qh"  # in QUARTER_RP: a node's quarter hour with its limits; tags site, node, level
)
COUNTER_RESET: Final = (
    "counter_reset"  # in QUARTER_RP: an energy counter that fell; tags site, gateway, device
)
# Written by the ingest: a batch held measurements of quarter hours already closed (replayed, late), so the
# aggregator does those again. Fields from_ns, to_ns (the late points' span), count; at the time of arrival.
AGGREGATE_LATE: Final = "aggregate_late"
# Written by the aggregator: how far it has come (the time of its point) and which late marks it has read.
AGGREGATE_PROGRESS: Final = "aggregate_progress"  # in QUARTER_RP; tags site; fields late_seen_ns
