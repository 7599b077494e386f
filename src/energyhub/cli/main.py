"""The ``energyhub`` command. Each part of the system adds its sub-commands here."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from energyhub.aggregates.cli import aggregate as aggregate_command
from energyhub.api.cli import api_command
from energyhub.broker.cli import app as broker_app
from energyhub.control.cli import control_command, simulate_command
from energyhub.dashboards.cli import app as dashboards_app
from energyhub.domain.community import (
    CommunityError,
    ConfigIssue,
    format_path,
    line_of,
    load_community,
    only_gateways,
    read_yaml,
    summarize,
)
from energyhub.domain.topology import Community, Connection, Device, DeviceRole
from energyhub.edge.cli import edge as edge_command
from energyhub.edge.cli import ocpp_app
from energyhub.ingest.cli import ingest as ingest_command
from energyhub.planning.cli import plan_command, report_command, settle_command
from energyhub.runtime.settings import ServiceSettings
from energyhub.runtime.supervisor import ProcessSpec
from energyhub.simulators.cli import app as sim_app

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
app.add_typer(ocpp_app, name="ocpp")
app.command("edge")(edge_command)
app.command("ingest")(ingest_command)
app.command("aggregate")(aggregate_command)
app.command("simulate")(simulate_command)
app.command("control")(control_command)
app.command("api")(api_command)
app.command("plan")(plan_command)
app.command("report")(report_command)
app.command("settle")(settle_command)

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
    """Validate a community file, and that every device's profile exists and serves the device's role: a summary
    when it is valid; otherwise every error, and exit code 1."""
    try:
        community = load_community(file)
        issues = _device_profile_issues(file, community)
    except CommunityError as exc:
        raise _fail(str(exc), 1) from None
    if issues:
        raise _fail(str(CommunityError(str(file), issues)), 1)
    typer.echo(f"{file}: valid")
    typer.echo(summarize(community).format())


PathT = tuple[str | int, ...]


def _device_paths(community: Community) -> Iterator[tuple[PathT, Connection, Device]]:
    """Each device with its path in the community file (``loops[0].connections[2].devices[1]``)."""
    for i, loop in enumerate(community.loops):
        placed: list[tuple[PathT, list[Connection]]] = [
            (("loops", i, "micro_groups", m), micro.connections) for m, micro in enumerate(loop.micro_groups)
        ]
        placed.append((("loops", i), loop.connections))
        for parent, connections in placed:
            for j, connection in enumerate(connections):
                for k, device in enumerate(connection.devices):
                    yield (*parent, "connections", j, "devices", k), connection, device


def _profile_problem(device: Device) -> str | None:
    """Why ``device``'s profile cannot serve it: it cannot be loaded (unknown, or refused by the profile loader),
    or it does not serve the device's role; None when it can."""
    from energyhub.edge.sunspec import SUNSPEC_ROLES
    from energyhub.wire.profile import SUNSPEC, ProfileError, load_profile

    roles: tuple[DeviceRole, ...] = SUNSPEC_ROLES
    if device.ocpp is not None:
        roles = (DeviceRole.EV,)  # `profile: ocpp`: the charger speaks for itself, as OCPP defines
    elif device.mbus is not None:
        from energyhub.edge.mbus_profile import MbusProfileError, load_mbus_profile

        try:
            roles = (load_mbus_profile(device.profile).role,)
        except MbusProfileError as exc:
            return f"M-Bus profile {device.profile!r} cannot be used: {exc}"
    elif device.profile != SUNSPEC:
        try:
            roles = load_profile(device.profile).roles
        except ProfileError as exc:
            found = "; ".join(i.format(exc.file) if i.line or i.path else i.message for i in exc.issues)
            return f"profile {device.profile!r} cannot be used: {found}"
    if device.role in roles:
        return None
    return (
        f"has role {device.role.value!r}, but profile {device.profile!r} serves "
        f"{', '.join(role.value for role in roles)}: give it a profile that serves {device.role.value!r}, "
        "or correct the role"
    )


def _device_profile_issues(file: Path, community: Community) -> list[ConfigIssue]:
    """Every device whose profile cannot serve it, on the line of its ``profile:``. Checked here, not in
    ``load_community``: the domain does not know the edge's profiles."""
    _doc, lines, _duplicates = read_yaml(
        file.read_text(encoding="utf-8"), file=str(file), error=CommunityError
    )
    issues = []
    for path, connection, device in _device_paths(community):
        problem = _profile_problem(device)
        if problem is not None:
            where = (*path, "profile")
            message = f"device {device.id!r} of connection {connection.id!r}: {problem}"
            issues.append(ConfigIssue(line_of(where, lines), format_path(where), message))
    return issues


@community_app.command("schema")
def community_schema(
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of standard output.")] = None,
) -> None:
    """Print the JSON schema of community files (for editors that validate YAML as you type)."""
    import json

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
    from energyhub.domain.limits import LimitBook, UnknownNode

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
    from energyhub.cli.services import start_services
    from energyhub.runtime.supervisor import ServiceError, Supervisor

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
                command = " ".join(spec.argv[3:])
                typer.echo(f"  {spec.name:<9} {command if len(command) < 200 else command[:197] + '...'}")
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
        list[str] | None,
        typer.Option(
            "--gateway", help="Simulate only this gateway's company (repeatable); all of them by default."
        ),
    ] = None,
    all_gateways: Annotated[
        bool,
        typer.Option("--all", help="Every company of the community file (the default without --gateway)."),
    ] = False,
    speed: Annotated[float, typer.Option(min=0.01, help="Simulated seconds per real second.")] = 60.0,
    start: Annotated[
        str, typer.Option(help="Simulated start time (UTC if no zone).")
    ] = "2026-06-01T05:00:00Z",
    agents_per_process: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Gateways' agents per process; by default one each for up to 8 gateways, else 25 to a process.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start the demo: broker, database, the community's simulated companies (all of them, or those of --gateway),
    their edge agents, the ingest, control, and the API with its live page.

    Everything runs on one data clock that starts at --start and runs --speed times real time: the sun, the loads,
    the meters' energy, timestamps, quarter hours and contract windows; a device's own timers (a setpoint's
    validity) and control's cycle count real seconds."""
    from energyhub.cli.demo import DemoPlan, demo_ports, demo_processes, gateways_of
    from energyhub.cli.services import service_ports
    from energyhub.domain.clock import Clock
    from energyhub.runtime.ports import check_all_free
    from energyhub.runtime.supervisor import ServiceError

    _setup_logging(verbose)
    try:
        parsed = load_community(community)
    except CommunityError as exc:
        raise _fail(str(exc), 1) from None
    if all_gateways and gateways:
        raise _fail("error: --all and --gateway exclude each other")
    chosen = list(gateways) if gateways else gateways_of(parsed)
    unknown = sorted(set(chosen) - set(gateways_of(parsed)))
    if unknown:
        raise _fail(f"error: {community} has no gateway {', '.join(unknown)}")
    try:
        begin = datetime.fromisoformat(start.replace("Z", "+00:00"))
    except ValueError:
        raise _fail(f"error: --start {start!r} is not an ISO time, e.g. 2026-06-01T05:00:00Z") from None
    begin = begin if begin.tzinfo else begin.replace(tzinfo=UTC)
    # The topics, accounts and ACL are the community's: its id is the site. Raw points are kept 30 days of data
    # time: a run of last June keeps them 30 days past its data clock (InfluxDB refuses older ones).
    lag_days = max(0.0, (datetime.now(UTC) - begin).total_seconds() / 86400)
    settings = ServiceSettings(
        state_dir=state_dir, site=parsed.community.id, raw_retention_days=30.0 + math.ceil(lag_days)
    )
    plan = DemoPlan(
        settings=settings,
        community_path=community,
        gateways=chosen,
        clock=Clock.simulated(begin, speed),
        agents_per_process=agents_per_process or (1 if len(chosen) <= 8 else 25),
    )
    # Every port first, before a word is printed: a second demo must not report "up" on the first one's ports.
    try:
        check_all_free(service_ports(settings) + demo_ports(plan, parsed))
    except ServiceError as exc:  # a port taken (PortInUse), or named twice
        raise _fail(f"error: {exc}", 1) from None
    typer.echo(summarize(only_gateways(parsed, set(chosen))).format())
    typer.echo(f"data clock: {plan.clock.describe()}")
    _run_services(
        settings,
        banner="energyhub demo is up:",
        extra=demo_processes(plan, parsed),
        last=f"Live page: http://{settings.host}:{settings.api_port}/",
    )


def _check_broker_port(mqtt_host: str, mqtt_port: int, ca_file: Path | None) -> None:
    """Refuse the mix-ups that give a gateway "connection reset": the TLS port without a CA, a CA on the plain one."""
    defaults = ServiceSettings.model_fields
    tls_port, plain_port = defaults["mqtt_tls_port"].default, defaults["mqtt_port"].default
    if ca_file is None and mqtt_port == tls_port:
        raise _fail(
            f"error: port {tls_port} is the broker's TLS listener: give its CA with --ca-file "
            f"var/broker/certs/ca.crt (from `energyhub broker certs --host {mqtt_host}`), or use the plain "
            f"port {plain_port}"
        )
    if ca_file is not None and mqtt_port == plain_port:
        raise _fail(
            f"error: port {plain_port} is the broker's plain listener, which speaks no TLS: with --ca-file use "
            f"the TLS port {tls_port}"
        )
    if ca_file is not None and not ca_file.is_file():
        raise _fail(f"error: --ca-file {ca_file}: no such file (make it with `energyhub broker certs`)")


def _write_bundle(
    bundle: Path, text: str, gateway: str, credentials: Path, ca_file: Path | None, gateway_dir: Path
) -> None:
    """The directory an installer copies to the gateway: its config, its credentials (0600) and the broker's CA."""
    import shutil

    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "gateway.yaml").write_text(text)
    shutil.copyfile(credentials, bundle / f"{gateway}.json")
    (bundle / f"{gateway}.json").chmod(0o600)
    if ca_file is not None:
        shutil.copyfile(ca_file, bundle / "ca.crt")
    typer.echo(
        f"{bundle}/: gateway.yaml, {gateway}.json{', ca.crt' if ca_file else ''}; copy them to {gateway_dir} "
        f"on the gateway (the config names them there)"
    )


@ocpp_app.command("certs")
def ocpp_certs_command(
    host: Annotated[
        list[str], typer.Option(help="The gateway's names and addresses as its chargers reach it.")
    ],
    directory: Annotated[Path, typer.Option("--dir", help="Where the CA, certificate and key go.")] = Path(
        "var/ocpp"
    ),
) -> None:
    """A CA and the OCPP server's certificate (security profile 2): install ca.crt on the chargers, and name
    server.crt and server.key as the gateway's ocpp: cert_file and key_file."""
    from energyhub.broker.certs import CertificateError, ensure_certificates

    try:
        paths = ensure_certificates(directory, host)
    except CertificateError as exc:
        raise _fail(f"error: {exc}") from None
    typer.echo(f"CA {paths.ca_cert}\ncertificate {paths.server_cert}\nkey {paths.server_key}")


@app.command("gateway-config")
def gateway_config_command(
    community: Annotated[Path, typer.Option(help="Community YAML file.")],
    gateway: Annotated[str, typer.Option(help="Gateway id, e.g. gw-002.")],
    out: Annotated[Path | None, typer.Option(help="Write here instead of standard output.")] = None,
    mqtt_host: Annotated[str, typer.Option(help="Broker address as the gateway reaches it.")] = "127.0.0.1",
    mqtt_port: Annotated[
        int, typer.Option(help="Broker port: 18830 plain, 18831 TLS (with --ca-file).")
    ] = 18830,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            help="The broker's CA certificate (var/broker/certs/ca.crt from `energyhub broker certs`): the "
            "gateway connects with TLS and checks the broker's name.",
        ),
    ] = None,
    credentials_file: Annotated[Path, typer.Option(help="From `energyhub broker add-gateway`.")] = Path(
        "var/broker/credentials/GATEWAY.json"
    ),
    buffer_path: Annotated[Path, typer.Option(help="On-disk buffer of the agent.")] = Path(
        "var/edge/GATEWAY.db"
    ),
    bundle: Annotated[
        Path | None,
        typer.Option(
            help="Write a directory to copy to the gateway: gateway.yaml, the credentials and the CA, with the "
            "config naming them where the systemd unit expects them (--gateway-dir; the buffer in "
            "/var/lib/energyhub, the unit's state directory).",
        ),
    ] = None,
    gateway_dir: Annotated[
        Path, typer.Option(help="With --bundle: where the bundle's files go on the gateway.")
    ] = Path("/etc/energyhub"),
    state_dir: Annotated[
        Path, typer.Option(help="With --bundle: the agent's state directory on the gateway (the buffer).")
    ] = Path("/var/lib/energyhub"),
) -> None:
    """Write a gateway's agent configuration (devices, profiles, safe modes) from the community file."""

    import yaml

    from energyhub.edge.gateway_config import gateway_config

    _check_broker_port(mqtt_host, mqtt_port, ca_file)
    credentials = Path(str(credentials_file).replace("GATEWAY", gateway))
    buffer = Path(str(buffer_path).replace("GATEWAY", gateway))
    # The paths the written config names: as given, or where a bundle's files go on the gateway.
    credentials_on_gateway, ca_on_gateway = credentials, ca_file
    if bundle is not None:
        if not credentials.is_file():
            raise _fail(
                f"error: {credentials}: no such file; make the gateway's account first: "
                f"energyhub broker add-gateway {gateway}"
            )
        if not gateway_dir.is_absolute() or not state_dir.is_absolute():
            raise _fail("error: --gateway-dir and --state-dir are paths on the gateway and must be absolute")
        credentials_on_gateway = gateway_dir / f"{gateway}.json"
        buffer = state_dir / "buffer.db"
        ca_on_gateway = None if ca_file is None else gateway_dir / "ca.crt"
    try:
        config = gateway_config(
            load_community(community),
            gateway,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            credentials_file=credentials_on_gateway,
            buffer_path=buffer,
            ca_file=ca_on_gateway,
        )
    except CommunityError as exc:
        raise _fail(str(exc), 1) from None
    except ValueError as exc:
        raise _fail(f"error: {exc}") from None
    text = (
        f"# Generated by: energyhub gateway-config --community {community} --gateway {gateway}\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    if bundle is not None:
        _write_bundle(bundle, text, gateway, credentials, ca_file, gateway_dir)
    elif out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)


# What the `server` extra installs (pyproject.toml): a gateway's edge-only install lacks them.
SERVER_MODULES = frozenset(
    {
        "cryptography",
        "httpx",
        "numpy",
        "pvlib",
        "pandas",
        "scipy",
        "highspy",
        "grafana_foundation_sdk",
        "fastapi",
    }
    | {"uvicorn", "sse_starlette", "prometheus_client", "matplotlib", "jinja2"}
)


def main() -> None:
    """The console entry point: a central-side command on an edge-only install says what to install."""
    try:
        app()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVER_MODULES:
            raise
        command = " ".join(sys.argv[1:2]) or "this command"
        sys.exit(
            f"error: energyhub {command} runs on the central side and needs the server install, which this one "
            f"is not (no module {exc.name!r}): pip install 'energyhub[server]'. A gateway needs only "
            "`energyhub edge`."
        )


if __name__ == "__main__":  # pragma: no cover
    main()
