"""``sentinel.service.version`` reads the installed version without importlib.metadata (issue 16)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from sentinel.service import version


def test_the_version_is_importlib_metadatas() -> None:
    assert version() == importlib.metadata.version("llm-sentinel")


def test_reading_it_imports_no_importlib_metadata() -> None:
    code = ("import sys, sentinel.service as s; v = s.version(); "
            "print(v, 'importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [importlib.metadata.version("llm-sentinel"), "False"]
