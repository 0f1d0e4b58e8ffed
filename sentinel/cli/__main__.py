"""``python -m sentinel.cli``: the ``sentinel`` command."""

import sys

from sentinel.cli import main

sys.exit(main())
