"""Autobahn|Testsuite's fuzzing client against trio-broadcast's echo.

Run from the repository root, in a virtualenv where trio-broadcast is installed
(``nox -s conformance`` does both)::

    python conformance/autobahn.py [--cases '1.*,2.*'] [--exclude '9.*']

It sets up (or reuses) Python 2.7 with ``wstest``, starts the installed
``trio-broadcast`` command on 127.0.0.1, runs ``wstest -m fuzzingclient``
against its echo, prints a summary per case group, and exits non-zero when a
case in groups 1-11 failed. The full report is ``conformance/reports/servers/
index.html``.

The route to wstest
-------------------

wstest comes from the PyPI package ``autobahntestsuite`` (0.8.2, the last
release), which runs on Python 2.7 only, and Debian bookworm has no Python 2.
So it is built from Debian's and PyPI's own packages, into a cache folder
(``.nox/.cache/autobahn/``, nox's shared cache; reused across runs, rebuilt
when the recipe below changes), without touching the system's Python or apt:

1. Debian **bullseye** (``http://deb.debian.org/debian``, which still serves
   it): ``dists/bullseye/InRelease`` is checked with ``gpgv`` against
   ``/usr/share/keyrings/debian-archive-keyring.gpg`` (bookworm's keyring
   holds bullseye's keys), ``main/binary-<arch>/Packages.xz`` against the
   SHA-256 in it, and each ``.deb`` from ``pool/`` against the SHA-256 in
   ``Packages``: the trust chain apt itself uses. The packages
   (:data:`DEBS`) are unpacked with ``dpkg-deb -x``: the interpreter and its
   standard library, the headers (C extensions are compiled), and the two
   shared libraries that bookworm no longer has (libssl1.1, libffi7). Python
   finds its prefix from the executable's location, so it runs from there with
   ``LD_LIBRARY_PATH`` pointing at the unpacked libraries.
2. PyPI: pip 20.3.4 (the last pip for Python 2.7) is downloaded as a wheel by
   this Python's pip, and run from the wheel file to install itself,
   setuptools 44.1.1 and wheel 0.37.1 into the unpacked tree; then
   ``autobahntestsuite`` with every dependency pinned to a version that still
   supports Python 2.7 (:data:`WSTEST`). wsaccel and zope.interface compile
   with gcc against the unpacked headers.

The first set-up downloads about 15 MB from Debian (half of it the package
index) and 15 MB from PyPI, and takes about a minute; the cache then holds about
125 MiB. Later runs only check that the recipe is unchanged.

What runs
---------

All of RFC 6455's cases, ``*``, except 12.* and 13.*: those test
permessage-deflate, which trio-broadcast does not offer (its broadcast frames
are encoded once for every client), so they are listed as unsupported rather
than run. A case counts as failed when Autobahn says FAILED (for the behaviour
or the close), UNCLEAN, or NO_CLOSE; NON-STRICT, INFORMATIONAL and the
close's WRONG CODE or FAILED BY CLIENT do not fail the run. The server's log
is ``conformance/reports/trio-broadcast.log``; an error in it, or the server
exiting on its own, also fails the run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repository root: tests.wire
from tests.wire import trio_broadcast_command  # noqa: E402

DEFAULT_CACHE = REPO / ".nox" / ".cache" / "autobahn"
DEFAULT_REPORTS = REPO / "conformance" / "reports"

DEBIAN = "http://deb.debian.org/debian"
DEBIAN_ARCHIVE = "http://archive.debian.org/debian"
"""Where Debian moves a release some time after its support ends (bullseye's
LTS ended in August 2026): tried when the main mirror no longer has a file.
Every file is checked against the signed InRelease either way."""
SUITE = "bullseye"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEBS = (
    "python2.7-minimal",  # the interpreter
    "libpython2.7-minimal",  # the core of the standard library
    "libpython2.7-stdlib",  # the rest of it, with the extension modules
    "libpython2.7-dev",  # Python.h and pyconfig.h, to compile wsaccel and zope.interface
    "libssl1.1",  # for _ssl and _hashlib; bookworm has libssl3 only
    "libffi7",  # for _ctypes; bookworm has libffi8 only
)
PIP_WHEEL = "pip==20.3.4"
BOOTSTRAP = (PIP_WHEEL, "setuptools==44.1.1", "wheel==0.37.1")
WSTEST = (
    "autobahntestsuite==0.8.2",
    "autobahn==0.10.9",
    "txaio==2.1.0",
    "Twisted==20.3.0",
    "zope.interface==5.5.2",
    "Automat==20.2.0",
    "attrs==21.4.0",
    "constantly==15.1.0",
    "incremental==21.3.0",
    "hyperlink==21.0.0",
    "idna==2.10",
    "PyHamcrest==1.10.1",
    "pyOpenSSL==21.0.0",
    "cryptography==3.3.2",
    "cffi==1.15.1",
    "pycparser==2.21",
    "enum34==1.1.10",
    "ipaddress==1.0.23",
    "six==1.16.0",
    "service-identity==21.1.0",
    "pyasn1==0.5.1",
    "pyasn1-modules==0.3.0",
    "klein==20.6.0",
    "Tubes==0.2.1",
    "Werkzeug==1.0.1",
    "Jinja2==2.11.3",
    "MarkupSafe==1.1.1",
    "unittest2==1.1.0",
    "traceback2==1.4.0",
    "linecache2==1.0.0",
    "typing==3.10.0.0",
    "ujson==2.0.3",
    "wsaccel==0.6.6",
)
RECIPE = {"suite": SUITE, "debs": DEBS, "bootstrap": BOOTSTRAP, "wstest": WSTEST}
"""What the cached environment was built from: a change rebuilds it."""

DOWNLOAD_TIMEOUT = 60.0
PIP_TIMEOUT = 900.0
SERVER_START_TIMEOUT = 15.0
SERVER_STOP_TIMEOUT = 10.0
MAX_MESSAGE_SIZE = 32 * 1024 * 1024
"""Twice the largest message of the 9.* cases (16 MiB)."""

GROUPS = {
    "1": "framing",
    "2": "pings/pongs",
    "3": "reserved bits",
    "4": "opcodes",
    "5": "fragmentation",
    "6": "UTF-8 handling",
    "7": "close handling",
    "9": "limits/performance",
    "10": "misc",
    "12": "compression (payloads)",
    "13": "compression (parameters)",
}
UNSUPPORTED = {"12", "13"}
"""Groups that test permessage-deflate, which trio-broadcast does not offer."""
GATED = {str(number) for number in range(1, 12)}
"""Groups whose failures fail the run."""
OUTCOMES = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
COLUMNS = ("OK", "NS", "INFO", "UNIMP", "FAIL", "other")
LEGEND = (
    "NS: NON-STRICT, INFO: INFORMATIONAL, UNIMP: UNIMPLEMENTED, FAIL: FAILED, "
    "other: WRONG CODE, UNCLEAN, NO_CLOSE or FAILED BY CLIENT, listed below"
)
FAILING = {"FAILED", "UNCLEAN", "NO_CLOSE"}


class SetupError(Exception):
    """The Python 2.7/wstest environment could not be built; the message says why."""


class RunError(Exception):
    """The server or wstest did not run as they should; the message says why."""


def say(message: str) -> None:
    print(f"autobahn: {message}", flush=True)


# --- the Python 2.7 + wstest environment ---------------------------------------


@dataclass(frozen=True)
class Python2:
    """A ready Python 2.7 with wstest, and the environment it runs in."""

    root: Path

    @property
    def executable(self) -> Path:
        return self.root / "usr" / "bin" / "python2.7"

    def env(self) -> dict[str, str]:
        """This process's environment, minus what would mislead Python 2.7."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("PYTHON")
            and name not in {"VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV"}
        }
        libraries = [str(path.parent) for path in self.root.glob("usr/lib/*/libssl.so.1.1")]
        include = self.root / "usr" / "include"
        env.update(
            LD_LIBRARY_PATH=os.pathsep.join(libraries),
            # distutils would look in /usr/include/python2.7: add the unpacked headers.
            C_INCLUDE_PATH=os.pathsep.join([str(include / "python2.7"), str(include)]),
            PYTHONNOUSERSITE="1",
            # cryptography 3.3 warns on every import that Python 2 is deprecated.
            PYTHONWARNINGS="ignore",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
        )
        return env

    def run(self, *args: str, log: Path, timeout: float, what: str) -> None:
        """Run this Python with ``args``, output to ``log``; raise SetupError on failure."""
        command = [str(self.executable), *args]
        try:
            with log.open("ab") as output:
                output.write(f"\n$ {' '.join(command)}\n".encode())
                output.flush()
                subprocess.run(
                    command,
                    env=self.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=True,
                )
        except subprocess.TimeoutExpired:
            raise SetupError(f"{what}: no result within {timeout:g} s (log: {log})") from None
        except subprocess.CalledProcessError as exc:
            raise SetupError(
                f"{what} failed with exit status {exc.returncode}; the end of {log}:\n"
                + tail(log, 25)
            ) from None


def tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def download(url: str, what: str) -> bytes:
    """GET ``url``, or raise SetupError with the reason."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            data: bytes = response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise SetupError(
            f"could not download {what} from {url}: {exc}. Setting up wstest needs "
            f"Debian's archive ({DEBIAN} or {DEBIAN_ARCHIVE}, suite {SUITE}) and PyPI."
        ) from None
    return data


def debian_file(path: str, what: str) -> bytes:
    """A file of Debian's archive: from the main mirror, or the archive once moved there."""
    try:
        return download(f"{DEBIAN}/{path}", what)
    except SetupError:
        return download(f"{DEBIAN_ARCHIVE}/{path}", what)


def check_sha256(data: bytes, expected: str, what: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise SetupError(f"{what}: SHA-256 {actual}, expected {expected}: refusing to use it")


def debian_architecture() -> str:
    try:
        result = subprocess.run(
            ["dpkg", "--print-architecture"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SetupError(f"this needs Debian's dpkg (dpkg --print-architecture: {exc})") from None
    return result.stdout.strip()


def verified_release(cache: Path) -> str:
    """Bullseye's InRelease, its signature checked with gpgv: the signed text."""
    if shutil.which("gpgv") is None or not KEYRING.exists():
        raise SetupError(
            f"checking Debian's signature needs gpgv and {KEYRING} "
            "(apt-get install gpgv debian-archive-keyring)"
        )
    signed = cache / "InRelease"
    signed.write_bytes(debian_file(f"dists/{SUITE}/InRelease", f"{SUITE}'s InRelease"))
    try:
        result = subprocess.run(
            ["gpgv", "--keyring", str(KEYRING), "--output", "-", str(signed)],
            capture_output=True,
            check=True,
            timeout=60,
        )
    except subprocess.CalledProcessError as exc:
        raise SetupError(
            f"{SUITE}'s InRelease has no good signature from {KEYRING}:\n"
            + exc.stderr.decode(errors="replace")
        ) from None
    except subprocess.TimeoutExpired:
        raise SetupError("gpgv did not finish within 60 s") from None
    return result.stdout.decode()


def release_sha256(release: str, path: str) -> str:
    """The SHA-256 that a Release file gives for ``path``."""
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.rstrip() == "SHA256:"
            continue
        fields = line.split()
        if in_sha256 and len(fields) == 3 and fields[2] == path:
            return fields[0]
    raise SetupError(f"{SUITE}'s InRelease lists no {path}")


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    filename: str
    sha256: str


def find_debs(packages_index: str, wanted: Sequence[str]) -> list[Deb]:
    """Look ``wanted`` up in a Packages index (one stanza per package, blank-line separated)."""
    found: dict[str, Deb] = {}
    for stanza in packages_index.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            name, sep, value = line.partition(": ")
            if sep and not line.startswith(" "):
                fields[name] = value
        package = fields.get("Package", "")
        if package in wanted and package not in found:
            found[package] = Deb(package, fields["Version"], fields["Filename"], fields["SHA256"])
    missing = [package for package in wanted if package not in found]
    if missing:
        raise SetupError(f"{SUITE}'s Packages index has no {', '.join(missing)}")
    return [found[package] for package in wanted]


def fetch_debs(cache: Path) -> list[Path]:
    """Download (or reuse) the verified .deb files; return their paths."""
    arch = debian_architecture()
    say(f"checking Debian {SUITE}'s signed package index ({arch})")
    release = verified_release(cache)
    index_path = f"main/binary-{arch}/Packages.xz"
    packages_xz = debian_file(f"dists/{SUITE}/{index_path}", f"{SUITE}'s package index")
    check_sha256(packages_xz, release_sha256(release, index_path), index_path)
    debs = find_debs(lzma.decompress(packages_xz).decode(), DEBS)
    folder = cache / "debs"
    folder.mkdir(exist_ok=True)
    paths = []
    for deb in debs:
        path = folder / Path(deb.filename).name
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == deb.sha256:
            say(f"  {deb.package} {deb.version}: already downloaded")
        else:
            say(f"  {deb.package} {deb.version}: downloading")
            data = debian_file(deb.filename, deb.package)
            check_sha256(data, deb.sha256, deb.filename)
            path.write_bytes(data)
        paths.append(path)
    return paths


def unpack(debs: Sequence[Path], root: Path) -> None:
    for deb in debs:
        try:
            subprocess.run(
                ["dpkg-deb", "-x", str(deb), str(root)],
                check=True,
                capture_output=True,
                timeout=120,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SetupError(f"dpkg-deb could not unpack {deb.name}: {exc}") from None


def download_pip_wheel(cache: Path) -> Path:
    """pip's own wheel, fetched by this (Python 3) interpreter's pip."""
    wheels = cache / "wheels"
    wheels.mkdir(exist_ok=True)
    name = PIP_WHEEL.replace("==", "-") + "-py2.py3-none-any.whl"
    wheel = wheels / name
    if wheel.exists():
        return wheel
    say(f"downloading {PIP_WHEEL} from PyPI")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    try:
        subprocess.run(
            [*command, "--dest", str(wheels), PIP_WHEEL],
            check=True,
            capture_output=True,
            timeout=PIP_TIMEOUT,
        )
    except subprocess.CalledProcessError as exc:
        raise SetupError(
            f"could not download {PIP_WHEEL} from PyPI:\n" + exc.stderr.decode(errors="replace")
        ) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"could not download {PIP_WHEEL} from PyPI: {exc}") from None
    if not wheel.exists():
        raise SetupError(f"pip download did not produce {wheel}")
    return wheel


def build(cache: Path, target: Path) -> None:
    """Build the environment in a scratch folder, then move it to ``target``."""
    if shutil.which("gcc") is None:
        raise SetupError("wsaccel and zope.interface compile with gcc: apt-get install gcc")
    scratch = cache / "building"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    log = scratch / "setup.log"
    debs = fetch_debs(cache)
    say(f"unpacking {len(debs)} packages")
    unpack(debs, scratch)
    python = Python2(scratch)
    python.run("-c", "import ssl, ctypes, hashlib, zlib", log=log, timeout=60, what="Python 2.7")
    pip_wheel = download_pip_wheel(cache)
    say("installing pip, setuptools and wheel for Python 2.7")
    pip = str(pip_wheel / "pip")  # pip runs from its own wheel
    install = ["install", "--no-warn-script-location"]
    python.run(pip, *install, *BOOTSTRAP, log=log, timeout=PIP_TIMEOUT, what="pip bootstrap")
    say(f"installing {WSTEST[0]} and its dependencies (compiles wsaccel; about a minute)")
    python.run(
        "-m", "pip", *install, *WSTEST, log=log, timeout=PIP_TIMEOUT, what="pip install wstest"
    )
    check_wstest(python, log)
    (scratch / "recipe.json").write_text(json.dumps(RECIPE, indent=1) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    scratch.rename(target)


def check_wstest(python: Python2, log: Path) -> None:
    """Raise SetupError unless wstest and its accelerator import."""
    check = "import ssl, autobahntestsuite.wstest, wsaccel"
    python.run("-c", check, log=log, timeout=60, what="importing wstest")


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
    """Hold the cache's lock, so that two runs do not build it at once."""
    deadline = time.monotonic() + 2 * PIP_TIMEOUT + 300  # another run's whole set-up
    with (cache / "lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another run to finish setting up")
            while True:
                time.sleep(0.5)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SetupError(f"{cache} stayed locked by another run") from None
        yield


def wstest_environment(cache: Path) -> Python2:
    """The cached Python 2.7 with wstest, built first if missing or out of date."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / "python2.7"
    with locked(cache):
        recipe = target / "recipe.json"
        try:
            ready = json.loads(recipe.read_text()) == json.loads(json.dumps(RECIPE))
        except (OSError, ValueError):
            ready = False
        if ready:
            try:
                check_wstest(Python2(target), target / "setup.log")
            except SetupError as exc:
                say(f"the cached Python 2.7 is broken ({exc}): building it again")
                ready = False
        if ready:
            say(f"reusing Python 2.7 with wstest in {target}")
        else:
            say(f"setting up Python 2.7 with wstest in {target}")
            started = time.monotonic()
            build(cache, target)
            size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
            say(f"set up in {time.monotonic() - started:.0f} s ({size / 2**20:.0f} MiB)")
    return Python2(target)


# --- the server -----------------------------------------------------------------


def server_program() -> list[str]:
    """The installed command (beside this Python, else on PATH), as the start of an argv."""
    found = trio_broadcast_command()
    if found is None:
        raise RunError("no trio-broadcast command: install the package first (pip install .)")
    return [found]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    stopped_by_us: bool = False


def start_server(log: Path, program: list[str]) -> Server:
    """Start trio-broadcast on 127.0.0.1 and a free port; return once it accepts connections."""
    command = [
        *program,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-stdin",
        "--ping-interval",
        "0",
        "--max-message-size",
        str(MAX_MESSAGE_SIZE),
    ]
    say(f"starting {' '.join(command)}")
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
        )
    server = Server(process, log)
    try:
        server.port = wait_listening(server, time.monotonic() + SERVER_START_TIMEOUT)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_listening(server: Server, deadline: float) -> int:
    """The port from the server's 'listening on' line, once a connection to it succeeds."""
    listening = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)/")
    port = 0
    while True:
        if server.process.poll() is not None:
            raise RunError(
                f"trio-broadcast exited with status {server.process.returncode} at start-up:\n"
                + tail(server.log, 20)
            )
        if not port and (match := listening.search(server.log.read_text(errors="replace"))):
            port = int(match[1])
        if port:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return port
        if time.monotonic() > deadline:
            raise RunError(
                f"trio-broadcast was not listening within {SERVER_START_TIMEOUT:g} s:\n"
                + tail(server.log, 20)
            )
        time.sleep(0.05)


def stop_server(server: Server) -> None:
    """SIGTERM, a bounded wait, then SIGKILL."""
    if server.process.poll() is not None:
        return
    server.stopped_by_us = True
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        say(f"trio-broadcast did not stop within {SERVER_STOP_TIMEOUT:g} s of SIGTERM: killing it")
        server.process.kill()
        server.process.wait()


def server_problems(server: Server) -> list[str]:
    """Errors in the server's log, and an exit the server made on its own."""
    problems = []
    if not server.stopped_by_us:
        problems.append(f"trio-broadcast exited by itself with status {server.process.returncode}")
    elif server.process.returncode not in (0, -signal.SIGTERM):
        problems.append(f"trio-broadcast exited with status {server.process.returncode}")
    for line in server.log.read_text(errors="replace").splitlines():
        if re.match(r"trio-broadcast: (ERROR|CRITICAL):|Traceback", line):
            problems.append(f"server log: {line}")
    return problems


# --- wstest ---------------------------------------------------------------------


def write_spec(path: Path, outdir: Path, port: int, cases: list[str], exclude: list[str]) -> None:
    spec = {
        "outdir": str(outdir),
        "servers": [{"agent": "trio-broadcast", "url": f"ws://127.0.0.1:{port}"}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }
    path.write_text(json.dumps(spec, indent=2) + "\n")


def case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def run_wstest(python: Python2, spec: Path, log: Path, timeout: float) -> int:
    """Run the fuzzing client, printing each group as it starts; return the cases it planned."""
    command = [str(python.executable), "-m", "autobahntestsuite.wstest"]
    command += ["-m", "fuzzingclient", "-s", str(spec)]
    say(f"running wstest -m fuzzingclient (at most {timeout:g} s; log: {log})")
    deadline = time.monotonic() + timeout
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=spec.parent,
            env=python.env(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            planned = follow_wstest(process, log, deadline)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode != 0:
        raise RunError(f"wstest failed with exit status {process.returncode}:\n" + tail(log, 25))
    return planned


def follow_wstest(process: subprocess.Popen[bytes], log: Path, deadline: float) -> int:
    planned = 0
    group = ""
    with log.open("rb") as reading:
        while True:
            done = process.poll() is not None
            for line in reading.read().decode(errors="replace").splitlines():
                if match := re.match(r"Ok, will run (\d+) test cases", line):
                    planned = int(match[1])
                elif (match := re.match(r"Running test case ID (\S+)", line)) and (
                    match[1].split(".")[0] != group
                ):
                    group = match[1].split(".")[0]
                    say(f"  group {group} ({GROUPS.get(group, '?')})")
            if done:
                return planned
            if time.monotonic() > deadline:
                raise RunError("wstest did not finish in time:\n" + tail(log, 10))
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.5)


# --- the summary ------------------------------------------------------------------


@dataclass
class GroupResult:
    cases: int = 0
    behavior: collections.Counter[str] = field(default_factory=collections.Counter)
    close: collections.Counter[str] = field(default_factory=collections.Counter)
    duration_ms: int = 0


def summarize(
    index: dict[str, Any], reports: Path, excluded_groups: set[str]
) -> tuple[str, list[str]]:
    """The summary table, and one entry per failed case in groups 1-11."""
    groups: dict[str, GroupResult] = collections.defaultdict(GroupResult)
    failures: list[str] = []
    noteworthy: dict[str, list[str]] = collections.defaultdict(list)
    for case in sorted(index, key=case_key):
        result = index[case]
        group = groups[case.split(".")[0]]
        group.cases += 1
        group.behavior[result["behavior"]] += 1
        group.close[result["behaviorClose"]] += 1
        group.duration_ms += int(result.get("duration") or 0)
        failing = {result["behavior"], result["behaviorClose"]} & FAILING
        if failing and case.split(".")[0] in GATED:
            failures.append(describe_failure(case, result, reports))
        if result.get("remoteCloseCode") is None and not case_details(result, reports).get(
            "wasClean"
        ):
            noteworthy["no close frame from the server reached wstest"].append(case)
        for kind, outcome in (
            ("behavior", result["behavior"]),
            ("close", result["behaviorClose"]),
        ):
            if outcome not in {"OK", "INFORMATIONAL"}:
                noteworthy[f"{kind} {outcome}"].append(case)

    def counts(counter: collections.Counter[str]) -> list[str]:
        other = sum(n for outcome, n in counter.items() if outcome not in OUTCOMES)
        return [str(counter[outcome]) for outcome in OUTCOMES] + [str(other)]

    rows = [["group", "cases", *COLUMNS, *COLUMNS, "time"]]
    for number in sorted(set(groups) | (excluded_groups & UNSUPPORTED), key=int):
        name = f"{number} {GROUPS.get(number, '')}".strip()
        if number not in groups:
            rows.append([name, "-", "unsupported (no permessage-deflate): not run"])
            continue
        group = groups[number]
        time_s = f"{group.duration_ms / 1000:.1f} s"
        rows.append(
            [name, str(group.cases), *counts(group.behavior), *counts(group.close), time_s]
        )
    total_ms = sum(group.duration_ms for group in groups.values())
    total = ["total", str(sum(group.cases for group in groups.values()))]
    rows.append(total + [""] * 2 * len(COLUMNS) + [f"{total_ms / 1000:.1f} s"])
    notes = [f"{what}: {' '.join(cases)}" for what, cases in sorted(noteworthy.items())]
    text = format_table(rows) + f"\n  ({LEGEND}; time: the cases' own durations)"
    return text + "".join(f"\n  {note}" for note in notes), failures


def format_table(rows: list[list[str]]) -> str:
    """Cells 2-7 are the behaviour's outcomes, 8-13 the close's; short rows span the rest."""
    full = [row for row in rows if len(row) > 3]
    widths = [max(len(row[i]) for row in full) for i in range(len(full[0]))]
    widths[0] = max(len(row[0]) for row in rows)
    side = sum(widths[2:8]) + 2 * 5
    lines = [
        " " * (2 + widths[0] + 2 + widths[1] + 2)
        + "behavior".center(side, "-")
        + "   "
        + "behaviorClose".center(side, "-")
    ]
    for row in rows:
        if len(row) <= 3:
            lines.append(f"  {row[0].ljust(widths[0])}  {row[1].rjust(widths[1])}  {row[2]}")
            continue
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(cells[:8]) + "   " + "  ".join(cells[8:]))
    return "\n".join(lines)


def case_details(result: dict[str, Any], reports: Path) -> dict[str, Any]:
    """The case's own JSON report (description, expectation, wire log...), or {}."""
    report = reports / str(result.get("reportfile", ""))
    with contextlib.suppress(OSError, ValueError):
        details: dict[str, Any] = json.loads(report.with_suffix(".json").read_text())
        return details
    return {}


def describe_failure(case: str, result: dict[str, Any], reports: Path) -> str:
    details = case_details(result, reports)
    description = re.sub(r"<br\s*/?>", " ", str(details.get("description", "?")))
    return (
        f"{case}: behavior {result['behavior']}, close {result['behaviorClose']} "
        f"(remote close code {result.get('remoteCloseCode')})\n"
        f"    case: {description}\n"
        f"    expected: {details.get('expectation', '?')}\n"
        f"    result: {details.get('result', '?')} / {details.get('resultClose', '?')}"
    )


# --- main -----------------------------------------------------------------------


def patterns(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases", default="*", help="comma-separated case patterns to run (default: *)"
    )
    parser.add_argument(
        "--exclude",
        default="12.*,13.*",
        help="comma-separated case patterns to leave out (default: 12.*,13.*, "
        "permessage-deflate, which trio-broadcast does not offer)",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--reports", type=Path, default=DEFAULT_REPORTS)
    parser.add_argument(
        "--timeout", type=float, default=1200, help="seconds wstest may take (default: 1200)"
    )
    parser.add_argument(
        "--command",
        help="the server command to test, options appended (default: the trio-broadcast "
        "command beside this Python, else on PATH)",
    )
    parser.add_argument(
        "--setup-only", action="store_true", help="set up Python 2.7 and wstest, run nothing"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    python = wstest_environment(args.cache_dir.resolve())
    if args.setup_only:
        return 0
    reports = args.reports.resolve()
    outdir = reports / "servers"
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    cases, exclude = patterns(args.cases), patterns(args.exclude)
    excluded_groups = {p.split(".")[0] for p in exclude if re.fullmatch(r"\d+\.\*", p)}
    started = time.monotonic()
    program = shlex.split(args.command) if args.command else server_program()
    server = start_server(reports / "trio-broadcast.log", program)
    try:
        write_spec(reports / "fuzzingclient.json", outdir, server.port, cases, exclude)
        planned = run_wstest(
            python, reports / "fuzzingclient.json", reports / "wstest.log", args.timeout
        )
    finally:
        stop_server(server)
    elapsed = time.monotonic() - started
    try:
        index = json.loads((outdir / "index.json").read_text())["trio-broadcast"]
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"wstest wrote no usable report in {outdir}: {exc}") from None
    table, failures = summarize(index, outdir, excluded_groups)
    print(f"\nAutobahn|Testsuite fuzzingclient against trio-broadcast (echo), {len(index)} cases:")
    print(table)
    print(f"\nrun time {elapsed:.0f} s; report: {outdir / 'index.html'}")
    problems = server_problems(server)
    if len(index) < planned:
        problems.append(f"wstest planned {planned} cases but reported {len(index)}")
    if failures:
        print(f"\n{len(failures)} FAILED in groups 1-11:")
        for failure in failures:
            print(f"  {failure}")
    for problem in problems:
        print(f"problem: {problem}")
    if failures or problems:
        return 1
    print("\nno case failed in groups 1-11")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (SetupError, RunError) as exc:
        print(f"autobahn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
