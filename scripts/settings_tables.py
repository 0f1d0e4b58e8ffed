"""Regenerate (or, with ``--check``, verify) every settings table in the READMEs from the code.

    python scripts/settings_tables.py           # rewrite the tables in place
    python scripts/settings_tables.py --check   # exit 1 and name each stale table

A table sits between two HTML comments that say where it comes from:

    <!-- settings-table process sidecar.config:SidecarConfig -->
    ...
    <!-- /settings-table -->

``process``: a process's settings (``sentinel.config.settings_table``: YAML key, a section's dotted,
flag, environment variable, default, meaning - all from the dataclass and its field metadata).
``deprecated``: its sections' old flat spellings and their new keys (``sentinel.config.deprecated_table``).
``component``: a component config's fields and defaults; an optional ``fields=a,b,c`` limits the
table to those fields, in that order (a config documented in two places). The meaning column is
the field's ``help`` metadata where it has one, else the text already in the table (kept across
regenerations), so a new field, a removed one or a changed default always shows up. Every field
of a component config must be in one of its tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sentinel.config import deprecated_table, settings_table  # noqa: E402

READMES = ["sidecar/README.md", "aggregator/README.md", "webhook_injector/README.md",
           "aggregator/analysis/detectors/README.md", "sidecar/detectors/README.md", "aggregator/alerting/README.md"]
BLOCK = re.compile(r"(<!-- settings-table (\w+) ([\w.]+):(\w+)(?: fields=([\w,]+))? -->\n)"
                   r"(.*?)(<!-- /settings-table -->)", re.S)


def _cls(module: str, name: str) -> type:
    cls = getattr(importlib.import_module(module), name)
    assert dataclasses.is_dataclass(cls), f"{module}:{name} is not a dataclass"
    return cls


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def format_default(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list, frozenset, set)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return "[" + ", ".join(map(str, items)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def _old_meanings(table: str) -> dict[str, str]:
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(\w+)`", cells[0]) if cells else None
        if m and len(cells) >= 3:
            out[m.group(1)] = cells[2]
    return out


def component_table(cls: type, fields: list[str] | None, old: dict[str, str]) -> str:
    by_name = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    names = fields if fields is not None else list(by_name)
    unknown = [n for n in names if n not in by_name]
    assert not unknown, f"{cls.__name__} has no fields {unknown}"
    lines = ["| setting | default | meaning |", "| --- | --- | --- |"]
    for name in names:
        f = by_name[name]
        meaning = f.metadata.get("help") or old.get(name, "")
        lines.append(f"| `{name}` | `{format_default(_default(f))}` | {meaning} |")
    return "\n".join(lines)


def render(text: str, covered: dict[type, set[str]]) -> str:
    def one(m: re.Match[str]) -> str:
        head, kind, module, name, fields, body, tail = m.groups()
        cls = _cls(module, name)
        if kind == "process":
            table = settings_table(cls)
        elif kind == "deprecated":
            table = deprecated_table(cls)
        elif kind == "component":
            wanted = fields.split(",") if fields else None
            table = component_table(cls, wanted, _old_meanings(body))
            covered[cls] |= set(wanted if wanted else (f.name for f in dataclasses.fields(cls)))  # type: ignore[arg-type]
        else:
            raise SystemExit(f"unknown settings-table kind {kind!r}")
        return f"{head}{table}\n{tail}"

    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if a table is stale")
    args = p.parse_args(argv)
    stale, covered = [], defaultdict(set)
    for rel in READMES:
        path = REPO / rel
        text = path.read_text()
        new = render(text, covered)
        if new != text:
            stale.append(rel)
            if not args.check:
                path.write_text(new)
    missing = [f"{cls.__name__}.{f.name}" for cls, names in covered.items()
               for f in dataclasses.fields(cls) if f.name not in names]  # type: ignore[arg-type]
    if missing:
        print(f"settings not in any table: {missing}", file=sys.stderr)
        return 1
    if stale and args.check:
        print("stale settings tables in " + ", ".join(stale) + ": run python scripts/settings_tables.py",
              file=sys.stderr)
        return 1
    for rel in stale:
        print(f"rewrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
