"""The sidecar -> aggregator wire format (version 1): one msgpack map per batch.

This module is the single definition of the format; ``sentinel/README.md`` describes it for
people. The spool on disk stores exactly these bodies, so a batch replayed after a crash is
byte-for-byte the batch that would have been sent.

Body (``POST /v1/ingest``, ``Content-Type: application/x-msgpack``), a map with:

``v``
    format version, int (this module writes :data:`WIRE_VERSION`; readers refuse newer ones).
``sidecar``
    stable id of the sending sidecar, str.
``seq``
    batch sequence number, int, 0 <= seq < 2**63, unique and increasing per sidecar (a retried batch keeps it).
``created_unix_nano``
    when the sidecar sealed the batch, int64 (lets the receiver tell replayed data from live data).
``n``
    number of rows, int.
``cols``
    map column name -> encoded column, one entry per column of :data:`sentinel.model.COLUMNS`:

    * numeric: ``{"dtype": "<f8", "data": <bytes>}`` -- packed little-endian values, read with
      ``numpy.frombuffer(data, dtype)``; missing values are NaN, and a reader takes ±inf, negative
      values and values beyond :data:`MAX_ABS_VALUE` as missing too (``time_unix_nano`` is ``<i8``,
      ``is_error`` is ``|u1`` 0 or 1 -- anything else is refused --, both never missing);
    * string: ``{"dict": [str, ...], "codes": {"dtype": "<i4", "data": <bytes>}}`` --
      dictionary-encoded; code ``-1`` is a missing value.
``anomalies``
    list of maps, the sidecar's local detections (:meth:`sentinel.model.LocalAnomaly.to_wire`):
    at least ``metric``, ``value``, ``baseline``, ``threshold``, ``sigma``, ``trace_id``.
``quality`` (optional, since 2026-12)
    list of maps, evaluation results and user feedback the sidecar read from spans and logs
    (:meth:`sentinel.quality.QualityEvent.to_wire`); absent when there are none.
``security`` (optional, since 2026-12)
    list of maps, guardrail security events (:meth:`sentinel.security_event.SecurityEvent.to_wire`,
    API keys already hashed, no prompt); absent when there are none.
``status`` (optional)
    the sending sidecar's own state (:class:`SidecarStatus`), so the receiver can tell "the sidecar
    restarted or lost rows" from "traffic fell": a map with ``instance`` (str, new at every process
    start), ``started_unix_nano`` (int), ``dropped_rows`` and ``refused_exports`` (ints, cumulative
    since that start: rows the sidecar took and will never forward; OTLP exports it refused as
    overloaded) and ``queue_batches`` (int, sealed batches waiting to be forwarded when this one was
    sealed). Counters are cumulative, not per batch, so a lost or refused batch loses no count.
    Readers that predate it ignore it; a sidecar that predates it sends none.

``edge_alerts`` (optional; absent when empty)
    list of maps, alerts the sidecar raised and paged on its own (:class:`sentinel.edge_alerts.EdgeAlert`);
    readers that do not know the field ignore it.

``summaries`` (optional; absent when empty)
    list of maps, per-minute per-key summaries of rows (:class:`sentinel.summary.Summary`), sent by a
    sidecar in ``forward: summaries`` mode.
``summarised`` (optional, bool; absent means false)
    the rows in ``cols`` are also counted in some batch's ``summaries`` (they are the anomalous calls
    and a sample): the aggregator must not count them again.

Unknown top-level keys are ignored, so minor additions stay compatible within a version.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from sentinel.edge_alerts import EdgeAlert
from sentinel.model import COLUMNS, NUMERIC_COLUMNS, STRING_COLUMNS, FeatureBatch, LocalAnomaly
from sentinel.quality import QualityEvent
from sentinel.security_event import SecurityEvent, SecurityEventError
from sentinel.summary import Summary

__all__ = ["CONTENT_TYPE", "MAX_ABS_VALUE", "MAX_EDGE_ALERTS", "MAX_SUMMARIES", "WIRE_VERSION", "SidecarStatus",
           "WireBatch", "WireFormatError", "decode", "encode", "encode_columns"]

WIRE_VERSION = 1
CONTENT_TYPE = "application/x-msgpack"

_CODE_DTYPE = "<i4"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Float column values beyond ±this (and ±inf) are decoded as missing (NaN).
MAX_ABS_VALUE = 1e15
#: Edge alerts one body may carry (a sidecar raises a handful per incident); more is refused.
MAX_EDGE_ALERTS = 1000
#: Summaries one body may carry (one per key and minute); more is refused.
MAX_SUMMARIES = 10_000


class WireFormatError(ValueError):
    """The body is not a valid wire batch; the message names what is wrong."""


@dataclass(frozen=True)
class SidecarStatus:
    """The optional ``status`` of a batch: which run of the sidecar sent it and what it lost so far."""

    instance: str
    started_unix_nano: int = 0
    dropped_rows: int = 0
    refused_exports: int = 0
    queue_batches: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"instance": self.instance, "started_unix_nano": self.started_unix_nano,
                "dropped_rows": self.dropped_rows, "refused_exports": self.refused_exports,
                "queue_batches": self.queue_batches}

    @classmethod
    def from_wire(cls, m: Any) -> SidecarStatus:
        if not isinstance(m, dict):
            raise WireFormatError(f"field 'status' is a {type(m).__name__}, expected a map")
        instance = _need(m, "instance", str, "status.")
        if not instance:
            raise WireFormatError("field 'status.instance' is empty")
        counts: dict[str, int] = {}
        for name in ("started_unix_nano", "dropped_rows", "refused_exports", "queue_batches"):
            v = m.get(name, 0)
            if not isinstance(v, int) or isinstance(v, bool):
                raise WireFormatError(f"field 'status.{name}' has type {type(v).__name__}")
            if not 0 <= v <= _INT64_MAX:
                raise WireFormatError(f"field 'status.{name}' is {v}, must be between 0 and {_INT64_MAX}")
            counts[name] = v
        return cls(instance=instance, **counts)


@dataclass
class WireBatch:
    """A decoded wire body."""

    sidecar: str
    seq: int
    batch: FeatureBatch
    anomalies: list[LocalAnomaly] = field(default_factory=list)
    created_unix_nano: int = 0
    version: int = WIRE_VERSION
    #: Anomalies the body carried beyond ``decode``'s ``max_anomalies`` (not decoded, to be counted).
    anomalies_dropped: int = 0
    #: Evaluation results and user feedback (the optional ``quality`` field).
    quality: list[QualityEvent] = field(default_factory=list)
    #: Guardrail security events (the optional ``security`` field).
    security: list[SecurityEvent] = field(default_factory=list)
    #: The sidecar's own state, when it sent one (see the module docstring).
    status: SidecarStatus | None = None
    #: Alerts the sidecar raised and paged itself (optional field ``edge_alerts``).
    edge_alerts: list[EdgeAlert] = field(default_factory=list)
    #: Per-minute per-key summaries (optional field ``summaries``).
    summaries: list[Summary] = field(default_factory=list)
    #: The rows are also counted in summaries (optional field ``summarised``).
    summarised: bool = False


def _encode_strings(values: Sequence[str | None]) -> dict[str, Any]:
    # dict.fromkeys and map() keep the per-value work in C: this runs for every string column of
    # every batch, so it is on the sidecar's hot path.
    first_seen = dict.fromkeys(values)
    if len(first_seen) == len(values) and None not in first_seen:
        # All distinct (trace and span ids): the values are the dictionary, in order.
        codes = np.arange(len(values), dtype=_CODE_DTYPE)
        return {"dict": list(values), "codes": {"dtype": _CODE_DTYPE, "data": codes.tobytes()}}
    first_seen.pop(None, None)
    dictionary = list(first_seen)
    index: dict[str | None, int] = {v: i for i, v in enumerate(dictionary)}
    index[None] = -1
    codes = np.fromiter(map(index.__getitem__, values), dtype=_CODE_DTYPE, count=len(values))
    return {"dict": dictionary, "codes": {"dtype": _CODE_DTYPE, "data": codes.tobytes()}}


def encode_columns(batch: FeatureBatch) -> dict[str, Any]:
    """The ``cols`` map of ``batch``'s body: numeric columns as packed arrays, string columns
    dictionary-encoded."""
    cols: dict[str, Any] = {}
    for name, dtype in NUMERIC_COLUMNS.items():
        arr = np.ascontiguousarray(batch.numeric[name], dtype=np.dtype(dtype))
        cols[name] = {"dtype": dtype, "data": arr.tobytes()}
    for name in STRING_COLUMNS:
        cols[name] = _encode_strings(batch.strings[name])
    return cols


def encode(
    batch: FeatureBatch,
    *,
    sidecar: str,
    seq: int,
    anomalies: Sequence[LocalAnomaly] = (),
    created_unix_nano: int | None = None,
    quality: Sequence[QualityEvent] = (),
    security: Sequence[SecurityEvent] = (),
    status: SidecarStatus | None = None,
    edge_alerts: Sequence[EdgeAlert] = (),
    summaries: Sequence[Summary] = (),
    summarised: bool = False,
    columns: dict[str, Any] | None = None,
) -> bytes:
    """Encode a batch as a version-1 wire body.

    ``columns``: :func:`encode_columns` of ``batch``, when the caller encoded them already (the
    sidecar does so a turn of its event loop ahead, as the columns are most of the work).
    """
    cols = encode_columns(batch) if columns is None else columns
    body = {
        "v": WIRE_VERSION,
        "sidecar": sidecar,
        "seq": seq,
        "created_unix_nano": time.time_ns() if created_unix_nano is None else created_unix_nano,
        "n": batch.n,
        "cols": cols,
        "anomalies": [a.to_wire() for a in anomalies],
    }
    # Optional fields only when there is something to say: bodies without them stay byte for byte
    # what earlier versions wrote, and earlier aggregators ignore them.
    if quality:
        body["quality"] = [q.to_wire() for q in quality]
    if security:
        body["security"] = [e.to_wire() for e in security]
    if status is not None:
        body["status"] = status.to_wire()
    if edge_alerts:  # absent otherwise: bodies without edge alerts stay byte-for-byte as before
        body["edge_alerts"] = [a.to_wire() for a in edge_alerts]
    if summaries:
        body["summaries"] = [s.to_wire() for s in summaries]
    if summarised:
        body["summarised"] = True
    out: bytes = msgpack.packb(body, use_bin_type=True)
    return out


def _need(m: dict[Any, Any], key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if key not in m:
        raise WireFormatError(f"missing field {where}{key!r}")
    v = m[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise WireFormatError(f"field {where}{key!r} has type {type(v).__name__}")
    return v


def _decode_numeric(name: str, spec: Any, n: int) -> np.ndarray[Any, Any]:
    if not isinstance(spec, dict):
        raise WireFormatError(f"column {name!r} is not a map")
    dtype = _need(spec, "dtype", str, f"cols.{name}.")
    if dtype != NUMERIC_COLUMNS[name]:
        raise WireFormatError(f"column {name!r} has dtype {dtype!r}, expected {NUMERIC_COLUMNS[name]!r}")
    data = _need(spec, "data", bytes, f"cols.{name}.")
    # Checked before numpy reads it: a length that is not a whole number of values would make
    # frombuffer raise its own ValueError instead of naming the column.
    if len(data) != n * np.dtype(dtype).itemsize:
        raise WireFormatError(f"column {name!r} holds {len(data)} bytes, expected {n} values")
    arr = np.frombuffer(data, dtype=np.dtype(dtype))
    if name == "is_error" and n and int(arr.max()) > 1:
        row = int(np.argmax(arr > 1))
        raise WireFormatError(f"column 'is_error' holds {int(arr[row])} at row {row}, must be 0 or 1")
    if arr.dtype.kind == "f":
        # ±inf and absurd magnitudes would overflow the aggregator's sums, sketches and JSON; they are
        # read as missing, like NaN (comparisons with NaN are False, so NaN stays as it is). Every
        # float column is a count, a duration, a rate or a cost: a negative value is missing too.
        out_of_range = (np.abs(arr) > MAX_ABS_VALUE) | (arr < 0)
        if out_of_range.any():
            arr = np.where(out_of_range, np.nan, arr)
    return arr


def _decode_strings(name: str, spec: Any, n: int) -> list[str | None]:
    if not isinstance(spec, dict):
        raise WireFormatError(f"column {name!r} is not a map")
    dictionary = _need(spec, "dict", list, f"cols.{name}.")
    if not all(isinstance(s, str) for s in dictionary):
        raise WireFormatError(f"column {name!r} dictionary holds a non-string")
    codes_spec = _need(spec, "codes", dict, f"cols.{name}.")
    if _need(codes_spec, "dtype", str, f"cols.{name}.codes.") != _CODE_DTYPE:
        raise WireFormatError(f"column {name!r} codes must have dtype {_CODE_DTYPE!r}")
    data = _need(codes_spec, "data", bytes, f"cols.{name}.codes.")
    if len(data) != 4 * n:
        raise WireFormatError(f"column {name!r} codes hold {len(data)} bytes, expected {n} values")
    codes = np.frombuffer(data, dtype=_CODE_DTYPE)
    if n and (int(codes.min()) < -1 or int(codes.max()) >= len(dictionary)):
        raise WireFormatError(f"column {name!r} has a code outside its dictionary")
    table: list[str | None] = [*dictionary, None]  # index -1 -> None
    return [table[c] for c in codes.tolist()]


def _msgpack_problem(e: Exception) -> str:
    """What is wrong, in words: several of msgpack's errors carry no message at all."""
    if isinstance(e, msgpack.StackError):
        return "nested too deeply (msgpack's stack limit)"
    if isinstance(e, msgpack.FormatError):
        return "a byte that starts no msgpack value (reserved type 0xc1, or a broken header)"
    return str(e) or type(e).__name__


def _decode_edge_alerts(raw: Any) -> list[EdgeAlert]:
    if not isinstance(raw, list):
        raise WireFormatError("field 'edge_alerts' is not a list")
    if len(raw) > MAX_EDGE_ALERTS:
        raise WireFormatError(f"field 'edge_alerts' holds {len(raw)} alerts, more than {MAX_EDGE_ALERTS}")
    out: list[EdgeAlert] = []
    for i, a in enumerate(raw):
        if not isinstance(a, dict):
            raise WireFormatError(f"edge_alerts[{i}] is not a map")
        try:
            out.append(EdgeAlert.from_wire(a))
        except ValueError as e:
            raise WireFormatError(f"edge_alerts[{i}] is invalid: {e}") from None
    return out


def _decode_summaries(raw: Any) -> list[Summary]:
    if not isinstance(raw, list):
        raise WireFormatError("field 'summaries' is not a list")
    if len(raw) > MAX_SUMMARIES:
        raise WireFormatError(f"field 'summaries' holds {len(raw)} summaries, more than {MAX_SUMMARIES}")
    try:
        return [Summary.from_wire(s, f"summaries[{i}]") for i, s in enumerate(raw)]
    except ValueError as e:
        raise WireFormatError(f"invalid summary: {e}") from None


def decode(body: bytes, *, max_rows: int = 1_000_000, max_anomalies: int | None = None) -> WireBatch:
    """Decode and validate a wire body; raises :class:`WireFormatError` naming the problem.

    Only the first ``max_anomalies`` local anomalies are decoded (``None``: all); how many more the
    body carried is :attr:`WireBatch.anomalies_dropped`.
    """
    try:
        m = msgpack.unpackb(body, raw=False, strict_map_key=False, max_bin_len=len(body))
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise WireFormatError(f"body is not valid msgpack: {_msgpack_problem(e)}") from None
    if not isinstance(m, dict):
        raise WireFormatError(f"body is a msgpack {type(m).__name__}, expected a map")
    v = _need(m, "v", int)
    if v != WIRE_VERSION:
        raise WireFormatError(f"unsupported wire version {v} (this build reads {WIRE_VERSION})")
    sidecar = _need(m, "sidecar", str)
    if not sidecar:
        raise WireFormatError("field 'sidecar' is empty")
    seq = _need(m, "seq", int)
    if seq < 0:
        raise WireFormatError("field 'seq' is negative")
    if seq > _INT64_MAX:  # msgpack carries up to 2**64 - 1; the journal stores a signed 64-bit integer
        raise WireFormatError(f"field 'seq' is {seq}, larger than {_INT64_MAX}")
    n = _need(m, "n", int)
    if not 0 <= n <= max_rows:
        raise WireFormatError(f"field 'n' is {n}, must be between 0 and {max_rows}")
    created = m.get("created_unix_nano", 0)
    if not isinstance(created, int) or isinstance(created, bool):
        raise WireFormatError("field 'created_unix_nano' is not an int")
    if not _INT64_MIN <= created <= _INT64_MAX:
        raise WireFormatError(f"field 'created_unix_nano' is {created}, outside the signed 64-bit range")
    cols = _need(m, "cols", dict)
    numeric: dict[str, np.ndarray[Any, Any]] = {}
    strings: dict[str, list[str | None]] = {}
    for name in COLUMNS:
        if name not in cols:
            raise WireFormatError(f"missing column {name!r}")
        if name in NUMERIC_COLUMNS:
            numeric[name] = _decode_numeric(name, cols[name], n)
        else:
            strings[name] = _decode_strings(name, cols[name], n)
    raw_anomalies = m.get("anomalies", [])
    if not isinstance(raw_anomalies, list):
        raise WireFormatError("field 'anomalies' is not a list")
    dropped = 0
    if max_anomalies is not None and len(raw_anomalies) > max_anomalies:
        dropped = len(raw_anomalies) - max_anomalies
        raw_anomalies = raw_anomalies[:max_anomalies]
    anomalies: list[LocalAnomaly] = []
    for i, a in enumerate(raw_anomalies):
        if not isinstance(a, dict):
            raise WireFormatError(f"anomalies[{i}] is not a map")
        try:
            anomaly = LocalAnomaly.from_wire(a)
            if not _INT64_MIN <= anomaly.time_unix_nano <= _INT64_MAX:
                raise ValueError("time_unix_nano is outside the signed 64-bit range")
            anomalies.append(anomaly)
        except KeyError as e:
            raise WireFormatError(f"anomalies[{i}] is missing field {e}") from None
        except (TypeError, ValueError) as e:
            raise WireFormatError(f"anomalies[{i}] is invalid: {e}") from None
    quality = _decode_list(m, "quality", QualityEvent.from_wire, max_anomalies)
    security = _decode_list(m, "security", SecurityEvent.from_wire, max_anomalies)
    status = SidecarStatus.from_wire(m["status"]) if m.get("status") is not None else None
    edge_alerts = _decode_edge_alerts(m.get("edge_alerts", []))
    summaries = _decode_summaries(m.get("summaries", []))
    summarised = m.get("summarised", False)
    if not isinstance(summarised, bool):
        raise WireFormatError("field 'summarised' is not a bool")
    return WireBatch(
        edge_alerts=edge_alerts,
        summaries=summaries,
        summarised=summarised,
        sidecar=sidecar,
        seq=seq,
        batch=FeatureBatch(n=n, numeric=numeric, strings=strings),
        anomalies=anomalies,
        created_unix_nano=created,
        version=v,
        anomalies_dropped=dropped,
        quality=quality,
        security=security,
        status=status,
    )


def _decode_list(m: dict[Any, Any], name: str, parse: Any, limit: int | None) -> list[Any]:
    """An optional list of maps, each read by ``parse``; at most ``limit`` (the anomalies' bound)."""
    raw = m.get(name, [])
    if not isinstance(raw, list):
        raise WireFormatError(f"field {name!r} is not a list")
    out = []
    for i, item in enumerate(raw[:limit] if limit is not None else raw):
        if not isinstance(item, dict):
            raise WireFormatError(f"{name}[{i}] is not a map")
        try:
            out.append(parse(item))
        except KeyError as e:
            raise WireFormatError(f"{name}[{i}] is missing field {e}") from None
        except (TypeError, ValueError, SecurityEventError) as e:
            raise WireFormatError(f"{name}[{i}] is invalid: {e}") from None
    return out
