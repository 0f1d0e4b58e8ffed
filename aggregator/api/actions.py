"""What the API needs from the alert manager (:class:`aggregator.alerting.manager.AlertManager` has it).

A Protocol so the API depends on these few thread-safe calls only, and tests can stand in for it.
"""

from __future__ import annotations

from typing import Protocol

from aggregator.alerting.hub import AlertHub
from aggregator.alerting.silences import Silence
from aggregator.alerting.store import AlertStore
from sentinel.alerts import Alert

__all__ = ["AlertActions"]


class AlertActions(Protocol):
    """Thread-safe actions on alerts and silences; the API calls them through ``asyncio.to_thread``."""

    @property
    def store(self) -> AlertStore: ...

    @property
    def hub(self) -> AlertHub: ...

    def acknowledge(self, alert_id: str, by: str, comment: str = "") -> Alert | None:
        """The updated alert; ``None`` for an unknown id; raises ``AlertStateError`` (a ``ValueError``) if resolved."""

    def add_silence(self, silence: Silence) -> Silence: ...

    def expire_silence(self, silence_id: str) -> Silence | None: ...

    def delete_silence(self, silence_id: str) -> bool: ...
