"""One partition's analysis: its own consumers, the seqs it has analysed, and its checkpoint document.

A partition's consumers keep their state in a directory of their own (``<data_dir>/partitions/<n>``)
through their usual state files (:mod:`aggregator.analysis.state`), so every consumer checkpoints
exactly as it saves alone. A checkpoint is those files, packed (msgpack) with what the partition
counts (rows and batches analysed) and, per sidecar, the highest seqs it has analysed: a message
redelivered after a takeover, or published twice, whose (sidecar, seq) is in the checkpoint is
skipped, so nothing is counted twice. Taking a partition over unpacks its checkpoint into the
directory and restores the consumers from it.

Not thread-safe: every method but :func:`pack`/:func:`unpack` runs on the replica's analysis thread.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.pipeline import CandidateObserver, Consumer, feed, restore, save
from sentinel import wire

__all__ = ["FORMAT_VERSION", "SEEN_PER_SIDECAR", "Partition", "PartitionCounts", "Shared"]

FORMAT_VERSION = 1
#: Seqs remembered per sidecar and partition: far more than can be in flight (prefetch) or retried.
SEEN_PER_SIDECAR = 4096


@dataclass
class PartitionCounts:
    rows: int = 0
    batches: int = 0
    seen: dict[str, set[int]] = field(default_factory=dict)

    def is_seen(self, sidecar: str, seq: int) -> bool:
        return seq in self.seen.get(sidecar, ())

    def record(self, sidecar: str, seq: int, rows: int) -> None:
        seqs = self.seen.setdefault(sidecar, set())
        seqs.add(seq)
        if len(seqs) > 2 * SEEN_PER_SIDECAR:  # amortised: keep the highest (seqs grow per sidecar)
            self.seen[sidecar] = set(sorted(seqs)[-SEEN_PER_SIDECAR:])
        self.rows += rows
        self.batches += 1


def _files(directory: Path) -> dict[str, bytes]:
    return {str(f.relative_to(directory)): f.read_bytes() for f in sorted(directory.rglob("*"))
            if f.is_file() and not f.name.endswith((".tmp", ".damaged"))}


def pack(counts: PartitionCounts, files: dict[str, bytes]) -> bytes:
    doc = {"version": FORMAT_VERSION, "rows": counts.rows, "batches": counts.batches,
           "seen": {s: sorted(v) for s, v in counts.seen.items()}, "files": files}
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


def unpack(blob: bytes | None) -> tuple[PartitionCounts, dict[str, bytes]]:
    """A checkpoint's counts and files (``None``: a partition never checkpointed). Raises ``ValueError``."""
    if blob is None:
        return PartitionCounts(), {}
    doc = msgpack.unpackb(blob, raw=False)
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ValueError("partition checkpoint of another format version")
    counts = PartitionCounts(rows=int(doc["rows"]), batches=int(doc["batches"]),
                             seen={str(s): set(v) for s, v in doc["seen"].items()})
    return counts, {str(k): bytes(v) for k, v in doc["files"].items()}


class Partition:
    """The analysis of one owned partition (built by :meth:`open` from a checkpoint)."""

    def __init__(self, number: int, epoch: int, directory: Path, consumers: Sequence[Consumer],
                 on_candidates: Callable[[list[Candidate]], None], counts: PartitionCounts) -> None:
        self.number = number
        self.epoch = epoch
        self.directory = directory
        self.on_candidates = on_candidates
        self.set_consumers(consumers)
        self.counts = counts
        #: Messages skipped as already analysed, and rows of redelivered messages analysed (replayed).
        self.skipped_rows = 0
        self.replayed_rows = 0

    @classmethod
    def open(cls, number: int, epoch: int, directory: Path, blob: bytes | None,
             build: Callable[[Path], Sequence[Consumer]],
             on_candidates: Callable[[list[Candidate]], None]) -> Partition:
        """Unpack ``blob`` into ``directory`` (emptied first), build the consumers on it and restore them."""
        counts, files = unpack(blob)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for name, data in files.items():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        part = cls(number, epoch, directory, build(directory), on_candidates, counts)
        for consumer in part.consumers:
            restore(consumer)
        return part

    def consume(self, body: bytes, arrival_ns: int, *, redelivered: bool) -> None:
        batch = wire.decode(body)  # encoded by a replica's ingest from a batch it decoded: well formed
        rows = batch.batch.n
        if self.counts.is_seen(batch.sidecar, batch.seq):
            self.skipped_rows += rows
            return
        feed(self.consumers, batch, arrival_ns, self._hand_on)
        self.counts.record(batch.sidecar, batch.seq, rows)
        if redelivered:
            self.replayed_rows += rows

    def set_consumers(self, consumers: Sequence[Consumer]) -> None:
        """Analyse with ``consumers`` from now on (at start, or a reload that rebuilt them; on the analysis thread)."""
        self.consumers = tuple(consumers)
        # The partition's security consumer correlates its own partition's token and cost anomalies (as the
        # single process's _emit hands it every candidate): a user's rows and events share the service's partition.
        self._observers = [c.observe_candidates for c in self.consumers if isinstance(c, CandidateObserver)]

    def _hand_on(self, found: list[Candidate]) -> None:
        self.on_candidates(found)
        for observe in self._observers:
            observe(found)

    def checkpoint(self) -> bytes:
        """Every consumer's state saved into the directory, packed with the counts (errors propagate)."""
        for consumer in self.consumers:
            save(consumer)
        return pack(self.counts, _files(self.directory))

    def shutdown(self) -> None:
        for consumer in self.consumers:
            consumer.shutdown()


class Shared:
    """A consumer shared by every partition of a replica (the alert manager, the edge-alert reconciler):
    fed each partition's batches, restored, saved and shut down once by the replica, not per partition."""

    state_file = None

    def __init__(self, inner: Consumer) -> None:
        self.inner = inner

    def restore(self, state: Any) -> None:
        pass

    def consume(self, batch: wire.WireBatch, *, arrival_ns: int) -> list[Candidate]:
        return self.inner.consume(batch, arrival_ns=arrival_ns)

    def snapshot(self) -> None:
        return None

    def shutdown(self) -> None:
        pass
