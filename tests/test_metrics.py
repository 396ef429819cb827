"""Unit tests of :mod:`trio_broadcast.metrics`: the exposition made from a Statistics value.

No server: the registry is built on a function that returns a
:class:`~trio_broadcast.counters.Statistics` the test chose, and the text it
exposes is read back with ``prometheus_client``'s own parser, as a scraper
reads it. ``test_http.py`` checks ``/metrics`` on a running server.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from prometheus_client.parser import text_string_to_metric_families

from trio_broadcast.counters import Statistics
from trio_broadcast.metrics import CONTENT_TYPE, PREFIX, exposition, registry_for

STATISTICS = Statistics(
    clients=3,
    connections=5,
    handshakes=MappingProxyType({"accepted": 7, "too many clients": 2}),
    lines_read=11,
    input_open=True,
    delivered=13,
    bytes_sent=17,
    dropped=19,
    slow_disconnects=23,
    waited=2.5,
    lines_too_long=29,
    retained_lines=37,
    retained_bytes=41,
    tasks=31,
    uptime=1.5,
)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Sample name and labels to value, for every sample in the exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_every_number_is_exposed_under_its_name() -> None:
    exposed = samples(exposition(registry_for(lambda: STATISTICS)))
    ours = {key: value for key, value in exposed.items() if key[0].startswith(PREFIX)}
    assert ours == {
        (PREFIX + "clients", ()): 3,
        (PREFIX + "open_connections", ()): 5,
        (PREFIX + "tasks", ()): 31,
        (PREFIX + "connections_total", (("result", "accepted"),)): 7,
        (PREFIX + "connections_total", (("result", "too many clients"),)): 2,
        (PREFIX + "lines_read_total", ()): 11,
        (PREFIX + "messages_delivered_total", ()): 13,
        (PREFIX + "messages_dropped_total", ()): 19,
        (PREFIX + "slow_disconnects_total", ()): 23,
        (PREFIX + "input_wait_seconds_total", ()): 2.5,
        (PREFIX + "bytes_sent_total", ()): 17,
        (PREFIX + "lines_too_long_total", ()): 29,
        (PREFIX + "retained_lines", ()): 37,
        (PREFIX + "retained_bytes", ()): 41,
    }
    # The process's own, which an operator watches for leaks.
    names = {name for name, _ in exposed}
    assert {"process_open_fds", "process_max_fds", "process_resident_memory_bytes"} <= names


def test_retention_is_left_out_when_a_redis_stream_keeps_the_lines() -> None:
    statistics = dataclasses.replace(STATISTICS, retained_lines=None, retained_bytes=None)
    exposed = samples(exposition(registry_for(lambda: statistics)))
    assert not {name for name, _ in exposed if "retained" in name}


def test_help_and_type_lines_come_from_the_library() -> None:
    text = exposition(registry_for(lambda: STATISTICS)).decode()
    assert f"# TYPE {PREFIX}clients gauge\n" in text
    assert f"# TYPE {PREFIX}lines_read_total counter\n" in text
    assert f"# HELP {PREFIX}lines_read_total Lines read from the input and broadcast.\n" in text
    assert CONTENT_TYPE.startswith("text/plain; version=")


def test_a_label_is_escaped() -> None:
    hostile = 'a "quoted" \\ reason\nwith a newline'
    statistics = dataclasses.replace(STATISTICS, handshakes=MappingProxyType({hostile: 1}))
    text = exposition(registry_for(lambda: statistics))
    assert rb'{result="a \"quoted\" \\ reason\nwith a newline"} 1.0' in text
    assert samples(text)[(PREFIX + "connections_total", (("result", hostile),))] == 1


def test_the_statistics_are_asked_for_at_each_scrape() -> None:
    calls: list[Statistics] = []

    def statistics() -> Statistics:
        calls.append(dataclasses.replace(STATISTICS, lines_read=len(calls)))
        return calls[-1]

    registry = registry_for(statistics)
    assert calls == []
    for expected in (0, 1):
        exposed = samples(exposition(registry))
        assert exposed[(PREFIX + "lines_read_total", ())] == expected
    assert len(calls) == 2


def test_two_registries_do_not_share() -> None:
    first = registry_for(lambda: STATISTICS)
    second = registry_for(lambda: dataclasses.replace(STATISTICS, clients=0))
    assert samples(exposition(first))[(PREFIX + "clients", ())] == 3
    assert samples(exposition(second))[(PREFIX + "clients", ())] == 0
