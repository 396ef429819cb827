"""``python -m trio_broadcast``: the same as the ``trio-broadcast`` command."""

import sys

from .cli import main

sys.exit(main())
