"""``python -m loadtest SCENARIO.yaml --endpoint HOST:PORT …``: play a scenario (:mod:`loadtest.loadgen`)."""

import sys

from loadtest.loadgen import main

sys.exit(main())
