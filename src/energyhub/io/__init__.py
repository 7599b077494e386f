"""I/O clients: MQTT, InfluxDB and its line protocol. Built on the wire contract and the domain."""
