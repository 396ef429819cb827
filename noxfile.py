"""Developer sessions. ``python3 -m nox`` runs lint, typecheck, tests, browser, redis,
a smoke run of the benchmark (``bench_quick``), the Autobahn conformance run
(``conformance``) and the short forms of the fault storm and the soak
(``faults_quick``, ``soak_quick``); ``nox -s bench faults soak`` are the full ones.

Each session installs the package from this checkout into its own virtualenv,
so the tests exercise the installed ``trio-broadcast`` command, as a user gets it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.options.sessions = [
    "lint",
    "typecheck",
    "tests",
    "browser",
    "redis",
    "bench_quick",
    "conformance",
    "faults_quick",
    "soak_quick",
]
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"
TEST_DEPS = [
    "pytest>=8",
    "pytest-trio>=0.8",
    "pytest-cov>=5",
    "hypothesis>=6.100",
    "websockets>=15",
    "trustme>=1.1",
    "httpx>=0.27",
]
LINT_DEPS = ["ruff>=0.8", "import-linter>=2.1"]
TYPE_DEPS = ["mypy>=1.13", *TEST_DEPS, "nox"]
COVERAGE_FLOOR = 95
# Debian's build: Playwright's own browser download cannot run here.
CHROMIUM = "/usr/bin/chromium"
BROWSER_DEPS = ["playwright>=1.40"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """pytest with coverage: unit, in-process server and end-to-end command tests."""
    session.install(".", *TEST_DEPS)
    session.run(
        "pytest",
        "--cov",
        "--cov-report=term-missing:skip-covered",
        f"--cov-fail-under={COVERAGE_FLOOR}",
        "--ignore=tests/browser",
        "--ignore=tests/redis",
        *session.posargs,
    )


FUZZ_SECONDS = "120"


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """The fuzz tests (tests/fuzz) for longer: 120 s, or TRIO_BROADCAST_FUZZ_SECONDS."""
    session.install(".", *TEST_DEPS)
    seconds = os.environ.get("TRIO_BROADCAST_FUZZ_SECONDS", FUZZ_SECONDS)
    session.run(
        "pytest",
        "-s",
        "tests/fuzz",
        *session.posargs,
        env={"TRIO_BROADCAST_FUZZ_SECONDS": seconds},
    )


@nox.session(python=PYTHON)
def browser(session: nox.Session) -> None:
    """The live page in headless Chromium, driven by Playwright; saves docs/page.png."""
    if not os.path.exists(CHROMIUM):
        _install_chromium(session)
    session.install(".", *TEST_DEPS, *BROWSER_DEPS)
    session.run("pytest", "-m", "browser", "tests/browser", *session.posargs)


def _install_chromium(session: nox.Session) -> None:
    _apt_install(session, ["chromium"], lambda: os.path.exists(CHROMIUM), f"{CHROMIUM} exists")


def _apt_install(
    session: nox.Session, packages: Sequence[str], installed: Callable[[], bool], what: str
) -> None:
    """Install the Debian packages the session needs, or stop with a clear message."""
    names = " ".join(packages)
    how = f"install Debian's {names} so that {what} (apt-get install {names})"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        session.error(f"{names} missing and apt-get cannot run here as root: {how}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        session.run("apt-get", "update", external=True, env=env)
        session.run("apt-get", "install", "-y", *packages, external=True, env=env)
    except CommandFailed:
        session.error(f"apt-get could not install {names}: {how}")
    if not installed():
        session.error(f"apt-get installed {names}, but it is still not usable: {how}")


@nox.session(python=PYTHON)
def redis(session: nox.Session) -> None:
    """Several instances sharing one feed through a real redis-server (installed if missing)."""
    if shutil.which("redis-server") is None:
        _install_redis_server(session)
    session.install(".[redis]", *TEST_DEPS)
    session.run("pytest", "tests/redis", *session.posargs)


def _install_redis_server(session: nox.Session) -> None:
    _apt_install(
        session,
        ["redis-server"],
        lambda: shutil.which("redis-server") is not None,
        "redis-server is on PATH",
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and the import contracts (lint-imports).

    The contracts in pyproject.toml keep the package's layers (README "How it
    works"): an import that runs uphill, or a second module importing wsproto
    or coredis, fails here.
    """
    session.install(*LINT_DEPS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # From the checkout, without installing it: lint-imports reads the source tree.
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package, the tests, conformance/, bench/ and this file."""
    # With the redis extra, so that coredis's own types are checked against.
    session.install(".[redis]", *TYPE_DEPS)
    session.run(
        "mypy", "--strict", "trio_broadcast", "tests", "noxfile.py", "conformance", "bench"
    )


BENCH_DEPS = ["websockets>=15", "trio>=0.25", "trustme>=1.1"]


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The full side-by-side benchmark (about 5-9 minutes); prints the table, saves JSON.

    Then ``python bench/report.py --readme`` puts the new table into README.md.
    """
    _run_bench(session)


@nox.session(python=PYTHON)
def bench_quick(session: nox.Session) -> None:
    """A couple of minutes of every scenario: checks that the benchmark runs, not figures."""
    _run_bench(session, "--quick")


def _run_bench(session: nox.Session, *args: str) -> None:
    # With the redis extra: the R1/R2 rows run instances fed through Redis.
    _run_load_script(session, "bench/run.py", *args, package=".[redis]")


@nox.session(python=PYTHON)
def faults(session: nox.Session) -> None:
    """Fault storm (1,000 clients, 5 % misbehaving), resume storm (1,000 clients reset at
    once), ulimit -n, shutdown under load (~2 min).

    Prints the figures and fails on any broken check; see bench/faults.py.
    """
    _run_load_script(session, "bench/faults.py")


@nox.session(python=PYTHON)
def faults_quick(session: nox.Session) -> None:
    """The same checks with 200 clients, an 8 s storm and a 200-client resume storm (CI)."""
    _run_load_script(session, "bench/faults.py", "--quick")


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """100,000 connect-receive-disconnect cycles; fails on a leaked fd, task or memory (~5 min).

    See bench/soak.py.
    """
    _run_load_script(session, "bench/soak.py", node=False)


@nox.session(python=PYTHON)
def soak_quick(session: nox.Session) -> None:
    """5,000 cycles (CI)."""
    _run_load_script(session, "bench/soak.py", "--quick", node=False)


def _run_load_script(
    session: nox.Session, script: str, *args: str, node: bool = True, package: str = "."
) -> None:
    if node and (shutil.which("node") is None or shutil.which("npm") is None):
        session.error(f"{script} needs Node.js and npm on PATH (its load generator)")
    session.install(package, *BENCH_DEPS)
    session.run("python", script, *args, *session.posargs)


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """Autobahn|Testsuite's fuzzing client (``wstest -m fuzzingclient``) against the echo.

    Every RFC 6455 case but 12.* and 13.* (permessage-deflate, not offered);
    fails on a FAILED case in groups 1-11. The report goes to
    ``conformance/reports/``. ``nox -s conformance -- --cases '6.*'`` runs a
    subset (see ``python conformance/autobahn.py --help``).

    wstest (PyPI's autobahntestsuite 0.8.2) runs on Python 2.7 only, which
    bookworm lacks, so conformance/autobahn.py builds one in nox's shared cache
    (``.nox/.cache/autobahn/``, reused across runs) from Debian bullseye's
    packages (python2.7-minimal, libpython2.7-minimal, libpython2.7-stdlib,
    libpython2.7-dev, libssl1.1, libffi7; InRelease checked with gpgv, every
    file with its SHA-256; unpacked with ``dpkg-deb -x``), then PyPI's pip
    20.3.4, setuptools 44.1.1, wheel 0.37.1 and autobahntestsuite with its
    dependencies pinned to their last Python 2.7 releases. It needs gcc, gpgv
    and debian-archive-keyring (all on Debian's standard developer machines),
    and the system's Python is left untouched; the session installs those
    three (and the C library's headers) with apt-get when they are missing
    and Python 2.7 is not built yet.
    """
    cache = session.cache_dir / "autobahn"
    _install_build_tools(session, cache)
    session.install(".")
    session.run("python", "conformance/autobahn.py", "--cache-dir", str(cache), *session.posargs)


# What conformance/autobahn.py needs to build its Python 2.7: the Debian package
# that provides it, and how to tell that it is there.
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
BUILD_TOOLS: dict[str, Callable[[], bool]] = {
    "gcc": lambda: shutil.which("gcc") is not None,
    "libc6-dev": lambda: os.path.exists("/usr/include/stdio.h"),
    "gpgv": lambda: shutil.which("gpgv") is not None,
    "debian-archive-keyring": lambda: os.path.exists(DEBIAN_KEYRING),
}


def _install_build_tools(session: nox.Session, cache: Path) -> None:
    if (cache / "python2.7" / "recipe.json").exists():
        return  # built already; autobahn.py names what is missing if it must rebuild
    missing = [package for package, present in BUILD_TOOLS.items() if not present()]
    if missing:
        _apt_install(
            session,
            missing,
            lambda: all(present() for present in BUILD_TOOLS.values()),
            "conformance/autobahn.py can check Debian's signatures and compile wstest's "
            "accelerators",
        )
