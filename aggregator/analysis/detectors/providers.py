"""Which provider (``gen_ai.system``) a (service, request model) key calls, learned from its rows.

A provider's incident (a 429 storm, an outage) spans services; naming the provider on a candidate
lets the alert manager group it across them (``alerts.group_across``). Bounded: past ``max_keys``
the map is cleared and learned again from the next batches (a key's provider rarely changes).
"""

from __future__ import annotations

from sentinel.model import FeatureBatch

__all__ = ["ProviderMap"]


class ProviderMap:
    """``note(batch)`` learns; ``get(service, model)`` is the provider the key's calls last named."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._map: dict[tuple[str | None, str | None], str] = {}

    def note(self, batch: FeatureBatch) -> None:
        if not batch.n:
            return
        s = batch.strings
        seen = set(zip(s["service"], s["request_model"], s["provider"], strict=True))
        if len(self._map) + len(seen) > self.max_keys:
            self._map.clear()
        for service, model, provider in seen:
            if provider:
                self._map[(service, model)] = provider

    def get(self, service: str | None, model: str | None) -> str | None:
        return self._map.get((service, model))
