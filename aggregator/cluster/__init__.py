"""Cluster mode of the aggregator: analysis partitioned across replicas (RabbitMQ), state in PostgreSQL.

On when ``store_url`` is a PostgreSQL URL and ``cluster.amqp_url`` is set (aggregator/README.md,
"Cluster mode"); otherwise the aggregator is the single process it always was.
"""

from sentinel.exports import lazy_exports

#: The public names, each imported from its module when first used (config.py is imported by
#: aggregator.config, and must not pull in the broker and database clients).
__all__, __getattr__ = lazy_exports(__name__, {
    "ClusterApi": "aggregator.cluster.api",
    "ClusterConfig": "aggregator.cluster.config",
    "ClusterIngest": "aggregator.cluster.ingest",
    "ClusterView": "aggregator.cluster.views",
    "Coordinator": "aggregator.cluster.owner",
    "EventRouter": "aggregator.cluster.events",
    "partition_of": "aggregator.cluster.partition",
})
