"""Settings from defaults, a YAML file, ``SENTINEL_*`` environment variables and flags.

A component's settings are a dataclass whose fields carry their help text in metadata
(:func:`setting`). :func:`load` fills one from, in rising precedence: the field defaults, the YAML
``--config`` file (keys are the field names), the environment (``SENTINEL_`` + the upper-cased
field name) and command-line flags (``--`` + the field name with dashes). Unknown YAML keys and
values of the wrong type stop start-up with a :class:`ConfigError` that names the key.

Sizes accept ``4MiB``/``512KiB``/``1GB``-style strings; durations accept ``250ms``/``5s``/``2m``/``1h``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["ENV_PREFIX", "ConfigError", "add_arguments", "load", "load_map", "parse_duration", "parse_size", "setting"]

ENV_PREFIX = "SENTINEL_"

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid setting; the message starts with the setting's key."""


def setting(default: Any, help: str, *, kind: str = "", flag: bool = True, factory: Any = None) -> Any:
    """A dataclass field with its help text; ``kind`` is ``"size"`` or ``"duration"`` for parsing.

    ``flag=False`` keeps a structured setting (maps, lists) to the YAML file and environment only.
    """
    meta = {"help": help, "kind": kind, "flag": flag}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DUR_MULT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as ``"4MiB"`` (binary) or ``"20MB"`` (decimal)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (use e.g. 4194304, 4MiB, 512KiB)")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    mult = 1024 ** ("kmgt".index(unit[0]) + 1) if "i" in unit else _SIZE_MULT[unit[:1]]
    return int(number * mult)


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``"250ms"``, ``"5s"``, ``"2m"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    m = _DUR_RE.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 5, 250ms, 5s, 2m)")
    return float(m.group(1)) * _DUR_MULT[m.group(2)]


def _convert(key: str, raw: Any, tp: Any, kind: str) -> Any:
    """Convert ``raw`` (from YAML, env or a flag) to the field type, naming ``key`` on failure."""
    try:
        if kind == "size":
            return parse_size(raw)
        if kind == "duration":
            return parse_duration(raw)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            if type(None) in args and (raw is None or raw == ""):
                return None
            inner = [a for a in args if a is not type(None)]
            return _convert(key, raw, inner[0], kind)
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if tp is int:
            if isinstance(raw, bool):
                raise ValueError(f"not an integer: {raw!r}")
            return int(raw) if not isinstance(raw, float) or raw.is_integer() else _bad_int(raw)
        if tp is float:
            if isinstance(raw, bool):
                raise ValueError(f"not a number: {raw!r}")
            return float(raw)
        if tp is str:
            if isinstance(raw, dict | list):
                raise ValueError(f"expected a string, got a {type(raw).__name__}")
            return str(raw)
        if origin in (dict, Mapping) or tp is dict:
            if isinstance(raw, str):
                raw = yaml.safe_load(raw)
            if not isinstance(raw, dict):
                raise ValueError(f"expected a map, got {type(raw).__name__}")
            return raw
        if origin in (list, tuple, Sequence) or tp in (list, tuple):
            if isinstance(raw, str):
                raw = [s.strip() for s in raw.split(",") if s.strip()]
            if not isinstance(raw, list | tuple):
                raise ValueError(f"expected a list, got {type(raw).__name__}")
            return tuple(raw) if origin is tuple or tp is tuple else list(raw)
        return raw
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None


def _bad_int(raw: float) -> int:
    raise ValueError(f"not an integer: {raw!r}")


def _kind(f: dataclasses.Field[Any], tp: Any) -> str:
    """How a value of ``f`` is parsed: as declared (``setting(kind=...)``), else by its name — a
    number of seconds ``*_s`` takes a duration (``5m``), a number of bytes ``*_bytes`` a size (``4MiB``)."""
    kind = str(f.metadata.get("kind", ""))
    if kind:
        return kind
    if f.name.endswith("_s") and tp is float:
        return "duration"
    if f.name.endswith("_bytes") and tp is int:
        return "size"
    return ""


def load_map(cls: type[T], raw: Any, key: str, *, base: Mapping[str, Any] | None = None) -> T:
    """A ``cls`` dataclass from the YAML map ``raw`` found under ``key`` (e.g. ``detectors.error_burst``).

    The rules of :func:`load`, for settings nested in maps: each value is converted to its field's
    type (durations and sizes as :func:`_kind` says), and an unknown key or a bad value raises
    :class:`ConfigError` naming the full key (``detectors.error_burst.window_s: not a duration``).
    ``base`` holds values taken as given (already converted). ``validate()`` is the caller's.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: must be a map")
    known = {f.name: (f, tp) for f, tp in _fields(cls)}
    values: dict[str, Any] = dict(base or {})
    for name, value in raw.items():
        if name not in known:
            raise ConfigError(f"{key}.{name}: unknown setting (known: {', '.join(known)})")
        f, tp = known[name]
        values[name] = _convert(f"{key}.{name}", value, tp, _kind(f, tp))
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{key}: {e}") from None


def _fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per flaggable field of ``cls``; defaults stay ``None`` (= not given)."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with settings (keys: the flag names "
                        "with underscores)")
    for f, tp in _fields(cls):
        if not f.metadata.get("flag", True):
            continue
        default = f.default if f.default is not dataclasses.MISSING else "(see docs)"
        env = ENV_PREFIX + f.name.upper()
        # A bare boolean flag (--self-signed) means true; --flag false still works.
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if tp is bool else {}
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar="VALUE",
            help=f"{f.metadata.get('help', '')} [default: {default}; env {env}]",
            **extra,
        )


def load(
    cls: type[T],
    *,
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    section: str | None = None,
    validate: bool = True,
) -> T:
    """Build and validate a settings object of dataclass type ``cls``.

    ``section`` picks a sub-map of the YAML file (``sidecar:``), when the file has one.
    ``validate=False`` only converts: for a partial change whose checks need the settings it is merged
    into (``PUT /api/v1/config``: ``jwt_jwks_file`` alone needs the running ``jwt_audience``).
    """
    env = os.environ if env is None else env
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    config_file = config_file or given.get("config")
    values: dict[str, Any] = {}
    known = {f.name: (f, tp) for f, tp in _fields(cls)}
    if config_file:
        path = Path(config_file)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config: {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config: {path} must hold a map of settings")
        if section and isinstance(data.get(section), dict):
            data = data[section]
        for key, raw in data.items():
            if key not in known:
                raise ConfigError(f"{key}: unknown setting in {path}")
            f, tp = known[key]
            values[key] = _convert(key, raw, tp, _kind(f, tp))
    for name, (f, tp) in known.items():
        env_key = ENV_PREFIX + name.upper()
        if env_key in env:
            values[name] = _convert(f"{name} (from {env_key})", env[env_key], tp, _kind(f, tp))
    for name, raw in given.items():
        if name == "config" or raw is None or name not in known:
            continue
        f, tp = known[name]
        values[name] = _convert(name, raw, tp, _kind(f, tp))
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if validate and callable(check):
        check()
    return obj


def settings_table(cls: type) -> str:
    """A markdown table of every setting of ``cls`` (for component READMEs)."""
    lines = ["| setting (YAML key) | flag | environment | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for f, _tp in _fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        flag = "--" + f.name.replace("_", "-") if f.metadata.get("flag", True) else "(YAML/env only)"
        lines.append(
            f"| `{f.name}` | `{flag}` | `{ENV_PREFIX}{f.name.upper()}` | `{default}` | {f.metadata.get('help', '')} |"
        )
    return "\n".join(lines)
