"""Every control policy by name, in one mapping: how each is built and where it may run.

``energyhub simulate`` and the online controller (its ``policy`` setting) take a policy by name and look it up here
(as planning can, through ``make_policy`` and ``run_policy``), so a new policy is one entry below. A policy either decides one quarter hour at a time
from what is known then (``stepwise``: offline in ``simulate`` and online), or solves a whole period at once with
perfect foresight (``whole_period``: offline only, a yardstick). A name that is not here is refused with the names
that are.

Importing this module is cheap (every ``energyhub`` command reads the names for its help): the policies' own modules
(scipy, HiGHS, pandas) are imported when a policy is built or run, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from energyhub.control.inputs import Inputs
    from energyhub.control.limits import LimitTable
    from energyhub.control.policies import Policy
    from energyhub.control.simulate import SimulationResult
    from energyhub.domain.network import Network

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "OfflineRun",
    "PolicySpec",
    "UnknownPolicy",
    "make_policy",
    "online_policies",
    "online_policy",
    "policy_spec",
    "run_policy",
]


class UnknownPolicy(ValueError):
    """A policy name that is not registered, or one that cannot run where it was asked to."""


@dataclass(frozen=True)
class OfflineRun:
    """What an offline run takes beside the policy (``energyhub simulate``'s flags, a planning scenario's keys)."""

    margin: float = 0.02
    key: str = "kwp"
    priority: dict[str, float] | None = None
    weather: Path | None = None  # a clear-sky index forecast, for the policies that use one
    history: Inputs | None = None  # quarter hours before the period, for the forecasts to look back on
    progress: Callable[[int], None] | None = None  # called with the quarter hours just done


StepwiseBuilder = Callable[["Network", Path | None], "Policy"]
WholePeriodRunner = Callable[["Network", "Inputs", "LimitTable", OfflineRun], "SimulationResult"]


@dataclass(frozen=True)
class PolicySpec:
    name: str
    summary: str
    stepwise: StepwiseBuilder | None = None
    whole_period: WholePeriodRunner | None = None

    @property
    def online(self) -> bool:
        """Whether it can run online: only a policy that decides from what is known now."""
        return self.stepwise is not None

    def build(self, network: Network, *, weather: Path | None = None) -> Policy:
        """The policy for one quarter hour at a time."""
        if self.stepwise is None:
            raise UnknownPolicy(
                f"policy {self.name!r} solves a whole period at once with perfect foresight and decides no "
                f"single quarter hour; the policies that do: {', '.join(online_policies())}"
            )
        return self.stepwise(network, weather)

    def run(self, network: Network, inputs: Inputs, limits: LimitTable, run: OfflineRun) -> SimulationResult:
        """Over ``inputs``, offline, with every limit booked."""
        if self.whole_period is not None:
            result = self.whole_period(network, inputs, limits, run)
            if run.progress is not None:
                run.progress(inputs.isps)  # all at once: it has no steps to report
            return result
        from energyhub.control.simulate import simulate

        return simulate(
            network,
            inputs,
            limits,
            self.build(network, weather=run.weather),
            margin=run.margin,
            key=run.key,
            priority=run.priority,
            progress=run.progress,
            history=run.history,
        )


def _greedy(network: Network, _weather: Path | None) -> Policy:
    from energyhub.control.policies import Greedy

    return Greedy(network)


def _mpc(network: Network, weather: Path | None) -> Policy:
    from energyhub.control.policies import Mpc

    return Mpc(network, weather=weather)


def _oracle(network: Network, inputs: Inputs, limits: LimitTable, run: OfflineRun) -> SimulationResult:
    from energyhub.control.oracle import oracle

    return oracle(network, inputs, limits, margin=run.margin, key=run.key, priority=run.priority)


_SPECS = (
    PolicySpec(
        "greedy",
        "each connection for itself, then PV curtailed pro rata at the hub: what single-site controllers do",
        stepwise=_greedy,
    ),
    PolicySpec(
        "mpc",
        "plans batteries and cars over forecasts; the dispatch keeps every limit with the real values",
        stepwise=_mpc,
    ),
    PolicySpec(
        "oracle",
        "the exact optimum of the whole period with perfect foresight: a yardstick, offline only",
        whole_period=_oracle,
    ),
)
POLICIES: Final[MappingProxyType[str, PolicySpec]] = MappingProxyType({spec.name: spec for spec in _SPECS})
DEFAULT_POLICY: Final = "mpc"


def policy_spec(name: str) -> PolicySpec:
    """The registered policy ``name``; ``UnknownPolicy`` naming the known ones otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise UnknownPolicy(f"unknown policy {name!r}: known policies are {', '.join(POLICIES)}") from None


def online_policies() -> tuple[str, ...]:
    return tuple(name for name, spec in POLICIES.items() if spec.online)


def online_policy(name: str) -> PolicySpec:
    """``name``'s policy if it can run online; ``UnknownPolicy`` naming the ones that can otherwise."""
    spec = policy_spec(name)
    if not spec.online:
        raise UnknownPolicy(
            f"policy {name!r} cannot run online (it needs the whole period in advance): "
            f"online policies are {', '.join(online_policies())}"
        )
    return spec


def make_policy(name: str, network: Network, *, weather: Path | None = None) -> Policy:
    return policy_spec(name).build(network, weather=weather)


def run_policy(
    name: str, network: Network, inputs: Inputs, limits: LimitTable, run: OfflineRun | None = None
) -> SimulationResult:
    return policy_spec(name).run(network, inputs, limits, run or OfflineRun())
