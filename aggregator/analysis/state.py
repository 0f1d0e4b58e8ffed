"""Where an analysis consumer's state lives between runs: one atomic, versioned, pickle-free writer.

A consumer only turns its state into a value (``snapshot``) and back (``restore``); the pipeline
(:mod:`aggregator.analysis.pipeline`) reads and writes that value through the consumer's
``state_file``. Every file is written the same way — to a temporary file in the same directory,
fsynced, then renamed over the old one — so a crash leaves the old state or the new, never half of
either. Documents are JSON (arrays, where a consumer has them, go in ``.npz`` files loaded with
``allow_pickle=False``); each carries a ``version``, and a file of another version is refused.
A file that cannot be restored is moved aside as ``<name>.damaged`` and its consumer starts afresh:
a damaged state file must not keep the aggregator from starting.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

__all__ = ["JsonStateFile", "StateFile", "read_json", "write_atomic", "write_json"]

log = logging.getLogger(__name__)


class StateFile(Protocol):
    """How the pipeline keeps one consumer's state (its ``snapshot``) and gives it back (``restore``)."""

    @property
    def path(self) -> Path: ...

    def read(self) -> Any:
        """The saved state, ``None`` when there is none; raises (``ValueError``, ``OSError``...) when damaged."""

    def write(self, state: Any) -> None:
        """Keep ``state`` (atomically)."""

    def set_aside(self, error: BaseException) -> None:
        """``read`` or the consumer's ``restore`` failed with ``error``: keep the file from the next start."""


def write_atomic(target: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``target`` with ``write(f)``: temporary file beside it, fsync, rename (atomic on POSIX)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(target: Path, doc: Mapping[str, Any], *, indent: int | None = None) -> None:
    """Write ``doc`` (which names its ``version``) as JSON, atomically; NaN and infinity are refused."""
    if not isinstance(doc.get("version"), int):
        raise ValueError(f"{target}: a state document must carry an integer version")
    separators = (",", ":") if indent is None else None
    data = json.dumps(doc, separators=separators, indent=indent, allow_nan=False).encode()
    write_atomic(target, lambda f: f.write(data))


def read_json(path: Path, *, version: int) -> dict[str, Any] | None:
    """The JSON document at ``path`` (``None`` when there is no file); ``ValueError`` for another version."""
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object")
    if doc.get("version") != version:
        raise ValueError(f"{path}: version {doc.get('version')!r}, expected {version}")
    return doc


class JsonStateFile:
    """A consumer's state as one versioned JSON document (``what`` names it in log lines)."""

    def __init__(self, path: Path, *, version: int, what: str) -> None:
        self._path = path
        self.version = version
        self.what = what

    @property
    def path(self) -> Path:
        return self._path

    def read(self) -> dict[str, Any] | None:
        return read_json(self._path, version=self.version)

    def write(self, state: Mapping[str, Any]) -> None:
        write_json(self._path, state)

    def set_aside(self, error: BaseException) -> None:
        aside = self._path.with_suffix(".damaged")
        if self._path.exists():
            self._path.replace(aside)
        log.error("%s in %s could not be restored (%s); moved to %s, starting afresh", self.what, self._path,
                  error, aside)
