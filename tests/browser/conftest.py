"""Without Playwright (any session but ``browser``), there is nothing to collect here."""

from __future__ import annotations

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("playwright") else ["test_*.py"]
