"""Checks shared by the detectors' config ``validate()`` methods; errors name ``detectors.<name>.<field>``."""

from __future__ import annotations

import math

from sentinel.config import ConfigError

__all__ = ["check_fraction", "check_min", "check_positive"]


def _key(detector: str, field: str) -> str:
    return f"detectors.{detector}.{field}"


def check_positive(detector: str, field: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{_key(detector, field)}: must be a number greater than 0, got {value!r}")


def check_min(detector: str, field: str, value: float, minimum: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= minimum):
        raise ConfigError(f"{_key(detector, field)}: must be a number at least {minimum}, got {value!r}")


def check_fraction(detector: str, field: str, value: float, *, open_high: bool = False) -> None:
    ok = isinstance(value, int | float) and value > 0 and (value < 1 if open_high else value <= 1)
    if not ok:
        bound = "in (0, 1)" if open_high else "in (0, 1]"
        raise ConfigError(f"{_key(detector, field)}: must be {bound}, got {value!r}")
