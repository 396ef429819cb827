"""``/metrics``: the server's counters in the Prometheus text format.

The exposition is produced by ``prometheus_client``, so that its escaping,
``# HELP``/``# TYPE`` lines and ``_total`` suffixes are the library's, not ours.
The numbers themselves stay plain integers on the objects that own them; a
custom collector asks for one :class:`~trio_broadcast.counters.Statistics`
snapshot at scrape time, so delivering a message never calls into the library.
Each server has its own registry, never the global one, so two servers in one
process (the tests, an embedding program) do not share or clash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .counters import Statistics

PREFIX = "trio_broadcast_"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _ServerCollector(Collector):
    def __init__(self, statistics: Callable[[], Statistics]) -> None:
        self._statistics = statistics

    def collect(self) -> Iterator[Metric]:
        now = self._statistics()
        yield GaugeMetricFamily(
            PREFIX + "clients", "Connected WebSocket clients.", value=now.clients
        )
        yield GaugeMetricFamily(
            PREFIX + "open_connections",
            "Open TCP connections: clients, handshakes in progress and plain HTTP requests.",
            value=now.connections,
        )
        yield GaugeMetricFamily(
            PREFIX + "tasks",
            "Trio tasks alive in the process: a few per connection, so growth while "
            "the number of connections stays put means a leak.",
            value=now.tasks,
        )
        connections = CounterMetricFamily(
            PREFIX + "connections",
            "WebSocket handshakes, by result: accepted or the reason for refusing.",
            labels=["result"],
        )
        for result, count in now.handshakes.items():
            connections.add_metric([result], count)
        yield connections
        for name, documentation, value in (
            ("lines_read", "Lines read from the input and broadcast.", now.lines_read),
            (
                "messages_delivered",
                "Messages written to clients, broadcast lines and echoes.",
                now.delivered,
            ),
            (
                "messages_dropped",
                "Messages skipped for clients that fell behind (--on-full drop).",
                now.dropped,
            ),
            (
                "slow_disconnects",
                "Clients cut off for falling behind (--on-full disconnect or wait).",
                now.slow_disconnects,
            ),
            (
                "input_wait_seconds",
                "Seconds reading input waited for room in full client queues (--on-full wait).",
                now.waited,
            ),
            (
                "bytes_sent",
                "Bytes of message frames written to clients, headers included.",
                now.bytes_sent,
            ),
            (
                "lines_too_long",
                "Input lines skipped for being over --max-line-size.",
                now.lines_too_long,
            ),
        ):
            yield CounterMetricFamily(PREFIX + name, documentation, value=value)
        if now.retained_lines is not None and now.retained_bytes is not None:
            yield GaugeMetricFamily(
                PREFIX + "retained_lines",
                "Lines kept for trio-broadcast.v1 clients that resume (--retain).",
                value=now.retained_lines,
            )
            yield GaugeMetricFamily(
                PREFIX + "retained_bytes",
                "Bytes of the lines kept for clients that resume (--retain-bytes).",
                value=now.retained_bytes,
            )


def registry_for(statistics: Callable[[], Statistics]) -> CollectorRegistry:
    """A registry of its own: a collector that calls ``statistics``, and the process's.

    The process collector adds ``process_open_fds``, ``process_max_fds`` and
    ``process_resident_memory_bytes``, what an operator watches for leaks.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServerCollector(statistics))
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The current values, in the text format that :data:`CONTENT_TYPE` names."""
    return generate_latest(registry)
