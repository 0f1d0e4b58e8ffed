"""The settings of cluster mode, gathered from the aggregator's flat ``cluster_*`` settings."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from sentinel.config import ConfigError

__all__ = ["DEFAULT_PARTITIONS", "ClusterConfig"]

DEFAULT_PARTITIONS = 32
DEFAULT_QUEUE_PREFIX = "sentinel.cluster"
DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
DEFAULT_HEARTBEAT_TTL_S = 5.0
DEFAULT_CHECKPOINT_INTERVAL_S = 5.0
DEFAULT_PREFETCH = 256


@dataclass
class ClusterConfig:
    """Cluster mode's settings; ``enabled`` when both the broker and the PostgreSQL store are given."""

    amqp_url: str = field(default="", metadata={
        "help": "`cluster_amqp_url`: the broker of the partition queues; empty: one process"})
    store_url: str = field(default="", metadata={
        "help": "`store_url`: the PostgreSQL database of the alerts, dedup, heartbeats and checkpoints"})
    partitions: int = field(default=DEFAULT_PARTITIONS, metadata={"help": "`cluster_partitions`"})
    queue_prefix: str = field(default=DEFAULT_QUEUE_PREFIX, metadata={"help": "`cluster_queue_prefix`"})
    replica_id: str = field(default="", metadata={"help": "`cluster_replica_id`"})
    heartbeat_interval_s: float = field(default=DEFAULT_HEARTBEAT_INTERVAL_S,
                                        metadata={"help": "`cluster_heartbeat_interval_s`"})
    heartbeat_ttl_s: float = field(default=DEFAULT_HEARTBEAT_TTL_S, metadata={"help": "`cluster_heartbeat_ttl_s`"})
    checkpoint_interval_s: float = field(default=DEFAULT_CHECKPOINT_INTERVAL_S,
                                         metadata={"help": "`cluster_checkpoint_interval_s`"})
    prefetch: int = field(default=DEFAULT_PREFETCH, metadata={"help": "`cluster_prefetch`"})
    dedup_retention_s: float = field(default=24 * 3600.0, metadata={
        "help": "`journal_retention_s`: how long ingest's (sidecar, seq) pairs are remembered in cluster_dedup"})

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
