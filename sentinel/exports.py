"""A package's public names, imported when first used (PEP 562), so importing one of its modules
does not load all of it (the sidecar never loads the aggregator's dependencies, nor the reverse)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """``__all__`` and the module-level ``__getattr__`` of ``package``, whose public names are
    ``exports`` (name -> the module that defines it)::

        __all__, __getattr__ = lazy_exports(__name__, {"Sidecar": "sidecar.app"})
    """
    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return sorted(exports), getattr_
