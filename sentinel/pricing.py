"""The cost of one LLM call in USD, from genai-prices' table (:mod:`sentinel.price_table`) or configured overrides.

Prices are looked up once per (provider, model) and cached as per-token USD prices, so the
extraction hot path pays a dict look-up per row. A span's own cost attribute, when present, wins
over both (the extractor decides that; see ``sidecar/extract.py``).

>>> book = PriceBook({"my-model": {"input": 1.0, "output": 2.0}})
>>> book.cost(None, "my-model", 1_000_000, 500_000)
2.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sentinel.config import ConfigError
from sentinel.price_table import PriceTable

__all__ = ["DEFAULT_CACHE_SIZE", "PriceBook", "parse_overrides"]

#: Distinct (provider, model) pairs whose prices are remembered; beyond it the oldest is forgotten.
DEFAULT_CACHE_SIZE = 4096

PerToken = tuple[float, float]  # (input, output) USD per token


def parse_overrides(prices: Mapping[str, Any] | None) -> dict[str, PerToken]:
    """Validate ``prices`` (``{model: {input: USD/M tokens, output: USD/M tokens}}``) into
    per-token prices; :class:`ConfigError` names the offending ``prices.<model>.<field>``."""
    if prices is None:
        return {}
    if not isinstance(prices, Mapping):
        raise ConfigError("prices: must be a map of model -> {input, output}")
    out: dict[str, PerToken] = {}
    for model, entry in prices.items():
        if not isinstance(model, str) or not model:
            raise ConfigError(f"prices.{model}: model names must be non-empty strings")
        if not isinstance(entry, Mapping):
            raise ConfigError(f"prices.{model}: must be a map with input and output (USD per million tokens)")
        for field in entry:
            if field not in ("input", "output"):
                raise ConfigError(f"prices.{model}.{field}: unknown field (expected input and output)")
        per_million: list[float] = []
        for field in ("input", "output"):
            if field not in entry:
                raise ConfigError(f"prices.{model}.{field}: required (USD per million tokens)")
            value = entry[field]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value < 0:
                raise ConfigError(f"prices.{model}.{field}: {value!r} is not a non-negative number "
                                  "(USD per million tokens)")
            per_million.append(float(value))
        out[model] = (per_million[0] / 1e6, per_million[1] / 1e6)
    return out


class PriceBook:
    """Per-token prices by (provider, model): overrides first, then genai-prices' table.

    ``overrides`` is the ``prices`` setting, ``{model: {input: USD/M, output: USD/M}}``; it applies
    to the model under any provider. Unknown models are cached as unknown too.
    """

    def __init__(self, overrides: Mapping[str, Any] | None = None, *, cache_size: int = DEFAULT_CACHE_SIZE):
        if cache_size <= 0:
            raise ValueError("cache_size must be greater than 0")
        self._overrides = parse_overrides(overrides)
        self._cache: dict[tuple[str | None, str], PerToken | None] = {}
        self._resolved: dict[tuple[str | None, str | None, str | None], PerToken | None] = {}
        self._cache_size = cache_size
        self.lookups = 0  # look-ups in the price table, for tests and self-metrics

    def per_token(self, provider: str | None, model: str) -> PerToken | None:
        """(input, output) USD per token for ``model``, or ``None`` if it has no known price."""
        found = self._overrides.get(model)
        if found is not None:
            return found
        key = (provider, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._lookup(provider, model)
        if len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]  # oldest first: dicts keep insertion order
        self._cache[key] = found
        return found

    def resolve(self, provider: str | None, model: str | None, alt_model: str | None = None) -> PerToken | None:
        """The prices :meth:`cost` would use, cached per (provider, model, alt_model) triple."""
        key = (provider, model, alt_model)
        try:
            return self._resolved[key]
        except KeyError:
            pass
        prices = self.per_token(provider, model) if model else None
        if prices is None and alt_model and alt_model != model:
            prices = self.per_token(provider, alt_model)
        if len(self._resolved) >= self._cache_size:
            del self._resolved[next(iter(self._resolved))]
        self._resolved[key] = prices
        return prices

    def cost(self, provider: str | None, model: str | None, input_tokens: int | None,
             output_tokens: int | None, *, alt_model: str | None = None) -> float | None:
        """USD for one call, or ``None`` when no tokens are known or neither model has a price.

        ``alt_model`` is tried when ``model`` has no price (the request model behind a dated
        response model). A missing token count counts as zero when the other one is known.
        """
        if input_tokens is None and output_tokens is None:
            return None
        prices = self.resolve(provider, model, alt_model)
        if prices is None:
            return None
        return (input_tokens or 0) * prices[0] + (output_tokens or 0) * prices[1]

    @staticmethod
    def load_table() -> None:
        """Read the price table now (it is read on first use): a process that freezes its start-up
        objects out of garbage collection (:mod:`sentinel.gc_policy`) wants the table frozen with them
        (its providers, each provider's models as JSON text: :class:`~sentinel.price_table.PriceTable`)."""
        PriceTable.bundled()

    def _lookup(self, provider: str | None, model: str) -> PerToken | None:
        # An OTel provider name genai-prices does not know (x_ai, …) falls back to the model alone.
        table = PriceTable.bundled()
        for provider_id in ((provider.lower(), None) if provider else (None,)):
            self.lookups += 1
            if (found := table.per_token(provider_id, model)) is not None:
                return found
        return None
