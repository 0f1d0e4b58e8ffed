"""The one interface every alert sink implements (RabbitMQ, webhooks).

Sinks never receive alerts directly: the alert manager writes each alert that is to be sent
(not silenced, not folded into a storm summary, passing ``wants``) and one outbox row per such
sink in one store transaction, then calls :meth:`Sink.wake`. The sink reads its rows from the
store (``outbox_pending``), delivers them in order and deletes each row (``outbox_done``) only
once delivery is confirmed, so an outage or a restart delays alerts but never loses them.
"""

from __future__ import annotations

from typing import Protocol

from aggregator.alerting.model import SEVERITY_RANK, Alert

__all__ = ["Sink", "severity_at_least"]


def severity_at_least(severity: str, minimum: str) -> bool:
    """``severity_at_least("high", "medium")`` is True (critical > high > medium > low)."""
    return SEVERITY_RANK[severity] <= SEVERITY_RANK[minimum]


class Sink(Protocol):
    #: The outbox key: unique per sink (``amqp``, ``webhook:<name>``), stable across restarts.
    name: str

    def wants(self, alert: Alert) -> bool:
        """Whether this sink is to be sent ``alert`` (its severity filter)."""

    def wake(self) -> None:
        """New outbox rows were committed (thread-safe: called from the analysis thread)."""

    async def start(self) -> None:
        """Begin delivering (rows left from before a restart first); must not fail when the far end is down."""

    async def shutdown(self) -> None:
        """Stop; what is undelivered stays in the outbox. Idempotent."""
