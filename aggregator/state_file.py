"""Detector state saved as one JSON file, replaced atomically (a crash leaves the old file or the new)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["save_json"]


def save_json(path: Path, doc: Any) -> None:
    """Write ``doc`` (no NaN) to ``path`` through a temporary file, fsynced, then renamed over it."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
