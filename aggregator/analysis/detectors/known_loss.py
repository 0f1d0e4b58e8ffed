"""Known loss: event-time windows in which a sidecar restarted or reported rows it lost.

A sidecar that restarts loses the spans sent while it was down; one whose queue filled drops
rows or refuses exports. To a rate detector both look like traffic that fell. Sidecars say so in
the batches they send (``status`` of :mod:`sentinel.wire`: which run sent it, rows dropped and
exports refused since that run started). :class:`KnownLoss` follows every sidecar and turns what
they say into loss windows per service:

* a **restart** (a batch whose ``instance`` differs from the one before): the services the old run
  carried lost what happened between the last row the old run sent and the first row of the new
  one;
* **counted loss** (``dropped_rows`` or ``refused_exports`` of the same run went up): the services
  of that sidecar lost rows between its previous batch's newest row and this batch's newest row.

A sidecar is **behind** while the ``queue_batches`` of its last batch (sealed batches waiting in
its forward queue when it sealed that one) is at or above a threshold: some of its rows are still
queued, so its services' recent windows are incomplete, not quiet (:meth:`KnownLoss.behind`;
``throughput_drop`` holds such drops as for silence, and its late-rows check drops them when the
backlog arrives).

A service's sidecars are **caught up** to a time when every one of them sent a row at or after it and
none is behind (:meth:`KnownLoss.caught_up`): what they had of the time before is in, so
``throughput_drop`` raises a drop of a window they passed by its lateness without its hold.

It also tells whether a service's sidecars went **silent**: every sidecar that carried the
service sent no row newer than a given time. A drop that starts as its sidecar falls silent may be
a restart whose first batch has not arrived yet, so ``throughput_drop`` holds it for a while
(``silent_hold_buckets``) instead of paging at once.

A batch of an *earlier* run of the sidecar (its spool replayed after the restart, interleaved with
the new run's batches) is a replay, not another restart: the last :data:`KEEP_INSTANCES` runs are
remembered, and such a batch counts only for silence.

Batches without a ``status`` (sidecars that predate it) still count for silence; nothing is
known about their loss. Pure logic; :class:`~aggregator.analysis.detectors.consumer.DetectorConsumer` feeds it
every batch before the detectors see it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sentinel.grouping import group_by_key
from sentinel.model import FeatureBatch
from sentinel.wire import SidecarStatus

__all__ = ["DEFAULT_CARRIER_HORIZON_S", "KnownLoss", "LossWindow"]

#: A sidecar carries a service while it sent rows of it within this much event time.
DEFAULT_CARRIER_HORIZON_S = 3600.0
#: Loss windows kept per service (the oldest go first); sidecars followed at most.
MAX_WINDOWS = 64
MAX_SIDECARS = 10_000
#: Earlier runs remembered per sidecar (their replayed batches are not restarts).
KEEP_INSTANCES = 4


@dataclass(frozen=True)
class LossWindow:
    """Rows of ``service`` between ``start_ns`` and ``end_ns`` (event time) are known to be missing."""

    service: str
    start_ns: int
    end_ns: int
    reason: str  # "restart" or "dropped"
    sidecar: str


@dataclass
class _Sidecar:
    instance: str | None = None
    newest_ns: int | None = None  # newest event time of any row it sent
    dropped: int = 0
    refused: int = 0
    services: dict[str, int] = field(default_factory=dict)  # service -> newest event time of its rows
    earlier: list[str] = field(default_factory=list)  # the runs before ``instance``, newest last
    queue: int = 0  # queue_batches of its last batch of the current run


class KnownLoss:
    """Loss windows and silence per service, from the batches sidecars send."""

    def __init__(self, carrier_horizon_s: float = DEFAULT_CARRIER_HORIZON_S) -> None:
        self._horizon_ns = int(carrier_horizon_s * 1e9)
        self._sidecars: dict[str, _Sidecar] = {}
        self._windows: dict[str, list[LossWindow]] = {}
        self.restarts = 0  # restarts seen
        self.windows = 0  # loss windows recorded

    def observe(self, sidecar: str, status: SidecarStatus | None, batch: FeatureBatch) -> list[LossWindow]:
        """Take one batch (before the detectors see it); returns the loss windows it revealed."""
        st = self._sidecars.get(sidecar)
        if st is None:
            if len(self._sidecars) >= MAX_SIDECARS:
                self._sidecars.pop(next(iter(self._sidecars)))
            st = self._sidecars[sidecar] = _Sidecar()
        oldest = newest = None
        services: dict[str, int] = {}
        if batch.n:
            times = np.asarray(batch.numeric["time_unix_nano"], dtype=np.int64)
            oldest, newest = int(times.min()), int(times.max())
            codes, keys = group_by_key([batch.strings["service"]])  # shared with the detectors
            latest = np.full(len(keys), np.iinfo(np.int64).min)
            np.maximum.at(latest, codes, times)
            services = {svc: t for (svc,), t in zip(keys, latest.tolist(), strict=True) if svc is not None}
        found: list[LossWindow] = []
        if status is not None and status.instance in st.earlier:
            pass  # a replayed batch of an earlier run: neither a restart nor new loss
        elif status is not None:
            if st.instance is not None and status.instance != st.instance:
                self.restarts += 1
                st.earlier = [*st.earlier, st.instance][-KEEP_INSTANCES:]
                if st.newest_ns is not None and oldest is not None and oldest > st.newest_ns:
                    found += self._record(sidecar, st, services, st.newest_ns, oldest, "restart")
                st.dropped = st.refused = 0
            elif st.instance is not None and (status.dropped_rows > st.dropped or status.refused_exports > st.refused):
                start = st.newest_ns if st.newest_ns is not None else oldest
                end = newest if newest is not None else st.newest_ns
                if start is not None and end is not None:
                    found += self._record(sidecar, st, services, min(start, end), max(start, end), "dropped")
            st.instance, st.dropped, st.refused = status.instance, status.dropped_rows, status.refused_exports
            st.queue = status.queue_batches
        if newest is not None:
            st.newest_ns = newest if st.newest_ns is None else max(st.newest_ns, newest)
            for svc, t in services.items():
                st.services[svc] = max(t, st.services.get(svc, t))
            horizon = st.newest_ns - self._horizon_ns
            if any(t < horizon for t in st.services.values()):
                st.services = {s: t for s, t in st.services.items() if t >= horizon}
        return found

    def _record(self, sidecar: str, st: _Sidecar, batch_services: Mapping[str, int], start_ns: int, end_ns: int,
                reason: str) -> list[LossWindow]:
        out = [LossWindow(svc, start_ns, end_ns, reason, sidecar) for svc in sorted({*st.services, *batch_services})]
        for w in out:
            kept = self._windows.setdefault(w.service, [])
            kept.append(w)
            del kept[:-MAX_WINDOWS]
        self.windows += len(out)
        return out

    def lost(self, service: str | None, start_ns: int, end_ns: int) -> LossWindow | None:
        """A loss window of ``service`` that overlaps [start_ns, end_ns), if any."""
        for w in reversed(self._windows.get(service or "", ())):
            if w.start_ns < end_ns and start_ns <= w.end_ns:
                return w
        return None

    def silent(self, service: str | None, since_ns: int) -> bool:
        """Whether every sidecar that carries ``service`` sent no row at or after ``since_ns``
        (and at least one does carry it)."""
        carriers = [st for st in self._sidecars.values() if service in st.services]
        return bool(carriers) and all(st.newest_ns is not None and st.newest_ns < since_ns for st in carriers)

    def caught_up(self, service: str | None, since_ns: int, min_batches: int) -> bool:
        """Whether every sidecar that carries ``service`` (at least one) sent a row at or after ``since_ns``
        and none is behind (fewer than ``min_batches`` queued): each has sent what it had up to then, so
        rows of an earlier window are in (``throughput_drop`` need not hold a drop of it for late rows)."""
        carriers = [st for st in self._sidecars.values() if service in st.services]
        return bool(carriers) and all(st.newest_ns is not None and st.newest_ns >= since_ns
                                      and st.queue < min_batches for st in carriers)

    def behind(self, service: str | None, min_batches: int) -> bool:
        """Whether a sidecar that carries ``service`` had ``min_batches`` or more batches queued when it
        sealed its last one: rows of any recent window may still be in its queue (spilled batches are
        sent after younger ones, so even a window older than its newest row may be incomplete)."""
        return any(service in st.services and st.queue >= min_batches for st in self._sidecars.values())

    def to_state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "sidecars": {k: {"instance": s.instance, "newest_ns": s.newest_ns, "dropped": s.dropped,
                             "refused": s.refused, "services": s.services, "earlier": s.earlier,
                             "queue": s.queue}
                         for k, s in self._sidecars.items()},
            "windows": [[w.service, w.start_ns, w.end_ns, w.reason, w.sidecar]
                        for ws in self._windows.values() for w in ws],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], carrier_horizon_s: float = DEFAULT_CARRIER_HORIZON_S) -> KnownLoss:
        if state.get("version") != 1:
            raise ValueError("not a known-loss state (version 1)")
        out = cls(carrier_horizon_s)
        for k, s in state.get("sidecars", {}).items():
            out._sidecars[str(k)] = _Sidecar(
                instance=s.get("instance"), newest_ns=s.get("newest_ns"), dropped=int(s.get("dropped", 0)),
                refused=int(s.get("refused", 0)), services={str(a): int(b) for a, b in s.get("services", {}).items()},
                earlier=[str(x) for x in s.get("earlier", [])], queue=int(s.get("queue", 0)))
        for svc, start, end, reason, sidecar in state.get("windows", []):
            out._windows.setdefault(str(svc), []).append(LossWindow(str(svc), int(start), int(end), str(reason),
                                                                    str(sidecar)))
        return out
