"""energyhub: share one congested grid safely.

The package is built in layers that import only downward (checked by import-linter in the test suite):

- ``energyhub.domain``: the community's topology, contracts and limits, quarter-hour time, EAN codes, the data
  clock and the network view control and planning compute on;
- ``energyhub.wire``: what travels over MQTT: messages, topics, device roles, which messages are readings;
- ``energyhub.io``: the clients: MQTT, InfluxDB, line protocol;
- ``energyhub.runtime``: what every service needs to run: settings, connection settings, ports, supervision;
- ``energyhub.synthetic``: PV, load and charging-session physics, the data generator for planning and control;
- the parts: ``edge``, ``broker``, ``ingest``, ``control``, ``api``, ``dashboards``, ``simulators`` and, above
  control, ``planning``;
- ``energyhub.cli``: the command line and the demo's orchestration, on top.
"""
