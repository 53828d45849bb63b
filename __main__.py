"""``python -m fleetpilot``: the same entry point as the ``fleetpilot`` console script."""

import sys

from fleetpilot.agent.cli import main

sys.exit(main())
