"""Grouping a batch's rows by a key of string columns, and a bounded (LRU) map of per-key state."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from sentinel.grouping import Key, group_by_key

__all__ = ["Key", "KeyedState", "group_by_key", "top_rows_per_group"]

IntArray = npt.NDArray[np.int64]
S = TypeVar("S")


def top_rows_per_group(group: IntArray, weight: npt.NDArray[np.float64], k: int) -> list[list[int]]:
    """For each group id 0..G-1, the rows of the ``k`` largest weights (ties: earlier rows first)."""
    n_groups = int(group.max()) + 1 if group.size else 0
    order = np.lexsort((np.arange(group.size), -np.nan_to_num(weight, nan=-np.inf), group))
    g = group[order]
    starts = np.searchsorted(g, np.arange(n_groups))
    rank = np.arange(g.size) - starts[g]
    keep = order[rank < k]
    out: list[list[int]] = [[] for _ in range(n_groups)]
    for gi, row in zip(group[keep].tolist(), keep.tolist(), strict=True):
        out[gi].append(row)
    return out


class KeyedState(Generic[S]):
    """Per-key state, at most ``max_keys`` of them; the least recently touched key is evicted."""

    def __init__(self, max_keys: int, factory: Callable[[], S]) -> None:
        self.max_keys = max_keys
        self.factory = factory
        self.items: OrderedDict[Key, S] = OrderedDict()
        self.evicted = 0

    def get(self, key: Key) -> S:
        state = self.items.get(key)
        if state is None:
            state = self.items[key] = self.factory()
            while len(self.items) > self.max_keys:
                self.items.popitem(last=False)
                self.evicted += 1
        else:
            self.items.move_to_end(key)
        return state

    def __iter__(self) -> Iterator[tuple[Key, S]]:
        return iter(list(self.items.items()))

    def __len__(self) -> int:
        return len(self.items)
