"""The feature-row data model: one row per LLM call, held column by column.

The sidecar extracts rows from spans, the aggregator reads them back from the wire; both use
:class:`FeatureBatch` so the columns, their order and their dtypes are defined once, here.

Numeric columns are numpy arrays; a missing value is ``NaN`` (every nullable numeric column is
``float64``). ``time_unix_nano`` and ``is_error`` are never missing. String columns are lists
whose missing values are ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "COLUMNS",
    "KEY_COLUMNS",
    "NUMERIC_COLUMNS",
    "STRING_COLUMNS",
    "FeatureBatch",
    "LocalAnomaly",
    "Row",
]

#: Numeric columns and their numpy dtype strings (little-endian, as on the wire).
NUMERIC_COLUMNS: dict[str, str] = {
    "time_unix_nano": "<i8",
    "latency_ms": "<f8",
    "ttft_ms": "<f8",
    "input_tokens": "<f8",
    "output_tokens": "<f8",
    "tokens_per_s": "<f8",
    "cost_usd": "<f8",
    "is_error": "|u1",
}

#: String columns (nullable).
STRING_COLUMNS: tuple[str, ...] = (
    "service",
    "namespace",
    "pod",
    "region",
    "operation",
    "provider",
    "request_model",
    "response_model",
    "error_type",
    "finish_reason",
    "user",
    "api_key_hash",
    "trace_id",
    "span_id",
)

#: Every column, in the order of the design document. A :data:`Row` is a tuple in this order.
COLUMNS: tuple[str, ...] = (
    "time_unix_nano",
    "service",
    "namespace",
    "pod",
    "region",
    "operation",
    "provider",
    "request_model",
    "response_model",
    "latency_ms",
    "ttft_ms",
    "input_tokens",
    "output_tokens",
    "tokens_per_s",
    "cost_usd",
    "is_error",
    "error_type",
    "finish_reason",
    "user",
    "api_key_hash",
    "trace_id",
    "span_id",
)

#: The columns that name a detection key in the sidecar: (service, request model, operation).
KEY_COLUMNS: tuple[str, str, str] = ("service", "request_model", "operation")

#: One extracted row: a tuple of values in :data:`COLUMNS` order (``None`` where missing).
Row = tuple[Any, ...]

_INDEX = {name: i for i, name in enumerate(COLUMNS)}
assert set(COLUMNS) == set(NUMERIC_COLUMNS) | set(STRING_COLUMNS)


def column_index(name: str) -> int:
    """Position of column ``name`` in a :data:`Row`."""
    return _INDEX[name]


@dataclass
class FeatureBatch:
    """A batch of feature rows, column by column.

    >>> b = FeatureBatch.from_rows([])
    >>> b.n
    0
    """

    n: int
    numeric: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    strings: dict[str, list[str | None]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Sequence[Row]) -> FeatureBatch:
        """Transpose row tuples (as the extractor makes them) into columns."""
        n = len(rows)
        if n == 0:
            return cls.empty()
        cols = list(zip(*rows, strict=True))
        numeric: dict[str, npt.NDArray[Any]] = {}
        strings: dict[str, list[str | None]] = {}
        for name, values in zip(COLUMNS, cols, strict=True):
            dtype = NUMERIC_COLUMNS.get(name)
            if dtype is None:
                strings[name] = list(values)
            elif name == "time_unix_nano":
                numeric[name] = np.fromiter(values, dtype=np.int64, count=n)
            elif name == "is_error":
                numeric[name] = np.fromiter(values, dtype=np.uint8, count=n)
            else:
                # None becomes NaN when numpy converts to float64.
                numeric[name] = np.array(values, dtype=np.float64)
        return cls(n=n, numeric=numeric, strings=strings)

    @classmethod
    def empty(cls) -> FeatureBatch:
        return cls(
            n=0,
            numeric={k: np.empty(0, dtype=np.dtype(v)) for k, v in NUMERIC_COLUMNS.items()},
            strings={k: [] for k in STRING_COLUMNS},
        )

    @classmethod
    def concat(cls, batches: Iterable[FeatureBatch]) -> FeatureBatch:
        parts = [b for b in batches if b.n]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        numeric = {k: np.concatenate([b.numeric[k] for b in parts]) for k in NUMERIC_COLUMNS}
        strings: dict[str, list[str | None]] = {}
        for k in STRING_COLUMNS:
            out: list[str | None] = []
            for b in parts:
                out.extend(b.strings[k])
            strings[k] = out
        return cls(n=sum(b.n for b in parts), numeric=numeric, strings=strings)

    def column(self, name: str) -> npt.NDArray[Any] | list[str | None]:
        if name in self.numeric:
            return self.numeric[name]
        return self.strings[name]

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a dict (NaN shown as ``None``); for tests, logs and the API, not hot paths."""
        out: dict[str, Any] = {}
        for name in COLUMNS:
            if name in self.numeric:
                v = self.numeric[name][i].item()
                out[name] = None if isinstance(v, float) and v != v else v
            else:
                out[name] = self.strings[name][i]
        return out

    def take(self, keep: npt.NDArray[np.bool_]) -> FeatureBatch:
        """The rows where ``keep`` is true, in order."""
        idx = np.flatnonzero(keep).tolist()
        return FeatureBatch(
            n=len(idx),
            numeric={k: v[keep] for k, v in self.numeric.items()},
            strings={k: [v[i] for i in idx] for k, v in self.strings.items()},
        )

    def rows(self) -> list[dict[str, Any]]:
        return [self.row(i) for i in range(self.n)]


@dataclass(frozen=True, slots=True)
class LocalAnomaly:
    """One detection made by the sidecar's fast path, forwarded with its batch.

    ``method`` is ``zscore``, ``mad``, ``iqr``, ``threshold`` or ``error_rate``. ``baseline`` and
    ``deviation`` are the key's mean (or median) and standard deviation (or scaled MAD) before the
    value was seen; ``sigma`` is how many deviations away the value lies (``NaN`` for thresholds).
    """

    metric: str
    value: float
    baseline: float
    deviation: float
    threshold: float
    sigma: float
    method: str
    service: str | None
    model: str | None
    operation: str | None
    trace_id: str | None
    span_id: str | None
    time_unix_nano: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": float(self.value),
            "baseline": float(self.baseline),
            "deviation": float(self.deviation),
            "threshold": float(self.threshold),
            "sigma": float(self.sigma),
            "method": self.method,
            "service": self.service,
            "model": self.model,
            "operation": self.operation,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "time_unix_nano": int(self.time_unix_nano),
        }

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> LocalAnomaly:
        """Rebuild from a wire map; raises ``KeyError``/``TypeError``/``ValueError`` on bad input."""
        return cls(
            metric=str(m["metric"]),
            value=float(m["value"]),
            baseline=float(m["baseline"]),
            deviation=float(m.get("deviation", float("nan"))),
            threshold=float(m["threshold"]),
            sigma=float(m["sigma"]),
            method=str(m.get("method", "unknown")),
            service=_opt_str(m.get("service")),
            model=_opt_str(m.get("model")),
            operation=_opt_str(m.get("operation")),
            trace_id=_opt_str(m["trace_id"]),
            span_id=_opt_str(m.get("span_id")),
            time_unix_nano=int(m.get("time_unix_nano", 0)),
        )


def _opt_str(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise TypeError(f"expected a string or nil, got {type(v).__name__}")
    return v
