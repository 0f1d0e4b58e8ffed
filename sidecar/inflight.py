"""Bytes in flight across concurrent export requests: one budget for both receivers.

Each request is bounded (``grpc_max_recv_bytes``, ``http_max_body_bytes``), and accepted requests
waiting for the pipeline are bounded (``receive_queue_max_bytes``), but requests being *received
and decoded* were not: 16 concurrent 19 MiB protobuf bodies took the sidecar to 488 MiB, 96
concurrent 4 MiB gRPC exports to 700 MiB, and one 49 KiB gzip body of OTLP/JSON (20 MiB of tiny
objects) to 429 MiB. A request now reserves what it will cost before it costs it — its
``Content-Length`` (or the largest body) before the body is read, its decompressed size
(× :data:`JSON_EXPANSION` for JSON, whose decoding builds objects several times the text) before
it is decoded — and gives it back when answered. A request that does not fit beside the others is
answered UNAVAILABLE / 503 with ``Retry-After`` (the SDK retries); one that could never fit, even
alone, is refused as too large.
"""

from __future__ import annotations

__all__ = ["JSON_EXPANSION", "InFlightBudget", "NoRoom"]

#: Bytes reserved per byte of OTLP/JSON text: decoding builds objects several times the text (one
#: body of 20 MiB of tiny objects took ~335 MiB, about 16 per byte, the worst case seen), so JSON
#: bodies count 8 times; the bound is approximate for JSON, exact for protobuf.
JSON_EXPANSION = 8


class NoRoom(Exception):
    """The reservation does not fit now (``permanent`` False) or ever (``permanent`` True)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class InFlightBudget:
    """A counter of reserved bytes with a ceiling; single event loop, so no lock is needed."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def reserve(self, n: int) -> int:
        """Take ``n`` bytes (:class:`NoRoom` if they do not fit); returns ``n`` for :meth:`release`."""
        if n > self.max_bytes:
            raise NoRoom(f"decoding this request needs {n} bytes, more than receive_max_bytes_in_flight "
                         f"({self.max_bytes})", permanent=True)
        if self.used + n > self.max_bytes:
            raise NoRoom(f"{self.used} bytes of other requests are being received and decoded "
                         f"(receive_max_bytes_in_flight {self.max_bytes})", permanent=False)
        self.used += n
        return n

    def release(self, n: int) -> None:
        self.used -= n
