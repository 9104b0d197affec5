"""``python -m ann2snn.cli``: the same as the ``ann2snn`` command."""

import sys

from .main import main

sys.exit(main())
