"""``python -m lab.clocksim KIND --link PATH [model options]``: run one simulator."""

import sys

from lab.clocksim.cli import main

sys.exit(main())
