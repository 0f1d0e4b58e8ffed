"""Per-service time series for the API and the page: one-minute event-time buckets, bounded, saved as JSON.

:class:`SeriesConsumer` is a :class:`aggregator.analysis.pipeline.Consumer`. For every service and every
``step_s`` bucket of **event time** it keeps calls, errors, latency sum/count/min/max, input and
output tokens and cost (``GET /api/v1/services/{service}/series``), and, for the most recent
``sketch_window_s`` of buckets, a log-scale latency histogram from which the health view's p50/p95
are read (relative error at most ``relative_accuracy``, as a DDSketch: a bin covers
``(gamma^(k-1), gamma^k]`` and is read back as ``2 gamma^k / (gamma + 1)``).

Time is each service's own: windows end at the newest event time seen for that service, so
replayed or simulated traffic charts and scores the same as live traffic. Rows more than
``max_future_s`` ahead of their batch's arrival are dropped (a skewed clock would otherwise push
the service's window past all its real data), as are rows older than ``retention_s`` before the
service's newest bucket, and rows without a service name.

Memory is bounded: per service one ring of ``retention_s / step_s`` buckets (9 float64 each: about
100 KB for 24 h of minutes) and one ring of ``sketch_window_s / step_s + 1`` histograms (int32,
about 460 bins each: about 30 KB for 15 minutes); at most ``max_services`` services, the least
recently updated one is dropped beyond it, and a service that sent nothing for ``retention_s``
(by arrival time) is dropped too. Thread-safe: the analysis thread writes, the API reads (one lock;
the batch's figures are computed before taking it).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.state import JsonStateFile
from sentinel.grouping import group_by_key
from sentinel.wire import WireBatch

__all__ = ["FILE_NAME", "FORMAT_VERSION", "SeriesConsumer"]

log = logging.getLogger(__name__)

FILE_NAME = "series.json"
FORMAT_VERSION = 1

# Columns of a bucket row.
_CALLS, _ERRORS, _LAT_SUM, _LAT_N, _LAT_MIN, _LAT_MAX, _IN_TOK, _OUT_TOK, _COST = range(9)
_FIELDS = 9
_SUMMED = [_CALLS, _ERRORS, _LAT_SUM, _LAT_N, _IN_TOK, _OUT_TOK, _COST]

# Latency histogram range: values below or above are counted in the first or last bin (the reported
# quantile is then clamped to the window's exact min and max).
_HIST_MIN_MS = 0.1
_HIST_MAX_MS = 1e7  # about 2.8 hours

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass
class _Part:
    """One (service, bucket) aggregate of a batch, computed outside the lock."""

    bucket: int
    row: F64  # _FIELDS values
    hist: npt.NDArray[np.int32]
    oldest_ns: int
    newest_ns: int


class _Service:
    """The rings of one service; slot ``b % n`` holds bucket ``b`` when ``slot_bucket[slot] == b``."""

    def __init__(self, n_slots: int, n_sketch: int, n_bins: int) -> None:
        self.data = np.zeros((n_slots, _FIELDS), dtype=np.float64)
        self.slot_bucket = np.full(n_slots, -1, dtype=np.int64)
        self.hist = np.zeros((n_sketch, n_bins), dtype=np.int32)
        self.hist_bucket = np.full(n_sketch, -1, dtype=np.int64)
        self.newest_ns = 0  # newest event time seen
        self.first_ns = 0  # oldest event time kept (rates of a service younger than the window)
        self.last_arrival_ns = 0


class SeriesConsumer:
    """Per-service minute series and recent latency histograms (see the module docstring)."""

    def __init__(self, data_dir: str | Path, *, retention_s: float = 24 * 3600, step_s: int = 60,
                 max_services: int = 1000, sketch_window_s: float = 900, max_future_s: float = 3600,
                 relative_accuracy: float = 0.02) -> None:
        if step_s < 1 or retention_s < step_s or max_services < 1 or sketch_window_s < 0 or max_future_s < 0:
            raise ValueError("series: need step_s >= 1, retention_s >= step_s, max_services >= 1, "
                             "sketch_window_s >= 0 and max_future_s >= 0")
        if not 0 < relative_accuracy < 1:
            raise ValueError("series: relative_accuracy must be between 0 and 1")
        self.state_file = JsonStateFile(Path(data_dir) / FILE_NAME, version=FORMAT_VERSION, what="series")
        self.step_s = int(step_s)
        self.retention_s = float(retention_s)
        self.max_services = max_services
        self.max_future_ns = int(max_future_s * 1e9)
        self._step_ns = self.step_s * 1_000_000_000
        self._n_slots = max(1, math.ceil(retention_s / step_s))
        self._n_sketch = math.ceil(sketch_window_s / step_s) + 1
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._k_min = math.ceil(math.log(_HIST_MIN_MS) / self._log_gamma)
        self._n_bins = math.ceil(math.log(_HIST_MAX_MS) / self._log_gamma) - self._k_min + 1
        self._services: OrderedDict[str, _Service] = OrderedDict()  # least recently updated first
        self._lock = threading.Lock()
        self._dirty = False
        self._last_sweep_ns = 0
        self.dropped_rows = 0  # future, too old or without a service

    # --- writing (analysis thread) --------------------------------------------------------------

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
        fb = batch.batch
        if fb.n == 0:
            return []
        parts = self._aggregate(fb.numeric, fb.strings.get("service") or [None] * fb.n, arrival_ns)
        with self._lock:
            for service, service_parts in parts.items():
                self._apply(service, service_parts, arrival_ns)
            self._sweep(arrival_ns)
            self._dirty = True
        return []

    def _aggregate(self, numeric: dict[str, npt.NDArray[Any]], services: list[str | None],
                   arrival_ns: int) -> dict[str, list[_Part]]:
        """The batch's figures per service and bucket, vectorised (no lock held)."""
        t = np.asarray(numeric["time_unix_nano"], dtype=np.int64)
        codes, keys = group_by_key([services])  # shared with the other consumers' groupings
        code = np.asarray(codes)
        names: dict[str | None, int] = {k: i for i, (k,) in enumerate(keys)}
        ok = t <= arrival_ns + self.max_future_ns
        if None in names:
            ok &= code != names[None]
        kept = np.flatnonzero(ok)
        self.dropped_rows += int(t.size - kept.size)

        def finite(name: str) -> F64:
            return np.nan_to_num(np.asarray(numeric[name], dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)

        latency = np.asarray(numeric["latency_ms"], dtype=np.float64)
        has_lat = np.isfinite(latency)
        lat0 = np.where(has_lat, latency, 0.0)
        columns = {_CALLS: np.ones(t.size), _ERRORS: np.asarray(numeric["is_error"], dtype=np.float64),
                   _LAT_SUM: lat0, _LAT_N: has_lat.astype(np.float64), _IN_TOK: finite("input_tokens"),
                   _OUT_TOK: finite("output_tokens"), _COST: finite("cost_usd")}
        bins = self._bins(lat0)
        buckets = np.floor_divide(t, self._step_ns)
        out: dict[str, list[_Part]] = {}
        rows = kept  # no row without a service among them
        if rows.size == 0:
            return out
        # Every (service, bucket) at once, not one pass per service (issue 16): one integer per row,
        # its groups in (service, bucket) order, each group's rows in the batch's order as before.
        b = buckets[rows]
        first = int(b.min())
        span = int(b.max()) - first + 1
        pair = code[rows] * span + (b - first) if len(names) * span < 2**62 else None
        if pair is not None:
            uniq, inv = np.unique(pair, return_inverse=True)
            group_service, group_bucket = uniq // span, uniq % span + first
        else:  # an absurd spread of event times: the general (slower) form
            stacked, inv = np.unique(np.stack([code[rows], b], axis=1), axis=0, return_inverse=True)
            group_service, group_bucket = stacked[:, 0], stacked[:, 1]
        inv = inv.reshape(-1)
        k = group_service.size
        sums = np.zeros((k, _FIELDS))
        for col, values in columns.items():
            sums[:, col] = np.bincount(inv, weights=values[rows], minlength=k)
        lat_rows = has_lat[rows]
        lat_inv, lat_values = inv[lat_rows], latency[rows][lat_rows]
        sums[:, _LAT_MIN], sums[:, _LAT_MAX] = np.inf, -np.inf
        np.minimum.at(sums[:, _LAT_MIN], lat_inv, lat_values)
        np.maximum.at(sums[:, _LAT_MAX], lat_inv, lat_values)
        flat = lat_inv * self._n_bins + bins[rows][lat_rows]
        hists = np.bincount(flat, minlength=k * self._n_bins).astype(np.int32).reshape(k, self._n_bins)
        oldest = np.full(k, np.iinfo(np.int64).max)
        newest = np.full(k, np.iinfo(np.int64).min)
        np.minimum.at(oldest, inv, t[rows])
        np.maximum.at(newest, inv, t[rows])
        service_names = list(names)
        old_l, new_l = oldest.tolist(), newest.tolist()
        for i, (svc, bucket) in enumerate(zip(group_service.tolist(), group_bucket.tolist(), strict=True)):
            name = service_names[svc]
            assert name is not None  # rows without a service were dropped above
            out.setdefault(name, []).append(_Part(int(bucket), sums[i], hists[i], old_l[i], new_l[i]))
        return out

    def _bins(self, latency_ms: F64) -> I64:
        with np.errstate(divide="ignore"):
            k = np.ceil(np.log(np.maximum(latency_ms, _HIST_MIN_MS)) / self._log_gamma)
        return np.clip(k.astype(np.int64) - self._k_min, 0, self._n_bins - 1)

    def _apply(self, name: str, parts: list[_Part], arrival_ns: int) -> None:
        s = self._services.get(name)
        if s is None:
            s = self._services[name] = _Service(self._n_slots, self._n_sketch, self._n_bins)
            while len(self._services) > self.max_services:
                dropped, _ = self._services.popitem(last=False)
                log.info("series: more than %d services, dropped the least recently updated (%s)",
                         self.max_services, dropped)
        else:
            self._services.move_to_end(name)
        s.last_arrival_ns = max(s.last_arrival_ns, arrival_ns)
        s.newest_ns = max(s.newest_ns, *(p.newest_ns for p in parts))
        newest_bucket = s.newest_ns // self._step_ns
        for p in parts:
            if p.bucket <= newest_bucket - self._n_slots:  # older than the retention
                self.dropped_rows += int(p.row[_CALLS])
                continue
            slot = p.bucket % self._n_slots
            if s.slot_bucket[slot] != p.bucket:
                s.data[slot] = 0.0
                s.data[slot, _LAT_MIN], s.data[slot, _LAT_MAX] = np.inf, -np.inf
                s.slot_bucket[slot] = p.bucket
            row = s.data[slot]
            row[_SUMMED] += p.row[_SUMMED]
            row[_LAT_MIN] = min(row[_LAT_MIN], p.row[_LAT_MIN])
            row[_LAT_MAX] = max(row[_LAT_MAX], p.row[_LAT_MAX])
            s.first_ns = p.oldest_ns if not s.first_ns else min(s.first_ns, p.oldest_ns)
            if p.bucket > newest_bucket - self._n_sketch:
                hslot = p.bucket % self._n_sketch
                if s.hist_bucket[hslot] != p.bucket:
                    s.hist[hslot] = 0
                    s.hist_bucket[hslot] = p.bucket
                s.hist[hslot] += p.hist
        s.first_ns = max(s.first_ns, (newest_bucket - self._n_slots + 1) * self._step_ns)

    def _sweep(self, arrival_ns: int) -> None:
        """Drop services silent (by arrival) for longer than the retention; at most once a minute."""
        if arrival_ns - self._last_sweep_ns < 60_000_000_000:
            return
        self._last_sweep_ns = arrival_ns
        cutoff = arrival_ns - int(self.retention_s * 1e9)
        for name in [n for n, s in self._services.items() if s.last_arrival_ns < cutoff]:
            del self._services[name]

    # --- reading (API, any thread) ----------------------------------------------------------------

    def services(self) -> list[str]:
        with self._lock:
            return sorted(self._services)

    def newest(self, service: str) -> int | None:
        """The newest event time (unix ns) seen for ``service``, or ``None`` if never seen."""
        with self._lock:
            s = self._services.get(service)
            return s.newest_ns if s is not None else None

    def _rows(self, s: _Service, b0: int, b1: int) -> tuple[I64, F64]:
        """Buckets ``b0 <= b < b1`` (at most one ring) and their rows; empty buckets are zero rows."""
        b0 = max(b0, b1 - self._n_slots)
        bs = np.arange(b0, max(b0, b1), dtype=np.int64)
        slots = bs % self._n_slots
        valid = s.slot_bucket[slots] == bs
        rows = np.where(valid[:, None], s.data[slots], 0.0)
        rows[~valid, _LAT_MIN], rows[~valid, _LAT_MAX] = np.inf, -np.inf
        return bs, rows

    def series(self, service: str, start_ns: int | None = None, end_ns: int | None = None) -> dict[str, Any] | None:
        """Points of every bucket overlapping ``[start_ns, end_ns)`` (default: the hour up to the service's
        newest event), at most ``retention_s`` of them; ``None`` if the service was never seen."""
        with self._lock:
            s = self._services.get(service)
            if s is None:
                return None
            if end_ns is None:
                end_ns = (s.newest_ns // self._step_ns + 1) * self._step_ns
            if start_ns is None:
                start_ns = end_ns - 3600 * 1_000_000_000
            b1 = -(-end_ns // self._step_ns)
            bs, rows = self._rows(s, start_ns // self._step_ns, b1)
        points = []
        for b, r in zip(bs.tolist(), rows.tolist(), strict=True):
            n = r[_LAT_N]
            points.append({
                "t": b * self.step_s, "calls": int(r[_CALLS]), "errors": int(r[_ERRORS]),
                "latency_ms_mean": r[_LAT_SUM] / n if n else None, "latency_ms_max": r[_LAT_MAX] if n else None,
                "input_tokens": int(r[_IN_TOK]), "output_tokens": int(r[_OUT_TOK]), "cost_usd": r[_COST],
            })
        return {"service": service, "step_s": self.step_s, "points": points}

    def health_window(self, service: str, now_ns: int | None = None, window_s: float = 300) -> dict[str, Any] | None:
        """Figures of the ``window_s`` up to ``now_ns`` (default: the service's newest event time).

        The window is the ``ceil(window_s / step_s)`` buckets ending with the one holding ``now_ns``;
        rates divide by the time from the first of them (or the service's first kept event, if later)
        to ``now_ns``. p50/p95 come from the histograms (only kept for ``sketch_window_s``).
        ``None`` if the service was never seen.
        """
        with self._lock:
            s = self._services.get(service)
            if s is None:
                return None
            end = s.newest_ns if now_ns is None else now_ns
            b_end = end // self._step_ns
            n = max(1, math.ceil(window_s / self.step_s))
            _, rows = self._rows(s, b_end - n + 1, b_end + 1)
            in_window = (s.hist_bucket > b_end - n) & (s.hist_bucket <= b_end)
            hist = s.hist[in_window].sum(axis=0, dtype=np.int64)
            newest, first = s.newest_ns, s.first_ns
        total = rows.sum(axis=0)
        lat_n = total[_LAT_N]
        lo, hi = float(rows[:, _LAT_MIN].min()), float(rows[:, _LAT_MAX].max())
        start = max((b_end - n + 1) * self._step_ns, first)
        elapsed_s = max(1.0, (end - start) / 1e9)
        calls = int(total[_CALLS])
        tokens = float(total[_IN_TOK] + total[_OUT_TOK])
        return {
            "service": service, "last_seen_ns": newest, "window_s": window_s, "calls": calls,
            "errors": int(total[_ERRORS]), "error_rate": float(total[_ERRORS]) / calls if calls else 0.0,
            "latency_ms_mean": float(total[_LAT_SUM] / lat_n) if lat_n else None,
            "latency_ms_p50": self._quantile(hist, 0.50, lo, hi),
            "latency_ms_p95": self._quantile(hist, 0.95, lo, hi),
            "input_tokens": int(total[_IN_TOK]), "output_tokens": int(total[_OUT_TOK]),
            "cost_usd": float(total[_COST]),
            "tokens_per_min": tokens / elapsed_s * 60, "cost_usd_per_hour": float(total[_COST]) / elapsed_s * 3600,
        }

    def _quantile(self, hist: I64, q: float, lo: float, hi: float) -> float | None:
        count = int(hist.sum())
        if count == 0:
            return None
        rank = q * (count - 1)
        i = int(np.searchsorted(np.cumsum(hist), rank, side="right"))
        value = 2 * self._gamma ** (i + self._k_min) / (self._gamma + 1)
        return float(min(max(value, lo), hi))

    # --- persistence ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any] | None:
        """The kept buckets as a JSON document; ``None`` when unchanged."""
        with self._lock:
            if not self._dirty:
                return None
            self._dirty = False
            return self._to_doc()

    def shutdown(self) -> None:
        """Nothing to stop."""

    def _to_doc(self) -> dict[str, Any]:
        services = {}
        for name, s in self._services.items():
            used = np.flatnonzero(s.slot_bucket >= 0)
            data = s.data[used]
            # min/max of a bucket without latencies are +-inf: JSON has no infinity, null instead.
            buckets = [[b, *(v if math.isfinite(v) else None for v in row)]
                       for b, row in zip(s.slot_bucket[used].tolist(), data.tolist(), strict=True)]
            hists = []
            for i in np.flatnonzero(s.hist_bucket >= 0).tolist():
                nz = np.flatnonzero(s.hist[i])
                hists.append([int(s.hist_bucket[i]), nz.tolist(), s.hist[i][nz].tolist()])
            services[name] = {"newest_ns": s.newest_ns, "first_ns": s.first_ns, "last_arrival_ns": s.last_arrival_ns,
                              "buckets": buckets, "hists": hists}
        return {"version": FORMAT_VERSION, "step_s": self.step_s, "n_bins": self._n_bins, "k_min": self._k_min,
                "services": services}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """Take back saved series (an incompatible document raises ``ValueError``: set aside, not fatal)."""
        loaded: OrderedDict[str, _Service] = OrderedDict()
        if state is not None:
            if state.get("step_s") != self.step_s:
                raise ValueError(f"step_s {state.get('step_s')!r}, this aggregator uses {self.step_s}")
            same_bins = state.get("n_bins") == self._n_bins and state.get("k_min") == self._k_min
            for name, d in state["services"].items():
                loaded[str(name)] = self._service_from(d, same_bins)
        while len(loaded) > self.max_services:
            loaded.popitem(last=False)
        with self._lock:
            self._services = loaded
        if state is not None:
            log.info("restored the series of %d services from %s", len(loaded), self.state_file.path)

    def _service_from(self, d: dict[str, Any], same_bins: bool) -> _Service:
        s = _Service(self._n_slots, self._n_sketch, self._n_bins)
        s.newest_ns, s.first_ns, s.last_arrival_ns = int(d["newest_ns"]), int(d["first_ns"]), int(d["last_arrival_ns"])
        newest_bucket = s.newest_ns // self._step_ns
        for b, *values in d["buckets"]:
            b = int(b)
            if b <= newest_bucket - self._n_slots or len(values) != _FIELDS:
                continue  # beyond a retention shortened since
            row = np.array([0.0 if v is None else float(v) for v in values])
            if values[_LAT_MIN] is None or values[_LAT_MAX] is None:
                row[_LAT_MIN], row[_LAT_MAX] = np.inf, -np.inf
            slot = b % self._n_slots
            s.data[slot], s.slot_bucket[slot] = row, b
        if same_bins:  # histograms of another resolution cannot be used: p50/p95 come back within minutes
            for b, idx, counts in d["hists"]:
                b = int(b)
                if b <= newest_bucket - self._n_sketch:
                    continue
                slot = b % self._n_sketch
                s.hist[slot] = 0
                s.hist[slot][np.asarray(idx, dtype=np.int64)] = np.asarray(counts, dtype=np.int32)
                s.hist_bucket[slot] = b
        return s
