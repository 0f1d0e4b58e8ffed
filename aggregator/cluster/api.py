"""``GET /api/v1/cluster``: the replicas, which partitions each owns, their epochs and checkpoint ages.

Read from PostgreSQL (the heartbeat and partition tables), so every replica answers the same;
``replica`` names the one that answered. Viewer role, like every read of the API.
"""

from __future__ import annotations

from typing import Any

import psycopg
from aiohttp import web

from aggregator.cluster.owner import Coordinator

__all__ = ["ClusterApi"]


class ClusterApi:
    """The route; ``coordinator`` ``None``: a single process (404, as the API answers for what is not there)."""

    def __init__(self, coordinator: Coordinator | None) -> None:
        self.coordinator = coordinator

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/cluster", self.handle)

    async def status(self, c: Coordinator) -> dict[str, Any]:
        ttl = c.config.heartbeat_ttl_s
        async with await psycopg.AsyncConnection.connect(c.config.store_url, autocommit=True,
                                                         connect_timeout=5) as db:
            cur = await db.execute("SELECT replica, url, extract(epoch FROM now() - seen_at)::float8 FROM "
                                   "cluster_replicas ORDER BY replica")
            replicas = await cur.fetchall()
            cur = await db.execute("SELECT partition, owner, epoch, extract(epoch FROM now() - checkpoint_at)::float8,"
                                   " rows, batches FROM cluster_partitions ORDER BY partition")
            partitions = await cur.fetchall()
        owned: dict[str, list[int]] = {}
        for p, owner, *_ in partitions:
            if owner:
                owned.setdefault(owner, []).append(p)
        return {
            "replica": c.replica,
            "partitions": c.config.partitions,
            "owned": sorted(c.owned),
            "replicas": [{"replica": r, "url": url, "heartbeat_age_s": age, "live": age <= ttl,
                          "partitions": owned.get(r, [])} for r, url, age in replicas],
            "partition_table": [{"partition": p, "owner": owner, "epoch": epoch, "checkpoint_age_s": age,
                                 "rows": rows, "batches": batches}
                                for p, owner, epoch, age, rows, batches in partitions],
        }

    async def handle(self, request: web.Request) -> web.Response:
        if self.coordinator is None:
            return web.json_response({"status": "error", "error": "not a cluster: set store_url (postgresql://) and "
                                      "cluster.amqp_url"}, status=404)
        try:
            body = await self.status(self.coordinator)
        except psycopg.Error as e:
            return web.json_response({"status": "error", "error": f"cluster state unavailable: {e}"}, status=503,
                                     headers={"Retry-After": "1"})
        return web.json_response(body)
