"""The sidecar's own state, sent with every batch (``status`` of :mod:`sentinel.wire`).

A restart loses the spans sent while the process was down and a full queue loses rows; to the
aggregator both look like traffic that fell. Each batch therefore says which run of the sidecar
sealed it (``instance``, new at every start, and ``started_unix_nano``), how many rows this run
dropped and how many exports it refused so far (cumulative, read from the self-metrics, so a
batch that is itself lost loses no count), and how many sealed batches were waiting to be sent.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

from sentinel.wire import SidecarStatus
from sidecar.metrics import SidecarMetrics

__all__ = ["StatusSource"]


class StatusSource:
    """``snapshot()`` is the status to seal into the next batch."""

    def __init__(self, metrics: SidecarMetrics, *, instance: str | None = None,
                 started_unix_nano: int | None = None) -> None:
        self._metrics = metrics
        self.instance = instance or secrets.token_hex(8)
        self.started_unix_nano = time.time_ns() if started_unix_nano is None else started_unix_nano

    def snapshot(self) -> SidecarStatus:
        m = self._metrics
        return SidecarStatus(
            instance=self.instance, started_unix_nano=self.started_unix_nano,
            dropped_rows=_total(m.dropped_rows.collect(), "sentinel_sidecar_dropped_rows_total"),
            refused_exports=_total(m.requests.collect(), "sentinel_sidecar_requests_total",
                                   outcome="refused"),
            queue_batches=int(_total(m.queue_batches.collect(), "sentinel_sidecar_queue_batches")))


def _total(families: Iterable[Metric], name: str, **labels: str) -> int:
    total = 0.0
    for family in families:
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return int(total)
