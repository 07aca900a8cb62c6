"""``python -m microcond.cli``: the ``microcond`` command."""

import sys

from microcond.cli.main import main

sys.exit(main())
