"""Nothing lost, counted from outside (issue 14): broker and ingest faults on a running estate under load.

Each test runs its own chain of real processes (``faults.FaultRun``: influxd, Mosquitto, ``energyhub ingest``,
``energyhub sim`` at real time, four ``energyhub edge`` agents at 50 measurements a second each), injects one fault
with real signals and real restarts, lets the backlog drain, stops the agents with SIGTERM and counts per gateway
session: every seq from 0 to the highest seen must be in InfluxDB or still in the agent's buffer. The count reads
InfluxDB and the buffer files itself, never the ingest's or the agents' own gap bookkeeping.

Outages are measured in what the agents made meanwhile (50 a second per gateway: 10 s = 500 each), so a slow
machine gets the same fault rather than a shorter one. No test passes by luck of timing: the broker is killed
while it holds a backlog for a stalled ingest, and in the clean-stop and the double-kill tests the ingest comes back
only after every gateway has reconnected and published for a while (as when its back-off outlasts theirs).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults import Count, FaultRun, Load, fault_run

LOAD = Load(gateways=4, rate_hz=50.0, interval_s=0.2)
BEFORE = 100  # measurements per gateway stored before the fault: the chain is flowing end to end
# The agents run with their defaults, as users run them: what was sent and not confirmed goes out again after
# confirm_timeout_s (30 s), or at once when the ingest confirms again after being away.
AGENT: dict[str, object] = {}


def outage(run: FaultRun, seconds: float) -> int:
    """Keep the fault on while every gateway makes ``seconds`` worth of measurements; return how many that is."""
    more = int(LOAD.per_gateway_hz * seconds)
    run.wait_made(more, timeout_s=4 * seconds + 30)
    return more


def recover_and_count(run: FaultRun) -> tuple[Count, float, str]:
    drain_s = run.wait_drained(timeout_s=90)
    count = run.finish()
    print(f"{LOAD.describe()}; drained {drain_s:.1f} s after recovery\n{count.describe()}")
    return count, drain_s, run.logs()


def assert_nothing_lost(count: Count, logs: str, *, at_least: int) -> None:
    assert count.made >= at_least, f"only {count.made} measurements made, expected {at_least}:\n{logs}"
    assert count.stored >= LOAD.gateways * BEFORE, f"nothing flowed:\n{count.describe()}\n{logs}"
    assert count.lost == 0, f"{count.lost} of {count.made} measurements lost:\n{count.describe()}\n{logs}"


@pytest.mark.timeout(240)
def test_broker_killed_mid_stream_under_load_loses_nothing(tmp_path: Path) -> None:
    with fault_run(tmp_path, LOAD, agent=AGENT) as run:
        run.wait_flowing(BEFORE)
        # Mid-stream with a backlog in the broker: the ingest stalls for a second's worth of measurements (as on
        # a slow write), so the broker holds what it acknowledged to the gateways and has not delivered yet.
        run.hold_ingest()
        run.wait_made(int(LOAD.per_gateway_hz), timeout_s=30)
        run.kill_broker()
        run.release_ingest()  # it finds the connection gone and reconnects on its own back-off, as do the gateways
        down = outage(run, 10)
        run.start_broker()
        count, _drain, logs = recover_and_count(run)
    assert_nothing_lost(count, logs, at_least=LOAD.gateways * (BEFORE + down))


@pytest.mark.timeout(240)
def test_broker_stopped_cleanly_while_agents_buffer_loses_nothing(tmp_path: Path) -> None:
    with fault_run(tmp_path, LOAD, agent=AGENT) as run:
        run.wait_flowing(BEFORE)
        run.stop_broker()  # SIGTERM: Mosquitto saves its sessions and queues, then exits
        down = outage(run, 30)
        # The ingest comes back last, as it does when its back-off (up to 45 s) outlasts the gateways': held in
        # place until every agent is back and has published a while, backlog and live.
        run.hold_ingest()
        run.start_broker()
        run.wait_agents_connected()
        run.wait_made(int(LOAD.per_gateway_hz), timeout_s=30)
        run.release_ingest()
        count, _drain, logs = recover_and_count(run)
    assert_nothing_lost(count, logs, at_least=LOAD.gateways * (BEFORE + down))


@pytest.mark.timeout(240)
def test_broker_and_ingest_killed_together_lose_nothing(tmp_path: Path) -> None:
    with fault_run(tmp_path, LOAD, agent=AGENT) as run:
        run.wait_flowing(BEFORE)
        run.kill_ingest()
        run.kill_broker()
        down = outage(run, 10)
        run.start_broker()
        # The ingest's host is slower to come back than the gateways: they publish into a broker that lost the
        # ingest's session with everything else it held in memory.
        run.wait_agents_connected()
        run.wait_made(int(LOAD.per_gateway_hz), timeout_s=30)
        run.start_ingest()
        count, _drain, logs = recover_and_count(run)
    assert_nothing_lost(count, logs, at_least=LOAD.gateways * (BEFORE + down))


@pytest.mark.timeout(240)
def test_ingest_killed_alone_loses_nothing(tmp_path: Path) -> None:
    with fault_run(tmp_path, LOAD, agent=AGENT) as run:
        run.wait_flowing(BEFORE)
        run.kill_ingest()  # the broker keeps the ingest's session and queues for it
        down = outage(run, 5)
        run.start_ingest()
        count, _drain, logs = recover_and_count(run)
    assert_nothing_lost(count, logs, at_least=LOAD.gateways * (BEFORE + down))
