"""A small OpenAI-compatible server for the interop suite (aiohttp, loopback only).

``POST /v1/chat/completions`` (plain, and streamed as server-sent events with a final usage chunk
when ``stream_options.include_usage`` is set) and ``POST /v1/embeddings``. Token counts are
deterministic (words of the messages / input; 7 completion tokens, or ``max_tokens`` when smaller,
with finish reason ``length``), and the response names a dated model (:data:`RESPONSE_MODELS`), as
OpenAI does. A request header picks a fault: ``x-fake-fault: 429`` / ``500`` answers that status
with an OpenAI error body; ``slow`` waits :data:`SLOW_S` before answering (the client times out).
Streamed answers wait ``x-fake-first-chunk-ms`` (default :data:`FIRST_CHUNK_MS`) before the first
chunk. Nothing of a request is logged or kept but its counts.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

__all__ = ["FIRST_CHUNK_MS", "RESPONSE_MODELS", "SLOW_S", "FakeOpenAI", "completion_tokens", "words"]

#: Request model -> the model the response names.
RESPONSE_MODELS = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o-2024-08-06"}
FIRST_CHUNK_MS = 150.0
CHUNK_GAP_MS = 20.0
SLOW_S = 3.0
_COMPLETION_TOKENS = 7


def words(value: Any) -> int:
    """Prompt tokens of a message list or an input: its whitespace-separated words."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(words(v.get("content", "") if isinstance(v, dict) else v) for v in value)
    return 0


def completion_tokens(max_tokens: int | None) -> int:
    return _COMPLETION_TOKENS if max_tokens is None else min(_COMPLETION_TOKENS, max_tokens)


class FakeOpenAI:
    """``await start()``, use ``base_url``, ``await stop()``."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.requests = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _read(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        """The request's JSON body, and the answer of its injected fault (``None`` if it has none)."""
        body = await request.json()
        self.requests += 1
        fault = request.headers.get("x-fake-fault", "")
        if fault in ("429", "500"):
            kind = "rate_limit_exceeded" if fault == "429" else "server_error"
            error = {"error": {"message": f"injected {fault}", "type": kind, "code": kind}}
            # x-should-retry: false keeps the client from retrying on its own.
            return body, web.json_response(error, status=int(fault), headers={"x-should-retry": "false"})
        if fault == "slow":
            await asyncio.sleep(SLOW_S)
        return body, None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, fault = await self._read(request)
        if fault is not None:
            return fault
        model = RESPONSE_MODELS.get(body["model"], body["model"])
        prompt = words(body.get("messages", []))
        out = completion_tokens(body.get("max_tokens") or body.get("max_completion_tokens"))
        finish = "length" if out < _COMPLETION_TOKENS else "stop"
        usage = {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": model, "system_fingerprint": "fp_fake"}
        if not body.get("stream"):
            message = {"role": "assistant", "content": " ".join(["word"] * out)}
            return web.json_response({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        first_ms = float(request.headers.get("x-fake-first-chunk-ms", FIRST_CHUNK_MS))
        await asyncio.sleep(first_ms / 1000.0)

        async def send(chunk: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', **chunk})}\n\n"
                                 .encode())

        await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        for i in range(out):
            await asyncio.sleep(CHUNK_GAP_MS / 1000.0)
            await send({"choices": [{"index": 0, "delta": {"content": "word" if i == 0 else " word"},
                                     "finish_reason": None}]})
        await send({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({"choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.Response:
        body, fault = await self._read(request)
        if fault is not None:
            return fault
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        prompt = words(inputs)
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
        return web.json_response({"object": "list", "model": body["model"], "data": data,
                                  "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})
