"""The extractor's attribute cache is bounded by bytes and keeps no content (issue 15, case 3).

Spans with distinct 32 KiB ``gen_ai.prompt`` attributes took the sidecar's RSS from 95 to 506 MiB:
the doorkeeper set of the attribute cache held 65.6 MB of prompt values.
"""

from __future__ import annotations

from sidecar.extract import _ATTR_CACHE_MAX_KV_BYTES
from tests.test_extract import extractor, request


def _held(ex: object) -> list[bytes]:
    return [*ex._attr_cache, *ex._attr_seen_once]  # type: ignore[attr-defined]


def test_content_attributes_are_never_kept_and_the_cache_is_bounded_by_bytes() -> None:
    ex = extractor()
    for i in range(200):
        spans = [{"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10,
                  "gen_ai.prompt": f"{i}-{j}-" + "x" * 32 * 1024, "gen_ai.input.messages": f"hi {i} {j}",
                  "input.value": "short", "http.route": "/v1/chat"} for j in range(2)]
        result = ex.extract(request(*spans))
        assert result.llm_calls == 2
    held = _held(ex)
    assert all(len(kv) <= _ATTR_CACHE_MAX_KV_BYTES for kv in held)
    assert not any(b"prompt" in kv or b"messages" in kv or b"input.value" in kv for kv in held), \
        "no content value is kept, not even a short one"
    assert any(b"gen_ai.request.model" in kv for kv in held), "wanted attributes are still cached"
    assert any(b"http.route" in kv for kv in held), "small unwanted ones too (skipped quickly)"
    assert sum(map(len, held)) < 64 * 1024


def test_rows_are_the_same_with_content_attributes() -> None:
    attrs = {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5}
    plain = extractor().extract(request(attrs)).rows
    noisy = extractor().extract(request({**attrs, "gen_ai.prompt": "y" * 40_000})).rows
    assert plain == noisy
