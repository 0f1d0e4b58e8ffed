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


def _group(columns: Sequence[Sequence[str | None]]) -> tuple[IntArray, list[Key]]:
    n = len(columns[0]) if columns else 0
    code = np.zeros(n, dtype=np.int64)
    values: list[list[str | None]] = []
    for col in columns:
        if n == 0 or list(col).count(col[0]) == n:
            values.append([col[0]] if n else [None])
            continue
        seen: dict[str | None, int] = {}
        first = np.fromiter(map(seen.setdefault, col, range(n)), dtype=np.int64, count=n)
        uniq, inverse = np.unique(first, return_inverse=True)
        values.append([col[i] for i in uniq.tolist()])
        code = code * uniq.size + inverse
    uniq, inverse = np.unique(code, return_inverse=True)
    keys: list[Key] = []
    for c in uniq.tolist():
        parts: list[str | None] = []
        for vals in reversed(values):
            c, i = divmod(c, len(vals))
            parts.append(vals[i])
        keys.append(tuple(reversed(parts)))
    return inverse.astype(np.int64).reshape(n), keys
