"""``energyhub broker``: manage the broker's accounts and certificates.

Every command works on ``<state-dir>/broker`` (the folder ``energyhub services`` starts Mosquitto from) and
takes the same ``--state-dir``, ``--site`` and ``--topic-root`` as the services, also from ``EHUB_*``
variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from energyhub.broker.accounts import AccountError, BrokerAccounts
from energyhub.wire.topics import DEFAULT_ROOT, TopicError, Topics

__all__ = ["app"]

app = typer.Typer(
    help="Broker accounts (one per gateway, isolated by ACLs and client id), service accounts, TLS certificates, "
    "and the bridge of an estate broker to a core broker (add-bridge on the core, bridge on the estate).",
    no_args_is_help=True,
    add_completion=False,
)

StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir", envvar="EHUB_STATE_DIR", help="State folder; the broker's is <state-dir>/broker."
    ),
]
Site = Annotated[str, typer.Option("--site", envvar="EHUB_SITE", help="Site (hub) id: second topic level.")]
TopicRoot = Annotated[
    str, typer.Option("--topic-root", envvar="EHUB_TOPIC_ROOT", help="Versioned topic root.")
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _accounts(state_dir: Path, site: str, topic_root: str) -> BrokerAccounts:
    try:
        topics = Topics(site=site, root=topic_root)
    except TopicError as exc:
        _fail(str(exc))
    return BrokerAccounts(state_dir / "broker", topics)


def _reload_note(accounts: BrokerAccounts) -> str:
    if accounts.reload_broker():
        return "the running broker was reloaded: the change is in effect"
    return "no running broker found: the change takes effect when it starts"


@app.command()
def init(
    state_dir: StateDir = Path("var"), site: Site = "de-koumen", topic_root: TopicRoot = DEFAULT_ROOT
) -> None:
    """Create the service accounts (ehub-control, ehub-ingest, ehub-api, ehub-admin) that are missing."""
    accounts = _accounts(state_dir, site, topic_root)
    try:
        created = accounts.ensure_service_accounts()
        note = _reload_note(accounts) if created else ""
    except (AccountError, OSError) as exc:
        _fail(str(exc))
    for credentials in created:
        typer.echo(f"created {credentials.username} ({credentials.role})")
    if not created:
        typer.echo("the service accounts exist already")
    typer.echo(f"credentials: {accounts.credentials_dir}/<username>.json (mode 0600)")
    typer.echo(f"accounts and ACLs for the broker's dynamic-security plugin: {accounts.dynsec_path}")
    if note:
        typer.echo(note)


@app.command("write-config")
def write_config(
    state_dir: StateDir = Path("var"),
    site: Site = "de-koumen",
    topic_root: TopicRoot = DEFAULT_ROOT,
    host: Annotated[
        str, typer.Option(help="Address Mosquitto listens on (0.0.0.0 inside a container).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Plain MQTT port.")] = 1883,
    plugin: Annotated[
        Path | None,
        typer.Option(
            help="Path of mosquitto_dynamic_security.so where the broker runs (default: the one installed here, "
            "else the eclipse-mosquitto image's /usr/lib/mosquitto_dynamic_security.so)."
        ),
    ] = None,
) -> None:
    """Write mosquitto.conf and the dynamic-security config under STATE_DIR/broker, for a Mosquitto started by
    something else (a container, systemd); `energyhub services` does this itself."""
    from energyhub.broker.config import (
        BrokerConfig,
        BrokerConfigError,
        find_dynsec_plugin,
        write_mosquitto_conf,
    )

    accounts = _accounts(state_dir, site, topic_root)
    try:
        accounts.ensure_service_accounts()
        config = BrokerConfig(
            directory=accounts.directory,
            host=host,
            port=port,
            tls_port=None,
            certificates=None,
            dynsec_plugin=plugin or find_dynsec_plugin(),
        )
        path = write_mosquitto_conf(config, accounts)
    except (AccountError, BrokerConfigError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path}")


@app.command("add-gateway")
def add_gateway(
    name: Annotated[str, typer.Argument(help="Gateway id: the broker username and its topic level.")],
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Give an existing gateway a new password.")
    ] = False,
    state_dir: StateDir = Path("var"),
    site: Site = "de-koumen",
    topic_root: TopicRoot = DEFAULT_ROOT,
) -> None:
    """Create a gateway's broker account (or rotate its password) and print the password once."""
    accounts = _accounts(state_dir, site, topic_root)
    try:
        credentials = accounts.add_gateway(name, rotate=rotate)
        note = _reload_note(accounts)
    except (AccountError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"username: {credentials.username}")
    typer.echo(f"password: {credentials.password}")
    typer.echo(
        f"credentials file: {accounts.credentials_path(credentials.username)} (copy it to the gateway)"
    )
    typer.echo(f"topics: {accounts.topics.gateway_subtree(credentials.username)}/...")
    typer.echo(note)


@app.command()
def remove(
    name: Annotated[str, typer.Argument(help="Account to delete.")],
    state_dir: StateDir = Path("var"),
    site: Site = "de-koumen",
    topic_root: TopicRoot = DEFAULT_ROOT,
) -> None:
    """Delete an account; it can no longer log in."""
    accounts = _accounts(state_dir, site, topic_root)
    try:
        accounts.remove(name)
        note = _reload_note(accounts)
    except (AccountError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"removed {name}; {note}")


@app.command("list")
def list_accounts(
    state_dir: StateDir = Path("var"), site: Site = "de-koumen", topic_root: TopicRoot = DEFAULT_ROOT
) -> None:
    """List the accounts and their roles."""
    accounts = _accounts(state_dir, site, topic_root)
    try:
        known = accounts.accounts()
    except (AccountError, OSError) as exc:
        _fail(str(exc))
    if not known:
        typer.echo(f"no accounts in {accounts.directory} yet: run `energyhub broker init`")
    for username, role in sorted(known.items()):
        typer.echo(f"{username}\t{role}")


@app.command()
def certs(
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host", help="Name or address clients use (repeatable); localhost is always included."
        ),
    ] = None,
    days: Annotated[int, typer.Option(help="Server certificate lifetime in days.")] = 825,
    state_dir: StateDir = Path("var"),
    site: Site = "de-koumen",
    topic_root: TopicRoot = DEFAULT_ROOT,
) -> None:
    """Make (or keep) the broker's CA and server certificate; print their paths."""
    from energyhub.broker.certs import (  # cryptography: the server install
        CertificateError,
        ensure_certificates,
    )

    accounts = _accounts(state_dir, site, topic_root)
    try:
        paths = ensure_certificates(accounts.directory / "certs", hosts=list(host or []), days=days)
    except (CertificateError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"CA certificate (copy to gateways): {paths.ca_cert}")
    typer.echo(f"server certificate: {paths.server_cert}")
    typer.echo(f"server key: {paths.server_key}")


@app.command("add-bridge")
def add_bridge(
    estate: Annotated[
        str, typer.Argument(help="Site id of the estate whose broker bridges to this (core) broker.")
    ],
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Give an existing bridge account a new password.")
    ] = False,
    state_dir: StateDir = Path("var"),
    site: Site = "de-koumen",
    topic_root: TopicRoot = DEFAULT_ROOT,
) -> None:
    """On the CORE broker: create the account ehub-bridge-ESTATE for an estate broker's bridge.

    Its role may publish only the estate's measurements, states, acks and dead letters (ehub/v1/ESTATE/...) and
    subscribe only to its confirmations (ehub/v1/ESTATE/gw/+/confirm), with client id ehub-bridge-ESTATE; the
    ingest's role here grows to read every bridged estate. Copy the credentials file it prints to the estate
    broker and run `energyhub broker bridge` there.
    """
    accounts = _accounts(state_dir, site, topic_root)
    try:
        credentials = accounts.add_bridge(estate, rotate=rotate)
        note = _reload_note(accounts)
    except (AccountError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"username and client id: {credentials.username}")
    typer.echo(
        f"credentials file: {accounts.credentials_path(credentials.username)} (copy it to the estate broker)"
    )
    typer.echo(
        f"may publish: {topic_root}/{estate}/gw/+/{{meas/+,state,ack/+}}, {topic_root}/{estate}/deadletter/#"
    )
    typer.echo(f"may subscribe: {topic_root}/{estate}/gw/+/confirm")
    typer.echo(note)


@app.command("bridge")
def bridge(
    core_host: Annotated[
        str | None,
        typer.Option("--core-host", help="Address of the core broker (a name in its certificate with TLS)."),
    ] = None,
    core_port: Annotated[
        int, typer.Option("--core-port", help="The core's MQTT port (its TLS port with --ca-file).")
    ] = 1883,
    credentials: Annotated[
        Path | None,
        typer.Option(
            "--credentials",
            help="The ehub-bridge-<site>.json made on the core by `energyhub broker add-bridge`.",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca-file", help="The core's CA certificate (certs/ca.crt there): TLS to the core."),
    ] = None,
    off: Annotated[bool, typer.Option("--off", help="Remove the bridge.")] = False,
    state_dir: StateDir = Path("var"),
    site: Site = "de-koumen",
    topic_root: TopicRoot = DEFAULT_ROOT,
) -> None:
    """On an ESTATE broker: bridge it to the core broker (MQTT 5), or with --off no longer.

    Out to the core go this site's measurements, gateway states, setpoint acks and dead letters; in come only the
    ingest's confirmations (.../gw/+/confirm), so nothing sent out comes back. While bridged, the ehub-ingest
    account here may read nothing: the core's ingest workers store this estate, and an ingest group here would
    store and confirm every measurement a second time. Stored in STATE_DIR/broker/bridge.json; the connection
    is in mosquitto.conf from the broker's next start (`energyhub services` or `write-config`), since Mosquitto
    reads bridges only at start.
    """
    from energyhub.broker.bridge import BridgeError, BridgeSettings

    accounts = _accounts(state_dir, site, topic_root)
    try:
        if off:
            accounts.set_bridge(None)
            typer.echo(f"removed the bridge of {accounts.directory}; restart the broker")
            return
        if core_host is None or credentials is None:
            _fail("--core-host and --credentials are needed to bridge (or --off to remove the bridge)")
        settings = BridgeSettings(
            core_host=core_host,
            core_port=core_port,
            credentials_file=credentials.resolve(),
            ca_file=None if ca_file is None else ca_file.resolve(),
        )
        accounts.set_bridge(settings)
        note = _reload_note(accounts)
    except (AccountError, BridgeError, OSError) as exc:
        _fail(str(exc))
    typer.echo(
        f"bridge of site {site} to {core_host}:{core_port}{' (TLS)' if ca_file else ''} stored in {accounts.bridge_path}"
    )
    typer.echo("restart the broker so Mosquitto opens the bridge; the ingest's role here: " + note)
