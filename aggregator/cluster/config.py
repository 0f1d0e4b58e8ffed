"""The settings of cluster mode: the aggregator's ``cluster:`` section (``SENTINEL_CLUSTER_<FIELD>``)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sentinel.config import ConfigError, setting

__all__ = ["DEFAULT_PARTITIONS", "ClusterConfig"]

DEFAULT_PARTITIONS = 32
DEFAULT_QUEUE_PREFIX = "sentinel.cluster"
DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
DEFAULT_HEARTBEAT_TTL_S = 5.0
DEFAULT_CHECKPOINT_INTERVAL_S = 5.0
DEFAULT_PREFETCH = 256


@dataclass(frozen=True)
class ClusterConfig:
    """Cluster mode's settings; ``enabled`` when both the broker and the PostgreSQL store are given.
    :meth:`validate` names the key (``cluster.<field>``)."""

    amqp_url: str = setting("", "cluster mode (with a postgresql:// store_url): RabbitMQ amqp:// URL the replicas "
                            "partition analysis over (prefer SENTINEL_CLUSTER_AMQP_URL: it holds the password); "
                            "empty: one process", flag=False)
    partitions: int = setting(DEFAULT_PARTITIONS, "analysis partitions (CRC-32 of the service name modulo this); "
                              "the same on every replica, changed only with the cluster stopped")
    queue_prefix: str = setting(DEFAULT_QUEUE_PREFIX, "names of the partition queues (<prefix>.p<n>) and the "
                                "advisory-lock namespace")
    replica_id: str = setting("", "this replica's name in the heartbeat table; empty: host name and process id")
    heartbeat_interval_s: float = setting(DEFAULT_HEARTBEAT_INTERVAL_S, "how often a replica renews its heartbeat "
                                          "and rebalances", kind="duration")
    heartbeat_ttl_s: float = setting(DEFAULT_HEARTBEAT_TTL_S, "a replica whose heartbeat is older is not counted "
                                     "live (its partitions' share moves to the others)", kind="duration")
    checkpoint_interval_s: float = setting(DEFAULT_CHECKPOINT_INTERVAL_S, "how often a partition with new messages "
                                           "is checkpointed to PostgreSQL (and early at half prefetch); its "
                                           "messages are acknowledged then", kind="duration")
    prefetch: int = setting(DEFAULT_PREFETCH, "messages of a partition delivered and not yet acknowledged (bounds "
                            "memory and what a takeover replays)")
    # Other settings of the process, copied in by AggregatorConfig (not settings of this section).
    store_url: str = setting("", "the aggregator's store_url: the PostgreSQL database of the alerts, dedup, "
                             "heartbeats and checkpoints", config=False)
    dedup_retention_s: float = setting(24 * 3600.0, "the aggregator's journal_retention_s: how long ingest's "
                                       "(sidecar, seq) pairs are remembered in cluster_dedup", config=False)

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
            raise ConfigError("cluster.amqp_url: must start with amqp:// or amqps://")
        if self.amqp_url and not self.store_url:
            raise ConfigError("cluster.amqp_url: cluster mode needs store_url (postgresql://…) as well")
        if not 1 <= self.partitions <= 4096:
            raise ConfigError("cluster.partitions: must be between 1 and 4096")
        if not self.queue_prefix:
            raise ConfigError("cluster.queue_prefix: must not be empty")
        for key in ("heartbeat_interval_s", "heartbeat_ttl_s", "checkpoint_interval_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"cluster.{key}: must be greater than 0")
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ConfigError("cluster.heartbeat_ttl_s: must be greater than cluster.heartbeat_interval_s")
        if self.prefetch <= 0:
            raise ConfigError("cluster.prefetch: must be greater than 0")
