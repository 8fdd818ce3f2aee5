"""The guard's three instruments (two operation-duration histograms and the decision counter),
aggregated in plain objects and collected by any SDK MetricReader.

An SDK ``Histogram.record`` validates and hashes its attributes, builds a ``Measurement`` and runs
the exemplar machinery: ~15 µs per record on a busy machine, two per tool call.  The guard's
metric attributes are a handful of low-cardinality sets it builds itself, so each set gets a
point object once.  A record on the event loop is one append to the instrument's queue; a fold
thread of its own folds the queues into the points (a point key from the record, a bisect and
four additions each) whenever WAKE_AT records piled up in one, the reader's thread folds what is
left when it collects, and the loop folds a queue itself only when FOLD_AT records piled up (the
fold thread fell behind: bounded memory).  The reader collects once a minute by default, so
without the fold thread a guard past ~70 calls a second would fold every record on the loop.

The points reach the standard pipeline unchanged: the configured ``MetricReader`` (periodic OTLP
or console export, or the SDK's ``InMemoryMetricReader`` in tests) is registered on this object
exactly as a ``MeterProvider`` registers it (its collect callback), and collecting returns SDK
``MetricsData`` — explicit-bucket histograms and a monotonic sum, in the temporality the reader
prefers, with the SDK's cardinality limit and overflow point.  Exemplars are not recorded.
"""

from __future__ import annotations

import sys
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)

from mcp_guard.telemetry.settings import Settings
from mcp_guard.telemetry.transport import lean_transport

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.util.types import AttributeValue

DURATION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
CARDINALITY_LIMIT = 2000  # the SDK's default per instrument
WAKE_AT = 512  # queued records of an instrument that wake the fold thread (as a span batch wakes the export thread)
FOLD_AT = 4096  # queued records an instrument folds on the recording thread (the fold thread fell behind)
_OVERFLOW: Mapping[str, AttributeValue] = {"otel.metric.overflow": True}


class HistogramPoint:
    """One attribute set of an explicit-bucket histogram (bucket ``i`` holds values ≤ bound ``i``)."""

    __slots__ = ("attrs", "count", "counts", "max", "min", "start", "sum")

    def __init__(self, attrs: Mapping[str, AttributeValue], buckets: int, start: int) -> None:
        self.attrs = attrs
        self.start = start
        self.counts = [0] * buckets
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")


class SumPoint:
    __slots__ = ("attrs", "start", "value")

    def __init__(self, attrs: Mapping[str, AttributeValue], start: int) -> None:
        self.attrs = attrs
        self.start = start
        self.value = 0


Attrs = Callable[[], Mapping[str, "AttributeValue"]]


class _Instrument:
    def __init__(self, owner: Instruments, name: str, unit: str, description: str) -> None:
        self._owner = owner
        self.name = name
        self.unit = unit
        self.description = description
        # (key, value, attrs) per record, appended by the recording thread, folded under the lock;
        # deque append and popleft are atomic, so recording takes no lock.  attrs None: key is a
        # scope's record whose ``metric_key()`` and ``metric_attrs`` are read on the folding thread
        self.pending: deque[tuple[Any, Any, Attrs | None]] = deque()

    def queue(self, key: Any, value: Any, attrs: Attrs | None) -> None:
        """One record: an append on the recording thread, which wakes the fold thread once per
        ``WAKE_AT`` records and folds here only when ``FOLD_AT`` piled up.  ``attrs`` is only
        called the first time ``key`` is seen (None: ``key`` is a scope's record)."""
        pending = self.pending
        pending.append((key, value, attrs))
        queued = len(pending)
        if queued == WAKE_AT:
            self._owner.wake.set()
        elif queued >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Fold the queued records into the points (takes the lock)."""
        with self._owner.lock:
            self._fold_locked()

    def _fold_locked(self) -> None:
        raise NotImplementedError

    @staticmethod
    def _slot(points: Mapping[Any, Any], key: Any, attrs: Callable[[], Mapping[str, AttributeValue]]) -> tuple[Any, Mapping[str, AttributeValue]]:
        """The key and attributes of a new point: past the cardinality limit, the overflow point."""
        if len(points) >= CARDINALITY_LIMIT:
            return _OVERFLOW_KEY, _OVERFLOW
        return key, attrs()


class DurationHistogram(_Instrument):
    """An explicit-bucket histogram of durations in seconds."""

    def __init__(self, owner: Instruments, name: str, unit: str, description: str, bounds: Sequence[float]) -> None:
        super().__init__(owner, name, unit, description)
        self.bounds = tuple(float(b) for b in bounds)
        self.points: dict[Any, HistogramPoint] = {}

    record = _Instrument.queue  # ``record(key, seconds, attrs)``

    def _fold_locked(self) -> None:
        pending, points, bounds = self.pending, self.points, self.bounds
        while pending:
            key, value, attrs = pending.popleft()
            if attrs is None:  # a scope's record (telemetry.records): its key and attributes are made here
                key, attrs = key.metric_key(), key.metric_attrs
            point = points.get(key)
            if point is None:
                key, made = self._slot(points, key, attrs)
                point = points.get(key)
                if point is None:
                    point = points[key] = HistogramPoint(made, len(bounds) + 1, self._owner.start_for_new("Histogram"))
            point.counts[bisect_left(bounds, value)] += 1
            point.count += 1
            point.sum += value
            if value < point.min:
                point.min = value
            if value > point.max:
                point.max = value


class MonotonicCounter(_Instrument):
    """A monotonic sum."""

    def __init__(self, owner: Instruments, name: str, unit: str, description: str) -> None:
        super().__init__(owner, name, unit, description)
        self.points: dict[Any, SumPoint] = {}

    add = _Instrument.queue  # ``add(key, amount, attrs)``

    def _fold_locked(self) -> None:
        pending, points = self.pending, self.points
        while pending:
            key, amount, attrs = pending.popleft()
            if attrs is None:  # a scope's record (telemetry.records): its key and attributes are made here
                key, attrs = key.metric_key(), key.metric_attrs
            point = points.get(key)
            if point is None:
                key, made = self._slot(points, key, attrs)
                point = points.get(key)
                if point is None:
                    point = points[key] = SumPoint(made, self._owner.start_for_new("Counter"))
            point.value += amount


_OVERFLOW_KEY = object()


class Instruments:
    """The instruments of one guard process, registered with one SDK ``MetricReader``."""

    def __init__(self, resource: Resource, scope: InstrumentationScope, reader: MetricReader,
                 scrape: MetricReader | None = None) -> None:
        """``scrape``: a second, pull reader (the Prometheus ``/metrics`` of ``serve.admin``).  It
        reads cumulative points, so with it every reader gets cumulative ones."""
        self.lock = threading.Lock()
        self.resource = resource
        self.scope = scope
        self.reader = reader
        self.scrape = scrape
        temporality = getattr(reader, "_instrument_class_temporality", {})
        self._delta = {
            kind: scrape is None and any(cls.__name__ == f"_{kind}" and t is AggregationTemporality.DELTA
                                         for cls, t in temporality.items())
            for kind in ("Histogram", "Counter")
        }
        self._last_collect = time.time_ns()
        self.histograms: list[DurationHistogram] = []
        self.counters: list[MonotonicCounter] = []
        self.wake = threading.Event()  # set by a queue that reached WAKE_AT
        self._stopped = False
        self._folder = threading.Thread(target=self._fold_when_woken, name="mcp-guard-metric-fold", daemon=True)
        self._folder.start()
        # the registration a MeterProvider performs: the reader now collects from here
        for each in (reader, scrape) if scrape is not None and scrape is not reader else (reader,):
            each._set_collect_callback(self._collect)  # type: ignore[arg-type]  # the SDK annotation is stale: it is called (reader, timeout_millis=)

    def _fold_when_woken(self) -> None:
        """The fold thread: folds every queue each time one of them reached ``WAKE_AT``."""
        while True:
            self.wake.wait()
            self.wake.clear()
            if self._stopped:
                return
            with self.lock:
                for instrument in (*self.histograms, *self.counters):
                    instrument._fold_locked()

    def start_for_new(self, kind: str) -> int:
        """Start time of a new point: the last collection (or the start) for either temporality.
        A point is made when its first record is folded, which may be well after the record was
        taken, so "now" could be later than the measurement; the last collection never is."""
        return self._last_collect

    def histogram(self, name: str, unit: str, description: str, bounds: Sequence[float]) -> DurationHistogram:
        h = DurationHistogram(self, name, unit, description, bounds)
        self.histograms.append(h)
        return h

    def counter(self, name: str, unit: str, description: str) -> MonotonicCounter:
        c = MonotonicCounter(self, name, unit, description)
        self.counters.append(c)
        return c

    def _collect(self, reader: MetricReader, timeout_millis: float = 10_000) -> MetricsData | None:
        now = time.time_ns()
        metrics: list[Metric] = []
        with self.lock:
            delta_h, delta_c = self._delta["Histogram"], self._delta["Counter"]
            temporality_h = AggregationTemporality.DELTA if delta_h else AggregationTemporality.CUMULATIVE
            temporality_c = AggregationTemporality.DELTA if delta_c else AggregationTemporality.CUMULATIVE
            for instrument in (*self.histograms, *self.counters):
                instrument._fold_locked()
            for h in self.histograms:
                points = [
                    HistogramDataPoint(
                        attributes=p.attrs, start_time_unix_nano=p.start, time_unix_nano=now, count=p.count,
                        sum=p.sum, bucket_counts=list(p.counts), explicit_bounds=h.bounds, min=p.min, max=p.max,
                    )
                    for p in h.points.values() if p.count
                ]
                if delta_h:
                    h.points.clear()
                if points:
                    metrics.append(Metric(h.name, h.description, h.unit,
                                          Histogram(data_points=points, aggregation_temporality=temporality_h)))
            for c in self.counters:
                sums = [NumberDataPoint(attributes=p.attrs, start_time_unix_nano=p.start, time_unix_nano=now, value=p.value)
                        for p in c.points.values() if p.value or not delta_c]
                if delta_c:
                    c.points.clear()
                if sums:
                    metrics.append(Metric(c.name, c.description, c.unit,
                                          Sum(data_points=sums, aggregation_temporality=temporality_c, is_monotonic=True)))
            self._last_collect = now
        if not metrics:
            return None
        return MetricsData(resource_metrics=[ResourceMetrics(
            resource=self.resource,
            scope_metrics=[ScopeMetrics(scope=self.scope, metrics=metrics, schema_url=self.scope.schema_url or "")],
            schema_url=self.resource.schema_url,
        )])

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return bool(self.reader.force_flush(timeout_millis=timeout_millis))

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        self._stopped = True
        self.wake.set()
        self._folder.join(timeout_millis / 1000)
        self.reader.shutdown(timeout_millis=timeout_millis)
        if self.scrape is not None and self.scrape is not self.reader:
            self.scrape.shutdown(timeout_millis=timeout_millis)


def metric_reader(settings: Settings) -> MetricReader | None:
    """The periodic reader ``settings`` name for metrics (None: metrics off)."""
    from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader

    exporter: MetricExporter
    if settings.metrics == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        exporter = ConsoleMetricExporter(out=sys.stderr)
    elif settings.metrics == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=settings.metrics_endpoint, timeout=settings.timeout,
                                      **lean_transport(settings.metrics_endpoint, settings.plain_http))
    else:
        return None
    return PeriodicExportingMetricReader(
        exporter,
        export_interval_millis=settings.metric_interval * 1000,
        export_timeout_millis=settings.timeout * 1000,
    )


__all__ = ["CARDINALITY_LIMIT", "DURATION_BUCKETS", "FOLD_AT", "WAKE_AT", "DurationHistogram", "Instruments", "MonotonicCounter", "metric_reader"]
