"""The settings of cluster mode, gathered from the aggregator's flat ``cluster_*`` settings."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sentinel.config import ConfigError

__all__ = ["DEFAULT_PARTITIONS", "ClusterConfig"]

DEFAULT_PARTITIONS = 32
DEFAULT_QUEUE_PREFIX = "sentinel.cluster"
DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
DEFAULT_HEARTBEAT_TTL_S = 5.0
DEFAULT_CHECKPOINT_INTERVAL_S = 1.0
DEFAULT_PREFETCH = 256


@dataclass
class ClusterConfig:
    """Cluster mode's settings; ``enabled`` when both the broker and the PostgreSQL store are given."""

    amqp_url: str = ""
    store_url: str = ""
    partitions: int = DEFAULT_PARTITIONS
    queue_prefix: str = DEFAULT_QUEUE_PREFIX
    replica_id: str = ""
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    heartbeat_ttl_s: float = DEFAULT_HEARTBEAT_TTL_S
    checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S
    prefetch: int = DEFAULT_PREFETCH
    #: How long ingest's (sidecar, seq) pairs are remembered (the journal's retention).
    dedup_retention_s: float = 24 * 3600.0

    @property
    def enabled(self) -> bool:
        return bool(self.amqp_url and self.store_url)

    def replica(self) -> str:
        """This replica's name: ``replica_id``, else host name and process id (unique per run)."""
        return self.replica_id or f"{socket.gethostname()}-{os.getpid()}"

    def queue(self, partition: int) -> str:
        return f"{self.queue_prefix}.p{partition}"

    def validate(self) -> None:
        if self.amqp_url and not self.amqp_url.startswith(("amqp://", "amqps://")):
            raise ConfigError("cluster_amqp_url: must start with amqp:// or amqps://")
        if self.amqp_url and not self.store_url:
            raise ConfigError("cluster_amqp_url: cluster mode needs store_url (postgresql://…) as well")
        if not 1 <= self.partitions <= 4096:
            raise ConfigError("cluster_partitions: must be between 1 and 4096")
        if not self.queue_prefix:
            raise ConfigError("cluster_queue_prefix: must not be empty")
        for key in ("heartbeat_interval_s", "heartbeat_ttl_s", "checkpoint_interval_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"cluster_{key}: must be greater than 0")
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ConfigError("cluster_heartbeat_ttl_s: must be greater than cluster_heartbeat_interval_s")
        if self.prefetch <= 0:
            raise ConfigError("cluster_prefetch: must be greater than 0")
