"""Distribution drift of a metric per (service, request model): PSI and Jensen–Shannon divergence.

Per key and metric the first ``reference_size`` values (in arrival order) are the reference; its
quantiles give ``bins`` equal-mass bins (fewer when values repeat, e.g. token counts). After that,
values are counted into those bins per event-time window of ``window_s`` (tumbling, closed by the
watermark, see :mod:`aggregator.analysis.detectors.buckets`). A closed window with at least ``min_count``
values is compared with the reference: PSI ≥ ``psi_threshold`` (0.25 by convention: "significant
shift"; 0.1–0.25 "moderate") emits a ``drift`` candidate, once per excursion; the key re-arms
after a window with PSI below ``rearm_psi`` (0.1). The JS divergence (bits) is reported beside it.

Categorical columns (``categorical``: ``finish_reason``, ``response_model``): per key the first
``reference_size`` non-null values give the reference mix; categories are numbered per key in order
of appearance (at most ``max_categories``, later ones share an "other" slot; a category first seen
after the reference counts 0 there). A closed window with ≥ ``min_count`` values is compared by the
Jensen–Shannon divergence in bits (0 same, 1 disjoint); JS ≥ ``js_threshold`` (0.05) emits a
``drift`` candidate with ``metric`` the column, once per excursion, re-armed below ``rearm_js``.
Null values (e.g. the finish reason of a failed call) are not counted: error bursts are found elsewhere.

References
----------
Siddiqi, N., *Credit Risk Scorecards*, Wiley 2006 (PSI and its 0.1 / 0.25 rule of thumb).
Lin, J., "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory 37 (1), 1991.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.analysis.detectors.buckets import BucketedKeys
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.divergence import js_divergence, psi
from aggregator.analysis.detectors.keys import Key, group_by_key, nan_filled
from aggregator.analysis.detectors.validation import check_min, check_positive
from sentinel.config import ConfigError
from sentinel.model import NUMERIC_COLUMNS, STRING_COLUMNS, FeatureBatch

__all__ = ["DriftConfig", "DriftDetector"]

NAME = "drift"
DEFAULT_METRICS: tuple[str, ...] = ("output_tokens", "latency_ms")
DEFAULT_WINDOW_S = 900.0
DEFAULT_LATENESS_S = 60.0
DEFAULT_REFERENCE_SIZE = 1000
DEFAULT_BINS = 10
DEFAULT_MIN_COUNT = 200
DEFAULT_PSI_THRESHOLD = 0.25
DEFAULT_REARM_PSI = 0.1
DEFAULT_CATEGORICAL: tuple[str, ...] = ("finish_reason", "response_model")
DEFAULT_JS_THRESHOLD = 0.05
DEFAULT_REARM_JS = 0.02
DEFAULT_MAX_CATEGORIES = 16
DEFAULT_MAX_KEYS = 10_000
#: Not categorical features: the key itself, ids.
NOT_CATEGORICAL = ("service", "request_model", "trace_id", "span_id")
OTHER = "(other)"
KEY_COLUMNS = ("service", "request_model")


@dataclass(frozen=True, kw_only=True)
class DriftConfig:
    """Settings of ``detectors.drift``."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    window_s: float = DEFAULT_WINDOW_S
    lateness_s: float = DEFAULT_LATENESS_S
    reference_size: int = DEFAULT_REFERENCE_SIZE
    bins: int = DEFAULT_BINS
    min_count: int = DEFAULT_MIN_COUNT
    psi_threshold: float = DEFAULT_PSI_THRESHOLD
    rearm_psi: float = DEFAULT_REARM_PSI
    categorical: tuple[str, ...] = DEFAULT_CATEGORICAL
    js_threshold: float = DEFAULT_JS_THRESHOLD
    rearm_js: float = DEFAULT_REARM_JS
    max_categories: int = DEFAULT_MAX_CATEGORIES
    max_keys: int = DEFAULT_MAX_KEYS

    def validate(self) -> DriftConfig:
        for m in self.metrics:
            if m not in NUMERIC_COLUMNS or m in ("time_unix_nano", "is_error"):
                raise ConfigError(f"detectors.{NAME}.metrics: unknown metric {m!r}")
        check_positive(NAME, "window_s", self.window_s)
        check_min(NAME, "lateness_s", self.lateness_s, 0)
        check_min(NAME, "bins", self.bins, 2)
        check_min(NAME, "reference_size", self.reference_size, self.bins)
        check_min(NAME, "min_count", self.min_count, 1)
        check_positive(NAME, "psi_threshold", self.psi_threshold)
        check_min(NAME, "rearm_psi", self.rearm_psi, 0)
        if self.rearm_psi > self.psi_threshold:
            raise ConfigError(f"detectors.{NAME}.rearm_psi: must be at most psi_threshold ({self.psi_threshold})")
        for col in self.categorical:
            if col not in STRING_COLUMNS or col in NOT_CATEGORICAL:
                raise ConfigError(f"detectors.{NAME}.categorical: unknown or unsuitable column {col!r}")
        if not (isinstance(self.js_threshold, int | float) and 0 < self.js_threshold <= 1):
            raise ConfigError(f"detectors.{NAME}.js_threshold: must be in (0, 1] (bits), got {self.js_threshold!r}")
        check_min(NAME, "rearm_js", self.rearm_js, 0)
        if self.rearm_js > self.js_threshold:
            raise ConfigError(f"detectors.{NAME}.rearm_js: must be at most js_threshold ({self.js_threshold})")
        check_min(NAME, "max_categories", self.max_categories, 2)
        check_min(NAME, "max_keys", self.max_keys, 1)
        return self


class _KeyState:
    __slots__ = ("armed", "edges", "reference", "reference_counts")

    def __init__(self) -> None:
        self.reference: list[float] = []
        self.edges: list[float] | None = None
        self.reference_counts: list[float] = []
        self.armed = True

    def to_state(self) -> dict[str, Any]:
        return {"reference": self.reference, "edges": self.edges, "reference_counts": self.reference_counts,
                "armed": self.armed}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _KeyState:
        st = cls()
        st.reference = [float(v) for v in d["reference"]]
        st.edges = None if d["edges"] is None else [float(v) for v in d["edges"]]
        st.reference_counts = [float(v) for v in d["reference_counts"]]
        st.armed = bool(d["armed"])
        return st


class _CatState:
    """One key's categories (slot = index; slot ``max_categories`` is "other") and reference counts."""

    __slots__ = ("armed", "ref_n", "reference_counts", "vocab")

    def __init__(self, max_categories: int) -> None:
        self.vocab: list[str] = []
        self.reference_counts = [0.0] * (max_categories + 1)
        self.ref_n = 0
        self.armed = True

    def slot(self, value: str) -> int:
        if value in self.vocab:
            return self.vocab.index(value)
        if len(self.vocab) < len(self.reference_counts) - 1:
            self.vocab.append(value)
            return len(self.vocab) - 1
        return len(self.reference_counts) - 1

    def named(self, counts: list[float]) -> dict[str, float]:
        out = {v: counts[i] for i, v in enumerate(self.vocab) if counts[i]}
        if counts[-1]:
            out[OTHER] = counts[-1]
        return out

    def to_state(self) -> dict[str, Any]:
        return {"vocab": self.vocab, "reference_counts": self.reference_counts, "ref_n": self.ref_n,
                "armed": self.armed}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _CatState:
        st = cls(len(d["reference_counts"]) - 1)
        st.vocab = [str(v) for v in d["vocab"]]
        st.reference_counts = [float(v) for v in d["reference_counts"]]
        st.ref_n, st.armed = int(d["ref_n"]), bool(d["armed"])
        return st


class DriftDetector:
    """Reference-vs-window PSI (and JS) of each configured metric, per (service, request_model)."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = (config or DriftConfig()).validate()
        c = self.config
        self._metrics: dict[str, BucketedKeys[_KeyState]] = {
            m: BucketedKeys(width_s=c.window_s, lateness_s=c.lateness_s, max_keys=c.max_keys, n_fields=c.bins,
                            factory=_KeyState) for m in c.metrics}
        self._categorical: dict[str, BucketedKeys[_CatState]] = {
            col: BucketedKeys(width_s=c.window_s, lateness_s=c.lateness_s, max_keys=c.max_keys,
                              n_fields=c.max_categories + 1, factory=self._new_cat) for col in c.categorical}

    def _new_cat(self) -> _CatState:
        return _CatState(self.config.max_categories)

    @property
    def late_rows(self) -> int:
        return sum(k.late_rows for k in self._metrics.values()) + sum(k.late_rows for k in self._categorical.values())

    def update(self, batch: FeatureBatch) -> list[Candidate]:
        out: list[Candidate] = []
        c = self.config
        if batch.n:
            codes, keys = group_by_key([batch.strings[k] for k in KEY_COLUMNS])
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(len(keys) + 1))
            for metric, state in self._metrics.items():
                values = batch.numeric[metric]
                bin_of = self._bin_rows(state, keys, codes, values, order, bounds)
                state.add_categories(batch, KEY_COLUMNS, bin_of, nan_filled(values, -1.0))
            for col, cat in self._categorical.items():
                slot_of = self._slot_rows(cat, batch.strings[col], keys, codes, order, bounds)
                cat.add_categories(batch, KEY_COLUMNS, slot_of, np.zeros(batch.n))
        for metric, state in self._metrics.items():
            for key, st, idx, counts, examples in state.close():
                n = sum(counts)
                if st.edges is None or n < c.min_count:
                    continue
                used = len(st.edges) + 1
                value = psi(st.reference_counts, counts[:used])
                if value < c.rearm_psi:
                    st.armed = True
                if value >= c.psi_threshold and st.armed:
                    st.armed = False
                    start, end = state.window(idx)
                    out.append(Candidate(
                        anomaly_type="drift", service=key[0], model=key[1], detection_method="psi",
                        confidence=min(1.0, value / (2 * c.psi_threshold)), metric=metric, value=value,
                        baseline=0.0, threshold=c.psi_threshold, deviation_sigma=float("nan"),
                        window_start=start, window_end=end,
                        context={"trace_ids": examples, "js_divergence": js_divergence(st.reference_counts,
                                                                                        counts[:used]),
                                 "count": int(n), "bin_edges": st.edges, "reference_counts": st.reference_counts,
                                 "window_counts": counts[:used]}))
        for col, cat in self._categorical.items():
            for key, cst, idx, counts, examples in cat.close():
                n = sum(counts)
                if cst.ref_n < c.reference_size or n < c.min_count:
                    continue
                value = js_divergence(cst.reference_counts, counts)
                if value < c.rearm_js:
                    cst.armed = True
                if value >= c.js_threshold and cst.armed:
                    cst.armed = False
                    start, end = cat.window(idx)
                    out.append(Candidate(
                        anomaly_type="drift", service=key[0], model=key[1], detection_method="jensen_shannon",
                        confidence=min(1.0, value / (2 * c.js_threshold)), metric=col, value=value, baseline=0.0,
                        threshold=c.js_threshold, deviation_sigma=float("nan"), window_start=start, window_end=end,
                        context={"trace_ids": examples, "js_divergence": value, "count": int(n),
                                 "reference_counts": cst.named(cst.reference_counts),
                                 "window_counts": cst.named(counts)}))
        return out

    def _slot_rows(
        self, cat: BucketedKeys[_CatState], column: list[str | None], keys: list[Key],
        codes: np.ndarray[Any, np.dtype[np.int64]], order: np.ndarray[Any, np.dtype[np.int64]],
        bounds: np.ndarray[Any, np.dtype[np.int64]],
    ) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Category slot per row (−1: null or still reference); the reference of a new key is filled first.

        The distinct (key, category) pairs of the batch come from one ``np.unique`` (not one per key,
        issue 16); each key's new categories still take slots in order of appearance, keys in order.
        """
        c = self.config
        slot_of = np.full(len(column), -1, dtype=np.int64)
        vcode, values = group_by_key([column])
        present = np.array([v is not None for (v,) in values], dtype=bool)[vcode]
        rows_p = np.flatnonzero(present)
        if rows_p.size == 0:
            return slot_of
        n_values = len(values)
        pair = codes[rows_p] * n_values + vcode[rows_p]
        uniq, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
        pair_key = uniq // n_values
        slot = np.empty(uniq.size, dtype=np.int64)
        states: dict[int, _CatState] = {}
        for u in np.lexsort((first, pair_key)).tolist():  # key after key, each in order of appearance
            g, v = divmod(int(uniq[u]), n_values)
            st = states.get(g)
            if st is None:
                st = states[g] = cat.keys.get(keys[g])
            slot[u] = st.slot(str(values[v][0]))
        slot_of[rows_p] = slot[inverse.reshape(-1)]
        for g, st in states.items():
            need = c.reference_size - st.ref_n
            if need <= 0:
                continue
            rows = order[bounds[g]:bounds[g + 1]]
            rows = rows[present[rows]]
            row_slot = slot_of[rows]
            ref = np.bincount(row_slot[:need], minlength=c.max_categories + 1)
            st.reference_counts = [a + float(b) for a, b in zip(st.reference_counts, ref.tolist(), strict=True)]
            st.ref_n += min(need, rows.size)
            slot_of[rows[:need]] = -1
        return slot_of

    def _bin_rows(
        self, state: BucketedKeys[_KeyState], keys: list[Key], codes: np.ndarray[Any, np.dtype[np.int64]],
        values: np.ndarray[Any, np.dtype[np.float64]], order: np.ndarray[Any, np.dtype[np.int64]],
        bounds: np.ndarray[Any, np.dtype[np.int64]],
    ) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Bin per row (−1: NaN or still reference): a new key's reference is filled first; the keys
        with edges are binned together, a row's bin being how many of its key's edges are ≤ it (what
        ``np.searchsorted(edges, v, side="right")`` gives, without a call per key: issue 16)."""
        bin_of = np.full(len(values), -1, dtype=np.int64)
        ready: dict[int, list[float]] = {}
        for g, key in enumerate(keys):
            st = state.keys.get(key)
            if st.edges is not None:
                ready[g] = st.edges
                continue
            rows = order[bounds[g]:bounds[g + 1]]
            rows = rows[~np.isnan(values[rows])]
            take = rows[: self.config.reference_size - len(st.reference)]
            st.reference.extend(values[take].tolist())
            rows = rows[take.size:]
            if len(st.reference) < self.config.reference_size:
                continue
            ref = np.asarray(st.reference)
            qs = np.quantile(ref, np.arange(1, self.config.bins) / self.config.bins)
            st.edges = np.unique(qs).tolist()
            st.reference_counts = np.bincount(np.searchsorted(st.edges, ref, side="right"),
                                              minlength=len(st.edges) + 1).astype(np.float64).tolist()
            st.reference = []
            bin_of[rows] = np.searchsorted(np.asarray(st.edges), values[rows], side="right")
        if ready:
            width = max(len(e) for e in ready.values())
            edges = np.full((len(keys), width), np.inf)
            used = np.zeros((len(keys), width), dtype=bool)
            for g, e in ready.items():
                edges[g, :len(e)] = e
                used[g, :len(e)] = True
            is_ready = np.zeros(len(keys), dtype=bool)
            is_ready[list(ready)] = True
            rows = np.flatnonzero(is_ready[codes] & ~np.isnan(values))
            k = codes[rows]
            bin_of[rows] = ((edges[k] <= values[rows, None]) & used[k]).sum(axis=1)
        return bin_of

    def to_state(self) -> dict[str, Any]:
        return {"detector": NAME, "version": 2,
                "metrics": {m: k.to_state(lambda s: s.to_state()) for m, k in self._metrics.items()},
                "categorical": {col: k.to_state(lambda s: s.to_state()) for col, k in self._categorical.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: DriftConfig | None = None) -> DriftDetector:
        if state.get("detector") != NAME or state.get("version") not in (1, 2):
            raise ValueError(f"not a {NAME} state (version 1 or 2)")
        det = cls(config)
        if set(state["metrics"]) != set(det._metrics):
            raise ValueError(f"{NAME} state was saved for other metrics: {sorted(state['metrics'])}")
        for m, k in det._metrics.items():
            k.load_state(state["metrics"][m], _KeyState.from_state)
        saved = state.get("categorical", {})  # version 1: none; a column not saved starts afresh
        for col, cat in det._categorical.items():
            slots = det.config.max_categories + 1
            if col in saved and all(len(st["reference_counts"]) == slots for _, _, st in saved[col]["keys"]):
                cat.load_state(saved[col], _CatState.from_state)  # else max_categories changed: afresh
        return det
