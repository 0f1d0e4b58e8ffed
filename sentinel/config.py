"""Settings from defaults, a YAML file, ``SENTINEL_*`` environment variables and flags.

A component's settings are a dataclass whose fields carry their help text in metadata
(:func:`setting`); a process's settings are one dataclass of top-level settings and sections, a
section being a field holding a component's config dataclass (:func:`section`). :func:`load` fills
one from, in rising precedence: the field defaults (or ``base=``), the YAML ``--config`` file (keys
are the field names; a section is a nested map, ``alerts: {fold_into: ...}``), the environment
(``SENTINEL_`` + the upper-cased dotted key with ``_``: ``SENTINEL_ALERTS_FOLD_INTO``) and
command-line flags (``--alerts-fold-into``). Unknown keys and values of the wrong type stop start-up
with a :class:`ConfigError` that names the full dotted key (``alerts.group_wait_s: not a duration``).
A section's old flat spellings (``alert_fold_into``) are deprecated aliases: warned once each,
refused together with the new form.

One rule set everywhere (process settings, sections, the maps :func:`load_map` reads): sizes
(``*_bytes``, or ``kind="size"``) accept ``4MiB``/``512KiB``/``1GB``-style strings; durations (``*_s``,
or ``kind="duration"``) accept ``250ms``/``5s``/``2m``/``1.5h``/``7d`` or a number of seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["ENV_PREFIX", "ConfigError", "Leaf", "add_arguments", "build", "convert", "deprecated_table", "get_key",
           "leaves", "load", "load_map", "parse_duration", "parse_size", "replace_keys", "resolve", "section",
           "setting"]

ENV_PREFIX = "SENTINEL_"

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid setting; the message starts with the setting's key."""


def setting(default: Any, help: str, *, kind: str = "", flag: bool = True, factory: Any = None,
            config: bool = True) -> Any:
    """A dataclass field with its help text; ``kind`` is ``"size"`` or ``"duration"`` for parsing.

    ``flag=False`` keeps a structured setting (maps, lists) to the YAML file and environment only.
    ``config=False``: a field the code sets (derived from other settings), not a setting of its own.
    """
    meta = {"help": help, "kind": kind, "flag": flag, "config": config}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DUR_MULT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


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
    """Seconds from a number or a string such as ``"250ms"``, ``"5s"``, ``"2m"``, ``"1.5h"``, ``"7d"``."""
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
            seconds = parse_duration(raw)
            if tp is int:  # a whole number of seconds (retry_after_s, message_ttl_s)
                return int(seconds) if seconds.is_integer() else _bad_int(seconds)
            return seconds
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
    number of seconds ``*_s`` takes a duration (``5m``; a whole number of seconds when it is an int), a
    number of bytes ``*_bytes`` a size (``4MiB``)."""
    kind = str(f.metadata.get("kind", ""))
    if kind:
        return kind
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # float | None: as float
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = inner[0] if len(inner) == 1 else tp
    if f.name.endswith("_s") and tp in (float, int):
        return "duration"
    if f.name.endswith("_bytes") and tp is int:
        return "size"
    return ""


def section(cls: type, help: str, *, old_prefix: str = "", old_keys: Mapping[str, str] | None = None) -> Any:
    """A field holding a component's config dataclass ``cls``: a section of the process settings.

    YAML gives it as a nested map (``alerts: {fold_into: ...}``), the environment as
    ``SENTINEL_<SECTION>_<FIELD>``, flags as ``--<section>-<field>``; every key is named dotted
    (``alerts.fold_into``). ``old_prefix`` is the prefix its fields had when they were flat process
    settings (``alert_``): ``alert_fold_into``, ``SENTINEL_ALERT_FOLD_INTO`` and ``--alert-fold-into``
    stay accepted as deprecated aliases (:func:`load` warns once per key and refuses both forms at once).
    ``old_keys`` names a field's old key where it was not ``old_prefix`` + its name (``genai_metrics``
    for ``genai_metrics.enabled``: YAML ``genai_metrics: false`` still means that field).
    """
    meta = {"help": help, "section": True, "old_prefix": old_prefix, "old_keys": dict(old_keys or {})}
    return dataclasses.field(default_factory=cls, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One setting of a process: a top-level field, or a field of one of its sections."""

    key: str  # dotted: "listen", "alerts.fold_into"
    field: dataclasses.Field[Any]
    tp: Any
    section: str = ""  # the section field's name, "" for a top-level field
    old_key: str = ""  # the deprecated flat key ("alert_fold_into"), "" when there is none

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.replace(".", "_").upper()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace(".", "-").replace("_", "-")

    @property
    def old_env(self) -> str:
        return ENV_PREFIX + self.old_key.upper() if self.old_key else ""

    @property
    def old_flag(self) -> str:
        return "--" + self.old_key.replace("_", "-") if self.old_key else ""

    @property
    def flaggable(self) -> bool:
        return bool(self.field.metadata.get("flag", True))


def _is_section(f: dataclasses.Field[Any], tp: Any) -> bool:
    return bool(f.metadata.get("section")) and isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _configurable(f: dataclasses.Field[Any]) -> bool:
    """``setting(..., config=False)``-style fields (``metadata={"config": False}``) are set by the code
    (derived from other settings), not by the operator."""
    return f.init and f.metadata.get("config", True) is not False


def leaves(cls: type) -> list[Leaf]:
    """Every setting of the process settings ``cls``, sections' fields dotted, in declaration order."""
    out: list[Leaf] = []
    for f, tp in _fields(cls):
        if not _configurable(f):
            continue
        if not _is_section(f, tp):
            out.append(Leaf(f.name, f, tp))
            continue
        prefix = str(f.metadata.get("old_prefix", ""))
        old_keys = f.metadata.get("old_keys") or {}
        for sf, stp in _fields(tp):
            if _configurable(sf):
                old = old_keys.get(sf.name, prefix + sf.name if prefix else "")
                out.append(Leaf(f"{f.name}.{sf.name}", sf, stp, f.name, old))
    return out


_warned: set[str] = set()


def _deprecated(old: str, new: str) -> None:
    """Warn once per process about a deprecated spelling ``old`` of the setting ``new``."""
    if old not in _warned:
        _warned.add(old)
        log.warning("setting %s is deprecated: use %s (both at once are refused)", old, new)


def resolve(cls: type, data: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
    """The YAML-shaped map ``data`` as ``{dotted key: raw value}``, with the keys checked.

    ``data`` holds top-level keys, section maps (``alerts: {fold_into: ...}``), dotted keys
    (``alerts.fold_into``, as ``GET /api/v1/config`` shows them) and deprecated flat keys
    (``alert_fold_into``, warned once). An unknown key, or one setting given twice (flat and nested),
    raises :class:`ConfigError` naming the key(s); ``where`` (e.g. ``in settings.yaml``) is added.
    """
    by_key = {leaf.key: leaf for leaf in leaves(cls)}
    old = {leaf.old_key: leaf for leaf in by_key.values() if leaf.old_key and leaf.old_key != leaf.key}
    sections = {leaf.section for leaf in by_key.values() if leaf.section}
    suffix = f" {where}" if where else ""
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}

    def put(key: str, given_as: str, value: Any) -> None:
        if key in out:
            raise ConfigError(f"{key}: given twice, as {spelled[key]} and {given_as}{suffix}; keep {key} only")
        out[key] = value
        spelled[key] = given_as

    for name, value in data.items():
        name = str(name)
        if name in sections and not isinstance(value, Mapping) and name in old:
            # A setting that became a section (genai_metrics: false -> genai_metrics.enabled).
            _deprecated(name, old[name].key)
            put(old[name].key, f"{name} (deprecated)", value)
        elif name in sections:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}: must be a map of settings{suffix}")
            for sub, subvalue in value.items():
                key = f"{name}.{sub}"
                if key not in by_key:
                    known = ", ".join(k.split(".", 1)[1] for k in by_key if k.startswith(name + "."))
                    raise ConfigError(f"{key}: unknown setting{suffix} (known: {known})")
                put(key, key, subvalue)
        elif name in by_key:
            put(name, name, value)
        elif name in old:
            _deprecated(name, old[name].key)
            put(old[name].key, f"{name} (deprecated)", value)
        else:
            raise ConfigError(f"{name}: unknown setting{suffix}")
    return out


def convert(cls: type, values: Mapping[str, Any], *, source: str = "") -> dict[str, Any]:
    """``{dotted key: raw value}`` (from :func:`resolve`) converted to the fields' types; errors name the key."""
    by_key = {leaf.key: leaf for leaf in leaves(cls)}
    out = {}
    for key, raw in values.items():
        leaf = by_key[key]
        out[key] = _convert(f"{key}{source}", raw, leaf.tp, _kind(leaf.field, leaf.tp))
    return out


def get_key(obj: Any, key: str) -> Any:
    """The value of the dotted setting ``key`` (``alerts.fold_into``) of a settings object."""
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _split(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Dotted ``values`` as (top-level values, {section: its values})."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    return top, nested


def replace_keys(obj: T, values: Mapping[str, Any]) -> T:
    """``obj`` with the dotted settings ``values`` replaced (sections copied, never changed in place)."""
    top, nested = _split(values)
    for head, sub in nested.items():
        top[head] = replace_keys(top.get(head, getattr(obj, head)), sub)
    try:
        return dataclasses.replace(obj, **top)  # type: ignore[type-var]
    except TypeError as e:
        raise ConfigError(str(e)) from None


def load_map(cls: type[T], raw: Any, key: str, *, base: Mapping[str, Any] | None = None) -> T:
    """A ``cls`` dataclass from the YAML map ``raw`` found under ``key`` (e.g. ``detectors.error_burst``).

    The rules of :func:`load`, for settings nested in maps: each value is converted to its field's
    type (durations and sizes as :func:`_kind` says), and an unknown key or a bad value raises
    :class:`ConfigError` naming the full key (``detectors.error_burst.window_s: not a duration``).
    ``base`` holds values taken as given (already converted). ``validate()`` is the caller's.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: must be a map")
    known = {f.name: (f, tp) for f, tp in _fields(cls) if _configurable(f)}
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


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "required"


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per flaggable setting of ``cls``; defaults stay ``None`` (= not given).

    A section's setting is ``--<section>-<field>`` (dest ``<section>.<field>``); its deprecated flat
    spelling (``--alert-fold-into``), when it differs, is accepted too but not listed in ``--help``.
    """
    parser.add_argument("--config", metavar="FILE", help="YAML file with settings (keys: the flag names "
                        "with underscores; a section's settings in a map under its name)")
    for leaf in leaves(cls):
        if not leaf.flaggable:
            continue
        # A bare boolean flag (--self-signed) means true; --flag false still works.
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if leaf.tp is bool else {}
        parser.add_argument(leaf.flag, dest=leaf.key, default=None, metavar="VALUE",
                            help=f"{leaf.field.metadata.get('help', '')} [default: {_default_text(leaf.field)}; "
                                 f"env {leaf.env}]", **extra)
        if leaf.old_flag and leaf.old_flag != leaf.flag:
            parser.add_argument(leaf.old_flag, dest=leaf.old_key, default=None, metavar="VALUE",
                                help=argparse.SUPPRESS, **extra)


def _from_env(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for leaf in leaves(cls):
        names = [leaf.env] + ([leaf.old_env] if leaf.old_env and leaf.old_env != leaf.env else [])
        given = [n for n in names if n in env]
        if len(given) == 2:
            raise ConfigError(f"{leaf.key}: given twice, as {leaf.old_env} (deprecated) and {leaf.env}; "
                              f"keep {leaf.env} only")
        if given:
            if given[0] != leaf.env:
                _deprecated(given[0], leaf.env)
            out[leaf.key] = _convert(f"{leaf.key} (from {given[0]})", env[given[0]], leaf.tp,
                                     _kind(leaf.field, leaf.tp))
    return out


def _from_flags(cls: type, given: Mapping[str, Any]) -> dict[str, Any]:
    by_key = {leaf.key: leaf for leaf in leaves(cls)}
    old = {leaf.old_key: leaf for leaf in by_key.values() if leaf.old_key and leaf.old_key != leaf.key}
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for name, raw in given.items():
        if name == "config" or raw is None:
            continue
        if name in by_key:
            leaf, as_given = by_key[name], by_key[name].flag
        elif name in old:
            leaf, as_given = old[name], old[name].old_flag
            _deprecated(as_given, leaf.flag)
        else:
            continue  # another command's option (the CLI's own, e.g. command)
        if leaf.key in out:
            raise ConfigError(f"{leaf.key}: given twice, as {spelled[leaf.key]} and {as_given}; keep {leaf.flag} only")
        spelled[leaf.key] = as_given
        out[leaf.key] = _convert(leaf.key, raw, leaf.tp, _kind(leaf.field, leaf.tp))
    return out


def _read_file(config_file: str | Path, section: str | None) -> dict[str, Any]:
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
    return data


def build(cls: type[T], values: Mapping[str, Any], *, base: T | None = None) -> T:
    """A ``cls`` from converted dotted ``values`` over ``base`` (or the defaults); not validated."""
    if base is not None:
        return replace_keys(base, values)
    top, nested = _split(values)
    for f, tp in _fields(cls):
        if f.name in nested:
            try:
                top[f.name] = tp(**nested[f.name])
            except TypeError as e:
                raise ConfigError(f"{f.name}: {e}") from None
    try:
        return cls(**top)
    except TypeError as e:
        raise ConfigError(str(e)) from None


def load(
    cls: type[T],
    *,
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    section: str | None = None,
    data: Mapping[str, Any] | None = None,
    base: T | None = None,
    validate: bool = True,
) -> T:
    """Build and validate a settings object of dataclass type ``cls``.

    ``section`` picks a sub-map of the YAML file (``sidecar:``), when the file has one; ``data`` is a
    YAML-shaped map read after the file (a change sent to ``PUT /api/v1/config``). ``base`` is the
    settings to start from instead of the defaults (a partial change over the running settings).
    ``validate=False`` only converts: for a partial change whose checks need the settings it is merged
    into (``PUT /api/v1/config``: ``jwt.jwks_file`` alone needs the running ``jwt.audience``).
    """
    env = os.environ if env is None else env
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    config_file = config_file or given.get("config")
    values: dict[str, Any] = {}
    if config_file:
        values |= convert(cls, resolve(cls, _read_file(config_file, section), where=f"in {config_file}"))
    if data is not None:
        values |= convert(cls, resolve(cls, data))
    values |= _from_env(cls, env)
    values |= _from_flags(cls, given)
    obj = build(cls, values, base=base)
    check = getattr(obj, "validate", None)
    if validate and callable(check):
        check()
    return obj


def settings_table(cls: type) -> str:
    """A markdown table of every setting of ``cls`` (for component READMEs); a section's keys dotted."""
    lines = ["| setting (YAML key) | flag | environment | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for leaf in leaves(cls):
        flag = leaf.flag if leaf.flaggable else "(YAML/env only)"
        lines.append(f"| `{leaf.key}` | `{flag}` | `{leaf.env}` | `{_default_text(leaf.field)}` | "
                     f"{leaf.field.metadata.get('help', '')} |")
    return "\n".join(lines)


def deprecated_table(cls: type) -> str:
    """A markdown table of the deprecated flat spellings of ``cls``'s section settings and their new keys."""
    lines = ["| deprecated key | new key | deprecated environment | deprecated flag |", "| --- | --- | --- | --- |"]
    for leaf in leaves(cls):
        if not leaf.old_key:
            continue
        env = f"`{leaf.old_env}`" if leaf.old_env != leaf.env else "(unchanged)"
        flag = f"`{leaf.old_flag}`" if leaf.old_flag != leaf.flag else "(unchanged)"
        if not leaf.flaggable:
            flag = "-"
        lines.append(f"| `{leaf.old_key}` | `{leaf.key}` | {env} | {flag} |")
    return "\n".join(lines)
