"""``/metrics``: the server's counters in the Prometheus text format.

The exposition is produced by ``prometheus_client``, so that its escaping,
``# HELP``/``# TYPE`` lines and ``_total`` suffixes are the library's, not ours.
The numbers themselves stay plain integers on the objects that own them
(:class:`~trio_broadcast.server.Server`, its
:class:`~trio_broadcast.fanout.Fanout`, :class:`~trio_broadcast.counters.Counters`):
a custom collector reads them at scrape time, so delivering a message never
calls into the library. Each server has its own registry, never the global
one, so two servers in one process (the tests, an embedding program) do not
share or clash.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .server import Server

PREFIX = "trio_broadcast_"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _ServerCollector(Collector):
    def __init__(self, server: Server) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        counters = server.counters
        yield GaugeMetricFamily(
            PREFIX + "clients", "Connected WebSocket clients.", value=server.clients
        )
        yield GaugeMetricFamily(
            PREFIX + "open_connections",
            "Open TCP connections: clients, handshakes in progress and plain HTTP requests.",
            value=server.connections,
        )
        yield GaugeMetricFamily(
            PREFIX + "tasks",
            "Trio tasks alive in the process: a few per connection, so growth while "
            "the number of connections stays put means a leak.",
            value=trio.lowlevel.current_statistics().tasks_living,
        )
        connections = CounterMetricFamily(
            PREFIX + "connections",
            "WebSocket handshakes, by result: accepted or the reason for refusing.",
            labels=["result"],
        )
        for result, count in counters.connections.items():
            connections.add_metric([result], count)
        yield connections
        for name, documentation, value in (
            ("lines_read", "Lines read from the input and broadcast.", server.lines_read),
            (
                "messages_delivered",
                "Messages written to clients, broadcast lines and echoes.",
                counters.delivered,
            ),
            (
                "messages_dropped",
                "Messages skipped for clients that fell behind (--on-full drop).",
                server.fanout.dropped,
            ),
            (
                "slow_disconnects",
                "Clients cut off for falling behind (--on-full disconnect).",
                server.fanout.overflows,
            ),
            (
                "bytes_sent",
                "Bytes of message frames written to clients, headers included.",
                counters.bytes_sent,
            ),
            (
                "lines_too_long",
                "Input lines skipped for being over --max-line-size.",
                counters.lines_too_long,
            ),
        ):
            yield CounterMetricFamily(PREFIX + name, documentation, value=value)


def registry_for(server: Server) -> CollectorRegistry:
    """A registry of its own: the collector that reads ``server``, and the process's.

    The process collector adds ``process_open_fds``, ``process_max_fds`` and
    ``process_resident_memory_bytes``, what an operator watches for leaks.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServerCollector(server))
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The current values, in the text format that :data:`CONTENT_TYPE` names."""
    return generate_latest(registry)
