"""``python -m l2bridge ...`` is the ``shadowmesh`` command."""

import sys

from l2bridge.commands.main import main

sys.exit(main())
