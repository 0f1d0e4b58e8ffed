"""Is the aggregator's own clock wrong? The fleet's seal times, compared with arrival, tell.

Lateness is judged against the aggregator's clock: an hour ahead and every row is "late" (no
alert), two hours behind and every row is in the future. Each batch carries when its sidecar
sealed it (``created_unix_nano``), so ``arrival − created`` is the forwarding delay plus the two
clocks' difference. One sidecar's clock can be off, or it can be replaying a spool; the median of
the sidecars' latest offsets cannot, unless the aggregator's clock is. That median is exported as
``sentinel_aggregator_clock_offset_seconds`` and, beyond ``clock_offset_warn_s``, named in
``/readyz`` (still 200: refusing traffic would not mend the clock) and in a warning log line.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["DEFAULT_CLOCK_OFFSET_WARN_S", "ClockCheck"]

log = logging.getLogger(__name__)

DEFAULT_CLOCK_OFFSET_WARN_S = 60.0
#: Sidecars whose latest offset counts: heard from within this long.
WINDOW_S = 600.0
MAX_SIDECARS = 10_000


class ClockCheck:
    """Per sidecar the latest ``arrival − created``; the median over the fleet estimates our clock's error."""

    def __init__(self, warn_after_s: float = DEFAULT_CLOCK_OFFSET_WARN_S, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.warn_after_s = warn_after_s
        self._monotonic = monotonic
        self._latest: OrderedDict[str, tuple[float, float]] = OrderedDict()  # sidecar -> (offset s, seen at)
        self._warned_at = -math.inf

    def observe(self, sidecar: str, created_ns: int, arrival_ns: int) -> None:
        if not created_ns:
            return  # the sidecar did not say when it sealed the batch
        self._latest[sidecar] = ((arrival_ns - created_ns) / 1e9, self._monotonic())
        self._latest.move_to_end(sidecar)
        while len(self._latest) > MAX_SIDECARS:
            self._latest.popitem(last=False)
        warning = self.warning()
        if warning and self._monotonic() - self._warned_at >= 60.0:
            self._warned_at = self._monotonic()
            log.warning("%s", warning)

    def offset_s(self) -> float:
        """Median of the recent sidecars' offsets (NaN before any batch)."""
        cutoff = self._monotonic() - WINDOW_S
        recent = [offset for offset, seen in self._latest.values() if seen >= cutoff]
        return statistics.median(recent) if recent else math.nan

    def warning(self) -> str:
        """``""``, or what is wrong when the offset is beyond ``warn_after_s``."""
        offset = self.offset_s()
        if math.isnan(offset) or abs(offset) <= self.warn_after_s:
            return ""
        direction = "ahead of" if offset > 0 else "behind"
        return (f"warning: this aggregator's clock looks {abs(offset):.0f} s {direction} the sidecars' (median of "
                f"arrival minus seal time); lateness and windows are judged by it — check its time sync")
