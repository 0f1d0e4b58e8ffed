"""The compact price table prices every model as genai-prices itself does, and is current.

``sentinel/price_table.json`` is generated from genai-prices (pinned in the dev extra) by
``scripts/price_table.py``; :mod:`sentinel.price_table` re-implements genai-prices' look-up. Here
every model of the table — by its id and by every string of its match logic, under its own
provider, under no provider, under ``litellm`` and under an unknown one — must get exactly the
price genai-prices' ``calc_price`` gives, at dates and times of day either side of the table's
price changes and off-peak windows.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from genai_prices.data import providers

from sentinel.price_table import PriceTable

REPO = Path(__file__).resolve().parents[1]
MOMENTS = [datetime(2026, 12, 2, 8, 0, tzinfo=UTC), datetime(2026, 12, 2, 20, 0, tzinfo=UTC),
           datetime(2024, 6, 1, 1, 0, tzinfo=UTC)]
EXTRA_REFS = ["gpt-4o-2024-08-06", "gpt-5.2-20251211", "claude-3-5-sonnet-20241022", "GPT-4o", "no-such-model-xyz",
              "openai/gpt-4o", "anthropic/claude-3-5-sonnet-latest", "anthropic.claude-3-haiku-20240307-v1:0", ""]


def reference(provider_id: str | None, model: str, at: datetime) -> tuple[float, float] | None:
    """What sentinel.pricing asked genai-prices before the table: 1,000 tokens each way, per token."""
    try:
        calc = calc_price(Usage(input_tokens=1000, output_tokens=1000), model_ref=model, provider_id=provider_id,
                          genai_request_timestamp=at)
    except (LookupError, ValueError):
        return None
    return float(calc.input_price) / 1000, float(calc.output_price) / 1000


def _strings(clause: Any, out: set[str]) -> None:
    for name in ("equals", "starts_with", "ends_with", "contains"):
        if hasattr(clause, name):
            out.add(getattr(clause, name))
    for name in ("or_", "and_"):
        for inner in getattr(clause, name, None) or ():
            _strings(inner, out)


def _refs(provider: Any) -> list[str]:
    refs: set[str] = set()
    for model in provider.models:
        refs.add(model.id)
        _strings(model.match, refs)
    return sorted(refs)


@pytest.mark.parametrize("provider", providers, ids=lambda p: p.id)
def test_every_model_is_priced_as_genai_prices_prices_it(provider: Any) -> None:
    table = PriceTable.bundled()
    refs = _refs(provider) + EXTRA_REFS
    conditional = any(isinstance(m.prices, list) for m in provider.models)
    differ = []
    for at in MOMENTS if conditional else MOMENTS[:1]:
        for provider_id in (provider.id, None, "litellm", "some-gateway"):
            for ref in refs:
                if (got := table.per_token(provider_id, ref, at)) != (want := reference(provider_id, ref, at)):
                    differ.append(f"{provider_id}/{ref!r} at {at:%Y-%m-%d %H:%M}: {got} != genai-prices {want}")
    assert not differ, "\n".join(differ[:20])


def test_the_table_knows_the_common_models() -> None:
    table = PriceTable.bundled()
    for provider, model in [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-sonnet-latest"),
                            (None, "gpt-4o-2024-08-06"), ("aws", "anthropic.claude-3-haiku-20240307-v1:0")]:
        prices = table.per_token(provider, model)
        assert prices is not None and prices[0] > 0 and prices[1] > 0, (provider, model)
    assert table.per_token("openai", "no-such-model-xyz") is None
    assert table.per_token("no-such-provider", "gpt-4o") is None  # PriceBook then tries the model alone
    assert table.source.startswith("genai-prices ")


def test_the_checked_in_table_is_what_the_pinned_genai_prices_gives() -> None:
    r = subprocess.run([sys.executable, "scripts/price_table.py", "--check"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_the_licence_travels_with_the_table() -> None:
    licence = (REPO / "sentinel" / "price_table.LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in licence and "Pydantic Services Inc." in licence


def test_the_lines_read_lazily_are_the_table_decoded_whole() -> None:
    # PriceTable.bundled() keeps each provider's models as JSON text (issue 16, the sidecar's RSS).
    import json

    from sentinel import price_table

    text = (REPO / "sentinel" / "price_table.json").read_text(encoding="utf-8")
    lazy, whole = PriceTable.from_text(text), PriceTable(json.loads(text))
    assert lazy.source == whole.source
    assert lazy._providers == whole._providers
    assert all(isinstance(p["models"], str) for p in lazy._providers)
    for p in lazy._providers:  # decoding each provider's list keeps at most DECODED_PROVIDERS of them
        lazy._models(p)
        assert len(lazy._decoded) <= price_table.DECODED_PROVIDERS
    assert lazy.per_token("openai", "gpt-4o") == whole.per_token("openai", "gpt-4o") is not None
