"""``python -m bridge``: the command line (:mod:`bridge.cli.main`)."""

import sys

from bridge.cli.main import main

sys.exit(main())
