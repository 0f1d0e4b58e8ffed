"""Event time judged against arrival time: a sidecar's clock ahead cannot move anyone's windows.

The windowed detectors close their buckets by a watermark, the latest event time they have seen
(aggregator/analysis/detectors/buckets.py). Left alone, one span stamped in the year 2200 — a clock far
ahead, or a hostile client — would move that watermark for every sidecar: every later row would be
"late" and dropped, detection blinded until 2200, and the detectors would open a window for each
step up to it. So at ingest, before any analysis, every row and local anomaly stamped more than
``max_future_skew_s`` after its batch's arrival is counted and analysed at its arrival time. Each
batch is judged against its own arrival, so a sidecar can move the watermark at most
``max_future_skew_s`` ahead of the aggregator's clock, whatever it sends. The journal keeps the
body as sent.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sentinel.wire import WireBatch

__all__ = ["DEFAULT_MAX_FUTURE_SKEW_S", "clamp_future"]

#: Below every windowed detector's default ``lateness_s`` (10 s for error_burst), so the rows of a
#: sidecar whose clock is slightly ahead still leave the others' in-time rows in open buckets.
DEFAULT_MAX_FUTURE_SKEW_S = 5.0


def clamp_future(batch: WireBatch, *, arrival_ns: int, max_skew_ns: int) -> int:
    """Give every row and anomaly stamped after ``arrival_ns + max_skew_ns`` the time ``arrival_ns``.

    Changes ``batch`` in place and returns how many rows were moved.

    >>> from sentinel.model import FeatureBatch
    >>> b = WireBatch("s", 0, FeatureBatch.empty())
    >>> b.batch.numeric["time_unix_nano"] = np.array([5, 50, 500], dtype=np.int64)
    >>> b.batch.n = 3
    >>> clamp_future(b, arrival_ns=40, max_skew_ns=20), b.batch.numeric["time_unix_nano"].tolist()
    (1, [5, 50, 40])
    """
    limit = arrival_ns + max_skew_ns
    times = batch.batch.numeric["time_unix_nano"]
    ahead = times > limit
    moved = int(np.count_nonzero(ahead))
    if moved:
        # The decoded column is a read-only view of the body: replace it, do not write into it.
        batch.batch.numeric["time_unix_nano"] = np.where(ahead, np.int64(arrival_ns), times).astype(np.int64)
    if any(a.time_unix_nano > limit for a in batch.anomalies):
        batch.anomalies = [dataclasses.replace(a, time_unix_nano=arrival_ns) if a.time_unix_nano > limit else a
                           for a in batch.anomalies]
    return moved
