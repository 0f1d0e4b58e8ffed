"""Grouping a batch's rows by a key of string columns: one code per row and the distinct keys.

Shared by the sidecar's local detector and the aggregator's detectors.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["Key", "group_by_key"]

Key = tuple[str | None, ...]
IntArray = npt.NDArray[np.int64]


#: Groupings remembered (by the identity of their column objects): the aggregator's detectors group
#: the same batch by the same columns a dozen times (profile of ``loadtest/bench_aggregator.py``).
_MEMO_SIZE = 32
_memo: OrderedDict[tuple[int, ...], tuple[list[Sequence[str | None]], IntArray, list[Key]]] = OrderedDict()
_memo_lock = threading.Lock()


def group_by_key(columns: Sequence[Sequence[str | None]]) -> tuple[IntArray, list[Key]]:
    """Code per row (0..K-1) and the K distinct keys (in first-seen order of codes).

    Each column is encoded on its own (one dict pass per column, no tuple per row); a column with
    one value throughout is skipped, as a sidecar's batch usually holds one service.

    The last few results are remembered by the identity of the column objects (which the memo keeps
    alive, so an identity is not reused while remembered): columns are never changed in place once
    in a batch. The codes come back read-only and the key list must not be changed, since later
    callers share them.
    """
    ident = tuple(map(id, columns))
    with _memo_lock:
        hit = _memo.get(ident)
        if hit is not None and all(a is b for a, b in zip(hit[0], columns, strict=True)) \
                and len(hit[1]) == (len(columns[0]) if columns else 0):
            _memo.move_to_end(ident)
            return hit[1], hit[2]
    codes, keys = _group(columns)
    codes.flags.writeable = False
    with _memo_lock:
        _memo[ident] = (list(columns), codes, keys)
        while len(_memo) > _MEMO_SIZE:
            _memo.popitem(last=False)
    return codes, keys


#: Per-column encodings remembered (by the identity of the column object, as above): a batch is
#: grouped by a dozen different combinations of the same few columns (service alone, service and
#: model, with operation and region, ...), and the dict pass over a column's rows was most of each.
_COLUMN_MEMO_SIZE = 64
_column_memo: OrderedDict[int, tuple[Sequence[str | None], IntArray, list[str | None]]] = OrderedDict()


def _column(col: Sequence[str | None], n: int) -> tuple[IntArray | None, list[str | None]]:
    """One column's code per row (``None``: one value throughout) and its values in first-seen order."""
    if n == 0:
        return None, [None]
    with _memo_lock:
        hit = _column_memo.get(id(col))
        if hit is not None and hit[0] is col and len(hit[1]) == n:
            _column_memo.move_to_end(id(col))
            return (None if len(hit[2]) == 1 else hit[1]), hit[2]
    if list(col).count(col[0]) == n:
        inverse, values = np.zeros(n, dtype=np.int64), [col[0]]
    else:
        seen: dict[str | None, int] = {}
        first = np.fromiter(map(seen.setdefault, col, range(n)), dtype=np.int64, count=n)
        uniq, inv = np.unique(first, return_inverse=True)
        inverse, values = inv.astype(np.int64).reshape(n), [col[i] for i in uniq.tolist()]
    inverse.flags.writeable = False
    with _memo_lock:
        _column_memo[id(col)] = (col, inverse, values)
        while len(_column_memo) > _COLUMN_MEMO_SIZE:
            _column_memo.popitem(last=False)
    return (None if len(values) == 1 else inverse), values


def _group(columns: Sequence[Sequence[str | None]]) -> tuple[IntArray, list[Key]]:
    n = len(columns[0]) if columns else 0
    code = np.zeros(n, dtype=np.int64)
    values: list[list[str | None]] = []
    span = 1
    for col in columns:
        inverse, vals = _column(col, n)
        values.append(vals)
        if inverse is not None:
            code = code * len(vals) + inverse
            span *= len(vals)
    if n and span <= 4 * n + 64:
        # Few possible codes (the product of the columns' sizes): a count of each replaces the sort
        # np.unique does, with the same ascending codes and inverse.
        present = np.bincount(code, minlength=span) > 0
        uniq = np.flatnonzero(present)
        inverse = (np.cumsum(present) - 1)[code]
    else:
        uniq, inverse = np.unique(code, return_inverse=True)
    keys: list[Key] = []
    for c in uniq.tolist():
        parts: list[str | None] = []
        for vals in reversed(values):
            c, i = divmod(c, len(vals))
            parts.append(vals[i])
        keys.append(tuple(reversed(parts)))
    return inverse.astype(np.int64).reshape(n), keys
