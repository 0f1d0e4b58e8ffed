"""Cluster mode's tables in the shared PostgreSQL database (``store_url``) and the statements on them.

- ``cluster_dedup``: every (sidecar, seq) accepted by any replica. Ingest inserts the pair and keeps
  the transaction open until the batch's parts are confirmed by the broker: a concurrent retry of
  the same batch at another replica waits on the row lock and is then a duplicate, and a failed
  publish rolls back, so the batch is not marked seen and the sidecar's retry is taken.
- ``cluster_replicas``: one heartbeat row per replica; live = seen within ``cluster.heartbeat_ttl_s``.
- ``cluster_partitions``: per partition its owner, its ``epoch`` (the fencing token, one more at
  every change of owner) and its last checkpoint (the analysis state and the seqs it covers).
  A checkpoint is written only ``WHERE epoch = <the writer's epoch>``: a replica that lost the
  partition (paused, partitioned away) cannot overwrite its successor's state. With each checkpoint
  its ``summary`` (services, series, baselines: :mod:`aggregator.cluster.views`), read by every replica.

Ownership itself is a session advisory lock per partition (``pg_try_advisory_lock(namespace,
partition)``), held on one connection per replica: it is released by PostgreSQL the moment that
replica's connection ends, a SIGKILL included.
"""

from __future__ import annotations

import zlib
from typing import Any

import psycopg

__all__ = ["SCHEMA", "create_schema", "lock_namespace"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS cluster_dedup (
    sidecar TEXT NOT NULL,
    seq BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (sidecar, seq)
);
CREATE INDEX IF NOT EXISTS cluster_dedup_received_at ON cluster_dedup (received_at);
CREATE TABLE IF NOT EXISTS cluster_replicas (
    replica TEXT PRIMARY KEY,
    url TEXT NOT NULL DEFAULT '',
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS cluster_partitions (
    partition INTEGER PRIMARY KEY,
    epoch BIGINT NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT '',
    taken_at TIMESTAMPTZ,
    released_at TIMESTAMPTZ,
    checkpoint_at TIMESTAMPTZ,
    rows BIGINT NOT NULL DEFAULT 0,
    batches BIGINT NOT NULL DEFAULT 0,
    state BYTEA,
    summary BYTEA
);
ALTER TABLE cluster_partitions ADD COLUMN IF NOT EXISTS summary BYTEA;
"""

_SCHEMA_LOCK = 0x5E17C1  # one schema creation at a time across replicas starting together


def lock_namespace(queue_prefix: str) -> int:
    """The first key of the partitions' advisory locks: from the queue prefix, as a signed 32-bit int."""
    v = zlib.crc32(queue_prefix.encode())
    return v - (1 << 32) if v >= 1 << 31 else v


async def create_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        await conn.execute(SCHEMA)
