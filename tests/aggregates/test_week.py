"""A week of meter readings through the real influxd, a meter restart and a replayed hour through the real broker and
ingest: the aggregator's quarter hours equal the energy the test itself put into the counters, and the restart is
reported. The yardstick is the test's own: every 10-second step's energy, summed per quarter hour as it is made."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from energyhub.aggregates.service import Aggregator
from energyhub.aggregates.settings import AggregateSettings
from energyhub.ingest.points import DeviceTags, measurement_point
from energyhub.io.influx import InfluxClient
from energyhub.planning.meter_data import read_from_influx
from energyhub.wire.messages import Measurement, Quality, encode
from energyhub.wire.topics import Topics
from tests import communities
from tests.ingest.test_ingest import ingest_settings, running, wait_until
from tests.mqtt_helpers import link_as

pytestmark = pytest.mark.live

DT = 10  # seconds between readings
DAYS = 7
ISP_S = 900
RESTART_STEP = 3 * 8640 + 4321  # c-001's meter restarts here (day 3, mid quarter hour)
REPLAYED_HOUR = (5 * 24 + 10) * 360  # c-002's readings of day 5, 10:00-11:00 arrive late, replayed


@dataclass
class Meter:
    """One simulated grid meter: its readings, and the truth per quarter hour as the energy was made."""

    connection: str
    gateway: str
    times: np.ndarray
    power_w: np.ndarray
    imp_wh: np.ndarray = field(init=False)
    exp_wh: np.ndarray = field(init=False)
    truth_imp: dict[float, float] = field(default_factory=dict)
    truth_exp: dict[float, float] = field(default_factory=dict)
    restart: int | None = None

    def __post_init__(self) -> None:
        # The power at a reading is the mean over the step that ends at it: the step's energy is exact.
        step_imp = np.maximum(self.power_w, 0.0) * DT / 3600
        step_exp = np.maximum(-self.power_w, 0.0) * DT / 3600
        step_imp[0] = step_exp[0] = 0.0  # the first reading starts the counters
        self.imp_wh, self.exp_wh = np.cumsum(step_imp) + 5e6, np.cumsum(step_exp) + 1e5
        if self.restart is not None:
            # The meter restarted from zero at the start of this step: its counters then count this step only.
            self.imp_wh[self.restart :] -= self.imp_wh[self.restart - 1]
            self.exp_wh[self.restart :] -= self.exp_wh[self.restart - 1]
        for k in range(1, len(self.times)):
            # A step (t - DT, t] belongs to the quarter hour that holds its start.
            q = math.floor((self.times[k] - DT) / ISP_S) * ISP_S
            self.truth_imp[q] = self.truth_imp.get(q, 0.0) + step_imp[k]
            self.truth_exp[q] = self.truth_exp.get(q, 0.0) + step_exp[k]

    def measurement(self, k: int, *, replay: bool = False) -> Measurement:
        session = 2 if self.restart is not None and k >= self.restart else 1
        return Measurement(
            ts=datetime.fromtimestamp(float(self.times[k]), UTC),
            session=session,
            seq=k,
            quality=Quality.GOOD,
            values={
                "power_w": float(self.power_w[k]),
                "energy_import_wh": float(self.imp_wh[k]),
                "energy_export_wh": float(self.exp_wh[k]),
            },
            replay=replay,
        )


def _community(tmp_path: Path, site: str) -> Path:
    doc = communities.base()
    doc["community"]["id"] = site
    doc["loops"] = doc["loops"][:1]
    path = tmp_path / "community.yaml"
    path.write_text(communities.dump(doc))
    return path


def _meters(start: float) -> list[Meter]:
    rng = np.random.default_rng(17)
    times = start + np.arange(DAYS * 86400 // DT + 1) * DT
    hours = (times - start) / 3600
    out = []
    for n, restart in ((1, RESTART_STEP), (2, None)):
        load = 40_000 + 15_000 * np.sin(hours / 3.1 + n) + rng.normal(0, 4000, len(times))
        pv = np.clip(60_000 * np.sin((hours % 24 - 6) / 12 * np.pi), 0, None)
        out.append(Meter(f"c-00{n}", f"gw-00{n}", times, load - pv, restart=restart))
    return out


async def _write_week(client: InfluxClient, site: str, meters: list[Meter]) -> None:
    held = range(REPLAYED_HOUR, REPLAYED_HOUR + 360)
    for meter in meters:
        tags = {f"{meter.gateway}/meter": DeviceTags(meter.connection, "meter")}
        lines = [
            measurement_point(site, meter.gateway, "meter", meter.measurement(k), tags)[0]
            for k in range(len(meter.times))
            if not (meter.connection == "c-002" and k in held)
        ]
        if meter.connection == "c-001":
            # Its PV inverter: power only, zero all night (InfluxDB's JSON gives a whole float back as an integer).
            pv = DeviceTags(meter.connection, "pv")
            lines += [
                measurement_point(site, meter.gateway, "pv1", _pv(meter, k), {f"{meter.gateway}/pv1": pv})[0]
                for k in range(len(meter.times))
            ]
        for i in range(0, len(lines), 20_000):
            await client.write(lines[i : i + 20_000])


def _pv(meter: Meter, k: int) -> Measurement:
    hours = (meter.times[k] - meter.times[0]) / 3600
    power = max(0.0, round(60_000 * math.sin((hours % 24 - 6) / 12 * math.pi)))
    return Measurement(
        ts=datetime.fromtimestamp(float(meter.times[k]), UTC),
        session=1,
        seq=k,
        quality=Quality.GOOD,
        values={"power_w": float(power)},
    )


async def _quarters(client: InfluxClient, measurement: str, where: str) -> dict[float, dict]:
    series = await client.query(f'SELECT * FROM "forever"."{measurement}" WHERE {where}', epoch="s")
    return {float(row["time"]): row for s in series for row in s.rows()}


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


async def test_a_week_with_a_restart_and_a_replayed_hour_sums_to_the_counters(
    services, unique_id, tmp_path
) -> None:
    site = services.settings.site
    db = f"agg_{unique_id}"
    start = math.floor((datetime.now(UTC) - timedelta(days=DAYS + 1)).timestamp() / 86400) * 86400.0
    meters = _meters(start)
    path = _community(tmp_path, site)
    s = services.settings
    settings = AggregateSettings(community=path, influx_url=s.influx_url, influx_db=db, chunk_s=6 * 3600)
    aggregator = Aggregator(settings)
    async with InfluxClient(url=s.influx_url, database=db) as client:
        await aggregator.setup()
        await _write_week(client, site, meters)
        assert await aggregator.catch_up() >= DAYS * 96

        # c-001's meter restart is found and reported, in its quarter hour, with the counter before and after.
        restart_t = float(meters[0].times[RESTART_STEP])
        resets = await client.query('SELECT * FROM "forever"."counter_reset"', epoch="s")
        rows = [row for r in resets for row in r.rows()]
        assert sorted((row["time"], row["counter"]) for row in rows) == [
            (restart_t, "energy_export_wh"),
            (restart_t, "energy_import_wh"),
        ]
        assert all(row["before"] > 1e5 > row["after"] for row in rows)
        device = await _quarters(client, "device_qh", "\"gateway\" = 'gw-001' AND \"device\" = 'meter'")
        restart_q = math.floor(restart_t / ISP_S) * ISP_S
        assert device[restart_q]["resets"] == 2
        truth = meters[0].truth_imp[restart_q] + meters[0].truth_exp[restart_q]
        assert _close(device[restart_q]["import_wh"] + device[restart_q]["export_wh"], truth)

        # Before the replay, c-002's missing hour is bridged by the counter: energy there, minutes not covered.
        hour = [float(meters[1].times[REPLAYED_HOUR]) + i * ISP_S for i in range(4)]
        before = await _quarters(client, "device_qh", "\"gateway\" = 'gw-002'")
        assert all(before[q]["coverage"] == 0 for q in hour[1:])
        assert not all(_close(before[q]["import_wh"], meters[1].truth_imp[q]) for q in hour)

        # The hour arrives late, replayed from the gateway's buffer, through the broker and the ingest.
        await _replay(services, unique_id, meters[1], path, client, hour[0])
        assert await aggregator.catch_up() >= 4
        await aggregator.aclose()

        # Every quarter hour of every meter equals the energy made in it; the nodes sum their connections.
        nodes = {
            n: await _quarters(client, "node_qh", f"\"node\" = '{n}'") for n in ("c-001", "c-002", "hub")
        }
        for meter in meters:
            stored = await _quarters(
                client, "device_qh", f"\"gateway\" = '{meter.gateway}' AND \"device\" = 'meter'"
            )
            for q, truth in meter.truth_imp.items():
                assert _close(stored[q]["import_wh"], truth), (meter.connection, q)
                assert _close(stored[q]["export_wh"], meter.truth_exp[q]), (meter.connection, q)
                assert _close(nodes[meter.connection][q]["import_wh"], truth)
        for q in meters[0].truth_imp:
            net = sum(m.truth_imp[q] - m.truth_exp[q] for m in meters)
            assert _close(nodes["hub"][q]["net_wh"], net)
            assert _close(nodes["hub"][q]["import_wh"], max(net, 0))
            assert nodes["hub"][q]["limit_import_kw"] == 5000
            assert nodes["hub"][q]["limit_export_kw"] == 0
            assert _close(nodes["hub"][q]["over_export_wh"], max(-net, 0))
        pv = await _quarters(client, "device_qh", "\"device\" = 'pv1'")
        assert len(pv) >= DAYS * 96
        assert min(q["peak_power_w"] for q in pv.values()) == 0
        assert max(q["peak_power_w"] for q in pv.values()) > 50_000
        assert all("import_wh" not in q or q["import_wh"] is None for q in pv.values())  # no counters
        minutes = await client.query(
            'SELECT count(mean_power_w) FROM "year"."device_1m" WHERE "device" = \'pv1\''
        )
        assert [row["count"] for m in minutes for row in m.rows()] == [DAYS * 1440 + 1]
        after = await _quarters(client, "device_qh", "\"gateway\" = 'gw-002'")
        assert all(after[q]["coverage"] == 1 for q in hour)

        # Settlement and planning read these quarter hours, the restart with them.
        series = await read_from_influx(
            client,
            "c-001",
            datetime.fromtimestamp(start, UTC),
            datetime.fromtimestamp(start + DAYS * 86400, UTC),
            site=site,
        )
        assert not series.gaps
        assert _close(float(series.import_kwh.sum()), sum(meters[0].truth_imp.values()) / 1000)
        assert series.resets == [datetime.fromtimestamp(restart_q, UTC)]


async def _stored(client: InfluxClient, gateway: str, start: float, end: float, n: int) -> bool:
    series = await client.query(
        f"SELECT count(seq) FROM device WHERE gateway = '{gateway}' AND time >= {int(start * 1e9)} "
        f"AND time < {int(end * 1e9)}"
    )
    return any(row["count"] >= n for s in series for row in s.rows())


async def _marked(client: InfluxClient, site: str) -> bool:
    series = await client.query(f"SELECT count(from_ns) FROM aggregate_late WHERE site = '{site}'")
    return any(row["count"] > 0 for s in series for row in s.rows())


async def _replay(
    services, unique_id: str, meter: Meter, community: Path, client: InfluxClient, hour: float
) -> None:
    site = services.settings.site
    services.accounts.add_gateway(meter.gateway)
    services.accounts.reload_broker()
    db = f"agg_{unique_id}"
    settings = ingest_settings(services, unique_id, influx_db=db, community=community)
    topics = Topics(site=site)
    async with running(settings):
        link = await link_as(services, meter.gateway)
        try:
            sent = link.publish_batch(
                [
                    (topics.measurement(meter.gateway, "meter"), encode(meter.measurement(k, replay=True)))
                    for k in range(REPLAYED_HOUR, REPLAYED_HOUR + 360)
                ]
            )
            await link.wait(sent.done)
            await wait_until(
                lambda: _stored(client, meter.gateway, hour, hour + 3600, 360), 30, "the replayed hour stored"
            )
            await wait_until(lambda: _marked(client, site), 10, "the ingest's late mark")
        finally:
            await link.disconnect()
