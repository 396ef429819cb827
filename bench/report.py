#!/usr/bin/env python3
"""Render bench results (JSON written by bench/run.py) as a markdown table.

    python bench/report.py [bench/results/latest.json]

The same code prints the table at the end of ``bench/run.py``, so the README's
table can be regenerated from the saved JSON at any time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Result = dict[str, Any]

SUBJECT = "trio-broadcast"
TIMES = "\u00d7"  # multiplication sign
NONE = "\u2013"  # en dash: nothing to show
LOADGEN_BUSY_PCT = 85.0
"""Load generator CPU at or above this in the window: it may be the bottleneck (†)."""
BACKGROUND_BUSY_PCT = 25.0
"""CPU used by other processes on the machine at or above this: noisy cell (‡)."""
REDIS_INSTANCES = 2
"""Serving instances in the R rows (bench/run.py's REDIS_INSTANCES)."""
NEAR_CEILING = 0.8
"""A throughput at or above this fraction of the load generator's ceiling (§)."""


# ---------------------------------------------------------------- number formats


def ms(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 1:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def rate(value: float | None) -> str:
    if value is None:
        return "?"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e4:
        return f"{value / 1e3:.0f} k"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.0f}"


def pct(value: float | None) -> str:
    if value is None:
        return "?"
    if value >= 100:
        return "100 %"
    if value >= 99:
        return f"{value:.2f} %"
    return f"{value:.1f} %"


def mb(kb: float | None) -> str:
    return "?" if kb is None else f"{kb / 1024:.1f}"


def _get(cell: Result, *path: str) -> Any:
    value: Any = cell
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


# ---------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    scenario: str
    title: Callable[[Result], str]
    cell: Callable[[Result], str]
    headline: Callable[[Result], float | None]
    headline_name: str
    lower_is_better: bool
    ceiling: str | None = None
    """The load generator's ceiling this headline compares with: "broadcast" or "echo"."""
    idle_ok: bool = False
    """The row reads a cell that only connected (C1, or the echo-only floor in S3)."""


def _params(results: Result, scenario: str) -> Result:
    for sc in results.get("scenarios", []):
        if sc["id"] == scenario:
            return dict(sc)
    return {}


def _delivered(cell: Result, key: str = "delivered_pct") -> str:
    text = pct(cell.get(key))
    gaps = cell.get("gaps") or 0
    if gaps:
        text += f", {gaps:,.0f} gaps"
    closed = (cell.get("clients_connected") or 0) - (cell.get("clients_open_at_end") or 0)
    if closed > 0 and key == "delivered_pct":
        text += f", {closed} closed by server"
    return text


def _feed_note(cell: Result) -> str:
    feed = cell.get("feed") or {}
    target = feed.get("target_lines_per_s")
    got = feed.get("lines_per_s")
    if target and got is not None and got < 0.95 * target:
        return f"; stdin took only {rate(got)} lines/s"
    return ""


def _connected_note(cell: Result) -> str:
    connect = cell.get("connect") or {}
    requested, connected = connect.get("requested"), connect.get("connected")
    if requested and connected is not None and connected < requested:
        return f" ({connected:,}/{requested:,} connected)"
    return ""


def _codes(cell: Result) -> str:
    codes = cell.get("close_codes") or {}
    return ", ".join(f"{code} x{count}" for code, count in sorted(codes.items()))


def _trouble(cell: Result) -> str | None:
    """Why a broadcast cell has no latency to show, or None."""
    connected = cell.get("clients_connected") or 0
    if cell.get("mode") != "echo" and not cell.get("expected"):
        return "no measured line got through: the server stopped reading stdin"
    if _get(cell, "latency", "samples"):
        return None
    if connected and not cell.get("clients_open_at_end"):
        first = cell.get("first_close_s")
        when = "" if first is None else f", the first {first:+.1f} s from the window's start"
        return f"every client was closed by the server ({_codes(cell)}{when})"
    return f"no measured line arrived, {cell.get('drain_s', 0):.0f} s after the window"


def s1_cell(cell: Result) -> str:
    lat = cell.get("latency") or {}
    if trouble := _trouble(cell):
        return trouble + _feed_note(cell)
    return (
        f"{ms(lat.get('p50_ms'))} / {ms(lat.get('p99_ms'))} / {ms(lat.get('max_ms'))} ms, "
        f"{_delivered(cell)}{_feed_note(cell)}"
    )


def _via_redis(results: Result, scenario: str) -> str:
    return f"{_n(results, scenario)} clients on {REDIS_INSTANCES} instances fed through Redis"


def s2_cell(cell: Result) -> str:
    feed = cell.get("feed") or {}
    connected = cell.get("clients_connected") or 0
    open_ = cell.get("clients_open_at_end") or 0
    caught_up = cell.get("clients_caught_up") or 0
    text = (
        f"{rate(cell.get('deliveries_per_s'))}/s (stdin {rate(feed.get('lines_per_s'))} lines/s); "
    )
    if caught_up:
        text += f"{pct(cell.get('delivered_caught_up_pct'))} to the {caught_up} that kept up"
    else:
        text += "no client kept up"
    if open_ > caught_up:
        text += f", {open_ - caught_up} behind"
    if connected > open_:
        text += f", {connected - open_} closed by server ({_codes(cell)})"
    return text


def s2w_cell(cell: Result) -> str:
    """S2 with ``--on-full wait``: what counts is every line to every client."""
    feed = cell.get("feed") or {}
    connected = cell.get("clients_connected") or 0
    open_ = cell.get("clients_open_at_end") or 0
    text = (
        f"{rate(cell.get('deliveries_per_s'))}/s (stdin {rate(feed.get('lines_per_s'))} lines/s); "
        f"{pct(cell.get('delivered_pct'))} of the lines to all {connected} clients"
    )
    if cell.get("gaps"):
        text += f", {cell['gaps']:,.0f} gaps"
    if connected > open_:
        text += f", {connected - open_} closed by server ({_codes(cell)})"
    return text


def s3_cell(cell: Result) -> str:
    lat = cell.get("latency") or {}
    if trouble := _trouble(cell):
        return trouble + _connected_note(cell) + _feed_note(cell)
    return (
        f"{ms(lat.get('p99_ms'))} ms (p50 {ms(lat.get('p50_ms'))}), "
        f"{_delivered(cell)}{_connected_note(cell)}{_feed_note(cell)}"
    )


def rss_cell(cell: Result) -> str:
    value = cell.get("rss_per_connection_kb")
    return ("?" if value is None else f"{value:.1f} KB") + _connected_note(cell)


def connect_cell(cell: Result) -> str:
    connect = cell.get("connect") or {}
    return f"{connect.get('connect_rate', 0):,.0f} /s{_connected_note(cell)}"


def connect_time_cell(cell: Result) -> str:
    connect = cell.get("connect") or {}
    return (
        f"{connect.get('connect_s', 0):.1f} s ({connect.get('connect_rate', 0):,.0f} /s)"
        f"{_connected_note(cell)}"
    )


def scale_rss_cell(cell: Result) -> str:
    return f"{rss_cell(cell)}; {mb(cell.get('rss_connected_kb'))} MB in all"


def s4_cell(cell: Result) -> str:
    lat = cell.get("latency") or {}
    if cell.get("stuck_dropped"):
        stuck = f"stuck dropped {cell.get('stuck_dropped_after_s', 0):.1f} s after joining"
    else:
        stuck = "stuck never dropped"
        queued = cell.get("stuck_server_send_queue_kb") or 0
        if queued >= 1:
            size = f"{mb(queued)} MB" if queued >= 1024 else f"{queued:.0f} KB"
            stuck += f" ({size} for it in the server's kernel send buffer)"
    others = _trouble(cell) or f"{ms(lat.get('p99_ms'))} ms, {_delivered(cell)}"
    return (
        f"{others}; {stuck}; RSS "
        f"{mb(cell.get('rss_start_kb'))} → {mb(cell.get('rss_end_kb'))} MB "
        f"(peak {mb(cell.get('rss_peak_kb'))}){_feed_note(cell)}"
    )


def s4c_cell(cell: Result) -> str:
    lat = cell.get("latency") or {}
    if trouble := _trouble(cell):
        return trouble + _feed_note(cell)
    return f"{ms(lat.get('p99_ms'))} ms (p50 {ms(lat.get('p50_ms'))}), {_delivered(cell)}"


def s5_cell(cell: Result) -> str:
    lat = cell.get("latency") or {}
    if not cell.get("round_trips_per_s"):
        closed = (cell.get("clients_connected") or 0) - (cell.get("clients_open_at_end") or 0)
        return f"no echo came back ({closed} closed by server: {_codes(cell)})"
    return f"{rate(cell.get('round_trips_per_s'))}/s (p99 round trip {ms(lat.get('p99_ms'))} ms)"


def _p99(cell: Result) -> float | None:
    value = _get(cell, "latency", "p99_ms")
    return float(value) if value is not None else None


def _n(results: Result, scenario: str) -> str:
    return f"{_params(results, scenario).get('clients', '?'):,}"


def _concurrency(results: Result) -> str:
    return str(results.get("connect_concurrency", "?"))


ROWS = [
    Row(
        "S1",
        lambda r: f"S1: {_n(r, 'S1')} clients, 1,000 lines/s: p50 / p99 / max latency, delivered",
        s1_cell,
        _p99,
        "p99",
        lower_is_better=True,
    ),
    Row(
        "R1",
        lambda r: (
            f"R1: S1 with {_via_redis(r, 'R1')} (stdin → publisher → Redis → instances): "
            "p50 / p99 / max latency, delivered"
        ),
        s1_cell,
        _p99,
        "p99",
        lower_is_better=True,
    ),
    Row(
        "S2",
        lambda r: (
            f"S2: {_n(r, 'S2')} clients, lines as fast as the pipe takes them: "
            "deliveries/s, delivered"
        ),
        s2_cell,
        lambda c: c.get("deliveries_per_s"),
        "deliveries/s",
        lower_is_better=False,
        ceiling="broadcast",
    ),
    Row(
        "R2",
        lambda r: f"R2: S2 with {_via_redis(r, 'R2')}: deliveries/s, delivered",
        s2_cell,
        lambda c: c.get("deliveries_per_s"),
        "deliveries/s",
        lower_is_better=False,
        ceiling="broadcast",
    ),
    Row(
        "T1",
        lambda r: "T1: S1 over wss:// (TLS): p50 / p99 / max latency, delivered",
        s1_cell,
        _p99,
        "p99",
        lower_is_better=True,
    ),
    Row(
        "T2",
        lambda r: "T2: S2 over wss:// (TLS): deliveries/s, delivered",
        s2_cell,
        lambda c: c.get("deliveries_per_s"),
        "deliveries/s",
        lower_is_better=False,
        ceiling="broadcast",
    ),
    Row(
        "S2W",
        lambda r: (
            f"S2W: S2 with `--on-full wait` ({_n(r, 'S2W')} clients; the others as in S2): "
            "deliveries/s, lines delivered to every client"
        ),
        s2w_cell,
        lambda c: c.get("deliveries_per_s"),
        "deliveries/s",
        lower_is_better=False,
        ceiling="broadcast",
    ),
    Row(
        "S3",
        lambda r: f"S3: {_n(r, 'S3')} clients, 10 lines/s: p99 latency, delivered",
        s3_cell,
        _p99,
        "p99",
        lower_is_better=True,
    ),
    Row(
        "S3",
        lambda r: f"S3: RSS per connection ({_n(r, 'S3')} idle clients)",
        rss_cell,
        lambda c: c.get("rss_per_connection_kb"),
        "KB/conn",
        lower_is_better=True,
        idle_ok=True,
    ),
    Row(
        "S3",
        lambda r: (
            f"Connect rate: opening {_n(r, 'S3')} clients, {_concurrency(r)} handshakes in flight"
        ),
        connect_cell,
        lambda c: _get(c, "connect", "connect_rate"),
        "conn/s",
        lower_is_better=False,
        idle_ok=True,
    ),
    Row(
        "S4",
        lambda r: (
            f"S4: {_n(r, 'S4')} clients + 1 that never reads, 1,000 lines/s of 1 KB: "
            "p99 of the others, delivered, stuck client, server RSS"
        ),
        s4_cell,
        _p99,
        "p99",
        lower_is_better=True,
    ),
    Row(
        "S4c",
        lambda r: f"S4 control: the same {_n(r, 'S4c')} clients, no stuck client: p99",
        s4c_cell,
        _p99,
        "p99",
        lower_is_better=True,
    ),
    Row(
        "S5",
        lambda r: f"S5: {_n(r, 'S5')} clients echo ping-pong: round trips/s",
        s5_cell,
        lambda c: c.get("round_trips_per_s"),
        "rt/s",
        lower_is_better=False,
    ),
    Row(
        "C1",
        lambda r: f"C1: {_n(r, 'C1')} idle clients: server RSS per connection, and in all",
        scale_rss_cell,
        lambda c: c.get("rss_per_connection_kb"),
        "KB/conn",
        lower_is_better=True,
        idle_ok=True,
    ),
    Row(
        "C1",
        lambda r: (
            f"C1: connect time of the {_n(r, 'C1')} clients, {_concurrency(r)} handshakes in "
            "flight"
        ),
        connect_time_cell,
        lambda c: _get(c, "connect", "connect_rate"),
        "conn/s",
        lower_is_better=False,
        idle_ok=True,
    ),
]


# ---------------------------------------------------------------- the table


def _marks(cell: Result) -> str:
    marks = ""
    cpu = cell.get("cpu") or {}
    if (cpu.get("loadgen_cpu_pct") or 0) >= LOADGEN_BUSY_PCT:
        marks += "†"
    if (cpu.get("other_cpu_pct") or 0) >= BACKGROUND_BUSY_PCT:
        marks += "‡"
    if cell.get("server_exit"):
        marks += " (server exited)"
    return marks


def _ceiling_value(results: Result, mode: str | None) -> float | None:
    if mode is None:
        return None
    measured = _get(results, "ceiling", mode) or {}
    value = measured.get("deliveries_per_s" if mode == "broadcast" else "round_trips_per_s")
    return float(value) if value else None


def render_cell(row: Row, cell: Result | None, ceiling: float | None = None) -> str:
    if cell is None:
        return NONE
    if not cell.get("ok"):
        reason = str(cell.get("error", "failed")).replace("|", "/").replace("\n", " ")
        return f"n/a ({reason[:120]})"
    if cell.get("idle") and not row.idle_ok:
        return "n/a (echo only: broadcasts nothing)"
    try:
        text = row.cell(cell) + _marks(cell)
    except (TypeError, ValueError, KeyError) as exc:
        return f"n/a (cannot render: {exc})"
    value = row.headline(cell)
    if ceiling and value is not None and value >= NEAR_CEILING * ceiling:
        text += "§"
    return text


def ratio(row: Row, subject: Result | None, peer: Result | None) -> str:
    if not subject or not peer or not subject.get("ok") or not peer.get("ok"):
        return NONE
    if not row.idle_ok and (subject.get("idle") or peer.get("idle")):
        return NONE
    a, b = row.headline(subject), row.headline(peer)
    if a is None or b is None or b == 0:
        return NONE
    value = a / b
    better = value < 1 if row.lower_is_better else value > 1
    if value < 0.1:
        text = f"{value:.2g}{TIMES}"
    elif value < 10:
        text = f"{value:.2f}{TIMES}"
    else:
        text = f"{value:.0f}{TIMES}"
    return f"**{text}**" if better else text


def table(results: Result) -> str:
    servers: list[str] = list(results.get("servers", []))
    ran = {sc["id"] for sc in results.get("scenarios", [])}
    peers = [s for s in servers if s != SUBJECT] if SUBJECT in servers else []
    header = ["scenario", *servers, *(f"{SUBJECT} / {p} (headline)" for p in peers)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    cells = results.get("results", {})
    for row in ROWS:
        if row.scenario not in ran:
            continue
        ceiling = _ceiling_value(results, row.ceiling)
        rendered = [render_cell(row, cells.get(s, {}).get(row.scenario), ceiling) for s in servers]
        subject = cells.get(SUBJECT, {}).get(row.scenario)
        ratios = [
            f"{ratio(row, subject, cells.get(p, {}).get(row.scenario))} {row.headline_name}"
            for p in peers
        ]
        lines.append("| " + " | ".join([row.title(results), *rendered, *ratios]) + " |")
    return "\n".join(lines)


FLOOR = "trio-websocket-alone"
"""The floor: trio-websocket accepting and echoing, nothing else (bench/peers)."""
PAIR = (SUBJECT, FLOOR)
"""The two servers of a connect-rate pair (``bench/run.py``'s ``run_connect_pairs``)."""


@dataclass(frozen=True)
class Target:
    """Issue 14's target for one figure: trio-broadcast ÷ the floor, in the same run."""

    title: str
    scenario: str
    headline: Callable[[Result], float | None]
    limit: float
    lower_is_better: bool
    figure: Callable[[float], str]
    paired: bool = False
    """Decided by the interleaved pairs (``connect_pairs``) when the run has them."""


TARGETS = [
    Target(
        "RSS per idle connection (S3)",
        "S3",
        lambda c: c.get("rss_per_connection_kb"),
        1.2,
        lower_is_better=True,
        figure=lambda v: f"{v:.1f} KB",
    ),
    Target(
        "connect rate (S3)",
        "S3",
        lambda c: _get(c, "connect", "connect_rate"),
        0.9,
        lower_is_better=False,
        figure=lambda v: f"{v:,.0f} /s",
        paired=True,
    ),
    Target(
        "echo round trips/s (S5)",
        "S5",
        lambda c: c.get("round_trips_per_s"),
        0.95,
        lower_is_better=False,
        figure=lambda v: f"{rate(v)}/s",
    ),
]


def _figure(target: Target, cell: Result | None) -> float | None:
    if not cell or not cell.get("ok"):
        return None
    value = target.headline(cell)
    return float(value) if value else None


def floor_table(results: Result) -> str | None:
    """trio-broadcast against the floor, with issue 14's targets; ``None`` if not both ran."""
    servers = results.get("servers", [])
    ran = {sc["id"] for sc in results.get("scenarios", [])}
    targets = [t for t in TARGETS if t.scenario in ran]
    if SUBJECT not in servers or FLOOR not in servers or not targets:
        return None
    cells = results.get("results", {})
    lines = [
        f"| against the floor, same run | {SUBJECT} | {FLOOR} | ratio | target | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    pairs = results.get("connect_pairs") or {}
    measured = [pair for pair in pairs.get("pairs", []) if "ratio" in pair]
    for target in targets:
        ours = _figure(target, cells.get(SUBJECT, {}).get(target.scenario))
        floor = _figure(target, cells.get(FLOOR, {}).get(target.scenario))
        value = None if ours is None or floor is None else ours / floor
        title = target.title
        if target.paired and measured:
            ours, floor = _median(measured, SUBJECT), _median(measured, FLOOR)
            value = statistics.median(pair["ratio"] for pair in measured)
            title += f": median of {_count(len(measured), 'interleaved pair')}¶"
        limit = f"{'≤' if target.lower_is_better else '≥'} {target.limit:g}{TIMES}"
        if value is None:
            verdict, shown = "not measured", NONE
        else:
            met = value <= target.limit if target.lower_is_better else value >= target.limit
            verdict, shown = ("pass" if met else "**fail**"), f"{value:.2f}{TIMES}"
        figures = [NONE if v is None else target.figure(v) for v in (ours, floor)]
        lines.append(f"| {title} | {' | '.join(figures)} | {shown} | {limit} | {verdict} |")
    if pairs:
        lines += ["", connect_pairs_note(pairs)]
    return "\n".join(lines)


def connect_pairs_note(pairs: Result) -> str:
    """What the ¶ row was decided on: each pair of connect bursts, in the order run."""
    shown = "; ".join(connect_pair_line(n, pair) for n, pair in enumerate(pairs["pairs"]))
    return (
        f"¶ Connect rate from pairs of bursts of {pairs['clients']:,} clients, one against "
        f"each server, back to back: the columns are each server's median rate, the ratio is "
        f"the median of the pairs' ratios (the S3 row above is one cell each, minutes apart). "
        f"{shown}."
    )


def _median(pairs: list[Result], name: str) -> float:
    """``name``'s median connect rate over ``pairs`` (each has both servers' rates)."""
    return statistics.median(float(pair[name]) for pair in pairs)


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def connect_pair_line(n: int, pair: Result) -> str:
    """One pair of connect bursts, briefly: its ratio, the two rates, CPU per connect."""
    if "ratio" not in pair:
        return f"pair {n + 1}: n/a ({pair.get('error')})"
    first = "floor first" if pair["order"][0] == FLOOR else "ours first"
    cpu = ""
    if pair.get("cpu_ratio") is not None:
        cpu = (
            f"; server CPU per connect {pair[f'{SUBJECT}_cpu_us']:,.0f} ÷ "
            f"{pair[f'{FLOOR}_cpu_us']:,.0f} µs = {pair['cpu_ratio']:.2f}{TIMES}"
        )
    noisy = any(
        (pair.get(f"{name}_background_cpu_pct_before") or 0) >= BACKGROUND_BUSY_PCT
        for name in PAIR
    )
    return (
        f"pair {n + 1}: {pair['ratio']:.2f}{TIMES}{'‡' if noisy else ''} "
        f"({pair[SUBJECT]:,.0f} ÷ {pair[FLOOR]:,.0f} /s{cpu}; {first})"
    )


def machine_line(results: Result) -> str:
    m = results.get("machine", {})
    mode = "quick (smoke test, not comparable)" if results.get("quick") else "full"
    return (
        f"Machine: {m.get('nproc')} cores, {m.get('cpu_model')}, Linux {m.get('kernel')}; "
        f"Python {m.get('python')}, Node {m.get('node') or 'n/a'}, ws {m.get('ws') or 'n/a'}, "
        f"websockets {m.get('websockets')}, trio {m.get('trio')}, "
        f"trio-websocket {m.get('trio_websocket')}; {m.get('pinning')}. "
        f"Run {results.get('started_utc')} ({mode}); background CPU at start "
        f"{results.get('background_cpu_pct_at_start', 0):.0f} %."
    )


def ceiling_line(results: Result) -> str:
    ceiling = results.get("ceiling")
    if not ceiling:
        return "Load generator ceiling: not measured."
    blast, echo = ceiling.get("broadcast", {}), ceiling.get("echo", {})
    if "error" in blast:
        fanout = f"n/a ({blast['error']})"
    else:
        cpu = _get(blast, "cpu", "loadgen_cpu_pct") or 0
        fanout = (
            f"receives **{rate(blast.get('deliveries_per_s'))} deliveries/s** "
            f"({pct(blast.get('delivered_open_pct'))} delivered, its CPU {cpu:.0f} %)"
        )
    if "error" in echo:
        pingpong = f"n/a ({echo['error']})"
    else:
        cpu = _get(echo, "cpu", "loadgen_cpu_pct") or 0
        pingpong = (
            f"echo ping-pong at least {rate(echo.get('round_trips_per_s'))} round trips/s "
            f"(its CPU {cpu:.0f} %; a lower bound: the echo server pays the same system calls "
            "per round trip)"
        )
    return (
        f"Load generator ceiling ({ceiling.get('clients')} clients, "
        f"{ceiling.get('line_size')}-byte messages, against a Node server on the server core "
        f"that writes pre-encoded frames): {fanout}; {pingpong}."
    )


def notes(results: Result) -> str:
    parser = results.get("loadgen_parser", "raw")
    return (
        f"Ratios: {SUBJECT}'s headline figure divided by the peer's; **bold** where "
        f"{SUBJECT} is better (latency, RSS: lower; rates: higher). "
        f"† the load generator used ≥ {LOADGEN_BUSY_PCT:.0f} % of its core: it may be the "
        f"limit. ‡ other processes used ≥ {BACKGROUND_BUSY_PCT:.0f} % of a core during the "
        f"window: noisy. § within {100 - 100 * NEAR_CEILING:.0f} % of (or above) the load "
        "generator's measured ceiling: the load generator, not the server, may be the limit. "
        f"Load generator receive path: {parser}."
    )


def render(results: Result) -> str:
    parts = [machine_line(results), ceiling_line(results), table(results)]
    if (against_floor := floor_table(results)) is not None:
        parts.append(against_floor)
    return "\n\n".join([*parts, notes(results)])


def progress_line(scenario: str, cell: Result) -> str:
    """One short line per finished cell, printed while the run goes on."""
    if not cell.get("ok"):
        return f"n/a ({cell.get('error')})"
    row = next(
        row for row in ROWS if row.scenario == scenario and (row.idle_ok or not cell.get("idle"))
    )
    cpu = cell.get("cpu") or {}
    return (
        f"{render_cell(row, cell)}  [server {cpu.get('server_cpu_pct', 0):.0f} %, "
        f"loadgen {cpu.get('loadgen_cpu_pct', 0):.0f} %, other {cpu.get('other_cpu_pct', 0):.0f} "
        f"% CPU; {cell.get('elapsed_s', 0):.1f} s]"
    )


README_BEGIN = "<!-- bench:begin (generated by python bench/report.py --readme) -->"
README_END = "<!-- bench:end -->"


def with_table(readme: str, rendered: str) -> str:
    """``readme`` with the text between the bench markers replaced by ``rendered``."""
    before, begin, rest = readme.partition(README_BEGIN)
    _, end, after = rest.partition(README_END)
    if not begin or not end:
        raise SystemExit(f"README.md has no {README_BEGIN!r} ... {README_END!r} block")
    return f"{before}{README_BEGIN}\n{rendered}\n{README_END}{after}"


def main(argv: list[str]) -> int:
    """``report.py [RESULTS.json] [--readme]``: print the table; ``--readme`` also writes it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "results",
        nargs="?",
        type=Path,
        default=Path(__file__).parent / "results" / "latest.json",
        help="a results file written by bench/run.py (default: bench/results/latest.json)",
    )
    parser.add_argument("--readme", action="store_true", help="also put the table into README.md")
    args = parser.parse_args(argv[1:])
    try:
        results = json.loads(args.results.read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read {args.results}: {exc}")
    rendered = render(results)
    print(rendered)
    if args.readme:
        readme = Path(__file__).parent.parent / "README.md"
        readme.write_text(with_table(readme.read_text(), rendered))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
