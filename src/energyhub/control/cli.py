"""``energyhub simulate``: a policy over quarter-hour data, with every limit checked."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from energyhub.control.registry import DEFAULT_POLICY, POLICIES, online_policies
from energyhub.runtime.connection import connection_flags

if TYPE_CHECKING:
    from energyhub.control.simulate import SimulationResult
    from energyhub.domain.network import Network

__all__ = ["control_command", "simulate_command"]


def _date(text: str, what: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{what} {text!r} is not an ISO date or date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _priority(path: Path) -> dict[str, float]:
    """Priority weights from a YAML mapping; exits naming the file when it is not one."""
    import yaml

    try:
        table = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        typer.echo(f"error: {path}: {exc}", err=True)
        raise typer.Exit(1) from None
    if not isinstance(table, dict) or not all(isinstance(w, int | float) for w in table.values()):
        typer.echo(f"error: {path}: must map connection ids to numbers, e.g. 'c-012: 2'", err=True)
        raise typer.Exit(1)
    return {str(k): float(v) for k, v in table.items()}


def simulate_command(
    community: Annotated[Path, typer.Option(help="Community YAML file.")],
    from_: Annotated[str, typer.Option("--from", help="Start, ISO date or date-time (UTC).")],
    to: Annotated[str, typer.Option(help="End (exclusive), ISO date or date-time (UTC).")],
    out: Annotated[Path, typer.Option(help="Folder for nodes.csv and summary.json.")],
    policy: Annotated[str, typer.Option(help=f"{', '.join(POLICIES)}.")] = DEFAULT_POLICY,
    inputs: Annotated[
        Path | None,
        typer.Option(
            help="Quarter-hour CSVs (the simulators' export layout); made with --seed when left out."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated inputs.")] = 0,
    margin: Annotated[float, typer.Option(help="Safety margin below each limit, a fraction.")] = 0.02,
    key: Annotated[str, typer.Option(help="How curtailment is shared: kwp, contracted or priority.")] = "kwp",
    priority: Annotated[
        Path | None,
        typer.Option(
            help="YAML, connection id: weight on its kWp (2 = curtailed twice as hard), for --key priority."
        ),
    ] = None,
    weather: Annotated[
        Path | None,
        typer.Option(
            help="A weather forecast for mpc's PV: CSV isp_start,clear_sky_index (UTC; 1 is a clear sky)."
        ),
    ] = None,
) -> None:
    """Run a policy over quarter-hour data and write DIR/nodes.csv and DIR/summary.json."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from energyhub.control.forecast import read_clearness
    from energyhub.control.inputs import InputError, Inputs
    from energyhub.control.limits import LimitTable
    from energyhub.control.registry import OfflineRun, UnknownPolicy, policy_spec
    from energyhub.control.simulate import SHARE_KEYS, ShareKeyError, share_key, write_outputs
    from energyhub.domain.community import CommunityError, load_community
    from energyhub.domain.network import Network

    start, end = _date(from_, "--from"), _date(to, "--to")
    try:
        spec = policy_spec(policy)
    except UnknownPolicy as exc:
        raise typer.BadParameter(f"--policy: {exc}") from None
    if key not in SHARE_KEYS:
        raise typer.BadParameter(f"--key {key!r}: one of {', '.join(SHARE_KEYS)}")
    try:
        parsed = load_community(community)
    except CommunityError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    network = Network.from_community(parsed)
    weights = _priority(priority) if priority is not None else None
    try:
        share_key(network, key, weights)
    except ShareKeyError as exc:
        typer.echo(f"error: {priority}: {exc}", err=True)
        raise typer.Exit(1) from None
    if inputs is None:
        from energyhub.synthetic.export import export_quarter_hours

        inputs = out / "inputs"
        typer.echo(f"generating quarter-hour inputs (seed {seed}) in {inputs}")
        export_quarter_hours(parsed, start=start, end=end, seed=seed, out_dir=inputs)
    try:
        data = Inputs.from_folder(inputs, network, start, end)
    except InputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    limits = LimitTable.build(parsed, network.node_ids, data.isp_starts)
    if weather is not None:
        try:  # refused here, with its line, not in the middle of a run
            read_clearness(weather, data.isp_starts)
        except ValueError as exc:
            typer.echo(f"error: --weather: {exc}", err=True)
            raise typer.Exit(1) from None
    columns = (
        TextColumn(f"{policy}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} quarter hours"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        # A whole-period policy has no steps to show while it solves: an open-ended bar.
        task = bar.add_task(policy, total=None if spec.whole_period else data.isps)
        run = OfflineRun(
            margin=margin, key=key, priority=weights, weather=weather, progress=lambda n: bar.advance(task, n)
        )
        result = spec.run(network, data, limits, run)
    write_outputs(out, network, data, limits, result)
    _report(result, network, data.isp_starts)
    typer.echo(f"wrote {out / 'nodes.csv'} and {out / 'summary.json'}")


SUMMARY_SHOWN = (
    "policy",
    "violations",
    "violation_kwh",
    "curtailed_kwh",
    "ev_undelivered_kwh",
    "self_consumption_pct",
    "battery_throughput_kwh",
    "infeasible_isps",
    "runtime_s",
)


def _report(result: SimulationResult, network: Network, isp_starts: list[datetime]) -> None:
    """The run's main figures, and the first limits it could not keep with what would have kept them."""
    from energyhub.control.shortfall import explain

    summary = result.summary()
    typer.echo(json.dumps({k: summary[k] for k in SUMMARY_SHOWN}, indent=2))
    episodes = explain(result.shortfalls, network.node_ids, isp_starts)
    for episode in episodes[:5]:
        typer.echo(f"could not keep: {episode.text()}")
    if len(episodes) > 5:
        typer.echo(f"... and {len(episodes) - 5} more in summary.json (shortfalls)")


@connection_flags
def control_command(
    config: Annotated[
        Path | None, typer.Option(help="Settings YAML (keys as in `src/energyhub/control/settings.py`).")
    ] = None,
    community: Annotated[Path | None, typer.Option(help="Community YAML file.")] = None,
    policy: Annotated[str | None, typer.Option(help=f"{' or '.join(online_policies())}.")] = None,
    cycle_s: Annotated[float | None, typer.Option(help="Seconds per control cycle.")] = None,
    mqtt_keepalive_s: Annotated[
        int | None,
        typer.Option(
            help="MQTT keepalive (2 s): the broker sends a hung control's Last Will after 1.5 x this of "
            "silence, at its next check (every 6 s in Mosquitto 2.0); that must be within the gateways' failsafe "
            "timeout (10 s)."
        ),
    ] = None,
    site: Annotated[str | None, typer.Option(help="Site id (default: the community id).")] = None,
    day_ahead_dir: Annotated[
        Path | None,
        typer.Option(help="Day-ahead profiles uploaded through the API (its STATE_DIR/day_ahead)."),
    ] = None,
    bookings_dir: Annotated[
        Path | None,
        typer.Option(help="Plaza bookings made through the API (its STATE_DIR/bookings)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    *,
    connection: dict[str, Any],
) -> None:
    """Keep every limit online: a cycle every second, setpoints with expiry and a retained heartbeat.

    Settings come from these flags, then EHUB_CONTROL_* environment variables, then --config, then defaults.
    """
    from energyhub.control.online import OnlineController, load_control_settings
    from energyhub.runtime.service_cli import build_or_exit, configure_logging, run_until_stopped

    configure_logging(verbose, quiet=("httpx",))
    settings = build_or_exit(
        lambda: load_control_settings(
            config,
            **connection,
            community=community,
            policy=policy,
            cycle_s=cycle_s,
            mqtt_keepalive_s=mqtt_keepalive_s,
            site=site,
            day_ahead_dir=day_ahead_dir,
            bookings_dir=bookings_dir,
        )
    )
    controller = build_or_exit(lambda: OnlineController(settings))

    run_until_stopped(controller.run)
