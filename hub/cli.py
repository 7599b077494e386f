"""The ``energyhub`` command. Each part of the system adds its sub-commands here."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from api.cli import api_command
from broker.cli import app as broker_app
from control.cli import control_command, simulate_command
from dashboards.cli import app as dashboards_app
from edge.cli import edge as edge_command
from hub.community import CommunityError, load_community, summarize
from hub.settings import ServiceSettings
from hub.supervisor import ProcessSpec
from ingest.cli import ingest as ingest_command
from planning.cli import plan_command, report_command, settle_command
from simulators.cli import app as sim_app

__all__ = ["app"]

app = typer.Typer(
    help="energyhub: share one congested grid safely across an industrial estate's energy community.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
community_app = typer.Typer(
    help="Check and inspect community files (topology and contracts).", no_args_is_help=True
)
app.add_typer(community_app, name="community")
app.add_typer(broker_app, name="broker")
app.add_typer(sim_app, name="sim")
app.add_typer(dashboards_app, name="dashboards")
app.command("edge")(edge_command)
app.command("ingest")(ingest_command)
app.command("simulate")(simulate_command)
app.command("control")(control_command)
app.command("api")(api_command)
app.command("plan")(plan_command)
app.command("report")(report_command)
app.command("settle")(settle_command)

DEMO_GATEWAYS = ["gw-002", "gw-011", "gw-018", "gw-049"]
StateDir = Annotated[Path, typer.Option(help="Folder for generated configs, data, logs and credentials.")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as installed

    typer.echo(installed("energyhub"))


@community_app.command("check")
def community_check(file: Annotated[Path, typer.Argument(help="Community YAML file.")]) -> None:
    """Validate a community file: a summary when it is valid; otherwise every error, and exit code 1."""
    try:
        community = load_community(file)
    except CommunityError as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(f"{file}: valid")
    typer.echo(summarize(community).format())


@community_app.command("schema")
def community_schema(
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of standard output.")] = None,
) -> None:
    """Print the JSON schema of community files (for editors that validate YAML as you type)."""
    import json

    from hub.topology import Community

    text = json.dumps(Community.model_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")


@community_app.command("limits")
def community_limits(
    file: Annotated[Path, typer.Argument(help="Community YAML file.")],
    node: Annotated[str | None, typer.Argument(help="Node id; all nodes when left out.")] = None,
    at: Annotated[
        str | None, typer.Option(help="ISO time with zone, e.g. 2026-06-01T18:00+02:00; now if omitted.")
    ] = None,
) -> None:
    """Show the limits in force for a quarter hour, and which contract part sets each."""
    from hub.limits import LimitBook, UnknownNode

    try:
        book = LimitBook(load_community(file))
        when = datetime.fromisoformat(at) if at else datetime.now(UTC)
        if when.tzinfo is None:
            raise _fail(f"--at {at!r} has no timezone: add one, e.g. +01:00 or Z")
        nodes = [node] if node else list(book.nodes)
        rows = [book.limit_at(n, when) for n in nodes]
    except CommunityError as exc:
        raise _fail(str(exc), 1) from None
    except (UnknownNode, ValueError) as exc:
        raise _fail(f"error: {exc}") from None

    def kw(w: float) -> str:
        return "-" if w == float("inf") else f"{w / 1000:,.0f}"

    typer.echo(f"quarter hour from {rows[0].isp_start.isoformat()} (kW; '-' = no limit)")
    typer.echo(
        f"{'node':<16} {'level':<10} {'import':>9} {'export':>9} {'physical':>9}  import part / export part"
    )
    for r in rows:
        typer.echo(
            f"{r.node:<16} {r.level.value:<10} {kw(r.import_w):>9} {kw(r.export_w):>9} {kw(r.physical_w):>9}"
            f"  {r.import_source} / {r.export_source}"
        )


def _run_services(
    settings: ServiceSettings, *, banner: str, extra: list[ProcessSpec] | None = None, last: str | None = None
) -> None:
    from hub.services import start_services
    from hub.supervisor import ServiceError, Supervisor

    try:
        with Supervisor() as supervisor:
            supervisor.catch_stop_signals()
            running = start_services(supervisor, settings)
            for spec in extra or []:
                supervisor.start(spec)
            creds = running.accounts.directory / "credentials"
            typer.echo(banner)
            typer.echo(
                f"  MQTT      mqtt://{settings.host}:{settings.mqtt_port}  (topics under "
                f"{settings.topic_root}/{settings.site}/)"
            )
            if settings.mqtt_tls_port:
                typer.echo(
                    f"  MQTT/TLS  mqtts://{settings.host}:{settings.mqtt_tls_port}  (CA: "
                    f"{running.accounts.directory / 'certs' / 'ca.crt'})"
                )
            typer.echo(
                f"  InfluxDB  {settings.influx_url}  (database {settings.influx_db}; v1 /write and /query)"
            )
            typer.echo(f"  accounts  {creds}/  (add a gateway: energyhub broker add-gateway NAME)")
            for spec in extra or []:
                typer.echo(f"  {spec.name:<9} {' '.join(spec.argv[3:])}")
            typer.echo(f"  logs      {settings.state_dir.resolve() / 'log'}/")
            typer.echo("Press Ctrl-C to stop.")
            if last:
                typer.echo(last)
            sys.stdout.flush()
            supervisor.wait()
    except ServiceError as exc:
        raise _fail(f"error: {exc}", 1) from None
    typer.echo("stopped.")


@app.command()
def services(
    state_dir: StateDir = Path("var"),
    mqtt_port: Annotated[int, typer.Option(help="Plain MQTT port.")] = 18830,
    mqtt_tls_port: Annotated[int, typer.Option(help="MQTT over TLS port (0: off).")] = 18831,
    influx_port: Annotated[int, typer.Option(help="InfluxDB HTTP port.")] = 18086,
    dev_mode: Annotated[
        bool, typer.Option(help="Allow anonymous MQTT clients (never in production).")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the broker and the database (no simulators, no agents) until Ctrl-C."""
    _setup_logging(verbose)
    settings = ServiceSettings(
        state_dir=state_dir,
        mqtt_port=mqtt_port,
        mqtt_tls_port=mqtt_tls_port or None,
        influx_port=influx_port,
        dev_mode=dev_mode,
    )
    _run_services(settings, banner="energyhub services are up:")


@app.command()
def demo(
    state_dir: StateDir = Path("var"),
    community: Annotated[Path, typer.Option(help="Community file the demo runs.")] = Path(
        "examples/de-koumen.yaml"
    ),
    gateways: Annotated[
        list[str] | None, typer.Option("--gateway", help="Gateway to simulate (repeatable).")
    ] = None,
    speed: Annotated[float, typer.Option(help="Simulated seconds per real second.")] = 60.0,
    start: Annotated[str, typer.Option(help="Simulated start time.")] = "2026-06-01T05:00:00Z",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start the demo: broker, database, a few simulated companies (accelerated), their edge agents, the ingest,
    control, and the API with its live page."""
    _setup_logging(verbose)
    try:
        summary = summarize(load_community(community))
    except CommunityError as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(summary.format())
    settings = ServiceSettings(state_dir=state_dir)
    endpoints = settings.state_dir.resolve() / "sim" / "endpoints.json"
    endpoints.parent.mkdir(parents=True, exist_ok=True)
    endpoints.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "hub.cli",
        "sim",
        "--community",
        str(community),
        "--speed",
        str(speed),
        "--start",
        start,
        "--seed",
        "1",
        "--endpoints-json",
        str(endpoints),
    ]
    # A scaled-down community: a shop with PV and a battery, a PV roof, the charging plaza, the collective battery.
    for gateway in gateways or DEMO_GATEWAYS:
        argv += ["--only", gateway]
    simulator = ProcessSpec(
        name="simulator",
        argv=argv,
        log_path=settings.state_dir.resolve() / "log" / "simulator.log",
        ready=lambda: _simulator_answers(endpoints),
    )
    agents = _demo_agents(settings, community, gateways or DEMO_GATEWAYS)
    from hub.services import tcp_answers

    state = settings.state_dir.resolve()
    ingest = ProcessSpec(
        name="ingest",
        argv=[
            sys.executable,
            "-m",
            "hub.cli",
            "ingest",
            "--site",
            settings.site,
            "--mqtt-port",
            str(settings.mqtt_port),
            "--mqtt-credentials-file",
            str(state / "broker" / "credentials" / "ehub-ingest.json"),
            "--influx-url",
            settings.influx_url,
            "--influx-db",
            settings.influx_db,
            "--community",
            str(community),
            "--metrics-port",
            str(settings.ingest_metrics_port),
        ],
        log_path=state / "log" / "ingest.log",
        ready=lambda: tcp_answers(settings.host, settings.ingest_metrics_port),
    )
    # Control sees the simulated companies only: the others would count as missing, that is as worst case.
    import yaml

    from hub.community import only_gateways

    subset = only_gateways(load_community(community), set(gateways or DEMO_GATEWAYS))
    control_community = state / "control" / "community.yaml"
    control_community.parent.mkdir(parents=True, exist_ok=True)
    control_community.write_text(
        yaml.safe_dump(subset.model_dump(mode="json", exclude_none=True), sort_keys=False)
    )
    control = ProcessSpec(
        name="control",
        argv=[
            sys.executable,
            "-m",
            "hub.cli",
            "control",
            "--community",
            str(control_community),
            "--site",
            settings.site,
            "--mqtt-port",
            str(settings.mqtt_port),
            "--mqtt-credentials-file",
            str(state / "broker" / "credentials" / "ehub-control.json"),
            "--influx-url",
            settings.influx_url,
            "--influx-db",
            settings.influx_db,
            "--day-ahead-dir",
            str(state / "api" / "day_ahead"),
        ],
        log_path=state / "log" / "control.log",
        # It connects and keeps its heartbeat on its own; nothing to wait for before the next part starts.
        ready=lambda: True,
    )
    api = ProcessSpec(
        name="api",
        argv=[
            sys.executable,
            "-m",
            "hub.cli",
            "api",
            "--community",
            str(control_community),
            "--site",
            settings.site,
            "--port",
            str(settings.api_port),
            "--mqtt-port",
            str(settings.mqtt_port),
            "--mqtt-credentials-file",
            str(state / "broker" / "credentials" / "ehub-api.json"),
            "--influx-url",
            settings.influx_url,
            "--influx-db",
            settings.influx_db,
            "--state-dir",
            str(state / "api"),
        ],
        log_path=state / "log" / "api.log",
        ready=lambda: tcp_answers(settings.host, settings.api_port),
    )
    _run_services(
        settings,
        banner="energyhub demo is up:",
        extra=[simulator, ingest, *agents, control, api],
        last=f"Live page: http://{settings.host}:{settings.api_port}/",
    )


def _demo_agents(settings: ServiceSettings, community: Path, gateways: list[str]) -> list[ProcessSpec]:
    """An account, a config and an edge agent per simulated gateway, as a deployment would have them."""
    import yaml

    from edge.gateway_config import gateway_config
    from hub.services import broker_accounts

    accounts = broker_accounts(settings)
    known = accounts.accounts()
    state = settings.state_dir.resolve()
    specs = []
    for gateway in gateways:
        if gateway not in known or not accounts.credentials_path(gateway).exists():
            accounts.add_gateway(gateway, rotate=gateway in known)
        config = gateway_config(
            load_community(community),
            gateway,
            mqtt_host=settings.host,
            mqtt_port=settings.mqtt_port,
            credentials_file=accounts.credentials_path(gateway),
            buffer_path=state / "edge" / f"{gateway}.db",
        )
        path = state / "edge" / f"{gateway}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        specs.append(
            ProcessSpec(
                name=f"edge-{gateway}",
                argv=[sys.executable, "-m", "hub.cli", "edge", "--config", str(path)],
                log_path=state / "log" / f"edge-{gateway}.log",
                # The agent waits for its broker and devices itself and buffers meanwhile: nothing to wait for.
                ready=lambda: True,
            )
        )
    return specs


@app.command("gateway-config")
def gateway_config_command(
    community: Annotated[Path, typer.Option(help="Community YAML file.")],
    gateway: Annotated[str, typer.Option(help="Gateway id, e.g. gw-002.")],
    out: Annotated[Path | None, typer.Option(help="Write here instead of standard output.")] = None,
    mqtt_host: Annotated[str, typer.Option(help="Broker address as the gateway reaches it.")] = "127.0.0.1",
    mqtt_port: Annotated[int, typer.Option(help="Broker port.")] = 18830,
    credentials_file: Annotated[Path, typer.Option(help="From `energyhub broker add-gateway`.")] = Path(
        "var/broker/credentials/GATEWAY.json"
    ),
    buffer_path: Annotated[Path, typer.Option(help="On-disk buffer of the agent.")] = Path(
        "var/edge/GATEWAY.db"
    ),
) -> None:
    """Write a gateway's agent configuration (devices, profiles, safe modes) from the community file."""
    import yaml

    from edge.gateway_config import gateway_config

    try:
        config = gateway_config(
            load_community(community),
            gateway,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            credentials_file=Path(str(credentials_file).replace("GATEWAY", gateway)),
            buffer_path=Path(str(buffer_path).replace("GATEWAY", gateway)),
        )
    except CommunityError as exc:
        raise _fail(str(exc), 1) from None
    except ValueError as exc:
        raise _fail(f"error: {exc}") from None
    text = (
        f"# Generated by: energyhub gateway-config --community {community} --gateway {gateway}\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)


def _simulator_answers(endpoints: Path) -> bool:
    """Ready when the endpoints file (removed before start) lists ports that all accept connections; the log is
    appended across runs, so a line in it could be an old run's."""
    import json

    from hub.services import tcp_answers

    try:
        listed = json.loads(endpoints.read_text())
    except (OSError, ValueError):
        return False
    return all(tcp_answers(host, port) for host, port in {(e["host"], e["port"]) for e in listed})


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
