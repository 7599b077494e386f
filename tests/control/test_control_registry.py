"""One registry of policies: every name it holds runs where it may, and a name it does not hold is refused with
the ones it does, by `energyhub simulate` and by the online controller alike."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from energyhub.cli.main import app
from energyhub.control.inputs import Inputs
from energyhub.control.registry import (
    POLICIES,
    OfflineRun,
    UnknownPolicy,
    make_policy,
    online_policies,
    run_policy,
)
from energyhub.control.settings import load_control_settings
from energyhub.runtime.layered_settings import SettingsError
from tests.control.test_control import T0, small_network, table

REPO = Path(__file__).resolve().parents[2]
KNOWN = "known policies are greedy, mpc, oracle"


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_registered_policy_runs_offline_under_its_own_name(name):
    network = small_network(2)
    T = 8
    isps = [T0 + timedelta(minutes=15 * t) for t in range(T)]
    load, pv = np.full((2, T), 10.0), np.full((2, T), 30.0)  # 40 kW of surplus at a hub taking no feed-in
    limits = table(network, T, np.array([1e3, 1e3, 1e3, 1e3]), np.array([0.0, 1e3, 1e3, 1e3]))
    done: list[int] = []
    result = run_policy(name, network, Inputs(isps, load, pv, []), limits, OfflineRun(progress=done.append))
    assert result.policy == name
    assert sum(done) == T  # progress reported for every quarter hour, stepwise or all at once
    assert result.violations == 0
    assert result.curtailed_kwh == pytest.approx(40.0 * T / 4, rel=0.05)


def test_the_online_policies_are_the_stepwise_ones_and_build_under_their_names():
    network = small_network(1)
    assert online_policies() == ("greedy", "mpc")
    for name in online_policies():
        assert make_policy(name, network).name == name
    with pytest.raises(
        UnknownPolicy, match="decides no single quarter hour; the policies that do: greedy, mpc"
    ):
        make_policy("oracle", network)
    with pytest.raises(UnknownPolicy, match=f"unknown policy 'fuzzy': {KNOWN}"):
        make_policy("fuzzy", network)


@pytest.mark.parametrize(
    ("policy", "words"),
    [
        ("fuzzy", f"policy: unknown policy 'fuzzy': {KNOWN}"),
        (
            "oracle",
            "policy: policy 'oracle' cannot run online (it needs the whole period in advance): online policies are greedy, mpc",
        ),
    ],
)
def test_control_refuses_a_policy_it_cannot_run_naming_those_it_can(policy, words):
    with pytest.raises(SettingsError) as caught:
        load_control_settings(policy=policy)
    assert words in str(caught.value)


def test_energyhub_simulate_refuses_an_unknown_policy_naming_the_known_ones(tmp_path):
    community = REPO / "examples" / "de-koumen.yaml"
    days = ["--from", "2026-06-01", "--to", "2026-06-02"]
    result = CliRunner().invoke(
        app, ["simulate", "--community", str(community), *days, "--out", str(tmp_path), "--policy", "fuzzy"]
    )
    assert result.exit_code == 2
    said = re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)  # unwrapped from typer's error box
    assert f"--policy: unknown policy 'fuzzy': {KNOWN}" in said, result.output
    assert not list(tmp_path.iterdir())  # refused before anything was generated
