"""``python -m tlc`` runs the command line (used by sweeps to start each run's process)."""

import sys

from tlc.cli import main

sys.exit(main())
