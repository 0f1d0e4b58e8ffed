"""The tree of ``aggregator/`` in its README (section "Layout") is the tree of the code.

Every module and package of ``aggregator/``, ``aggregator/ingest/`` and ``aggregator/analysis/``
is listed, and everything listed exists; deeper packages are listed as one line each.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LISTED_IN_FULL = ("aggregator", "aggregator/ingest", "aggregator/analysis")


def _tree() -> set[str]:
    text = (REPO / "aggregator" / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^## Layout\n.*?^```\n(.*?)^```", text, re.S | re.M)
    assert block, "aggregator/README.md has no Layout tree"
    paths: set[str] = set()
    parents: list[str] = []
    for line in block.group(1).splitlines():
        name = line.split()[0]
        depth = (len(line) - len(line.lstrip())) // 2
        parents = parents[:depth]
        path = "/".join([*parents, name.rstrip("/")])
        paths.add(path)
        if name.endswith("/"):
            parents.append(name.rstrip("/"))
    return paths


def _code() -> set[str]:
    paths: set[str] = set()
    for folder in LISTED_IN_FULL:
        paths.add(folder)
        for p in (REPO / folder).iterdir():
            if p.name.startswith((".", "_")) or p.name == "py.typed":
                continue
            if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py":
                paths.add(f"{folder}/{p.name}")
    return paths


def test_the_readme_tree_is_the_code() -> None:
    tree, code = _tree(), _code()
    assert code - tree == set(), "in the code, missing from the README's tree"
    assert {p for p in tree if not (REPO / p).exists()} == set(), "in the README's tree, not in the code"
