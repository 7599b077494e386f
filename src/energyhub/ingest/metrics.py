"""The ingest's own figures: Prometheus metrics, and the same figures written to InfluxDB for the dashboards."""

from __future__ import annotations

import bisect
import statistics
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

__all__ = ["IngestMetrics"]

_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
_BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 5000, 10000)


class _PerMessage:
    """The figures that change with every message (messages by kind, replays, lag), kept in plain counts and
    handed to Prometheus only when it scrapes: a Prometheus object's update takes a lock and costs more than the
    count itself, tens of thousands of times a second (bench/ingest.py)."""

    def __init__(self, metrics: IngestMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        messages = CounterMetricFamily("ehub_ingest_messages", "MQTT messages taken in", labels=["kind"])
        for kind, count in sorted(m.by_kind.items()):
            messages.add_metric([kind], count)
        yield messages
        replayed = CounterMetricFamily("ehub_ingest_replayed", "Replayed measurements", labels=["gateway"])
        for gateway, count in sorted(m.replayed.items()):
            replayed.add_metric([gateway], count)
        yield replayed
        cumulative, buckets = 0, []
        for bound, count in zip((*_LAG_BUCKETS, float("inf")), m.lag_counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else str(float(bound)), cumulative))
        lag = HistogramMetricFamily(
            "ehub_ingest_lag_seconds", "Device timestamp to stored, for live (not replayed) measurements"
        )
        lag.add_metric([], buckets, m.lag_sum)
        yield lag


class IngestMetrics:
    """Every event is counted twice on purpose: in Prometheus objects for scraping, and in plain totals for the
    ``ingest`` point, which reads them without reaching into the Prometheus client's internals. Those of every
    message are only plain counts, which Prometheus reads when it scrapes (``_PerMessage``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.by_kind: Tally[str] = Tally()
        self.lag_counts = [0] * (len(_LAG_BUCKETS) + 1)  # per bucket (not cumulative), the last one +Inf
        self.lag_sum = 0.0
        self._points = Counter("ehub_ingest_points", "Points stored in InfluxDB", registry=r)
        self._fields = Counter("ehub_ingest_fields", "Fields stored in InfluxDB", registry=r)
        self._batch_size = Histogram(
            "ehub_ingest_batch_size", "Points per batch written", buckets=_BATCH_BUCKETS, registry=r
        )
        self._retries = Counter("ehub_ingest_write_retries", "Writes retried after an outage", registry=r)
        self._dead = Counter("ehub_ingest_dead_letters", "Messages sent to dead letters", ["why"], registry=r)
        self._gaps = Gauge(
            "ehub_ingest_sequence_missing",
            "Sequence numbers of a gateway's sessions not stored now (a redelivery fills its hole again)",
            ["gateway"],
            registry=r,
        )
        self._pending = Gauge("ehub_ingest_pending", "Messages held, not yet stored", registry=r)
        self.totals: Tally[str] = Tally()
        self.replayed: Tally[str] = Tally()
        self.gaps: Tally[str] = Tally()
        self.stored_by_gateway: Tally[str] = Tally()
        self.pending = 0
        self._lags: deque[float] = deque(maxlen=20_000)
        self._gateway_lag: dict[str, tuple[float, int]] = {}
        self._last = (time.monotonic(), 0, 0)
        r.register(_PerMessage(self))

    def message(self, kind: str) -> None:
        self.by_kind[kind] += 1
        self.totals["messages"] += 1

    def stored(self, points: int, fields: int, by_gateway: Tally[str] | None = None) -> None:
        self._points.inc(points)
        self._fields.inc(fields)
        self._batch_size.observe(points)
        self.totals.update(points=points, fields=fields, batches=1)
        if by_gateway:
            self.stored_by_gateway.update(by_gateway)

    def retry(self) -> None:
        self._retries.inc()
        self.totals["retries"] += 1

    def dead_letter(self, why: str) -> None:
        self._dead.labels(why).inc()
        self.totals["dead_letters"] += 1

    def replay(self, gateway: str) -> None:
        self.replayed[gateway] += 1

    def set_missing(self, gateway: str, missing: int) -> None:
        if self.gaps.get(gateway) != missing:
            self._gaps.labels(gateway).set(missing)
            self.gaps[gateway] = missing

    def lag(self, seconds: float, gateway: str | None = None) -> None:
        # Prometheus buckets are upper bounds, inclusive: bisect_left puts a lag equal to a bound in its bucket.
        self.lag_counts[bisect.bisect_left(_LAG_BUCKETS, seconds)] += 1
        self.lag_sum += seconds
        self._lags.append(seconds)
        if gateway is not None:
            total, count = self._gateway_lag.get(gateway, (0.0, 0))
            self._gateway_lag[gateway] = (total + seconds, count + 1)

    def gateway_lags(self) -> dict[str, float]:
        """Mean lag per gateway since the last call."""
        out = {g: total / count for g, (total, count) in self._gateway_lag.items() if count}
        self._gateway_lag.clear()
        return out

    def set_pending(self, count: int) -> None:
        self._pending.set(count)
        self.pending = count

    def snapshot(self) -> dict[str, float | int]:
        """Totals, rates since the last snapshot and lag percentiles: the fields of the ``ingest`` point."""
        now = time.monotonic()
        messages, points = self.totals["messages"], self.totals["points"]
        last_t, last_messages, last_points = self._last
        span = max(now - last_t, 1e-9)
        self._last = (now, messages, points)
        out: dict[str, float | int] = {
            key: self.totals[key]
            for key in ("messages", "points", "fields", "batches", "retries", "dead_letters")
        }
        out.update(
            pending=self.pending,
            messages_per_s=(messages - last_messages) / span,
            points_per_s=(points - last_points) / span,
            replayed=sum(self.replayed.values()),
            gaps=sum(self.gaps.values()),
        )
        lags = sorted(self._lags)
        self._lags.clear()
        if lags:
            out["lag_p50_s"] = statistics.median(lags)
            out["lag_p99_s"] = lags[min(len(lags) - 1, int(0.99 * len(lags)))]
        return out
