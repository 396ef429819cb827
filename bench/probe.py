"""What the reliability runs read off a running server, from outside it.

``/proc`` gives what the kernel sees (descriptors, resident memory); the
server's own ``/metrics`` gives what it knows (open connections, live Trio
tasks). Both are read without changing what they measure much: one HTTP
request holds one connection for a moment, which :func:`settled` allows for.
"""

from __future__ import annotations

import os
import time
import urllib.request
from dataclasses import dataclass

from run import rss_kb

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Reading:
    """One look at a server process."""

    fds: int
    rss_kb: int
    open_connections: int
    """Not counting the request that asked (it is open while being answered)."""
    tasks: int
    clients: int


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metrics(port: int, timeout: float = 5.0) -> dict[str, float]:
    """The server's unlabelled metrics, by name."""
    url = f"http://{HOST}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def read(pid: int, port: int) -> Reading:
    # /proc first, so that the metrics request's own socket is not counted.
    fds, rss = fd_count(pid), rss_kb(pid)
    values = metrics(port)
    return Reading(
        fds=fds,
        rss_kb=rss,
        open_connections=int(values["trio_broadcast_open_connections"]) - 1,
        tasks=int(values["trio_broadcast_tasks"]),
        clients=int(values["trio_broadcast_clients"]),
    )


def settled(pid: int, port: int, timeout: float = 20.0) -> Reading:
    """A reading once the server holds no connection but the asking one.

    Clients that just left may still be closing (a close handshake, a timeout
    on a peer that vanished); this waits, within ``timeout``, until they have,
    and until two readings in a row agree on descriptors and tasks. A server at
    its descriptor limit may refuse the request itself: that counts as not
    yet. Raises ``RuntimeError`` if it does not settle in time.
    """
    deadline = time.monotonic() + timeout
    previous: Reading | None = None
    while True:
        try:
            reading: Reading | None = read(pid, port)
        except OSError:  # urllib's HTTPError (a 503) and URLError are OSErrors
            reading = None
        if (
            reading is not None
            and previous is not None
            and reading.open_connections == 0
            and (reading.fds, reading.tasks) == (previous.fds, previous.tasks)
        ):
            return reading
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"the server on port {port} did not settle within {timeout:g} s "
                f"(last reading: {reading})"
            )
        previous = reading
        time.sleep(0.1)
