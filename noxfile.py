"""Developer sessions. ``python3 -m nox`` runs lint, typecheck and tests.

Each session installs the package from this checkout into its own virtualenv,
so the tests exercise the installed ``trio-broadcast`` command, as a user gets it.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"
TEST_DEPS = [
    "pytest>=8",
    "pytest-trio>=0.8",
    "pytest-cov>=5",
    "hypothesis>=6.100",
    "websockets>=15",
    "trustme>=1.1",
]
LINT_DEPS = ["ruff>=0.8"]
TYPE_DEPS = ["mypy>=1.13", *TEST_DEPS, "nox"]
COVERAGE_FLOOR = 95


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """pytest with coverage: unit, in-process server and end-to-end command tests."""
    session.install(".", *TEST_DEPS)
    session.run(
        "pytest",
        "--cov",
        "--cov-report=term-missing:skip-covered",
        f"--cov-fail-under={COVERAGE_FLOOR}",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*LINT_DEPS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package, the tests and this file."""
    session.install(".", *TYPE_DEPS)
    session.run("mypy", "--strict", "trio_broadcast", "tests", "noxfile.py")
