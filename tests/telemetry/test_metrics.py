"""The plain-object instruments: what SDK readers collect from them equals what the SDK's own
instruments would report (buckets, sum, min, max, temporality, overflow)."""

from __future__ import annotations

import io
import json
from typing import Any

from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from mcp_guard.telemetry.attributes import SERVER_DURATION
from mcp_guard.telemetry.metrics import CARDINALITY_LIMIT, DURATION_BUCKETS, Instruments

RESOURCE = Resource.create({"service.name": "metrics-test"})
SCOPE = InstrumentationScope("mcp_guard", "0.1.0")
# boundaries themselves, between them, below the first and above the last
VALUES = [0.0, 0.01, 0.011, 0.05, 0.3, 1.0, 2.5, 300.0, 301.0, 0.004]


def points(data: MetricsData | None) -> dict[str, list[Any]]:
    assert data is not None
    out: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def test_histogram_and_counter_equal_the_sdk_instruments() -> None:
    ours_reader, sdk_reader = InMemoryMetricReader(), InMemoryMetricReader()
    ours = Instruments(RESOURCE, SCOPE, ours_reader)
    hist = ours.histogram("h", "s", "d", DURATION_BUCKETS)
    count = ours.counter("c", "{x}", "d")
    meter = MeterProvider(resource=RESOURCE, metric_readers=[sdk_reader]).get_meter("mcp_guard", "0.1.0")
    sdk_hist = meter.create_histogram("h", unit="s", explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
    sdk_count = meter.create_counter("c", unit="{x}")
    attrs = {"mcp.method.name": "tools/call"}
    for v in VALUES:
        hist.record("k", v, lambda: attrs)
        sdk_hist.record(v, attrs)
        count.add("k", 1, lambda: attrs)
        sdk_count.add(1, attrs)
    (mine,), (theirs,) = points(ours_reader.get_metrics_data())["h"], points(sdk_reader.get_metrics_data())["h"]
    assert (list(mine.bucket_counts), mine.count, mine.sum, mine.min, mine.max, list(mine.explicit_bounds)) == (
        list(theirs.bucket_counts), theirs.count, theirs.sum, theirs.min, theirs.max, list(theirs.explicit_bounds))
    assert dict(mine.attributes) == attrs
    data = ours_reader.get_metrics_data()  # cumulative: the same totals again
    assert points(data)["c"][0].value == len(VALUES)
    assert points(data)["h"][0].count == len(VALUES)


def test_a_delta_reader_gets_only_what_is_new() -> None:
    reader = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA,
                                                         Counter: AggregationTemporality.DELTA})
    ours = Instruments(RESOURCE, SCOPE, reader)
    hist = ours.histogram("h", "s", "d", DURATION_BUCKETS)
    count = ours.counter("c", "{x}", "d")
    for _ in range(3):
        hist.record("k", 0.5, dict)
        count.add("k", 1, dict)
    first = reader.get_metrics_data()
    assert points(first)["c"][0].value == 3
    assert reader.get_metrics_data() is None  # nothing new
    hist.record("k", 0.5, dict)
    second = points(reader.get_metrics_data())
    assert second["h"][0].count == 1 and "c" not in second
    assert first is not None
    (metric,) = [m for m in first.resource_metrics[0].scope_metrics[0].metrics if m.name == "h"]
    assert isinstance(metric.data.data_points[0], HistogramDataPoint)
    assert getattr(metric.data, "aggregation_temporality", None) is AggregationTemporality.DELTA


def test_attribute_sets_beyond_the_limit_share_the_overflow_point() -> None:
    reader = InMemoryMetricReader()
    count = Instruments(RESOURCE, SCOPE, reader).counter("c", "{x}", "d")
    for i in range(CARDINALITY_LIMIT + 10):
        count.add(i, 1, lambda i=i: {"n": i})  # type: ignore[misc]
    found = points(reader.get_metrics_data())["c"]
    assert len(found) == CARDINALITY_LIMIT + 1
    overflow = [p for p in found if p.attributes.get("otel.metric.overflow") is True]
    assert overflow and overflow[0].value == 10


def test_a_periodic_exporting_reader_exports_through_its_exporter() -> None:
    out = io.StringIO()
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(out=out, formatter=lambda d: d.to_json(indent=None) + "\n"),
                                           export_interval_millis=3_600_000)
    ours = Instruments(RESOURCE, SCOPE, reader)
    ours.histogram(SERVER_DURATION, "s", "d", DURATION_BUCKETS).record("k", 0.02, lambda: {"a": "b"})
    assert ours.force_flush()
    ours.shutdown()
    exported = json.loads(out.getvalue().splitlines()[0])
    metric = exported["resource_metrics"][0]["scope_metrics"][0]["metrics"][0]
    assert metric["name"] == SERVER_DURATION and metric["data"]["data_points"][0]["count"] == 1


def test_recording_is_an_append_folded_by_the_reader_and_bounded() -> None:
    """The recording thread only queues; collecting folds the queue; a long queue folds itself."""
    from mcp_guard.telemetry.metrics import FOLD_AT

    reader = InMemoryMetricReader()
    ours = Instruments(RESOURCE, SCOPE, reader)
    hist = ours.histogram("h", "s", "d", DURATION_BUCKETS)
    count = ours.counter("c", "{x}", "d")
    made: list[str] = []
    hist.record("k", 0.5, lambda: made.append("h") or {"a": "b"})  # type: ignore[func-returns-value]
    count.add("k", 2, lambda: made.append("c") or {"a": "b"})  # type: ignore[func-returns-value]
    assert made == [] and not hist.points and not count.points  # nothing but the queue so far
    found = points(reader.get_metrics_data())
    assert made == ["h", "c"] and found["h"][0].count == 1 and found["c"][0].value == 2
    for _ in range(FOLD_AT + 10):
        count.add("k", 1, dict)
    assert len(count.pending) < FOLD_AT  # folded on the recording thread once it piled up
    assert points(reader.get_metrics_data())["c"][0].value == 2 + FOLD_AT + 10


def test_records_made_while_another_thread_collects_are_all_counted() -> None:
    import threading

    reader = InMemoryMetricReader(preferred_temporality={Counter: AggregationTemporality.DELTA})
    ours = Instruments(RESOURCE, SCOPE, reader)
    count = ours.counter("c", "{x}", "d")
    total = 0
    done = threading.Event()

    def collect() -> None:
        nonlocal total
        while not done.is_set():
            data = reader.get_metrics_data()
            if data is not None:
                total += sum(p.value for p in points(data).get("c", []))

    thread = threading.Thread(target=collect)
    thread.start()
    for _ in range(50_000):
        count.add("k", 1, dict)
    done.set()
    thread.join()
    data = reader.get_metrics_data()
    if data is not None:
        total += sum(p.value for p in points(data).get("c", []))
    assert total == 50_000
