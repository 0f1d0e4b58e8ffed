"""Recent LLM calls by span and trace id, and the model version each (service, model) answers with.

:class:`CallIndex` lets an evaluation score or a piece of user feedback that names only a trace or
span id (an eval pipeline's log record, ``POST /api/v1/feedback``) join the call it is about: its
service, request model, response model (the version) and user. Bounded (``max_calls``, least
recently added dropped first); in memory only — after a restart, feedback for calls made before it
keeps the service it names, or waits to be dropped.

:class:`ModelVersions` follows, per (service, request model), the response model of the newest call
and the one before it changed, so a quality alert can say which model version it correlates with
(the plan: correlate with model versions for root cause).

>>> idx = CallIndex(max_calls=2)
>>> idx.add("t1", "s1", Call("chat", "gpt-4o", "gpt-4o-2024-08-06", None))
>>> idx.find(None, "s1").response_model, idx.find("t1", None).service
('gpt-4o-2024-08-06', 'chat')
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import numpy as np

from aggregator.analysis.detectors.candidate import Candidate
from sentinel.grouping import group_by_key
from sentinel.model import FeatureBatch

__all__ = ["VERSIONED_TYPES", "Call", "CallIndex", "ModelVersions", "VersionInfo", "with_model_version"]

DEFAULT_MAX_CALLS = 200_000


class Call(NamedTuple):
    service: str | None
    request_model: str | None
    response_model: str | None
    user: str | None


#: A call as the tables keep it: a plain tuple of :class:`Call`'s fields (building a ``Call`` per row
#: cost more than the rest of :meth:`CallIndex.add_batch`; :meth:`CallIndex.find` makes the one asked for).
_Row = tuple[str | None, str | None, str | None, str | None]


class CallIndex:
    """span id -> call and trace id -> the trace's latest call, bounded; thread-safe."""

    def __init__(self, max_calls: int = DEFAULT_MAX_CALLS) -> None:
        self.max_calls = max_calls
        self._spans: OrderedDict[str, _Row] = OrderedDict()
        self._traces: OrderedDict[str, _Row] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._spans)

    def add(self, trace_id: str | None, span_id: str | None, call: Call) -> None:
        with self._lock:
            self._put(trace_id, span_id, call)

    def _put(self, trace_id: str | None, span_id: str | None, call: _Row) -> None:
        for table, k in ((self._spans, span_id), (self._traces, trace_id)):
            if k is None:
                continue
            table[k] = call
            table.move_to_end(k)
            if len(table) > self.max_calls:
                table.popitem(last=False)

    def add_batch(self, batch: FeatureBatch) -> None:
        """Every row, as :meth:`add` of each in turn leaves the tables, with no Python step per row."""
        if not batch.n:
            return
        s = batch.strings
        calls: list[_Row] = list(zip(s["service"], s["request_model"], s["response_model"], s["user"], strict=True))
        with self._lock:
            _put_all(self._spans, s["span_id"], calls, self.max_calls)
            _put_all(self._traces, s["trace_id"], calls, self.max_calls)

    def find(self, trace_id: str | None, span_id: str | None) -> Call | None:
        with self._lock:
            if span_id is not None and (row := self._spans.get(span_id)) is not None:
                return Call(*row)
            row = self._traces.get(trace_id) if trace_id is not None else None
            return None if row is None else Call(*row)


def _put_all(table: OrderedDict[str, _Row], keys: list[str | None], calls: list[_Row], max_calls: int) -> None:
    """``table[k] = call`` then ``move_to_end(k)`` for every (key, call) in order (``None`` keys skipped),
    then the oldest dropped beyond ``max_calls``: the last call of a key wins, at its position."""
    with_none = dict(zip(keys, calls, strict=True))  # the value of each key's last row
    with_none.pop(None, None)
    last = cast(dict[str, _Row], with_none)  # None popped
    if len(last) < len(keys) - keys.count(None):  # a key repeats: order the keys by their last row
        at = dict(zip(keys, range(len(keys)), strict=True))
        at.pop(None, None)
        last = {k: last[k] for k in sorted(cast(dict[str, int], at), key=at.__getitem__)}
    again = not table.keys().isdisjoint(last)
    table.update(last)
    if again:  # keys already held keep their place in an update: move every key, in order
        move = table.move_to_end
        for k in last:
            move(k)
    for _ in range(len(table) - max_calls):
        table.popitem(last=False)


class VersionInfo(NamedTuple):
    current: str | None
    previous: str | None
    changed_at: int | None  # event time (unix ns) of the first call with the current version


class ModelVersions:
    """Per (service, request model): the response model now, the one before, and when it changed."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._keys: OrderedDict[tuple[str | None, str | None], VersionInfo] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, service: str | None, model: str | None, version: str | None, t: int) -> None:
        if version is None:
            return
        key = (service, model)
        with self._lock:
            info = self._keys.get(key)
            if info is None:
                self._keys[key] = VersionInfo(version, None, None)
            elif info.current != version:
                self._keys[key] = VersionInfo(version, info.current, t)
            self._keys.move_to_end(key)
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)

    def note_batch(self, batch: FeatureBatch) -> None:
        """:meth:`note` of every row in event time, for the rows that change their key's version only."""
        if not batch.n:
            return
        s, t = batch.strings, batch.numeric["time_unix_nano"]
        keys, versions = s["service"], s["response_model"]
        codes, _ = group_by_key([keys, s["request_model"]])
        version, names = group_by_key([versions])
        has = np.array([v is not None for (v,) in names], dtype=bool)[version]
        order = np.argsort(t, kind="stable")  # event time, ties in row order
        order = order[has[order]]
        # Within each key (in event time), a row whose version differs from the key's previous row.
        by_key = order[np.argsort(codes[order], kind="stable")]
        change = np.ones(by_key.size, dtype=bool)
        change[1:] = (codes[by_key[1:]] != codes[by_key[:-1]]) | (version[by_key[1:]] != version[by_key[:-1]])
        rank = np.empty(batch.n, dtype=np.intp)
        rank[order] = np.arange(order.size)
        noted = by_key[change]
        model = s["request_model"]
        for i in noted[np.argsort(rank[noted])].tolist():  # in event time, as the keys' LRU order expects
            self.note(keys[i], model[i], versions[i], int(t[i]))

    def get(self, service: str | None, model: str | None) -> VersionInfo | None:
        with self._lock:
            return self._keys.get((service, model))

    def context(self, service: str | None, model: str | None) -> dict[str, Any]:
        """``model_version``, ``previous_model_version``, ``model_changed_at`` for an alert's context."""
        info = self.get(service, model)
        if info is None:
            return {}
        out: dict[str, Any] = {"model_version": info.current}
        if info.previous is not None:
            out["previous_model_version"] = info.previous
            out["model_changed_at"] = info.changed_at
        return out


#: Row-detector alert types about answers, whose likely cause is a model (version) change.
VERSIONED_TYPES = frozenset({"finish_length", "content_filter", "empty_answer"})


def with_model_version(emit: Callable[[list[Candidate]], None], versions: ModelVersions
                       ) -> Callable[[list[Candidate]], None]:
    """``emit`` that first adds the model version context to candidates of :data:`VERSIONED_TYPES`."""
    def versioned(candidates: list[Candidate]) -> None:
        out = []
        for c in candidates:
            extra = versions.context(c.service, c.model) if c.anomaly_type in VERSIONED_TYPES else {}
            out.append(dataclasses.replace(c, context={**c.context, **extra}) if extra else c)
        emit(out)

    return versioned
