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

import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from aggregator.analysis.detectors.keys import Key, KeyedState, group_by_key, nan_filled
from sentinel.model import FeatureBatch

__all__ = ["NS", "BucketedDetector", "BucketedKeys", "Closed", "KeyState", "same_width", "saved_width_s"]

NS = 1_000_000_000
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _nan_to_zero(f: FloatArray) -> FloatArray:
    """``np.nan_to_num(f)``, without its cost (~10 µs a call, a dozen calls a batch; ~50 µs with a
    NaN, as costs often have): :func:`nan_filled` with 0."""
    return nan_filled(f, 0.0)


def _key_bucket_pairs(codes: npt.NDArray[np.int64], bucket: npt.NDArray[np.int64], n_keys: int
                      ) -> tuple[IntArray, IntArray, npt.NDArray[np.intp]]:
    """The distinct (key code, bucket) pairs, sorted (their codes, their buckets), and each row's
    index into them; every code below ``n_keys`` has a row.

    What ``np.unique(np.stack([codes, bucket], axis=1), axis=0, return_inverse=True)`` gives, from
    one integer per row (``code * span + bucket - first``) instead: ``np.unique`` along an axis sorts
    rows through a structured view and took ~60 % of this method (profile of the aggregator bench).
    When those integers are few (a batch spans a bucket or two), a count of each replaces the sort;
    when the batch is in one bucket (nearly always), the pairs are the keys.
    """
    first = int(bucket.min())
    span = int(bucket.max()) - first + 1
    if span == 1:
        return np.arange(n_keys, dtype=np.int64), np.full(n_keys, first, dtype=np.int64), codes.astype(np.intp)
    if n_keys * span >= 2**62:  # absurd spread of event times: keep the exact general form
        pair, inv = np.unique(np.stack([codes, bucket], axis=1), axis=0, return_inverse=True)
        return pair[:, 0].astype(np.int64), pair[:, 1].astype(np.int64), inv.reshape(-1)
    flat = codes * span + (bucket - first)
    if n_keys * span <= 4 * flat.size + 64:
        present = np.bincount(flat, minlength=n_keys * span) > 0
        combined = np.flatnonzero(present)
        inv = (np.cumsum(present) - 1)[flat]
    else:
        combined, inv = np.unique(flat, return_inverse=True)
    return combined // span, combined % span + first, inv.reshape(-1)


class _Pairs(NamedTuple):
    """A batch's rows grouped by (key, bucket): what every detector with the same key and width shares."""

    code: npt.NDArray[np.int64]  # key code per group, sorted (then by bucket)
    idx: npt.NDArray[np.int64]  # bucket index per group
    inv: npt.NDArray[np.intp]  # each row's group
    counts: npt.NDArray[np.int64]  # rows per group
    idx_min: int  # the first bucket index
    latest: int  # the latest event time (ns)
    memo: dict[int, _GroupOrder]  # _heaviest's, by k


class _GroupOrder(NamedTuple):
    """What :func:`_heaviest` needs of a grouping and ``k``, whatever the weights."""

    by_group: IntArray  # rows by (group, row)
    kept: npt.NDArray[np.bool_]  # of by_group: the first k of each group
    starts: IntArray  # where each group's kept rows start (G + 1)
    n_kept: IntArray  # kept rows per group
    cell: IntArray | None  # of by_group: the row's cell in a (G, largest group) matrix; None: too sparse
    width: int  # the largest group


def _group_order(grouped: _Pairs, k: int) -> _GroupOrder:
    got = grouped.memo.get(k)
    if got is None:
        counts, n_groups = grouped.counts, len(grouped.counts)
        inv = grouped.inv.astype(np.int16) if n_groups < 2**15 else grouped.inv  # int16: a radix sort
        by_group = np.argsort(inv, kind="stable").astype(np.int64)
        ends = np.cumsum(counts)
        group_of = inv[by_group].astype(np.int64)
        rank = np.arange(inv.size) - (ends - counts)[group_of]
        n_kept = np.minimum(counts, k).astype(np.int64)
        starts = np.zeros(n_groups + 1, dtype=np.int64)
        np.cumsum(n_kept, out=starts[1:])
        width = int(counts.max()) if n_groups else 0
        cell = group_of * width + rank if n_groups * width <= 8 * inv.size + 64 else None
        got = grouped.memo[k] = _GroupOrder(by_group, rank < k, starts, n_kept, cell, width)
    return got


def _heaviest(grouped: _Pairs, weight: FloatArray, k: int) -> tuple[IntArray, IntArray]:
    """:func:`~aggregator.analysis.detectors.keys.heaviest_rows` of the groups (rows of the ``k``
    largest weights of each group, heaviest first, ties by row, NaN lightest; and where each group's
    start)."""
    rows, order = _heaviest_rows(grouped, weight, k)
    return rows, order.starts


def _heaviest_rows(grouped: _Pairs, weight: FloatArray, k: int) -> tuple[IntArray, _GroupOrder]:
    """:func:`_heaviest`'s rows, and the grouping's part, worked out once per grouping (as a dozen
    detectors pick examples from the same groups): rows by group, kept ranks, rows kept per group."""
    order = _group_order(grouped, k)
    neg = -nan_filled(weight, -np.inf)
    if neg.size == 0 or neg.min() == neg.max():  # all weights equal: the rows' own order already is
        return order.by_group[order.kept], order
    rows: IntArray
    if order.cell is not None and order.width > k:
        # Only rows at least as heavy as their group's k-th heaviest can be kept: that threshold of
        # every group from one partition of a (group, rank) matrix, and only those rows sorted.
        n_groups = len(grouped.counts)
        mat = np.full(n_groups * order.width, np.inf)
        mat[order.cell] = neg[order.by_group]
        kth = np.partition(mat.reshape(n_groups, order.width), k - 1, axis=1)[:, k - 1]
        rows = np.flatnonzero(neg <= kth[grouped.inv])
    else:
        rows = np.arange(neg.size, dtype=np.int64)
    # Rows by (group, weight descending, row): a stable sort by group of the rows in weight order,
    # the group as int16 when it fits (numpy's stable sort of int16 is a radix sort).
    rows = rows[np.argsort(neg[rows], kind="stable")]
    g = grouped.inv[rows]
    if len(grouped.counts) < 2**15:
        g = g.astype(np.int16)
    within = np.argsort(g, kind="stable")
    rows, g = rows[within], g[within].astype(np.int64)
    if rows.size == neg.size:
        return rows[order.kept].astype(np.int64), order
    first = np.searchsorted(g, np.arange(len(grouped.counts)))
    return rows[np.arange(rows.size) - first[g] < k].astype(np.int64), order


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
    code, idx, inv = _key_bucket_pairs(codes, bucket, n_keys)
    counts = np.bincount(inv, minlength=len(code))
    for a in (inv, counts, code, idx):
        a.flags.writeable = False
    grouped = _Pairs(code, idx, inv, counts, int(idx.min()), int(times.max()), {})
    _PAIRS_MEMO[ident] = (codes, times, grouped)
    while len(_PAIRS_MEMO) > _PAIRS_MEMO_SIZE:
        _PAIRS_MEMO.popitem(last=False)
    return grouped


S = TypeVar("S")
#: One closed bucket: (key, the key's state, bucket index, sums, example trace ids).
Closed = tuple[Key, S, int, list[float], list[str]]

#: ``next_closed`` of a key none of whose buckets has been closed yet (every bucket index is above it).
_NONE = int(np.iinfo(np.int64).min)
_ABOVE = int(np.iinfo(np.int64).max)
#: Example candidates gathered before they are merged into the kept examples in one sort.
_PENDING_MERGE = 4096
ObjArray = npt.NDArray[np.object_]


class BucketedKeys(Generic[S]):
    """Per-key state (bounded, LRU) with event-time buckets of ``n_fields`` sums each.

    The open buckets of all keys are rows of arrays, not objects per key (issue 16: a Python loop per
    (key, bucket), a dozen times a batch, was the aggregator's largest cost). A key that has had rows
    has a *slot*: its first open bucket (``next_closed``), its latest bucket and that bucket's row, and
    a map of its open buckets to rows. A batch's (key, bucket) groups find their rows with array
    operations (a group in its key's latest bucket, nearly all of them) and add their sums in one;
    only a group in another bucket (a late row within the lateness, a new bucket) looks the map up.
    Each group's heaviest rows are appended to a pending list of example candidates, merged into the
    rows' kept examples in one sort once enough have gathered, or before a bucket is closed or saved
    (the same examples as merging each batch: the kept ones are the ``max_examples`` first of all of
    a bucket's candidates by weight descending, then trace id, then arrival).

    The rules: a bucket before the key's first open one (for a key with nothing closed yet, before
    the first open one of all keys) is late: its rows are dropped and counted; a NaN example weight
    counts as -1; a key with nothing in a closed bucket gets zeros; after a gap longer than
    ``max_gap`` buckets only the last ``max_gap`` are closed.
    """

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
        self.keys: KeyedState[S] = KeyedState(max_keys, factory, on_evict=self._evict)
        self.watermark: int | None = None  # latest event time seen (ns)
        self.closed_limit: int | None = None  # buckets before this index have been closed everywhere
        self.late_rows = 0
        # key -> the latest bucket index that rows arrived too late for (known loss of that key)
        self.last_late: dict[Key, int] = {}
        # no key's first open bucket is above this: a batch with no bucket below it has no late rows
        self._late_bound = _NONE
        # slots
        self._slot: dict[Key, int] = {}
        self._slot_key: list[Key | None] = []
        self._rows_of: list[dict[int, int]] = []  # slot -> {bucket index: row}
        self._free: list[int] = []
        self._dead: list[int] = []  # slots of keys evicted since the last _flush (not reused before it)
        self._next_closed: IntArray = np.empty(0, dtype=np.int64)
        self._cur_idx: IntArray = np.empty(0, dtype=np.int64)  # the slot's latest bucket (_NONE: none)
        self._cur_row: IntArray = np.empty(0, dtype=np.int64)
        self._live = np.empty(0, dtype=bool)
        # rows (open buckets): sums and kept examples, (weight, trace id) heaviest first
        self._free_rows: list[int] = []
        self._n_rows = 0
        self._sums: FloatArray = np.empty((0, n_fields))
        self._nex: IntArray = np.empty(0, dtype=np.int64)
        self._exw: FloatArray = np.empty((0, max_examples))
        self._ext: ObjArray = np.empty((0, max_examples), dtype=object)
        # example candidates not merged yet: (row, weight, trace id), in arrival order
        self._p_row: list[IntArray] = []
        self._p_w: list[FloatArray] = []
        self._p_t: list[list[str]] = []
        self._p_n = 0

    # -- slots and rows

    def _evict(self, key: Key) -> None:
        slot = self._slot.pop(key, None)
        if slot is not None:  # its rows go at the next _flush; the slot is not reused before
            self._dead.append(slot)
            self._slot_key[slot] = None
            self._live[slot] = False

    def _flush(self) -> None:
        if not self._dead:
            return
        self._merge_examples()  # no candidate may point at a row freed here
        for slot in self._dead:
            self._free_rows += self._rows_of[slot].values()
            self._rows_of[slot] = {}
            self._cur_idx[slot] = _NONE
        self._free += self._dead
        self._dead = []

    def _alloc(self, key: Key) -> int:
        if self._free:
            slot = self._free.pop()
            self._slot_key[slot] = key
        else:
            slot = len(self._slot_key)
            self._slot_key.append(key)
            self._rows_of.append({})
            if slot >= self._live.size:
                cap = max(16, 2 * self._live.size)
                self._next_closed = np.resize(self._next_closed, cap)
                self._cur_idx = np.resize(self._cur_idx, cap)
                self._cur_row = np.resize(self._cur_row, cap)
                self._live = np.resize(self._live, cap)
        self._next_closed[slot] = _NONE
        self._cur_idx[slot] = _NONE
        self._live[slot] = True
        self._slot[key] = slot
        return slot

    def _new_row(self, slot: int, idx: int) -> int:
        if self._free_rows:
            row = self._free_rows.pop()
        else:
            row = self._n_rows
            self._n_rows += 1
            if row >= self._nex.size:
                cap = max(16, 2 * self._nex.size)
                grow = cap - self._nex.size
                self._sums = np.concatenate([self._sums, np.zeros((grow, self.n_fields))])
                self._nex = np.concatenate([self._nex, np.zeros(grow, dtype=np.int64)])
                self._exw = np.concatenate([self._exw, np.zeros((grow, self.max_examples))])
                self._ext = np.concatenate([self._ext, np.full((grow, self.max_examples), None, dtype=object)])
        self._nex[row] = 0
        self._ext[row] = None
        self._rows_of[slot][idx] = row
        if idx >= self._cur_idx[slot]:  # the latest bucket: where the next rows most likely go
            self._cur_idx[slot], self._cur_row[slot] = idx, row
        return row

    # -- a batch

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
        inv, n_pairs = grouped.inv, len(grouped.code)
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
        counts = np.bincount(cells, minlength=len(grouped.code) * self.n_fields)
        sums = np.asarray(counts.reshape(len(grouped.code), self.n_fields), dtype=np.float64)
        self._fold(batch, keys, grouped, sums, example_weight)

    def _group(self, batch: FeatureBatch, key_columns: Sequence[str]) -> tuple[list[Key], _Pairs]:
        codes, keys = group_by_key([batch.strings[c] for c in key_columns])
        return keys, _pairs(codes, batch.numeric["time_unix_nano"], len(keys), self.width_ns)

    def _touch(self, keys: list[Key]) -> IntArray:
        """Each key's slot, the keys touched in the LRU in code order (as their groups come; a key
        evicted by a later key of the same batch keeps its slot here, now dead)."""
        self._flush()
        slot_of = np.empty(len(keys), dtype=np.int64)
        items, get, slot = self.keys.items, self.keys.get, self._slot
        for c, key in enumerate(keys):
            if key in items:
                items.move_to_end(key)
            else:
                get(key)
            s = slot.get(key)
            slot_of[c] = self._alloc(key) if s is None else s
        return slot_of

    def _fold(self, batch: FeatureBatch, keys: list[Key], grouped: _Pairs, sums: npt.NDArray[np.float64],
              example_weight: FloatArray) -> None:
        """Add each (key, bucket)'s sums and example rows to its open bucket; count the late ones."""
        slot_of = self._touch(keys)
        pslot = slot_of[grouped.code]
        ok: npt.NDArray[np.bool_] | None = None  # None: every group
        if grouped.idx_min < self._late_bound:
            nc = self._next_closed[pslot]
            floor = _NONE if self.closed_limit is None else self.closed_limit
            late = grouped.idx < np.where(nc != _NONE, nc, floor)
            if late.any():
                self._count_late(keys, grouped, np.flatnonzero(late))
                ok = ~late
        if self._dead:  # a key evicted by a later key of this batch: its rows go with it
            ok = self._live[pslot] if ok is None else ok & self._live[pslot]
        if ok is None:
            rows = self._rows(pslot, grouped.idx, sums)
        else:
            rows = np.full(len(pslot), -1, dtype=np.int64)
            rows[ok] = self._rows(pslot[ok], grouped.idx[ok], sums[ok])
        self._add_examples(batch, grouped, rows, example_weight)
        self.watermark = grouped.latest if self.watermark is None else max(self.watermark, grouped.latest)

    def _rows(self, slot: IntArray, idx: IntArray, sums: FloatArray) -> IntArray:
        """The rows of these (slot, bucket)s, made when new; their sums added."""
        rows = self._cur_row[slot]
        other = self._cur_idx[slot] != idx
        if not other.any():
            self._sums[rows] += sums
            return rows
        rows = rows.copy()
        new = np.zeros(len(rows), dtype=bool)
        rows_of = self._rows_of
        for j in np.flatnonzero(other).tolist():
            s, i = int(slot[j]), int(idx[j])
            row = rows_of[s].get(i)
            if row is None:
                row = self._new_row(s, i)
                new[j] = True
            rows[j] = row
        old = ~new
        self._sums[rows[old]] += sums[old]
        self._sums[rows[new]] = sums[new]
        return rows

    def _count_late(self, keys: list[Key], grouped: _Pairs, late: IntArray) -> None:
        self.late_rows += int(grouped.counts[late].sum())
        cap = 4 * self.keys.max_keys
        for code, idx in zip(grouped.code[late].tolist(), grouped.idx[late].tolist(), strict=True):
            key = keys[code]
            if len(self.last_late) < cap or key in self.last_late:
                self.last_late[key] = max(idx, self.last_late.get(key, idx))

    def _add_examples(self, batch: FeatureBatch, grouped: _Pairs, rows: IntArray, example_weight: FloatArray) -> None:
        """Each group's heaviest rows (by weight, then row order; with a trace id) as candidates of its
        bucket's examples (``rows``: the group's bucket row, -1: none)."""
        k = self.max_examples
        if k == 0:
            return
        example_weight = np.asarray(example_weight, dtype=np.float64)
        picked = self._heaviest_of_the_heavy(grouped, rows, example_weight)
        if picked is None:
            ex_rows, order = _heaviest_rows(grouped, example_weight, k)
            dest = np.repeat(rows, order.n_kept)
        else:
            ex_rows, dest = picked
        w = nan_filled(example_weight[ex_rows], -1.0)
        if dest.min(initial=0) < 0:
            keep = dest >= 0
            ex_rows, dest, w = ex_rows[keep], dest[keep], w[keep]
        # A candidate that does not come before its bucket's k-th kept example (weight descending,
        # then trace id; on a tie the kept one, earlier, stays first) can never be kept: dropped now,
        # so that the merge sorts few (nearly all are, once a bucket has its examples), and before
        # its trace id is looked up when its weight alone says so.
        tie: IntArray | None = None
        full = self._nex[dest] == k
        if full.any():
            kth_w = self._exw[dest, k - 1]
            maybe = ~full | (w >= kth_w)
            if not maybe.all():
                ex_rows, dest, w, full, kth_w = ex_rows[maybe], dest[maybe], w[maybe], full[maybe], kth_w[maybe]
            tie = np.flatnonzero(full & (w == kth_w))
        trace = batch.strings["trace_id"]
        tids = [trace[r] for r in ex_rows.tolist()]
        keep_l: list[bool] | None = None
        if None in tids:
            keep_l = [t is not None for t in tids]
        if tie is not None and tie.size:
            keep_l = [True] * len(tids) if keep_l is None else keep_l
            for j, held in zip(tie.tolist(), self._ext[dest[tie], k - 1].tolist(), strict=True):
                t = tids[j]
                keep_l[j] = t is not None and t < held
        if keep_l is not None and not all(keep_l):
            tids = list(itertools.compress(tids, keep_l))
            keep = np.array(keep_l, dtype=bool)
            dest, w = dest[keep], w[keep]
        if not tids:
            return
        self._p_row.append(dest)
        self._p_w.append(w)
        self._p_t.append(tids)  # no None left (filtered above)
        self._p_n += len(tids)
        if self._p_n >= _PENDING_MERGE:
            self._merge_examples()

    def _heaviest_of_the_heavy(self, grouped: _Pairs, rows: IntArray, weight: FloatArray
                               ) -> tuple[IntArray, IntArray] | None:
        """:func:`_heaviest`'s rows (and their bucket rows) among the rows that can still be kept: in a
        group whose bucket has all its examples, a row lighter than the k-th of them never is, nor
        is any row after it in the group's order (lighter still), so leaving those out picks the
        same. ``None``: not worth it (too few left out), or a group's k-th example weighs -1 or less
        (where a NaN weight, -1 when kept but lightest when picked, could come after such a row)."""
        k = self.max_examples
        valid = rows >= 0
        safe = np.where(valid, rows, 0)
        full = valid & (self._nex[safe] == k)
        if not full.any():
            return None
        kth = self._exw[safe, k - 1]
        if (kth[full] <= -1.0).any():
            return None
        pick = nan_filled(weight, -np.inf)
        thr = np.where(full, kth, -np.inf)
        thr[~valid] = np.inf  # no bucket: nothing to pick
        heavy = np.flatnonzero(pick >= thr[grouped.inv])
        if 2 * heavy.size > pick.size:
            return None
        by_weight = heavy[np.argsort(-pick[heavy], kind="stable")]
        g = grouped.inv[by_weight]
        if len(grouped.counts) < 2**15:
            g = g.astype(np.int16)
        within = np.argsort(g, kind="stable")
        ex_rows, g64 = by_weight[within], g[within].astype(np.int64)
        first = np.searchsorted(g64, np.arange(len(grouped.counts)))
        kept = np.arange(ex_rows.size) - first[g64] < k
        return ex_rows[kept].astype(np.int64), rows[g64[kept]]

    def _merge_examples(self) -> None:
        """The pending candidates merged into their rows' kept examples: the ``max_examples`` first of
        (kept, then candidates in arrival order) by weight descending then trace id (a stable sort)."""
        if not self._p_n:
            return
        k = self.max_examples
        p_row = np.concatenate(self._p_row)
        target = np.unique(p_row)
        n_held = self._nex[target]
        held = np.arange(k) < n_held[:, None]
        all_r = np.concatenate([np.repeat(target, n_held), p_row])
        all_w = np.concatenate([self._exw[target][held], *self._p_w])
        all_t = np.concatenate([self._ext[target][held], np.array(list(itertools.chain(*self._p_t)), dtype=object)])
        self._p_row, self._p_w, self._p_t, self._p_n = [], [], [], 0
        order = np.lexsort((all_t, -all_w, all_r))
        all_r, all_w, all_t = all_r[order], all_w[order], all_t[order]
        rank = np.arange(all_r.size) - np.searchsorted(all_r, all_r)
        kept = rank < k
        self._ext[target] = None
        self._nex[target] = np.minimum(np.bincount(np.searchsorted(target, all_r), minlength=target.size), k)
        self._exw[all_r[kept], rank[kept]] = all_w[kept]
        self._ext[all_r[kept], rank[kept]] = all_t[kept]

    # -- closing

    def close(self) -> list[Closed[S]]:
        """Buckets closed by the watermark since the last call, per key in time order."""
        if self.watermark is None:
            return []
        self._flush()
        limit = (self.watermark - self.lateness_ns) // self.width_ns
        n_slots = len(self._slot_key)
        if limit == self.closed_limit:
            # Nothing to close: after the close that reached this limit every key's next bucket to
            # close was at or after it (or it had none), and rows since then went to buckets at or
            # after it (earlier ones are late). (The per-key series looked at each key with new rows.)
            return []
        cand = np.flatnonzero(self._live[:n_slots])
        self.closed_limit = limit
        self._late_bound = max(self._late_bound, limit)
        if cand.size == 0:
            return []
        # The first bucket each would close: its first open one, or (none closed yet) its first one.
        nc = self._next_closed[cand]
        first = nc.copy()
        for j in np.flatnonzero(nc == _NONE).tolist():
            open_ = self._rows_of[int(cand[j])]
            first[j] = min(open_) if open_ else _ABOVE
        emit = limit > first
        if not emit.any():
            return []
        self._merge_examples()
        em, start = cand[emit], np.maximum(first[emit], limit - self.max_gap)
        self._next_closed[em] = limit
        starts = dict(zip(em.tolist(), start.tolist(), strict=True))
        order = [(k, st) for k, st in self.keys.items.items() if (s := self._slot.get(k)) is not None and s in starts]
        out: list[Closed[S]] = []
        zeros = [0.0] * self.n_fields
        for key, state in order:
            s = self._slot[key]
            open_ = self._rows_of[s]
            closing = {i: open_.pop(i) for i in [i for i in open_ if i < limit]}
            if self._cur_idx[s] < limit:
                self._cur_idx[s] = _NONE
            if closing:
                rows = list(closing.values())
                sums = self._sums[rows].tolist()
                ext = self._ext[rows].tolist()
                got = {i: (sums[j], ext[j][:n]) for j, (i, n) in
                       enumerate(zip(closing, self._nex[rows].tolist(), strict=True))}
                self._free_rows += rows
            else:
                got = {}
            for i in range(starts[s], limit):
                bucket = got.get(i)
                out.append((key, state, i, list(zeros), []) if bucket is None else (key, state, i, *bucket))
        return out

    def window(self, idx: int) -> tuple[int, int]:
        return idx * self.width_ns, (idx + 1) * self.width_ns

    # -- saved state

    def to_state(self, key_state: Callable[[S], dict[str, Any]]) -> dict[str, Any]:
        self._flush()
        self._merge_examples()
        keys = []
        for k, st in self.keys:
            s = self._slot.get(k)
            if s is None:
                b: dict[str, Any] = {"open": [], "next_closed": None}
            else:
                open_ = sorted(self._rows_of[s].items())
                rows = [r for _, r in open_]
                sums, exw, ext = self._sums[rows].tolist(), self._exw[rows].tolist(), self._ext[rows].tolist()
                buckets = [[i, sums[j], [[w, t] for w, t in zip(exw[j][:n], ext[j][:n], strict=True)]]
                           for j, ((i, _), n) in enumerate(zip(open_, self._nex[rows].tolist(), strict=True))]
                nc = int(self._next_closed[s])
                b = {"open": buckets, "next_closed": None if nc == _NONE else nc}
            keys.append([list(k), b, key_state(st)])
        return {"watermark": self.watermark, "late_rows": self.late_rows, "keys": keys}

    def load_state(self, state: dict[str, Any], key_state: Callable[[dict[str, Any]], S]) -> None:
        """Read :meth:`to_state` back. Open buckets saved with fewer sums (by a version that kept fewer
        fields) get zeros for the fields added since."""
        wm = state["watermark"]
        self.watermark = None if wm is None else int(wm)
        self.late_rows = int(state["late_rows"])
        k = self.max_examples
        for key_l, b, s in state["keys"]:
            key = tuple(key_l)
            self.keys.items[key] = key_state(s)
            slot = self._slot.get(key)
            if slot is None:
                slot = self._alloc(key)
            nc = b["next_closed"]
            if nc is not None:
                self._next_closed[slot] = int(nc)
                self._late_bound = max(self._late_bound, int(nc))
            for i, v, ex in b["open"]:
                fields = [float(x) for x in v]
                if len(fields) > self.n_fields:
                    raise ValueError(f"an open bucket of {len(fields)} sums, more than {self.n_fields}")
                row = self._rows_of[slot].get(int(i))
                row = self._new_row(slot, int(i)) if row is None else row
                self._sums[row] = fields + [0.0] * (self.n_fields - len(fields))
                kept = [(float(w), str(t)) for w, t in ex][:k]
                self._nex[row] = len(kept)
                for j, (w, t) in enumerate(kept):
                    self._exw[row, j], self._ext[row, j] = w, t


class BucketedConfig(Protocol):
    """What :class:`BucketedDetector` reads of a detector's config (besides its bucket width)."""

    @property
    def lateness_s(self) -> float: ...

    @property
    def max_keys(self) -> int: ...

    def validate(self) -> Any: ...  # the config itself, checked


class KeyState(Protocol):
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
