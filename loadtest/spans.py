"""The span generator, kept where the runtime image ships it (:mod:`sentinel.cli.spans`, used by
``sentinel demo``); this name stays for the load tests, benchmarks and tests that import it."""

from sentinel.cli.spans import *  # noqa: F403
from sentinel.cli.spans import __all__ as __all__
