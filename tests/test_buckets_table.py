"""``BucketedKeys`` (one table of open buckets, batches folded in with array operations) against a
per-key model of the same rules: the per-key series the aggregator ran before issue 16, kept here as
the reference. Random streams: rows out of order, late rows, several buckets a batch, long gaps,
keys evicted (in the middle of a batch too), trace ids missing, NaN and equal weights, state saved
and read back in the middle; closed buckets, late counts and saved state must be equal exactly.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest

from aggregator.analysis.detectors import buckets
from aggregator.analysis.detectors.buckets import NS, BucketedKeys
from aggregator.analysis.detectors.keys import Key, group_by_key, heaviest_rows_per_group, nan_filled
from sentinel.model import FeatureBatch


class _Series:
    """One key's open buckets, as the reference: index -> sums, index -> (weight, trace id) examples."""

    def __init__(self) -> None:
        self.open: dict[int, list[float]] = {}
        self.examples: dict[int, list[tuple[float, str]]] = {}
        self.next_closed: int | None = None

    def add(self, idx: int, sums: list[float], ex: list[tuple[float, str]], k: int, floor: int | None) -> bool:
        first_open = self.next_closed if self.next_closed is not None else floor
        if first_open is not None and idx < first_open:
            return False
        cur = self.open.get(idx)
        self.open[idx] = list(sums) if cur is None else [a + b for a, b in zip(cur, sums, strict=True)]
        held = self.examples.get(idx)
        if ex or held is None:
            both = ex if held is None else held + ex
            if len(both) > 1:
                both = sorted(both, key=lambda e: (-e[0], e[1]))
            self.examples[idx] = both[:k]
        return True

    def close(self, limit: int, n_fields: int, max_gap: int) -> list[tuple[int, list[float], list[str]]]:
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
        return {"open": [[i, s, [list(e) for e in self.examples.get(i, [])]] for i, s in sorted(self.open.items())],
                "next_closed": self.next_closed}


class _Model:
    """The reference ``BucketedKeys``: a series per key in an LRU map, a Python loop per (key, bucket)."""

    def __init__(self, *, width_s: float, lateness_s: float, max_keys: int, n_fields: int, max_gap: int) -> None:
        self.width_ns, self.lateness_ns = int(width_s * NS), int(lateness_s * NS)
        self.max_keys, self.n_fields, self.max_gap, self.k = max_keys, n_fields, max_gap, 3
        self.items: OrderedDict[Key, _Series] = OrderedDict()
        self.watermark: int | None = None
        self.closed_limit: int | None = None
        self.late_rows = 0
        self.last_late: dict[Key, int] = {}
        self.touched: set[Key] = set()

    def get(self, key: Key) -> _Series:
        st = self.items.get(key)
        if st is None:
            st = self.items[key] = _Series()
            while len(self.items) > self.max_keys:
                self.items.popitem(last=False)
        else:
            self.items.move_to_end(key)
        return st

    def add(self, batch: FeatureBatch, cols: list[str], fields: list[np.ndarray[Any, Any]], weight: Any) -> None:
        codes, keys = group_by_key([batch.strings[c] for c in cols])
        bucket = batch.numeric["time_unix_nano"].astype(np.int64) // self.width_ns
        pair, inv = np.unique(np.stack([codes, bucket], axis=1), axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        sums = np.stack([np.bincount(inv, weights=np.nan_to_num(f), minlength=len(pair)) for f in fields], axis=1)
        counts = np.bincount(inv, minlength=len(pair))
        w = np.asarray(weight, dtype=np.float64)
        rows, starts = heaviest_rows_per_group(inv, w, self.k)
        kept = list(zip(nan_filled(w[rows], -1.0).tolist(), [batch.strings["trace_id"][r] for r in rows],
                        strict=True))
        for p, ((code, idx), s) in enumerate(zip(pair.tolist(), sums.tolist(), strict=True)):
            ex = [(a, t) for a, t in kept[starts[p]:starts[p + 1]] if t is not None]
            key = keys[code]
            self.touched.add(key)
            if not self.get(key).add(idx, s, ex, self.k, self.closed_limit):
                self.late_rows += int(counts[p])
                if len(self.last_late) < 4 * self.max_keys or key in self.last_late:
                    self.last_late[key] = max(idx, self.last_late.get(key, idx))
        latest = int(batch.numeric["time_unix_nano"].max())
        self.watermark = latest if self.watermark is None else max(self.watermark, latest)

    def close(self) -> list[tuple[Key, int, list[float], list[str]]]:
        if self.watermark is None:
            return []
        limit = (self.watermark - self.lateness_ns) // self.width_ns
        if limit == self.closed_limit:
            items = [(k, st) for k in sorted(self.touched, key=str) if (st := self.items.get(k)) is not None]
        else:
            items = list(self.items.items())
        self.touched.clear()
        out = [(key, i, s, ex) for key, st in items for i, s, ex in st.close(limit, self.n_fields, self.max_gap)]
        self.closed_limit = limit
        return out

    def to_state(self) -> dict[str, Any]:
        return {"watermark": self.watermark, "late_rows": self.late_rows,
                "keys": [[list(k), s.to_state(), {}] for k, s in self.items.items()]}


def _batch(rng: np.random.Generator, t0: int, n: int, n_keys: int, span_ns: int) -> FeatureBatch:
    users = [f"u{int(u)}" if u else None for u in rng.integers(0, n_keys, n)]
    times = t0 + rng.integers(-span_ns, span_ns // 4 + 1, n)
    trace = [None if rng.random() < 0.1 else f"{int(rng.integers(0, 40)):04x}" for _ in range(n)]
    return FeatureBatch(n=n, numeric={"time_unix_nano": times.astype(np.int64)},
                        strings={"service": ["s"] * n, "user": users, "trace_id": trace})


def _fields(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray[Any, Any]], np.ndarray[Any, Any]]:
    a = rng.random(n)
    a[rng.random(n) < 0.05] = np.nan
    weight = np.round(rng.random(n) * 4) / 4  # many equal weights: ties broken by trace id
    weight[rng.random(n) < 0.05] = np.nan
    return [np.ones(n), a, np.floor(rng.random(n) * 3)], weight


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("max_keys", "n_keys"), [(50, 12), (5, 12)])
@pytest.mark.parametrize("merge_after", [7, 4096])
def test_bucketed_keys_equals_the_per_key_model(seed: int, max_keys: int, n_keys: int, merge_after: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buckets, "_PENDING_MERGE", merge_after)  # candidates merged every batch or seldom
    rng = np.random.default_rng(seed)
    conf: dict[str, Any] = {"width_s": 10.0, "lateness_s": 15.0, "max_keys": max_keys, "n_fields": 3, "max_gap": 8}
    table: BucketedKeys[dict[str, Any]] = BucketedKeys(factory=dict, **conf)
    model = _Model(**conf)
    t = 1_700_000_000 * NS
    for step in range(120):
        t += int(rng.integers(0, 12)) * NS
        if step % 40 == 39:
            t += 200 * NS  # a gap longer than max_gap buckets
        n = int(rng.integers(1, 300))
        b = _batch(rng, t, n, n_keys, span_ns=int(rng.choice([2, 30, 120])) * NS)
        fields, weight = _fields(rng, n)
        cols = ["service", "user"]
        table.add(b, cols, fields, weight)
        model.add(b, cols, fields, weight)
        got = [(k, i, s, ex) for k, _, i, s, ex in table.close()]
        assert got == model.close(), step
        assert table.late_rows == model.late_rows and table.last_late == model.last_late
        if step % 5 != 4:
            continue  # saving merges the candidates: not every batch, so that they gather
        state = json.loads(json.dumps(table.to_state(lambda s: {})))
        assert state == json.loads(json.dumps(model.to_state()))
        if step % 25 == 24:  # read back: the table carries on from its saved state
            table = BucketedKeys(factory=dict, **conf)
            table.load_state(state, lambda d: {})
            model.closed_limit = None  # not saved: the first close after loading closes every key
            model.last_late = {}  # not saved either


def test_bucketed_keys_pads_short_saved_sums_and_keeps_examples() -> None:
    keys: BucketedKeys[dict[str, Any]] = BucketedKeys(width_s=1, lateness_s=0, max_keys=4, n_fields=3, factory=dict)
    keys.load_state({"watermark": 5 * NS, "late_rows": 2,
                     "keys": [[["a"], {"open": [[5, [1.0], [[2.0, "t1"]]]], "next_closed": 5}, {}]]}, lambda d: {})
    keys.watermark = 7 * NS
    [(key, _, idx, sums, ex), (_, _, idx2, sums2, ex2)] = keys.close()
    assert (key, idx, sums, ex) == (("a",), 5, [1.0, 0.0, 0.0], ["t1"])
    assert (idx2, sums2, ex2) == (6, [0.0, 0.0, 0.0], [])


@pytest.mark.parametrize("seed", range(8))
def test_heaviest_of_a_grouping_equals_heaviest_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 600))
    codes = rng.integers(0, int(rng.choice([1, 3, 40])), n) ** int(rng.choice([1, 2]))  # skewed groups too
    codes = np.unique(codes, return_inverse=True)[1].reshape(-1).astype(np.int64)
    times = (1_700_000_000 * NS + rng.integers(0, 30, n) * NS).astype(np.int64)
    grouped = buckets._pairs(codes, times, int(codes.max()) + 1, 10 * NS)
    for w in (rng.random(n), np.round(rng.random(n) * 3), np.zeros(n), rng.integers(0, 2, n) * 1.0):
        weight = np.asarray(w, dtype=np.float64)
        weight[rng.random(n) < 0.1] = np.nan
        weight[rng.random(n) < 0.02] = np.inf
        for k in (1, 3):
            want = heaviest_rows_per_group(grouped.inv, weight, k)
            rows, starts = buckets._heaviest(grouped, weight, k)
            assert (rows.tolist(), starts.tolist()) == want
