"""No import runs upward: the layers of the code, read from the import graph of every module.

Bottom to top: the shared package ``sentinel`` (data model, wire format, configuration, what every
process shares); the components ``sidecar`` and ``webhook_injector``; the ``aggregator`` (which
embeds a sidecar for its standalone OTLP receiver); the ``sentinel`` command (``sentinel.cli``,
which starts any of them); ``loadtest`` (benchmarks and load tests, not in the runtime's imports).
Inside the aggregator the stages read top to bottom too: app → config → cluster → ingest → api / web →
metrics / config_versions → alerting → analysis. Every import is counted, also those inside
functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sentinel", "sidecar", "webhook_injector", "aggregator", "loadtest")

#: (module prefix, layer); the longest matching prefix decides. One unit may import its own modules
#: and those of lower layers only (units of one layer do not import each other).
LAYERS: tuple[tuple[str, int], ...] = (
    ("sentinel", 0),
    ("sidecar", 1),
    ("webhook_injector", 1),
    ("aggregator.analysis", 10),
    ("aggregator.alerting", 11),
    ("aggregator.config_versions", 12),
    ("aggregator.metrics", 12),
    ("aggregator.api", 13),
    ("aggregator.web", 13),
    ("aggregator.ingest", 14),
    ("aggregator.cluster", 15),
    ("aggregator.config", 16),
    ("aggregator.app", 17),
    ("aggregator", 17),
    ("sentinel.cli", 20),
    ("loadtest", 30),
)

#: Upward imports still there, each with the reason; the list only shrinks (it is empty now: keep it so).
KNOWN: dict[tuple[str, str], str] = {}


def _unit(module: str) -> tuple[str, int] | None:
    best: tuple[str, int] | None = None
    for prefix, layer in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "v1" in path.relative_to(REPO).parts:  # generated protobuf code
                continue
            module = _module_name(path)
            graph[module] = _imports(path, module)
    return graph


def _upward(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad: set[tuple[str, str]] = set()
    for module, imported in graph.items():
        own = _unit(module)
        assert own is not None, f"{module}: in no layer of LAYERS"
        for name in imported:
            other = _unit(name)
            assert other is not None, f"{module} imports {name}: in no layer of LAYERS"
            if other[0] != own[0] and other[1] >= own[1]:
                bad.add((module, name))
    return bad


def test_no_import_runs_upward() -> None:
    graph = _graph()
    assert len(graph) > 100, "the graph was not read"
    bad = {edge for edge in _upward(graph) if edge not in KNOWN}
    assert not bad, "imports that run upward (or sideways between units of one layer):\n" + "\n".join(
        f"  {a} -> {b}" for a, b in sorted(bad))


def test_the_known_upward_imports_are_still_there() -> None:
    """An entry of KNOWN that no longer holds is removed, so the list cannot hide a new one later."""
    graph = _graph()
    for importer, imported in KNOWN:
        assert imported in graph.get(importer, set()), f"{importer} no longer imports {imported}: remove it"


def test_the_runtime_does_not_import_loadtest() -> None:
    graph = _graph()
    offenders = sorted(m for m, imported in graph.items() if not m.startswith("loadtest")
                       and any(name.split(".")[0] == "loadtest" for name in imported))
    assert offenders == []


@pytest.mark.parametrize(("source", "expected"), [
    ("from aggregator.app import Aggregator\n", {"aggregator.app"}),
    ("def f():\n    import sidecar.app\n", {"sidecar.app"}),
    ("from . import wire\n", {"sentinel"}),
    ("import numpy\n", set()),
])
def test_the_reader_sees_every_kind_of_import(tmp_path: Path, source: str, expected: set[str]) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert _imports(path, "sentinel.m") == expected


def test_an_upward_import_is_caught() -> None:
    assert _upward({"sentinel.model": {"aggregator.app"}}) == {("sentinel.model", "aggregator.app")}
    assert _upward({"sidecar.app": {"webhook_injector.server"}}) == {("sidecar.app", "webhook_injector.server")}
    assert _upward({"aggregator.analysis.confirm": {"aggregator.alerting.manager"}}) == {
        ("aggregator.analysis.confirm", "aggregator.alerting.manager")}
    assert _upward({"aggregator.ingest.service": {"aggregator.config"}}) == {
        ("aggregator.ingest.service", "aggregator.config")}
    assert _upward({"sidecar.local_alerts": {"aggregator.alerting.webhook_sink"}}) == {
        ("sidecar.local_alerts", "aggregator.alerting.webhook_sink")}
    assert _upward({"sentinel.cli.demo": {"aggregator.app", "sentinel.wire"}}) == set()
