"""Event-time tumbling buckets per key, closed by a watermark — the clock of the windowed detectors.

Rows are summed into buckets of ``width_s`` seconds by their own ``time_unix_nano``. The watermark is
the latest event time seen by the detector (all keys) minus ``lateness_s``; a bucket is *closed* —
handed to the detector once, in time order — when its end is at or before the watermark. So rows may
arrive out of order by up to ``lateness_s`` and still count; rows for a bucket already closed are
dropped and counted in ``late_rows``. A key with no rows in a closed bucket gets a zero bucket (a
throughput drop to nothing is seen); after a gap longer than ``max_gap`` buckets only the last
``max_gap`` are replayed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from aggregator.analysis.detectors.keys import Key, KeyedState, group_by_key, heaviest_rows_per_group, nan_filled
from sentinel.model import FeatureBatch

__all__ = ["NS", "BucketSeries", "BucketedDetector", "BucketedKeys", "Closed", "HasBuckets", "KeyState", "same_width",
           "saved_width_s"]

NS = 1_000_000_000
FloatArray = npt.NDArray[np.float64]


def _heaviest_first(e: tuple[float, str]) -> tuple[float, str]:
    return -e[0], e[1]


class BucketSeries:
    """One key's open buckets (index → sums, example trace ids) and the first bucket not yet closed."""

    __slots__ = ("examples", "next_closed", "open")

    def __init__(self) -> None:
        self.open: dict[int, list[float]] = {}
        self.examples: dict[int, list[tuple[float, str]]] = {}
        self.next_closed: int | None = None

    def add(
        self, idx: int, sums: list[float], examples: list[tuple[float, str]], max_examples: int, floor: int | None
    ) -> bool:
        """Add to bucket ``idx``; ``False`` (nothing added) if that bucket is already closed.

        Examples are (weight, trace id); the bucket keeps the ``max_examples`` heaviest, whatever
        order the rows arrived in. ``floor`` is the first bucket not closed for all keys (a new key's
        rows before it are late too).
        """
        first_open = self.next_closed if self.next_closed is not None else floor
        if first_open is not None and idx < first_open:
            return False
        cur = self.open.get(idx)
        self.open[idx] = list(sums) if cur is None else [a + b for a, b in zip(cur, sums, strict=True)]
        held = self.examples.get(idx)
        if examples or held is None:  # nothing new: the kept examples stay as they are (sorted, cut)
            ex = examples if held is None else held + examples
            if len(ex) > 1:
                ex = sorted(ex, key=_heaviest_first)
            self.examples[idx] = ex[:max_examples]
        return True

    def close(self, limit: int, n_fields: int, max_gap: int) -> list[tuple[int, list[float], list[str]]]:
        """Close every bucket before ``limit``, in order, zero-filling the missing ones."""
        if self.next_closed is None:
            if not self.open or limit <= min(self.open):
                return []
            self.next_closed = min(self.open)
        if limit <= self.next_closed:
            return []
        start = max(self.next_closed, limit - max_gap)
        out = [(i, self.open.pop(i, [0.0] * n_fields), [t for _, t in self.examples.pop(i, [])])
               for i in range(start, limit)]
        for i in [i for i in self.open if i < limit]:
            del self.open[i]
            self.examples.pop(i, None)
        self.next_closed = limit
        return out

    def to_state(self) -> dict[str, Any]:
        return {
            "open": [[i, s, [list(e) for e in self.examples.get(i, [])]] for i, s in sorted(self.open.items())],
            "next_closed": self.next_closed,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BucketSeries:
        b = cls()
        for i, s, ex in state["open"]:
            b.open[int(i)] = [float(v) for v in s]
            b.examples[int(i)] = [(float(w), str(t)) for w, t in ex]
        nc = state["next_closed"]
        b.next_closed = None if nc is None else int(nc)
        return b


def _nan_to_zero(f: FloatArray) -> FloatArray:
    """``np.nan_to_num(f)``, without its cost (~10 µs a call, a dozen calls a batch) when all is finite."""
    f = np.asarray(f, dtype=np.float64)
    return f if np.isfinite(f).all() else np.nan_to_num(f)


def _key_bucket_pairs(codes: npt.NDArray[np.int64], bucket: npt.NDArray[np.int64], n_keys: int
                      ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
    """The distinct (key code, bucket) pairs, sorted, and each row's index into them.

    What ``np.unique(np.stack([codes, bucket], axis=1), axis=0, return_inverse=True)`` gives, from
    one integer per row (``code * span + bucket - first``) instead: ``np.unique`` along an axis sorts
    rows through a structured view and took ~60 % of this method (profile of the aggregator bench).
    When those integers are few (a batch spans a bucket or two), a count of each replaces the sort.
    """
    first = int(bucket.min())
    span = int(bucket.max()) - first + 1
    if n_keys * span >= 2**62:  # absurd spread of event times: keep the exact general form
        pair, inv = np.unique(np.stack([codes, bucket], axis=1), axis=0, return_inverse=True)
        return pair, inv.reshape(-1)
    flat = codes * span + (bucket - first)
    if n_keys * span <= 4 * flat.size + 64:
        present = np.bincount(flat, minlength=n_keys * span) > 0
        combined = np.flatnonzero(present)
        inv = (np.cumsum(present) - 1)[flat]
    else:
        combined, inv = np.unique(flat, return_inverse=True)
    return np.stack([combined // span, combined % span + first], axis=1), inv.reshape(-1)


class _Pairs(NamedTuple):
    """A batch's rows grouped by (key, bucket): what every detector with the same key and width shares."""

    pair: list[list[int]]  # (key code, bucket index) per group, sorted
    inv: npt.NDArray[np.intp]  # each row's group
    counts: npt.NDArray[np.int64]  # rows per group


#: The last few groupings by (key, bucket), by the identity of the key codes (memoised read-only by
#: ``group_by_key``) and time column, and the bucket width: a dozen detectors bucket the same batch
#: by the same key, most at the same width (profile of ``loadtest/bench_aggregator.py``). The memo
#: keeps both arrays alive, so an identity is not reused while remembered; the analysis thread
#: alone calls it.
_PAIRS_MEMO: OrderedDict[tuple[int, int, int], tuple[npt.NDArray[Any], npt.NDArray[Any], _Pairs]] = OrderedDict()
_PAIRS_MEMO_SIZE = 16


def _pairs(codes: npt.NDArray[np.int64], times: npt.NDArray[Any], n_keys: int, width_ns: int) -> _Pairs:
    ident = (id(codes), id(times), width_ns)
    hit = _PAIRS_MEMO.get(ident)
    if hit is not None and hit[0] is codes and hit[1] is times:
        _PAIRS_MEMO.move_to_end(ident)
        return hit[2]
    bucket = times.astype(np.int64) // width_ns
    pair, inv = _key_bucket_pairs(codes, bucket, n_keys)
    inv.flags.writeable = False
    counts = np.bincount(inv, minlength=len(pair))
    counts.flags.writeable = False
    grouped = _Pairs(pair.tolist(), inv, counts)
    _PAIRS_MEMO[ident] = (codes, times, grouped)
    while len(_PAIRS_MEMO) > _PAIRS_MEMO_SIZE:
        _PAIRS_MEMO.popitem(last=False)
    return grouped


class HasBuckets(Protocol):
    buckets: BucketSeries


S = TypeVar("S", bound=HasBuckets)
#: One closed bucket: (key, the key's state, bucket index, sums, example trace ids).
Closed = tuple[Key, S, int, list[float], list[str]]


class BucketedKeys(Generic[S]):
    """Per-key state (bounded, LRU) with event-time buckets of ``n_fields`` sums each."""

    def __init__(
        self,
        *,
        width_s: float,
        lateness_s: float,
        max_keys: int,
        n_fields: int,
        factory: Callable[[], S],
        max_gap: int = 1440,
        max_examples: int = 3,
    ) -> None:
        self.width_ns = int(width_s * NS)
        self.lateness_ns = int(lateness_s * NS)
        self.n_fields = n_fields
        self.max_gap = max_gap
        self.max_examples = max_examples
        self.keys: KeyedState[S] = KeyedState(max_keys, factory)
        self.watermark: int | None = None  # latest event time seen (ns)
        self.closed_limit: int | None = None  # buckets before this index have been closed everywhere
        self.late_rows = 0
        # key -> the latest bucket index that rows arrived too late for (known loss of that key)
        self.last_late: dict[Key, int] = {}
        self._touched: set[Key] = set()

    def add(
        self,
        batch: FeatureBatch,
        key_columns: Sequence[str],
        fields: Sequence[FloatArray],
        example_weight: FloatArray,
    ) -> None:
        """Sum ``fields`` (one array per field, NaN counts as 0) per (key, bucket) and add them."""
        if batch.n == 0:
            return
        keys, grouped = self._group(batch, key_columns)
        inv, n_pairs = grouped.inv, len(grouped.pair)
        sums: FloatArray = np.stack(
            [np.bincount(inv, weights=_nan_to_zero(f), minlength=n_pairs) for f in fields], axis=1)
        self._fold(batch, keys, grouped, sums, example_weight)

    def add_categories(self, batch: FeatureBatch, key_columns: Sequence[str], category: npt.NDArray[np.int64],
                       example_weight: FloatArray) -> None:
        """:meth:`add` of one field per category, ``(category == j)`` for j < ``n_fields`` (-1: no field),
        in one count instead of one pass per field."""
        if batch.n == 0:
            return
        keys, grouped = self._group(batch, key_columns)
        counted = (category >= 0) & (category < self.n_fields)
        cells = grouped.inv[counted] * self.n_fields + category[counted]
        counts = np.bincount(cells, minlength=len(grouped.pair) * self.n_fields)
        sums = np.asarray(counts.reshape(len(grouped.pair), self.n_fields), dtype=np.float64)
        self._fold(batch, keys, grouped, sums, example_weight)

    def _group(self, batch: FeatureBatch, key_columns: Sequence[str]) -> tuple[list[Key], _Pairs]:
        codes, keys = group_by_key([batch.strings[c] for c in key_columns])
        return keys, _pairs(codes, batch.numeric["time_unix_nano"], len(keys), self.width_ns)

    def _fold(self, batch: FeatureBatch, keys: list[Key], grouped: _Pairs, sums: npt.NDArray[np.float64],
              example_weight: FloatArray) -> None:
        """Add each (key, bucket)'s sums and example rows to its open bucket; count the late ones."""
        inv = grouped.inv
        example_weight = np.asarray(example_weight, dtype=np.float64)
        rows, starts = heaviest_rows_per_group(inv, example_weight, self.max_examples)
        trace = batch.strings["trace_id"]
        weight = nan_filled(example_weight[rows], -1.0).tolist()  # of the rows kept only
        kept = list(zip(weight, [trace[r] for r in rows], strict=True))
        for p, ((code, idx), s) in enumerate(zip(grouped.pair, sums.tolist(), strict=True)):
            ex = [(w, tid) for w, tid in kept[starts[p]:starts[p + 1]] if tid is not None]
            key = keys[code]
            self._touched.add(key)
            if not self.keys.get(key).buckets.add(idx, s, ex, self.max_examples, self.closed_limit):
                self.late_rows += int(grouped.counts[p])
                if len(self.last_late) < 4 * self.keys.max_keys or key in self.last_late:
                    self.last_late[key] = max(idx, self.last_late.get(key, idx))
        latest = int(batch.numeric["time_unix_nano"].max())
        self.watermark = latest if self.watermark is None else max(self.watermark, latest)

    def close(self) -> list[Closed[S]]:
        """Buckets closed by the watermark since the last call, per key in time order."""
        if self.watermark is None:
            return []
        limit = (self.watermark - self.lateness_ns) // self.width_ns
        out: list[Closed[S]] = []
        # Only a rising watermark can close an old key's bucket; otherwise only new rows matter.
        if limit == self.closed_limit:
            items = [(k, st) for k in sorted(self._touched, key=str) if (st := self.keys.items.get(k)) is not None]
        else:
            items = list(self.keys)
        self._touched.clear()
        for key, state in items:
            for idx, sums, ex in state.buckets.close(limit, self.n_fields, self.max_gap):
                out.append((key, state, idx, sums, ex))
        self.closed_limit = limit
        return out

    def window(self, idx: int) -> tuple[int, int]:
        return idx * self.width_ns, (idx + 1) * self.width_ns

    def to_state(self, key_state: Callable[[S], dict[str, Any]]) -> dict[str, Any]:
        return {
            "watermark": self.watermark,
            "late_rows": self.late_rows,
            "keys": [[list(k), s.buckets.to_state(), key_state(s)] for k, s in self.keys],
        }

    def load_state(self, state: dict[str, Any], key_state: Callable[[dict[str, Any]], S]) -> None:
        wm = state["watermark"]
        self.watermark = None if wm is None else int(wm)
        self.late_rows = int(state["late_rows"])
        for k, b, s in state["keys"]:
            obj = key_state(s)
            obj.buckets = BucketSeries.from_state(b)
            self.keys.items[tuple(k)] = obj


class BucketedConfig(Protocol):
    """What :class:`BucketedDetector` reads of a detector's config (besides its bucket width)."""

    @property
    def lateness_s(self) -> float: ...

    @property
    def max_keys(self) -> int: ...

    def validate(self) -> Any: ...  # the config itself, checked


class KeyState(HasBuckets, Protocol):
    """A bucketed detector's per-key state (and a ``from_state(d)`` classmethod to read it back)."""

    def to_state(self) -> dict[str, Any]: ...


C = TypeVar("C", bound=BucketedConfig)
K = TypeVar("K", bound=KeyState)


class BucketedDetector(Generic[C, K]):
    """What the bucketed detectors share: a validated config, per-key event-time buckets, saved state.

    A detector names its ``NAME`` (in its saved state), ``CONFIG`` (its config class, defaults when
    none is given), ``KEY_STATE`` (the per-key state: ``to_state()`` and a ``from_state(d)``
    classmethod), ``N_FIELDS`` (sums per bucket) and ``WIDTH`` (the config field that is the bucket
    width), and writes ``update``.
    """

    NAME: ClassVar[str]
    CONFIG: ClassVar[type[Any]]
    KEY_STATE: ClassVar[Any]
    N_FIELDS: ClassVar[int]
    WIDTH: ClassVar[str] = "bucket_s"

    def __init__(self, config: C | None = None) -> None:
        self.config: C = (config if config is not None else self.CONFIG()).validate()
        c = self.config
        self._keys: BucketedKeys[K] = BucketedKeys(
            width_s=float(getattr(c, self.WIDTH)), lateness_s=c.lateness_s, max_keys=c.max_keys,
            n_fields=self.N_FIELDS, factory=self.KEY_STATE)

    @property
    def late_rows(self) -> int:
        return self._keys.late_rows

    def to_state(self) -> dict[str, Any]:
        return {"detector": self.NAME, "version": 1, **self._keys.to_state(lambda s: s.to_state()),
                "bucket_s": self._keys.width_ns / NS}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: C | None = None) -> Self:
        if state.get("detector") != cls.NAME or state.get("version") != 1:
            raise ValueError(f"not a {cls.NAME} state (version 1)")
        det = cls(config)
        if not same_width(state, det._keys.width_ns / NS):
            return det  # other buckets: learned afresh (same_width)
        det._keys.load_state(dict(state), cls.KEY_STATE.from_state)
        return det


def saved_width_s(state: Mapping[str, Any]) -> float | None:
    """The bucket width a detector's state was saved with; for one saved before it was kept, read off a
    key's next bucket against the watermark (epoch ns over bucket index; None: nothing to tell by)."""
    if "bucket_s" in state:
        return float(state["bucket_s"])
    wm = state.get("watermark")
    for _, buckets, _ in state.get("keys", []):
        nc = buckets.get("next_closed")
        if wm is not None and nc:
            return round(int(wm) / int(nc) / NS, 3)
    return None


def same_width(state: Mapping[str, Any], width_s: float) -> bool:
    """Whether a saved state's buckets are ``width_s`` wide (or nothing tells). Buckets of another width --
    a changed ``bucket_s``, or a default that changed (throughput_drop and finish_length went from 60 to
    30 s, issue 13) -- have indices and counts of other windows, so the detector learns afresh instead."""
    saved = saved_width_s(state)
    return saved is None or abs(saved - width_s) < 1e-6
