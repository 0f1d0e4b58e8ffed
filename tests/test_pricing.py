"""PriceBook: overrides, genai-prices' table (sentinel.price_table), and the per-(provider, model) cache."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from sentinel.config import ConfigError
from sentinel.price_table import PriceTable
from sentinel.pricing import PriceBook, parse_overrides

LOOKUP = "sentinel.price_table.PriceTable.per_token"


def test_override_prices_are_per_million_tokens() -> None:
    book = PriceBook({"my-model": {"input": 1.5, "output": 6}})
    assert book.cost("any", "my-model", 1_000_000, 0) == pytest.approx(1.5)
    assert book.cost(None, "my-model", 2000, 1000) == pytest.approx(2000 * 1.5e-6 + 1000 * 6e-6)


def test_override_wins_over_the_table() -> None:
    book = PriceBook({"gpt-4o": {"input": 0, "output": 0}})
    with mock.patch(LOOKUP) as calc:
        assert book.cost("openai", "gpt-4o", 100, 100) == 0.0
    calc.assert_not_called()


def test_table_price_for_a_known_model() -> None:
    book = PriceBook()
    cost = book.cost("openai", "gpt-4o", 1000, 1000)
    assert cost is not None and cost > 0
    assert book.per_token("openai", "gpt-4o") == book.per_token("openai", "gpt-4o")


def test_table_prices_are_looked_up_once_per_provider_and_model() -> None:
    book = PriceBook()
    with mock.patch(LOOKUP, autospec=True, side_effect=PriceTable.per_token) as calc:
        for _ in range(50):
            book.cost("openai", "gpt-4o", 10, 10)
            book.cost("openai", "gpt-4o-mini", 10, 10)
        assert calc.call_count == 2


def test_unknown_model_is_none_and_cached_too() -> None:
    book = PriceBook()
    with mock.patch(LOOKUP, autospec=True, side_effect=PriceTable.per_token) as calc:
        for _ in range(20):
            assert book.cost("openai", "no-such-model-xyz", 10, 10) is None
        # one try with the provider, one with the model alone, then never again
        assert calc.call_count == 2


def test_unknown_provider_falls_back_to_the_model_alone() -> None:
    assert PriceBook().cost("some-gateway", "gpt-4o", 1000, 0) is not None


def test_alt_model_is_tried_when_the_model_has_no_price() -> None:
    book = PriceBook({"base": {"input": 1, "output": 1}})
    assert book.cost(None, "base-2025-01-01-custom", 1_000_000, 0, alt_model="base") == pytest.approx(1.0)


def test_no_tokens_no_cost() -> None:
    assert PriceBook({"m": {"input": 1, "output": 1}}).cost(None, "m", None, None) is None


def test_cache_is_bounded() -> None:
    book = PriceBook(cache_size=3)
    with mock.patch(LOOKUP, return_value=None):
        for i in range(10):
            book.per_token(None, f"m{i}")
    assert len(book._cache) == 3


@pytest.mark.parametrize(("prices", "message"), [
    ({"gpt-4o": {"input": -1, "output": 1}}, "prices.gpt-4o.input"),
    ({"gpt-4o": {"input": 1}}, "prices.gpt-4o.output"),
    ({"gpt-4o": {"input": 1, "output": "cheap"}}, "prices.gpt-4o.output"),
    ({"gpt-4o": {"input": True, "output": 1}}, "prices.gpt-4o.input"),
    ({"gpt-4o": {"input": float("nan"), "output": 1}}, "prices.gpt-4o.input"),
    ({"gpt-4o": {"input": 1, "output": 1, "cached": 1}}, "prices.gpt-4o.cached"),
    ({"gpt-4o": 3}, "prices.gpt-4o"),
    ([1, 2], "prices"),
])
def test_bad_overrides_name_the_setting(prices: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{message}[:]"):
        parse_overrides(prices)
    with pytest.raises(ConfigError):
        PriceBook(prices)
