"""The README's gateway deployment, run as written: the central-side commands, a clean Python 3.11 virtual
environment with the edge-only install, the bundle copied into place, the check, the systemd unit, and the agent
as the unit starts it, connected to a local Mosquitto on its TLS port.

What a test machine cannot do is replaced, and only that: paths under /etc, /opt and /var/lib move into a
temporary folder, ``sudo`` and the group/user options go (no system user is made), ``broker.example.org`` is
``localhost`` and 18831 the test broker's TLS port, ``systemctl daemon-reload`` becomes ``systemd-analyze verify``
of the unit, and ``systemctl enable --now`` runs the unit's own ``ExecStart`` line. The installer's "edit the
device addresses to the company's LAN" points the devices at the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from energyhub.cli.services import broker_accounts, free_port, start_broker
from energyhub.io.mqtt import MqttLink, MqttLinkError
from energyhub.runtime.connection import broker_tls
from energyhub.runtime.settings import ServiceSettings
from energyhub.runtime.supervisor import Supervisor
from energyhub.simulators.devices import MeterDevice
from energyhub.simulators.modbus_server import GatewayServer
from energyhub.simulators.sdm630 import MeterState
from energyhub.wire.messages import Measurement, Quality, decode
from energyhub.wire.topics import Topics
from tests.mqtt_helpers import Observer as LinkClient

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "gw-017"
# What a gateway must not carry: the central side's heavy packages (the `server` extra).
CENTRAL_ONLY = {
    "pandas",
    "scipy",
    "pvlib",
    "matplotlib",
    "fastapi",
    "highspy",
    "numpy",
    "uvicorn",
    "cryptography",
}


def readme_steps() -> list[str]:
    """The commands of the README's "Deploying a gateway" block, continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Deploying a gateway") :]
    block = section[section.index("```sh\n") + 6 : section.index("\n```", section.index("```sh\n"))]
    commands, pending = [], ""
    for raw in block.splitlines():
        line = re.sub(r"\s+#.*$", "", raw) if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        commands.append(" ".join((pending + line).split()))
        pending = ""
    return commands


class Gateway:
    """The folder standing in for the central machine and the gateway: where each replaced path goes."""

    def __init__(self, root: Path, tls_port: int) -> None:
        self.root = root
        self.tls_port = tls_port
        self.etc = root / "etc" / "energyhub"
        self.opt = root / "opt" / "energyhub"
        self.state = root / "var-lib" / "energyhub"
        self.units = root / "etc" / "systemd" / "system"

    def paths(self, text: str) -> str:
        return (
            text.replace("/etc/energyhub", str(self.etc))
            .replace("/opt/energyhub", str(self.opt))
            .replace("/var/lib/energyhub", str(self.state))
            .replace("/etc/systemd/system", str(self.units))
        )

    def command(self, line: str) -> list[str] | None:
        """The README line as this machine runs it; None for one that only a root-managed system can run."""
        if "useradd" in line:
            return None  # no system user here; the unit's User= is checked by systemd-analyze verify below
        line = self.paths(line)
        line = line.replace("broker.example.org", "localhost").replace("18831", str(self.tls_port))
        line = re.sub(r"^sudo (-u energyhub )?", "", line)
        line = line.replace(" -g energyhub", "")
        argv = shlex.split(line)
        if argv[0] == "python3":
            argv[0] = sys.executable  # Python 3.11, as on Raspberry Pi OS bookworm
        if argv[0].startswith(".venv/"):
            argv[0] = str(REPO / argv[0])
        if argv[:2] == [str(REPO / ".venv/bin/energyhub"), "gateway-config"]:
            argv = [a.replace("examples/", f"{REPO}/examples/") for a in argv]
            argv += ["--gateway-dir", str(self.etc), "--state-dir", str(self.state)]
        if argv[0] == "install" and "-d" in argv:
            self.etc.parent.mkdir(parents=True, exist_ok=True)
        if argv[0] == "cp":
            self.units.mkdir(parents=True, exist_ok=True)
        return argv


def copy_of_the_project(target: Path) -> None:
    """`this project copied to ./energyhub`: what a release holds, without the checkout's build leftovers."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, target / name)
    shutil.copytree(
        REPO / "src", target / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "*.pyc")
    )


async def run(argv: list[str], cwd: Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, argv, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )


async def test_the_readme_gateway_steps_give_a_connected_gateway_on_the_tls_port(tmp_path):
    settings = ServiceSettings(
        state_dir=tmp_path / "var", mqtt_port=free_port(), mqtt_tls_port=free_port(), site="de-koumen"
    )
    assert settings.mqtt_tls_port is not None
    gateway = Gateway(tmp_path, settings.mqtt_tls_port)
    copy_of_the_project(tmp_path / "energyhub")
    meters = [MeterDevice(unit_id=u, state=MeterState(power_w=1_000.0 * u)) for u in range(1, 9)]
    steps = readme_steps()
    assert any(s.startswith("sudo systemctl enable --now energyhub-edge") for s in steps), steps
    with Supervisor() as supervisor:
        start_broker(supervisor, settings)
        accounts = broker_accounts(settings)
        async with GatewayServer(host="127.0.0.1", port=free_port(), devices=meters) as devices:
            agent: subprocess.Popen[bytes] | None = None
            log = tmp_path / "agent.log"
            try:
                for step in steps:
                    if step.startswith("sudo systemctl enable --now"):
                        unit = (gateway.units / "energyhub-edge.service").read_text()
                        [exec_start] = re.findall(r"^ExecStart=(.+)$", unit, re.MULTILINE)
                        with log.open("wb") as out:
                            agent = subprocess.Popen(
                                shlex.split(exec_start), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
                            )
                        continue
                    if step.startswith("sudo systemctl daemon-reload"):
                        unit_file = gateway.units / "energyhub-edge.service"
                        # The unit's own paths move into the folder like every other path.
                        unit_file.write_text(gateway.paths(unit_file.read_text()))
                        if shutil.which("systemd-analyze"):
                            verify = await run(["systemd-analyze", "verify", str(unit_file)], tmp_path, 60)
                            problems = [
                                line
                                for line in verify.stderr.splitlines()
                                # No user energyhub on a test machine; everything else must be clean.
                                if "energyhub" in line and "user" not in line.lower()
                            ]
                            assert problems == [], verify.stderr
                        continue
                    argv = gateway.command(step)
                    if argv is None:
                        continue
                    if step.startswith("sudo install -m"):
                        # "before copying it, edit the device addresses to the company's LAN": the simulator.
                        config_path = tmp_path / GATEWAY / "gateway.yaml"
                        config = yaml.safe_load(config_path.read_text())
                        for device in config["devices"]:
                            device["port"] = devices.port
                        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
                    done = await run(argv, tmp_path)
                    assert done.returncode == 0, f"{step}\n{done.stdout}\n{done.stderr}"
                    if "--check" in argv:
                        assert "1 gateway configuration(s) checked: ok" in done.stdout, done.stdout
                assert agent is not None

                # The bundle names its files where the unit expects them, as absolute paths.
                installed = yaml.safe_load((gateway.etc / "gateway.yaml").read_text())
                assert installed["mqtt"]["ca_file"] == str(gateway.etc / "ca.crt")
                assert installed["mqtt"]["credentials_file"] == str(gateway.etc / f"{GATEWAY}.json")
                assert installed["mqtt"]["port"] == settings.mqtt_tls_port
                assert installed["buffer_path"] == str(gateway.state / "buffer.db")

                # The gateway carries the agent only.
                venv_python = gateway.opt / ".venv" / "bin" / "python"
                listed = await run([str(venv_python), "-m", "pip", "list", "--format=freeze"], tmp_path)
                distributions = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
                assert "energyhub" in distributions
                assert distributions & CENTRAL_ONLY == set()
                # A central-side command on the gateway says what it needs instead of a traceback.
                central = await run(
                    [str(gateway.opt / ".venv" / "bin" / "energyhub"), "ingest"], tmp_path, 60
                )
                assert central.returncode == 1, central.stderr
                assert (
                    "energyhub ingest runs on the central side and needs the server install" in central.stderr
                )
                assert "Traceback" not in central.stderr

                # Connected: what the meters hold arrives at the broker, read by the ingest's own account.
                topics = Topics(site=settings.site)
                ingest = accounts.credentials("ehub-ingest")
                link = await MqttLink.connect(
                    "127.0.0.1",
                    settings.mqtt_port,
                    client_id="deploy-observer",
                    username=ingest.username,
                    password=ingest.password,
                )
                seen: dict[str, Measurement] = {}
                observer = LinkClient(link)
                try:
                    await observer.subscribe(topics.all_measurements(), qos=1)
                    async with asyncio.timeout(60):
                        async for message in observer.messages:
                            info = topics.parse(message.topic)
                            measurement = decode(Measurement, message.payload)
                            if info.gateway == GATEWAY and measurement.quality is Quality.GOOD:
                                seen[info.device] = measurement
                            if len(seen) == len(installed["devices"]):
                                break
                finally:
                    link.abort()
                by_unit = {d["id"]: d["unit_id"] for d in installed["devices"]}
                powers = {d: m.values["power_w"] for d, m in seen.items()}
                assert powers == {d: pytest.approx(1_000.0 * u) for d, u in by_unit.items()}
                assert agent.poll() is None, log.read_text()
            finally:
                if agent is not None:
                    agent.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        agent.wait(20)
                    if agent.poll() is None:
                        agent.kill()
        text = log.read_text() if log.exists() else ""
        assert "Traceback" not in text, text
        assert (
            f"gateway {GATEWAY}: connected to the broker at localhost:{settings.mqtt_tls_port} (TLS)" in text
        )


async def test_a_wrong_port_or_a_missing_ca_says_tls(tmp_path):
    settings = ServiceSettings(
        state_dir=tmp_path / "var", mqtt_port=free_port(), mqtt_tls_port=free_port(), site="de-koumen"
    )
    assert settings.mqtt_tls_port is not None
    accounts = broker_accounts(settings)
    accounts.add_gateway(GATEWAY)
    with Supervisor() as supervisor:
        start_broker(supervisor, settings)
        creds = accounts.credentials(GATEWAY)
        ca = accounts.directory / "certs" / "ca.crt"
        login = {"client_id": f"{GATEWAY}-agent", "username": creds.username, "password": creds.password}
        # Plain MQTT to the TLS listener (the README's old steps: port 18831 and no CA).
        with pytest.raises(MqttLinkError) as plain_to_tls:
            await MqttLink.connect("127.0.0.1", settings.mqtt_tls_port, **login)
        assert "is it a TLS port? give the broker's CA (mqtt.ca_file" in str(plain_to_tls.value)
        # TLS to the plain listener.
        with pytest.raises(MqttLinkError) as tls_to_plain:
            await MqttLink.connect("127.0.0.1", settings.mqtt_port, tls=broker_tls(ca), **login)
        assert "TLS handshake with the broker at 127.0.0.1" in str(tls_to_plain.value)
        assert "is it the broker's TLS port?" in str(tls_to_plain.value)
        # TLS with a CA that did not sign the broker's certificate.
        other = tmp_path / "other-ca"
        from energyhub.broker.certs import ensure_certificates

        wrong_ca = ensure_certificates(other, hosts=[]).ca_cert
        with pytest.raises(MqttLinkError) as wrong:
            await MqttLink.connect("127.0.0.1", settings.mqtt_tls_port, tls=broker_tls(wrong_ca), **login)
        assert "certificate verify failed" in str(wrong.value)
        assert "check mqtt.ca_file (--mqtt-ca-file) is the broker's CA" in str(wrong.value)
        # And the right CA on the TLS port connects.
        link = await MqttLink.connect("127.0.0.1", settings.mqtt_tls_port, tls=broker_tls(ca), **login)
        link.abort()


def test_an_agent_config_naming_a_missing_ca_is_refused_at_load(tmp_path):
    from energyhub.edge.config import ConfigError, load_agent_config

    path = tmp_path / "gw.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "gateway": GATEWAY,
                "site": "de-koumen",
                "mqtt": {"port": 18831, "ca_file": str(tmp_path / "ca.crt")},
                "devices": [{"id": "m", "profile": "eastron_sdm630", "host": "127.0.0.1"}],
            }
        )
    )
    with pytest.raises(ConfigError, match=r"mqtt.ca_file: .*ca.crt: no such file: TLS to the broker needs"):
        load_agent_config(path)
