"""Which partition a service's rows belong to, and one wire batch split into one body per partition.

A partition is ``CRC-32(service name) mod partitions``: stable across processes, versions and
replicas (unlike Python's salted ``hash``), so every replica routes a service to the same queue and
every piece of state kept per key (baselines, detector windows, series) lives in one partition.
Rows, local anomalies, summaries, edge alerts, quality and security events go with their service;
what names none (and the sidecar's status) goes with the partition of the sidecar's id — except a
quality event naming no service: it joins its call by span or trace id, so it goes with the service of
its call's row when that row is in the same batch, and to every partition otherwise (its call may be
in any of them; the partition whose call index knows it joins it, the others drop it unjoined).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from sentinel import wire
from sentinel.model import FeatureBatch
from sentinel.quality import QualityEvent

__all__ = ["partition_of", "quality_parts", "split"]


def partition_of(service: str | None, partitions: int) -> int:
    """The partition of ``service`` (``None``: the empty name).

    >>> partition_of("checkout", 32) == partition_of("checkout", 32)
    True
    >>> partition_of("checkout", 1)
    0
    """
    return zlib.crc32((service or "").encode("utf-8", "surrogateescape")) % partitions


def _by_service(items: Iterable[Any], service: Any, partitions: int, default: int) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = defaultdict(list)
    for item in items:
        name = service(item)
        out[default if name is None else partition_of(name, partitions)].append(item)
    return out


def quality_parts(events: Sequence[QualityEvent], rows: FeatureBatch, partitions: int) -> dict[int, list[QualityEvent]]:
    """Each quality event's partitions: its service's; else its call's service in ``rows`` (span id, then
    trace id); else every partition.

    >>> e = QualityEvent(kind="feedback", name="thumbs", time_unix_nano=1, score=1.0, trace_id="t")
    >>> sorted(quality_parts([e], FeatureBatch.empty(), 3))
    [0, 1, 2]
    """
    out: dict[int, list[QualityEvent]] = defaultdict(list)
    calls: dict[str, str | None] | None = None
    for e in events:
        service = e.service
        if service is None:
            if calls is None:  # built once, and only for a batch with such an event
                calls = _calls_by_id(rows)
            service = calls.get(e.span_id or "") or calls.get(e.trace_id or "")
        if service is None:
            for p in range(partitions):
                out[p].append(e)
        else:
            out[partition_of(service, partitions)].append(e)
    return out


def _calls_by_id(rows: FeatureBatch) -> dict[str, str | None]:
    if not rows.n:
        return {}
    services = rows.strings["service"]
    calls: dict[str, str | None] = {}
    for ids in (rows.strings["trace_id"], rows.strings["span_id"]):  # a trace's last call, as CallIndex
        calls.update((i, s) for i, s in zip(ids, services, strict=True) if i)
    return calls


def split(batch: wire.WireBatch, partitions: int) -> dict[int, bytes]:
    """``batch`` as one wire body per partition it has something for (same sidecar, seq and seal time).

    >>> from sentinel.model import FeatureBatch
from sentinel.quality import QualityEvent
    >>> split(wire.WireBatch("s", 1, FeatureBatch.empty()), 4) == {partition_of("s", 4): split(
    ...     wire.WireBatch("s", 1, FeatureBatch.empty()), 1)[0]}
    True
    """
    home = partition_of(batch.sidecar, partitions)
    rows: dict[int, FeatureBatch] = {}
    if batch.batch.n:
        services: Sequence[str | None] = batch.batch.strings["service"]
        codes = np.fromiter((partition_of(s, partitions) for s in services), dtype=np.int32, count=len(services))
        for p in np.unique(codes).tolist():
            keep = codes == p
            rows[p] = batch.batch if keep.all() else batch.batch.take(keep)
    anomalies = _by_service(batch.anomalies, lambda a: a.service, partitions, home)
    summaries = _by_service(batch.summaries, lambda s: s.key.get("service"), partitions, home)
    edge = _by_service(batch.edge_alerts, lambda a: a.service, partitions, home)
    quality = quality_parts(batch.quality, batch.batch, partitions)
    security = _by_service(batch.security, lambda e: e.service, partitions, home)
    parts = {home, *rows, *anomalies, *summaries, *edge, *quality, *security}
    if not (batch.batch.n or batch.anomalies or batch.summaries or batch.edge_alerts or batch.quality
            or batch.security or batch.status):
        parts = {home}  # an empty batch still travels: its sidecar is heard (clock check, series)
    elif not (home in rows or home in anomalies or home in summaries or home in edge or home in quality
              or home in security or batch.status):
        parts.discard(home)
    return {p: wire.encode(rows.get(p, FeatureBatch.empty()), sidecar=batch.sidecar, seq=batch.seq,
                           anomalies=anomalies.get(p, ()), created_unix_nano=batch.created_unix_nano,
                           quality=quality.get(p, ()), security=security.get(p, ()),
                           status=batch.status if p == home else None, edge_alerts=edge.get(p, ()),
                           summaries=summaries.get(p, ()), summarised=batch.summarised)
            for p in sorted(parts)}
