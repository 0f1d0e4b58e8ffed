"""CallIndex.add_batch and ModelVersions.note_batch (vectorised) leave what one add/note per row leaves."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.analysis.quality.call_index import Call, CallIndex, ModelVersions
from sentinel.model import NUMERIC_COLUMNS, STRING_COLUMNS, FeatureBatch


def batch(n: int, seed: int) -> FeatureBatch:
    rng = np.random.default_rng(seed)

    def pick(values: list[str | None]) -> list[str | None]:
        return [values[i] for i in rng.integers(0, len(values), n)]

    strings: dict[str, list[str | None]] = {k: [None] * n for k in STRING_COLUMNS}
    strings.update(trace_id=pick([f"t{i}" for i in range(n // 3 + 1)] + [None]),  # traces repeat
                   span_id=pick([f"s{seed}-{i}" for i in range(n)] + [None, "s-shared"]),
                   service=pick(["chat", "rag", None]), request_model=pick(["gpt-4o", "claude", None]),
                   response_model=pick(["gpt-4o-2024-08-06", "gpt-4o-2024-11-20", "claude-3", None]),
                   user=pick(["u1", "u2", None]))
    numeric = {k: np.zeros(n, dtype=np.dtype(v)) for k, v in NUMERIC_COLUMNS.items()}
    numeric["time_unix_nano"] = rng.integers(0, n // 2 + 1, n).astype(np.int64)  # out of order, with ties
    return FeatureBatch(n=n, numeric=numeric, strings=strings)


@pytest.mark.parametrize("max_calls", [5, 50, 10_000])
def test_add_batch_is_add_per_row(max_calls: int) -> None:
    bulk, one = CallIndex(max_calls), CallIndex(max_calls)
    for seed in range(6):
        b = batch(40, seed)
        bulk.add_batch(b)
        s = b.strings
        for i in range(b.n):
            one.add(s["trace_id"][i], s["span_id"][i],
                    Call(s["service"][i], s["request_model"][i], s["response_model"][i], s["user"][i]))
        assert list(bulk._spans.items()) == list(one._spans.items())
        assert list(bulk._traces.items()) == list(one._traces.items())
    s = b.strings
    found = bulk.find(None, s["span_id"][-1]) if s["span_id"][-1] is not None else bulk.find(s["trace_id"][-1], None)
    assert found is None or type(found) is Call


def test_note_batch_is_note_per_row_in_event_time() -> None:
    bulk, one = ModelVersions(max_keys=3), ModelVersions(max_keys=3)
    for seed in range(8):
        b = batch(60, seed)
        bulk.note_batch(b)
        s, t = b.strings, b.numeric["time_unix_nano"].tolist()
        last: dict[tuple[str | None, str | None], str | None] = {}
        for i in sorted(range(b.n), key=t.__getitem__):
            key, v = (s["service"][i], s["request_model"][i]), s["response_model"][i]
            if v is not None and last.get(key) != v:
                last[key] = v
                one.note(key[0], key[1], v, int(t[i]))
        assert list(bulk._keys.items()) == list(one._keys.items())
