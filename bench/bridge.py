"""What a bridge costs: broker CPU per measurement, estate -> bridge -> core, against one broker, in the same run.

Every broker is a real Mosquitto started as `energyhub services` starts it, with configs from ``energyhub.broker``
(the estates' mosquitto.conf carries the MQTT 5 bridge). Two set-ups, one after the other, on this machine:

- direct (the baseline): gateways publish straight to the core broker, where W consumers share one group;
- bridged: each of K estate brokers has its gateways; the bridges forward to the core; the same W consumers.

Each gateway publishes measurements of an SDM630's size (about 600 bytes) at QoS 1 in polls of POLL messages,
waiting for every PUBACK of a poll before the next, as the agent does; the consumers (paho, QoS 1, auto
acknowledgement) only count. Figures: Mosquitto CPU µs per message (from /proc, per broker role), the end-to-end
rate (publish to the last consumer receipt; bound by this Python publisher on a small machine, so read it as a
floor), and the ratio bridged/direct of the core's CPU per message.

    .venv/bin/python bench/bridge.py                      # 4 estates x 2 gateways, 20,000 messages; ~30 s
    .venv/bin/python bench/bridge.py --estates 8 --messages 40000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from energyhub.broker.accounts import BrokerAccounts  # noqa: E402
from energyhub.broker.bridge import BridgeSettings  # noqa: E402
from energyhub.cli.services import free_port, start_broker  # noqa: E402
from energyhub.runtime.settings import ServiceSettings  # noqa: E402
from energyhub.runtime.supervisor import ManagedProcess, Supervisor, wait_for  # noqa: E402
from energyhub.wire.topics import Topics  # noqa: E402
from tests.mqtt_helpers import PahoClient  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
PAYLOAD = (
    b'{"ts":"2026-12-02T12:00:00Z","session":1,"seq":0,"quality":"good","values":{'
    + b",".join(f'"v{i}":{1000.0 + i}'.encode() for i in range(40))
    + b"}}"
)


def rss_mb(process: ManagedProcess) -> float:
    status = Path(f"/proc/{process.pid}/status").read_text()
    return next(int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:"))


def cpu_s(process: ManagedProcess) -> float:
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Consumers:
    """W paho clients in one shared group on the core, counting what they get."""

    def __init__(self, port: int, accounts: BrokerAccounts, filters: list[str], workers: int) -> None:
        self.count = 0
        self.lock = threading.Lock()
        password = accounts.credentials("ehub-ingest").password
        self.clients = []
        for n in range(workers):
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"bench-{n}-{uuid.uuid4().hex[:6]}",
                protocol=mqtt.MQTTv5,
            )
            client.username_pw_set("ehub-ingest", password)
            client.on_message = self._on_message
            client.connect("127.0.0.1", port)
            for topic_filter in filters:
                client.subscribe(f"$share/bench/{topic_filter}", qos=1)
            client.loop_start()
            self.clients.append(client)

    def _on_message(self, _c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.count += 1

    def close(self) -> None:
        for client in self.clients:
            client.loop_stop()
            client.disconnect()


def publish(gateways: list[tuple[PahoClient, str]], messages: int, poll: int) -> None:
    """Round robin over the gateways, one poll each, until ``messages`` are acknowledged."""
    sent = 0
    while sent < messages:
        for client, topic in gateways:
            client.publish_many([(topic, PAYLOAD)] * poll)
            sent += poll


def _settings(folder: Path, site: str) -> ServiceSettings:
    return ServiceSettings(
        state_dir=folder, host="127.0.0.1", mqtt_port=free_port(), mqtt_tls_port=None, site=site
    )


def run(args: argparse.Namespace, folder: Path, bridged: bool) -> dict[str, float]:
    sites = [f"estate-{n:02d}" for n in range(args.estates)]
    core_settings = _settings(folder / "core", "core")
    core = BrokerAccounts(core_settings.state_dir.resolve() / "broker", Topics(site="core"))
    core.ensure_service_accounts()
    estates: dict[str, tuple[ServiceSettings, BrokerAccounts]] = {}
    for site in sites:
        settings = _settings(folder / site, site)
        accounts = BrokerAccounts(settings.state_dir.resolve() / "broker", Topics(site=site))
        accounts.ensure_service_accounts()
        for g in range(args.gateways):
            (accounts if bridged else core).add_gateway(f"{site}-gw{g}")
        if bridged:
            cred = core.credentials_path(core.add_bridge(site).username)
            accounts.set_bridge(
                BridgeSettings(
                    core_host="127.0.0.1", core_port=core_settings.mqtt_port, credentials_file=cred
                )
            )
        estates[site] = (settings, accounts)
    with Supervisor() as supervisor:
        core_process = start_broker(supervisor, core_settings)
        estate_processes = [start_broker(supervisor, s) for s, _a in estates.values()] if bridged else []
        log = core_settings.state_dir / "log" / "mosquitto.log"
        if bridged:
            wait_for(
                lambda: log.read_text().count("u'ehub-bridge-") >= len(sites), timeout_s=30, what="bridges"
            )
        filters = (
            [Topics(site=s).all_measurements() for s in sites]
            if bridged
            else [Topics(site="core").all_measurements()]
        )
        consumers = Consumers(core_settings.mqtt_port, core, filters, args.workers)
        time.sleep(0.5)  # SUBACKs are handled on the consumers' own threads; a bench, not a test
        gateways = []
        for site, (settings, accounts) in estates.items():
            for g in range(args.gateways):
                name = f"{site}-gw{g}"
                where = accounts if bridged else core
                client = PahoClient(
                    username=name, password=where.credentials(name).password, client_id=f"{name}-agent"
                )
                client.connect(settings.mqtt_port if bridged else core_settings.mqtt_port)
                topic = (Topics(site=site) if bridged else Topics(site="core")).measurement(name, "meter")
                gateways.append((client, topic))
        before = {"core": cpu_s(core_process), "estates": sum(cpu_s(p) for p in estate_processes)}
        t0 = time.monotonic()
        publish(gateways, args.messages, args.poll)
        total = len(gateways) * args.poll * -(-args.messages // (len(gateways) * args.poll))
        wait_for(
            lambda: consumers.count >= total, timeout_s=120, interval_s=0.01, what="every message consumed"
        )
        wall = time.monotonic() - t0
        after = {"core": cpu_s(core_process), "estates": sum(cpu_s(p) for p in estate_processes)}
        memory = {"core": rss_mb(core_process), "estates": sum(rss_mb(p) for p in estate_processes)}
        consumers.close()
        for client, _topic in gateways:
            client.close()
    return {
        "messages": total,
        "rate": total / wall,
        "core_us": (after["core"] - before["core"]) / total * 1e6,
        "estates_us": (after["estates"] - before["estates"]) / total * 1e6,
        "core_mb": memory["core"],
        "estates_mb": memory["estates"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--estates", type=int, default=4)
    parser.add_argument("--gateways", type=int, default=2, help="per estate")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--poll", type=int, default=20, help="messages per poll (devices per gateway)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ehub-bench-bridge-") as tmp:
        direct = run(args, Path(tmp) / "direct", bridged=False)
        bridged = run(args, Path(tmp) / "bridged", bridged=True)
    print(
        f"{args.estates} estates x {args.gateways} gateways, polls of {args.poll}, {args.workers} consumers, "
        f"{PAYLOAD.__len__()}-byte messages"
    )
    for name, r in (("direct ", direct), ("bridged", bridged)):
        print(
            f"  {name}: {r['messages']:.0f} messages, {r['rate']:,.0f}/s end to end; Mosquitto CPU per message: "
            f"core {r['core_us']:.1f} µs, estates {r['estates_us']:.1f} µs; RSS core {r['core_mb']:.1f} MiB, estates "
            f"{r['estates_mb']:.1f} MiB in all"
        )
    print(
        f"  core CPU per message, bridged/direct: {bridged['core_us'] / direct['core_us']:.2f}; "
        f"all brokers bridged/direct: {(bridged['core_us'] + bridged['estates_us']) / direct['core_us']:.2f}"
    )


if __name__ == "__main__":
    main()
