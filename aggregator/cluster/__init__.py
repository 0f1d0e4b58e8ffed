"""Cluster mode of the aggregator: analysis partitioned across replicas (RabbitMQ), state in PostgreSQL.

On when ``store_url`` is a PostgreSQL URL and ``cluster.amqp_url`` is set (aggregator/README.md,
"Cluster mode"); otherwise the aggregator is the single process it always was.
"""
