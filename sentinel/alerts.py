"""The alert vocabulary the aggregator and its clients (``sentinel alerts``, the API's users) share."""

from __future__ import annotations

__all__ = ["SEVERITIES", "SEVERITY_RANK", "STATUSES"]

#: Most severe first. ``incidents.<severity>`` is the RabbitMQ routing key.
SEVERITIES: tuple[str, ...] = ("critical", "high", "medium", "low")
SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}  # lower = more severe
#: ``open`` until acknowledged or resolved; ``acknowledged`` alerts still de-duplicate and resolve.
STATUSES: tuple[str, ...] = ("open", "acknowledged", "resolved")
