"""Every service refuses a taken port, naming the port and what holds it: real sockets on 127.0.0.1 only."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from energyhub.cli.services import (
    free_port,
    service_ports,
    start_broker,
    start_influxd,
    start_services,
    tcp_answers,
)
from energyhub.runtime.ports import PortInUse, check_all_free, check_free, holder
from energyhub.runtime.settings import ServiceSettings
from energyhub.runtime.supervisor import ServiceError, Supervisor, wait_for
from energyhub.simulators.devices import MeterDevice
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.simulators.sdm630 import MeterState

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
ME = f"pid {os.getpid()} ("


class Listeners:
    """Ports this test listens on, as another service would hold them."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []

    def take(self) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((HOST, free_port()))
        sock.listen()
        self._sockets.append(sock)
        return int(sock.getsockname()[1])

    def release(self) -> None:
        while self._sockets:
            self._sockets.pop().close()


@pytest.fixture
def held() -> Iterator[Listeners]:
    listeners = Listeners()
    yield listeners
    listeners.release()


def settings(tmp_path: Path, **ports: int | None) -> ServiceSettings:
    values: dict[str, int | None] = {
        "mqtt_port": free_port(),
        "mqtt_tls_port": free_port(),
        "influx_port": free_port(),
        "influx_rpc_port": free_port(),
    }
    values.update(ports)
    return ServiceSettings(state_dir=tmp_path, host=HOST, **values)  # type: ignore[arg-type]


def test_holder_names_this_process_while_it_listens(held):
    port = held.take()
    found = holder(HOST, port)
    assert found is not None
    assert found.startswith(ME), found
    # Then this process's command line, as /proc/PID/cmdline has it.
    assert found[len(ME) :].startswith(Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode())
    with pytest.raises(PortInUse) as caught:
        check_free(HOST, port, "MQTT")
    assert str(caught.value).startswith(f"{HOST}:{port} (MQTT) is already in use by {ME}"), caught.value
    # A ServiceError, so `energyhub services`/`demo` print it as "error: ..." and exit 1.
    assert isinstance(caught.value, ServiceError)


def test_a_port_nobody_listens_on_is_free_and_has_no_holder(held):
    port = held.take()
    other = free_port()
    assert holder(HOST, other) is None
    check_free(HOST, other, "free")  # does not raise
    # The wildcard address overlaps every listener on the port, as it would for a server binding 0.0.0.0.
    with pytest.raises(PortInUse, match=f"0.0.0.0:{port}"):
        check_free("0.0.0.0", port, "wildcard")


def test_check_all_free_lists_every_taken_port(held):
    first, second = held.take(), held.take()
    free = free_port()
    with pytest.raises(PortInUse) as caught:
        check_all_free([(HOST, first, "MQTT"), (HOST, free, "API"), (HOST, second, "InfluxDB HTTP")])
    taken = caught.value.taken
    assert [(t.port, t.what) for t in taken] == [(first, "MQTT"), (second, "InfluxDB HTTP")]
    assert all(t.holder is not None and t.holder.startswith(ME) for t in taken)
    message = str(caught.value)
    assert message.startswith("2 ports are already in use:")
    assert f"{HOST}:{first} (MQTT) by {ME}" in message
    assert f"{HOST}:{second} (InfluxDB HTTP) by {ME}" in message
    assert str(free) not in message


def test_one_port_configured_twice_is_refused_though_it_is_free():
    port = free_port()
    with pytest.raises(
        ServiceError, match=f"port {port} is configured for both API .* and ingest metrics"
    ) as caught:
        check_all_free([(HOST, port, "API"), ("0.0.0.0", port, "ingest metrics")])
    assert not isinstance(caught.value, PortInUse)


def _tcp_states(port: int) -> list[str]:
    """The states (hex, as the kernel prints them) of every IPv4 TCP socket whose local port is ``port``."""
    states = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            states.append(fields[3])
    return states


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads TCP states from Linux's /proc")
def test_a_port_in_time_wait_is_free():
    with socket.socket() as server:
        # As the services do (Mosquitto, influxd, asyncio, uvicorn); the socket left in TIME_WAIT inherits it.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((HOST, free_port()))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection((HOST, port)) as client:
            conn, _ = server.accept()
            conn.close()  # the server side closes first, so it is the side left in TIME_WAIT on `port`
            assert client.recv(1) == b""
    wait_for(lambda: "06" in _tcp_states(port), timeout_s=5, what=f"TIME_WAIT on port {port}")
    # Without SO_REUSEADDR the port would look taken: the check must bind as a server does.
    with socket.socket() as plain, pytest.raises(OSError, match="in use") as caught:
        plain.bind((HOST, port))
    assert caught.value.errno == errno.EADDRINUSE
    check_free(HOST, port, "MQTT")  # does not raise


def test_service_ports_name_every_listener(tmp_path):
    s = settings(tmp_path)
    assert service_ports(s) == [
        (HOST, s.mqtt_port, "MQTT"),
        (HOST, s.mqtt_tls_port, "MQTT/TLS"),
        (HOST, s.influx_port, "InfluxDB HTTP"),
        (HOST, s.influx_rpc_port, "InfluxDB RPC"),
    ]
    assert [what for _h, _p, what in service_ports(settings(tmp_path, mqtt_tls_port=None))] == [
        "MQTT",
        "InfluxDB HTTP",
        "InfluxDB RPC",
    ]


@pytest.mark.parametrize("taken", ["mqtt_port", "mqtt_tls_port"])
def test_start_broker_refuses_a_taken_port(tmp_path, held, taken):
    port = held.take()
    s = settings(tmp_path, **{taken: port})
    with Supervisor() as supervisor:
        with pytest.raises(PortInUse) as caught:
            start_broker(supervisor, s)
        assert f"{HOST}:{port} (MQTT" in str(caught.value)
        assert ME in str(caught.value)
        assert supervisor.processes == []
    # Mosquitto was never started: no log, and its other port does not answer.
    assert not (tmp_path / "log" / "mosquitto.log").exists()
    other = s.mqtt_tls_port if taken == "mqtt_port" else s.mqtt_port
    assert other is not None
    assert not tcp_answers(HOST, other)


@pytest.mark.parametrize(
    ("taken", "what"), [("influx_port", "InfluxDB HTTP"), ("influx_rpc_port", "InfluxDB RPC")]
)
def test_start_influxd_refuses_a_taken_port(tmp_path, held, taken, what):
    port = held.take()
    s = settings(tmp_path, **{taken: port})
    with Supervisor() as supervisor:
        with pytest.raises(
            PortInUse, match=rf"{HOST}:{port} \({what}\) is already in use by pid {os.getpid()} "
        ):
            start_influxd(supervisor, s)
        assert supervisor.processes == []
    assert not (tmp_path / "log" / "influxd.log").exists()
    other = s.influx_rpc_port if taken == "influx_port" else s.influx_port
    assert not tcp_answers(HOST, other)


def test_start_services_reports_all_taken_ports_before_starting_any(tmp_path, held):
    mqtt, rpc = held.take(), held.take()
    s = settings(tmp_path, mqtt_port=mqtt, influx_rpc_port=rpc)
    with Supervisor() as supervisor:
        with pytest.raises(PortInUse) as caught:
            start_services(supervisor, s)
        assert [t.port for t in caught.value.taken] == [mqtt, rpc]
        assert supervisor.processes == []
    # The database (started first when all is free) was not started for a broker port that is taken.
    assert not (tmp_path / "log" / "influxd.log").exists()
    assert not tcp_answers(HOST, s.influx_port)


async def test_gateway_server_refuses_a_taken_port(held):
    port = held.take()
    meter = MeterDevice(unit_id=1, state=MeterState(power_w=1000.0, import_wh=0.0, export_wh=0.0))
    with pytest.raises(OSError, match="already in use") as caught:
        await GatewayServer(host=HOST, port=port, devices=[meter]).start()
    assert caught.value.errno == errno.EADDRINUSE
    assert f"{HOST}:{port} (Modbus simulator) is already in use by {ME}" in str(caught.value)
    # Freed, the same port serves: the refusal came from the port, not from the server.
    held.release()
    async with GatewayServer(host=HOST, port=port, devices=[meter]) as server:
        assert holder(HOST, server.port) is not None
        assert holder(HOST, server.port).startswith(ME)


def _without_ehub() -> dict[str, str]:
    # The developer's own EHUB_* settings must not move the ports under test.
    return {k: v for k, v in os.environ.items() if not k.startswith("EHUB_")}


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "energyhub", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env=_without_ehub(),
    )


def _assert_refused(result: subprocess.CompletedProcess[str], port: int, what: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {HOST}:{port} ({what}) is already in use by {ME}"), result.stderr


def test_energyhub_ingest_refuses_a_taken_metrics_port(held):
    port = held.take()
    result = _run_cli(
        "ingest",
        "--site",
        "de-koumen",
        "--mqtt-port",
        str(free_port()),
        "--influx-url",
        f"http://{HOST}:{free_port()}",
        "--metrics-port",
        str(port),
    )
    _assert_refused(result, port, "ingest metrics")


def test_energyhub_api_refuses_a_taken_port(held):
    port = held.take()
    result = _run_cli("api", "--community", "examples/de-koumen.yaml", "--host", HOST, "--port", str(port))
    _assert_refused(result, port, "API")


def test_energyhub_services_refuses_taken_ports_without_saying_it_serves(tmp_path, held):
    mqtt, influx = held.take(), held.take()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "energyhub.cli.main",
            "services",
            "--state-dir",
            str(tmp_path),
            "--mqtt-port",
            str(mqtt),
            "--mqtt-tls-port",
            "0",
            "--influx-port",
            str(influx),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**_without_ehub(), "EHUB_INFLUX_RPC_PORT": str(free_port())},
    )
    assert result.returncode == 1, result
    assert "are up" not in result.stdout
    assert result.stderr.startswith("error: 2 ports are already in use:"), result.stderr
    assert f"{HOST}:{mqtt} (MQTT) by {ME}" in result.stderr
    assert f"{HOST}:{influx} (InfluxDB HTTP) by {ME}" in result.stderr
    assert not (tmp_path / "log" / "influxd.log").exists()
