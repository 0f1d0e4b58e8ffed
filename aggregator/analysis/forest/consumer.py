"""Isolation Forest as an aggregator component: a forest per model, retrained in the background.

Each *model group* (the row's ``request_model``) keeps a ring buffer of its most recent
``window_rows`` rows (the :data:`DEFAULT_FEATURES`, transformed). Once a group holds
``min_train_rows`` rows a forest is fitted on its window, and refitted after every
``retrain_every_rows`` new rows or ``retrain_interval_s`` seconds, whichever comes first. Fits run
on a single worker thread owned by the service: the analysis thread only copies the window and
submits it, keeps scoring with the previous forest, and the new one is swapped in (one reference
assignment under a lock) when its fit completes. At most one fit per group is in flight.

Every row of an accepted batch joins its group's window; a uniform random sample of at most
``score_sample_rows`` rows of the batch (every row when the batch is no larger; 0: every row) is
scored with its group's current forest (one vectorised call per group and batch) *before* it joins
the window; sampled rows the forest predicts as outliers become ``multivariate_outlier``
candidates, with the features that drove their isolation. Sampling, because scoring was a fifth of
the analysis thread's time (``loadtest/bench_aggregator.py``) while the forest's candidates change
no alert (below): what it feeds, the explanations, needs the features outliers share, not every
outlier (``aggregator/README.md``, "Isolation Forest", measures what sampling changes in them).

**Explaining other detections.** On realistic traffic the forest's own candidates do not become
alerts (under ``alerts.min_confidence_by_type.multivariate_outlier`` 0.8 and row persistence; 0 of
its candidates alerted on ``clean-realistic`` and ``incidents-realistic``). What it does add is
*which features moved together*: every outlier row is remembered per (service, model) — the last
:data:`EXPLAIN_KEEP` of each, at most :data:`EXPLAIN_MAX_KEYS` keys — and :meth:`ForestConsumer.explain`
summarises the outliers inside another detection's window (how many were found, and, when rows were
sampled, how many that makes among all rows; the features that isolated them most often; the
lowest score). The aggregator adds that summary to every other candidate's
``context.forest`` (``aggregator/app.py``), so an alert says e.g. that the throughput drop's calls
were isolated by ``output_tokens`` and ``tokens_per_s``, not ``latency_ms``.

Transforms (applied to training and scored rows alike):

* **log1p** on the heavy-tailed, non-negative features (:data:`DEFAULT_LOG_FEATURES`: latency,
  TTFT, tokens, tokens/s, cost), after clipping at 0; ``cost_usd`` is first scaled to micro-USD
  so that the log compresses its tail as it does for milliseconds and tokens. An isolation
  forest splits uniformly between a node's min and max, so on raw values one huge latency would
  squeeze all ordinary rows into one split.
* **NaN** (missing, and any ±inf) is replaced by the median of that column in the forest's
  training window; the medians are saved with the forest. A column that is missing in the whole
  window becomes 0, i.e. constant, and the forest never splits on it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import logging
import math
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.keys import group_by_key
from aggregator.analysis.forest.isolation_forest import IsolationForest
from aggregator.analysis.state import read_json, write_atomic, write_json
from sentinel.config import ConfigError
from sentinel.model import FeatureBatch
from sentinel.wire import WireBatch

__all__ = [
    "ANOMALY_TYPE",
    "DEFAULT_FEATURES",
    "DEFAULT_LOG_FEATURES",
    "DETECTION_METHOD",
    "DIR_NAME",
    "FORMAT_VERSION",
    "INDEX_NAME",
    "ForestConfig",
    "ForestConsumer",
    "ForestFiles",
    "GroupKey",
    "TrainedForest",
    "confidence_from_score",
]

log = logging.getLogger(__name__)

ANOMALY_TYPE = "multivariate_outlier"
DETECTION_METHOD = "isolation_forest"
#: Sub-directory of ``data_dir`` holding one ``.npz`` per trained group and :data:`INDEX_NAME`.
DIR_NAME = "forests"
INDEX_NAME = "index.json"
#: Version of the saved index and forests; others are ignored on restore.
FORMAT_VERSION = 1

#: The columns a forest is trained on, in this order.
DEFAULT_FEATURES: tuple[str, ...] = (
    "latency_ms", "ttft_ms", "input_tokens", "output_tokens", "tokens_per_s", "cost_usd", "is_error")
#: The features taken as ``log1p(max(x, 0) * scale)`` before training and scoring.
DEFAULT_LOG_FEATURES: tuple[str, ...] = (
    "latency_ms", "ttft_ms", "input_tokens", "output_tokens", "tokens_per_s", "cost_usd")
#: Multiplier applied before log1p (cost in micro-USD); other features are taken as they are.
_LOG_SCALE: dict[str, float] = {"cost_usd": 1e6}
_FEATURE_COLUMNS = frozenset(DEFAULT_FEATURES)
#: Features named in an explanation, most important first.
EXPLAIN_TOP = 3
#: Outlier rows remembered per (service, model) for :meth:`ForestConsumer.explain`; keys kept at most.
EXPLAIN_KEEP = 256
EXPLAIN_MAX_KEYS = 10_000
#: Trace ids kept in a candidate's context.
_MAX_TRACE_IDS = 5

#: A model group: the rows' ``request_model`` (``None`` when the request named none).
GroupKey = str | None


@dataclass
class ForestConfig:
    """Settings of the forest service; :meth:`validate` names the aggregator setting at fault.

    >>> ForestConfig(window_rows=20_000, n_estimators=50).validate()
    """

    window_rows: int = 10_000
    min_train_rows: int = 1_000
    retrain_every_rows: int = 5_000
    retrain_interval_s: float = 300.0
    n_estimators: int = 100
    max_samples: int = 256
    contamination: float = 0.005
    features: tuple[str, ...] = DEFAULT_FEATURES
    log_features: tuple[str, ...] = DEFAULT_LOG_FEATURES
    max_groups: int = 100  # ~2.6 MB each when trained
    max_candidates_per_batch: int = 50
    #: Rows of a batch scored at most (a uniform random sample; 0: every row). Every row still
    #: trains the forest. 256 of the usual 1,024-2,048-row batches: a quarter to an eighth of the cost.
    score_sample_rows: int = 256
    #: Seconds ``shutdown`` waits for fits in flight.
    shutdown_timeout_s: float = 10.0
    #: Seed of every fit (``None``: fresh randomness); tests set it for reproducibility.
    random_state: int | None = None

    def validate(self) -> None:
        if self.window_rows < 2:
            raise ConfigError("forest_window_rows: must be at least 2")
        if not 2 <= self.min_train_rows <= self.window_rows:
            raise ConfigError("forest_min_train_rows: must be between 2 and forest_window_rows")
        if self.retrain_every_rows < 1:
            raise ConfigError("forest_retrain_every_rows: must be greater than 0")
        if not (self.retrain_interval_s > 0 and math.isfinite(self.retrain_interval_s)):
            raise ConfigError("forest_retrain_interval_s: must be a positive number of seconds")
        if self.n_estimators < 1:
            raise ConfigError("forest_n_estimators: must be greater than 0")
        if self.max_samples < 2:
            raise ConfigError("forest_max_samples: must be at least 2")
        if not 0.0 < self.contamination <= 0.5:
            raise ConfigError("forest_contamination: must be in (0, 0.5]")
        if not self.features:
            raise ConfigError("forest_features: must name at least one feature")
        for name in self.features:
            if name not in _FEATURE_COLUMNS:
                raise ConfigError(f"forest_features: {name!r} is not one of {', '.join(sorted(_FEATURE_COLUMNS))}")
        if len(set(self.features)) != len(self.features):
            raise ConfigError("forest_features: names a feature twice")
        for name in self.log_features:
            if name not in self.features or name == "is_error":
                raise ConfigError(f"forest_log_features: {name!r} is not a numeric feature in forest_features")
        if self.max_groups < 1:
            raise ConfigError("forest_max_groups: must be greater than 0")
        if self.max_candidates_per_batch < 0:
            raise ConfigError("forest_max_candidates_per_batch: must not be negative")
        if self.score_sample_rows < 0:
            raise ConfigError("forest_score_sample_rows: must not be negative (0: score every row)")
        if not self.shutdown_timeout_s >= 0:
            raise ConfigError("forest_shutdown_timeout_s: must not be negative")


def confidence_from_score(score: float, offset: float) -> float:
    """Map an outlier's ``score_samples`` value to a confidence in [0.5, 1].

    In the paper's terms the anomaly score is ``a = -score`` in (0, 1] and the decision threshold
    ``t = -offset``: ``0.5`` at the threshold, rising linearly to ``1.0`` for a row isolated at
    the root (``a = 1``).

    >>> confidence_from_score(-0.6, -0.6), confidence_from_score(-1.0, -0.6)
    (0.5, 1.0)
    """
    a, t = -score, -offset
    if t >= 1.0:
        return 1.0
    return float(min(1.0, max(0.5, 0.5 + 0.5 * (a - t) / (1.0 - t))))


@dataclass(frozen=True)
class TrainedForest:
    """A fitted forest with what scoring needs besides it: imputation medians and a baseline."""

    forest: IsolationForest
    #: Median of each (transformed) feature in the training window: fills NaN.
    medians: npt.NDArray[np.float64]
    #: Median anomaly score ``-score_samples`` of the training rows (a candidate's ``baseline``).
    baseline: float
    trained_rows: int
    fitted_unix: float

    @property
    def offset(self) -> float:
        return float(self.forest.offset_)

    def prepare(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """``X`` with every NaN replaced by the training median of its column."""
        return np.where(np.isnan(X), self.medians, X)

    def to_arrays(self, features: Sequence[str], log_features: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        meta = {"version": FORMAT_VERSION, "features": list(features), "log_features": list(log_features),
                "baseline": self.baseline, "trained_rows": self.trained_rows, "fitted_unix": self.fitted_unix}
        return {**self.forest.to_arrays(), "medians": self.medians, "meta": np.array(json.dumps(meta))}

    @classmethod
    def from_arrays(cls, arrays: Any, features: Sequence[str], log_features: Sequence[str]) -> TrainedForest:
        meta = json.loads(str(np.asarray(arrays["meta"])))
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"forest format version {meta.get('version')!r}, expected {FORMAT_VERSION}")
        if meta["features"] != list(features) or meta["log_features"] != list(log_features):
            raise ValueError("forest was trained on other features or transforms than configured")
        forest = IsolationForest.from_arrays(arrays)
        medians = np.asarray(arrays["medians"], dtype=np.float64)
        if medians.shape != (len(features),) or forest.n_features_in_ != len(features):
            raise ValueError("forest has the wrong number of features")
        return cls(forest=forest, medians=medians, baseline=float(meta["baseline"]),
                   trained_rows=int(meta["trained_rows"]), fitted_unix=float(meta["fitted_unix"]))


def fit_forest(window: npt.NDArray[np.float64], config: ForestConfig) -> TrainedForest:
    """Fit a forest on ``window`` (transformed rows, NaN = missing); runs on the fit thread."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        # A feature the window never saw (all NaN, e.g. no time to first token) has no median:
        # it becomes 0 below, on purpose, so numpy's warning about it is noise.
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(window, axis=0) if window.size else np.zeros(window.shape[1])
    medians = np.where(np.isnan(medians), 0.0, medians)
    X = np.where(np.isnan(window), medians, window)
    forest = IsolationForest(n_estimators=config.n_estimators, max_samples=min(config.max_samples, X.shape[0]),
                             contamination=config.contamination, random_state=config.random_state).fit(X)
    baseline = float(np.median(-forest.score_samples(X)))
    return TrainedForest(forest=forest, medians=medians, baseline=baseline, trained_rows=int(X.shape[0]),
                         fitted_unix=time.time())


class _Group:
    """One model group's window (a ring buffer) and forests; touched by the analysis thread only,
    except ``model``/``fitting``, which the fit thread sets under the service's lock."""

    __slots__ = ("buffer", "filled", "fitting", "last_fit", "model", "rows_since_fit", "write")

    def __init__(self, n_features: int) -> None:
        self.buffer = np.empty((0, n_features), dtype=np.float64)
        self.write = 0  # next slot to overwrite once the buffer is full
        self.filled = 0
        self.rows_since_fit = 0
        self.last_fit = 0.0  # monotonic time the last fit was submitted
        self.model: TrainedForest | None = None
        self.fitting: Future[TrainedForest] | None = None

    def append(self, rows: npt.NDArray[np.float64], capacity: int) -> None:
        rows = rows[-capacity:]
        n = rows.shape[0]
        if self.filled < capacity:  # still growing: keep rows in arrival order
            need = self.filled + n
            if need > self.buffer.shape[0]:
                grown = np.empty((min(capacity, max(need, 2 * self.buffer.shape[0])), rows.shape[1]))
                grown[: self.filled] = self.buffer[: self.filled]
                self.buffer = grown
            take = min(n, capacity - self.filled)
            self.buffer[self.filled : self.filled + take] = rows[:take]
            self.filled += take
            self.write = self.filled % capacity
            rows = rows[take:]
            n = rows.shape[0]
        if n:
            end = self.write + n
            if end <= capacity:
                self.buffer[self.write : end] = rows
            else:
                first = capacity - self.write
                self.buffer[self.write :] = rows[:first]
                self.buffer[: n - first] = rows[first:]
            self.write = end % capacity

    def window(self) -> npt.NDArray[np.float64]:
        return self.buffer[: self.filled].copy()


#: A consumer's forests, least recently fed group first: what :class:`ForestFiles` keeps.
ForestState = list[tuple[GroupKey, TrainedForest]]


class ForestConsumer:
    """A :class:`~aggregator.analysis.pipeline.Consumer` that scores rows with per-model forests.

    ``consume`` returns each batch's candidates (at most ``max_candidates_per_batch``, the most
    anomalous first). ``restore`` takes back saved forests; ``shutdown`` waits for fits in flight
    and stops the fit thread.
    """

    def __init__(self, config: ForestConfig, data_dir: str | Path, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_fit: Callable[[float], None] | None = None) -> None:
        config.validate()
        self._on_fit = on_fit  # called with each fit's duration in seconds (on the fit thread)
        self.config = config
        self.state_file = ForestFiles(Path(data_dir) / DIR_NAME, config)
        self._clock = clock
        self._features = tuple(config.features)
        self._log_mask = np.array([f in config.log_features for f in self._features])
        self._log_scale = np.array([_LOG_SCALE.get(f, 1.0) for f in self._features])
        self._groups: OrderedDict[GroupKey, _Group] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forest-fit")
        self._closed = False
        self._sampler = np.random.default_rng(config.random_state)
        #: Rows scored and rows seen, since start (their ratio: the share sampled).
        self.rows_scored = 0
        self.rows_seen = 0
        #: Outliers not returned because of ``max_candidates_per_batch``, since start.
        self.suppressed = 0
        # (service, model) -> recent outlier rows (event time ns, score, top feature names, rows of
        # the batch per row scored); only the analysis thread reads and writes it (consume and
        # explain both run there)
        self._outliers: OrderedDict[tuple[str | None, str | None], collections.deque[
            tuple[int, float, tuple[str, ...], float]]] = OrderedDict()

    # -- introspection ----------------------------------------------------------------------------

    def groups(self) -> list[GroupKey]:
        """The groups held, least recently fed first."""
        return list(self._groups)

    def model(self, group: GroupKey) -> TrainedForest | None:
        """The forest currently scoring ``group`` (``None``: not trained yet)."""
        g = self._groups.get(group)
        if g is None:
            return None
        with self._lock:
            return g.model

    def fits_in_flight(self) -> int:
        with self._lock:
            return sum(1 for g in self._groups.values() if g.fitting is not None)

    # -- the consumer -----------------------------------------------------------------------------

    def transform(self, batch: FeatureBatch) -> npt.NDArray[np.float64]:
        """The batch's feature matrix (n, features): log1p where configured, NaN where missing."""
        X = np.empty((batch.n, len(self._features)), dtype=np.float64)
        for j, name in enumerate(self._features):
            X[:, j] = batch.numeric[name]
        X[~np.isfinite(X)] = np.nan
        if self._log_mask.any():
            cols = X[:, self._log_mask]
            X[:, self._log_mask] = np.log1p(np.maximum(cols, 0.0) * self._log_scale[self._log_mask])
        return X

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
        fb = batch.batch
        if fb.n == 0 or self._closed:
            return []
        X = self.transform(fb)
        codes, keys = group_by_key([fb.strings["request_model"]])
        scored = self._sample(fb.n)
        weight = fb.n / int(scored.sum())
        self.rows_seen += fb.n
        found: list[tuple[float, Candidate]] = []
        by_group = np.argsort(codes, kind="stable")  # rows of each group, in batch order
        bounds = np.searchsorted(codes[by_group], np.arange(len(keys) + 1))
        for code, (key,) in enumerate(keys):  # first-seen order, as the groups' LRU expects
            rows = by_group[bounds[code]:bounds[code + 1]]
            g = self._group(key)
            with self._lock:
                model = g.model
            if model is not None:
                picked = rows[scored[rows]]
                self.rows_scored += picked.size
                if picked.size:
                    found.extend(self._score(key, model, fb, picked, X[picked], weight))
            g.append(X[rows], self.config.window_rows)
            g.rows_since_fit += rows.size
            self._maybe_fit(key, g)
        if not found:
            return []
        found.sort(key=lambda sc: sc[0])
        cap = self.config.max_candidates_per_batch
        self.suppressed += max(0, len(found) - cap)
        return [c for _, c in found[:cap]]

    def _sample(self, n: int) -> npt.NDArray[np.bool_]:
        """Which of a batch's ``n`` rows to score: all, or ``score_sample_rows`` drawn uniformly."""
        k = self.config.score_sample_rows
        scored = np.zeros(n, dtype=bool)
        if k == 0 or n <= k:
            scored[:] = True
        else:
            scored[self._sampler.choice(n, size=k, replace=False)] = True
        return scored

    def _group(self, key: GroupKey) -> _Group:
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = _Group(len(self._features))
            while len(self._groups) > self.config.max_groups:
                old_key, old = self._groups.popitem(last=False)
                with self._lock:
                    fitting = old.fitting
                if fitting is not None:
                    fitting.cancel()  # outside the lock: a cancel runs _fitted at once
                log.info("forest group %r evicted (max_groups=%d)", old_key, self.config.max_groups)
        else:
            self._groups.move_to_end(key)
        return g

    def _score(self, key: GroupKey, model: TrainedForest, fb: FeatureBatch, rows: npt.NDArray[np.intp],
               X: npt.NDArray[np.float64], weight: float) -> list[tuple[float, Candidate]]:
        prepared = model.prepare(X)
        scores = model.forest.score_samples(prepared)
        offset = model.offset
        out = np.flatnonzero(scores < offset)
        if out.size == 0:
            return []
        shares = model.forest.feature_contributions(prepared[out])
        order = np.argsort(-shares, axis=1, kind="stable")[:, :EXPLAIN_TOP]
        times = fb.numeric["time_unix_nano"]
        s = fb.strings
        found: list[tuple[float, Candidate]] = []
        for k, j in enumerate(out):
            i = int(rows[j])
            explanation = [(self._features[f], round(float(shares[k, f]), 4)) for f in order[k] if shares[k, f] > 0]
            metric = explanation[0][0] if explanation else self._features[0]
            trace_id = s["trace_id"][i]
            score = float(scores[j])
            context: dict[str, Any] = {
                "trace_ids": [trace_id][:_MAX_TRACE_IDS] if trace_id is not None else [],
                "span_id": s["span_id"][i],
                "explanation": explanation,
                "values": {name: _num(fb.numeric[name][i]) for name, _ in explanation},
                "medians": {self._features[f]: _untransform(self._features[f], float(model.medians[f]),
                                                            bool(self._log_mask[f]))
                            for f in order[k] if shares[k, f] > 0},
                "region": s["region"][i],
                "operation": s["operation"][i],
                "user": s["user"][i],
                "api_key_hash": s["api_key_hash"][i],
                "score": score,
                "offset": offset,
                "trained_rows": model.trained_rows,
            }
            t = int(times[i])
            self._remember(s["service"][i], key, t, score, tuple(name for name, _ in explanation), weight)
            found.append((score, Candidate(
                anomaly_type=ANOMALY_TYPE, service=s["service"][i], model=key, detection_method=DETECTION_METHOD,
                confidence=confidence_from_score(score, offset), metric=metric,
                value=-score, baseline=model.baseline, threshold=-offset, deviation_sigma=float("nan"),
                window_start=t, window_end=t + 1, context=context)))
        return found

    def _remember(self, service: str | None, model: str | None, t: int, score: float,
                  features: tuple[str, ...], weight: float) -> None:
        k = (service, model)
        kept = self._outliers.get(k)
        if kept is None:
            kept = self._outliers[k] = collections.deque(maxlen=EXPLAIN_KEEP)
            while len(self._outliers) > EXPLAIN_MAX_KEYS:
                self._outliers.popitem(last=False)
        else:
            self._outliers.move_to_end(k)
        kept.append((t, score, features, weight))

    def explain(self, candidate: Candidate) -> dict[str, Any] | None:
        """The forest's outliers of the candidate's (service, model) within its window, or None."""
        keys = [k for k in ((candidate.service, candidate.model),) if k in self._outliers]
        if candidate.model is None:  # a service-wide detection: every model of the service
            keys = [k for k in self._outliers if k[0] == candidate.service]
        start, end = candidate.window_start, candidate.window_end
        rows = [r for k in keys for r in self._outliers[k] if start <= r[0] < end]
        if not rows:
            return None
        counts = collections.Counter(f for _, _, features, _ in rows for f in features[:1])
        note: dict[str, Any] = {"outliers": len(rows), "features": [f for f, _ in counts.most_common(EXPLAIN_TOP)],
                                "min_score": round(min(score for _, score, _, _ in rows), 4)}
        if any(w != 1.0 for *_, w in rows):  # rows were sampled: how many outliers that makes in all
            note["estimated_outliers"] = round(sum(w for *_, w in rows))
        return note

    # -- background fits --------------------------------------------------------------------------

    def _maybe_fit(self, key: GroupKey, g: _Group) -> None:
        c = self.config
        if g.filled < c.min_train_rows or g.rows_since_fit == 0:
            return
        with self._lock:
            if g.fitting is not None or self._closed:
                return
            due = (g.model is None
                   or g.rows_since_fit >= c.retrain_every_rows
                   or self._clock() - g.last_fit >= c.retrain_interval_s)
            if not due:
                return
            g.rows_since_fit = 0
            g.last_fit = self._clock()
            future = self._executor.submit(self._timed_fit, g.window(), c)
            g.fitting = future
        future.add_done_callback(lambda f: self._fitted(key, g, f))

    def _timed_fit(self, window: npt.NDArray[np.float64], config: ForestConfig) -> TrainedForest:
        started = time.perf_counter()
        model = fit_forest(window, config)
        if self._on_fit is not None:
            self._on_fit(time.perf_counter() - started)
        return model

    def _fitted(self, key: GroupKey, g: _Group, future: Future[TrainedForest]) -> None:
        # Runs on the fit thread (or at once, if the fit is already done): swap the model in.
        with self._lock:
            g.fitting = None
            if future.cancelled():
                return
            error = future.exception()
            if error is None:
                g.model = future.result()
        if error is not None:
            log.error("forest fit for model group %r failed: %s", key, error, exc_info=error)

    def wait_for_fits(self, timeout: float | None = None) -> bool:
        """Wait until no fit is in flight (or ``timeout`` seconds pass); True when none is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = [g.fitting for g in self._groups.values() if g.fitting is not None]
            if not pending:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            with contextlib.suppress(Exception):  # cancelled, failed (logged) or timed out: loop decides
                pending[0].result(timeout=remaining)
            time.sleep(0.001)  # let the done callback clear ``fitting``

    def shutdown(self) -> None:
        """Wait (at most ``shutdown_timeout_s``) for fits in flight, then stop the fit thread."""
        if self._closed:
            return
        if not self.wait_for_fits(self.config.shutdown_timeout_s):
            log.warning("forest fits still running after %.1f s; not waiting for them", self.config.shutdown_timeout_s)
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- persistence ------------------------------------------------------------------------------

    def snapshot(self) -> ForestState:
        """The trained forests, least recently fed group first (:class:`ForestFiles` writes the new ones)."""
        with self._lock:
            return [(key, g.model) for key, g in self._groups.items() if g.model is not None]

    def restore(self, state: ForestState | None) -> None:
        with self._lock:
            for g in self._groups.values():
                g.model = None
        for key, model in state or []:
            g = self._group(key)
            with self._lock:
                g.model = model
            g.last_fit = self._clock()


class ForestFiles:
    """Where a :class:`ForestConsumer` keeps its forests: one compressed ``.npz`` per group (no pickle) and an index.

    Only forests fitted since the last write are written; files of groups no longer held are
    removed; the index (:data:`INDEX_NAME`) lists the groups in LRU order. Every file is written
    atomically (:func:`aggregator.analysis.state.write_atomic`). A damaged or mismatched forest is
    logged and skipped on restore, a damaged index means starting without forests: never fatal.
    """

    def __init__(self, directory: Path, config: ForestConfig) -> None:
        self._path = directory
        self.config = config
        self._features = tuple(config.features)
        #: What each group's file holds: the file name and the forest last written to it.
        self._written: dict[GroupKey, tuple[str, TrainedForest]] = {}

    @property
    def path(self) -> Path:
        return self._path

    def write(self, state: ForestState) -> None:
        self._path.mkdir(parents=True, exist_ok=True)
        changed = False
        written: dict[GroupKey, tuple[str, TrainedForest]] = {}  # in LRU order, as restore expects
        for key, model in state:
            name = _file_name(key)
            last = self._written.get(key)
            if last is None or last[1] is not model:
                arrays = model.to_arrays(self._features, self.config.log_features)
                write_atomic(self._path / name, functools.partial(_savez, arrays=arrays))
                changed = True
            written[key] = (name, model)
        gone = [name for key, (name, _) in self._written.items() if key not in written]
        for name in gone:
            (self._path / name).unlink(missing_ok=True)
        changed = changed or bool(gone) or list(written) != list(self._written)
        self._written = written
        if not changed and (self._path / INDEX_NAME).exists():
            return
        write_json(self._path / INDEX_NAME, {
            "version": FORMAT_VERSION, "features": list(self._features),
            "log_features": list(self.config.log_features),
            "groups": [{"group": key, "file": name} for key, (name, _) in written.items()]}, indent=1)

    def read(self) -> ForestState | None:
        path = self._path / INDEX_NAME
        try:
            index = read_json(path, version=FORMAT_VERSION)
            if index is None:
                return None
            entries = [(e["group"], str(e["file"])) for e in index["groups"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("forest index %s could not be read (%s); starting without forests", path, e)
            return None
        state: ForestState = []
        for key, name in entries[-self.config.max_groups:]:
            if not (key is None or isinstance(key, str)) or name != _file_name(key):
                log.error("forest index %s: bad entry %r", path, name)
                continue
            try:
                with np.load(self._path / name, allow_pickle=False) as arrays:
                    model = TrainedForest.from_arrays(arrays, self._features, self.config.log_features)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("forest for model group %r in %s could not be restored (%s)", key, name, e)
                continue
            state.append((key, model))
            self._written[key] = (name, model)
        log.info("restored %d forests from %s", len(state), self._path)
        return state

    def set_aside(self, error: BaseException) -> None:
        """Not reached (``read`` never raises); the files stay where they are."""
        log.error("forests in %s could not be restored (%s); starting without them", self._path, error)


def _num(x: Any) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


def _untransform(name: str, value: float, logged: bool) -> float:
    """A transformed median back in the column's units."""
    if not logged:
        return value
    return float(np.expm1(value) / _LOG_SCALE.get(name, 1.0))


def _savez(f: Any, *, arrays: dict[str, Any]) -> None:
    # Compressed (deflate, lossless: the same forest is loaded back), because a cluster partition's
    # checkpoint carries every forest file at every checkpoint (aggregator/cluster/checkpoint.py):
    # 82 KB instead of 719 KB a forest, and a checkpoint of three forests took 60 ms in its
    # PostgreSQL UPDATE instead of 9.5. Compressing costs ~22 ms, once per fit (docs/cluster-capacity.md).
    np.savez_compressed(f, **arrays)


def _file_name(key: GroupKey) -> str:
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
    return f"group-{digest}.npz"
