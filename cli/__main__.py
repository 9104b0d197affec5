"""``python -m ann2snn.cli``: the same as the ``ann2snn`` command."""

import sys

from ann2snn.cli.main import main

sys.exit(main())
