"""The analysis stage's structure: one Consumer contract, one ordered pipeline, one state-file writer.

The consumers the aggregator runs are those of :func:`aggregator.analysis.pipeline.pipeline`, in its
order; each has the four methods (``restore``, ``consume``, ``snapshot``, ``shutdown``) and a
``state_file`` (or ``None``); every state file is written by :mod:`aggregator.analysis.state`:
atomically, versioned, JSON (or ``.npz`` loaded without pickle).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from aggregator.analysis.pipeline import Consumer, pipeline, restore
from aggregator.analysis.state import JsonStateFile, read_json, write_json
from aggregator.app import Aggregator
from aggregator.config import AggregatorConfig

REPO = Path(__file__).resolve().parents[1]
CONTRACT = ("restore", "consume", "snapshot", "shutdown")


def _aggregator(tmp_path: Path) -> Aggregator:
    return Aggregator(AggregatorConfig(listen="127.0.0.1:0", grpc_listen="127.0.0.1:0", data_dir=str(tmp_path)),
                      registry=CollectorRegistry())


def _inner(consumer: Any) -> Any:
    """A consumer wrapped for ``forward: summaries`` batches (aggregator/analysis/summaries.py), unwrapped."""
    return getattr(consumer, "inner", consumer)


def test_the_running_consumers_are_the_pipelines_in_its_order(tmp_path: Path) -> None:
    agg = _aggregator(tmp_path)
    running = [_inner(c) for c in agg.analysis.consumers]
    # pipeline()'s parameters are its order (edge_alerts, confirm, baselines, ...); the app passes all.
    assert len(running) == len(inspect.signature(pipeline).parameters)
    assert [type(c).__name__ for c in running] == [
        "EdgeAlertReconciler", "LocalAnomalyConfirmer", "BaselineConsumer", "QualityConsumer", "SecurityConsumer",
        "DetectorConsumer", "ForestConsumer", "SeriesConsumer", "AlertManager"]


def test_every_consumer_keeps_the_contract(tmp_path: Path) -> None:
    for consumer in _aggregator(tmp_path).analysis.consumers:
        for c in (consumer, _inner(consumer)):
            for method in CONTRACT:
                assert callable(getattr(c, method, None)), f"{type(c).__name__}.{method}"
            state_file = c.state_file
            assert state_file is None or all(callable(getattr(state_file, m, None))
                                             for m in ("read", "write", "set_aside")), type(c).__name__
    assert [m for m in CONTRACT if m in Consumer.__dict__] == list(CONTRACT)


def test_no_other_state_file_writer() -> None:
    """Only aggregator/analysis/state.py renames a file into place in the aggregator (the sidecar's spool,
    which the aggregator cannot import, keeps its own cursor file: sidecar/spool.py)."""
    writers = sorted(str(p.relative_to(REPO)) for top in ("aggregator", "sidecar", "sentinel")
                     for p in (REPO / top).rglob("*.py") if "os.replace(" in p.read_text(encoding="utf-8"))
    assert writers == ["aggregator/analysis/state.py", "sidecar/spool.py"]
    unpickling = sorted(str(p.relative_to(REPO)) for top in ("aggregator", "sidecar", "sentinel")
                        for p in (REPO / top).rglob("*.py")
                        if any(s in p.read_text(encoding="utf-8")
                               for s in ("import pickle", "pickle.load", "allow_pickle=True", "import shelve")))
    assert unpickling == []


def test_a_state_file_is_versioned_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json(path, {"version": 2, "n": 1})
    assert read_json(path, version=2) == {"version": 2, "n": 1}
    with pytest.raises(ValueError, match="version 2, expected 3"):
        read_json(path, version=3)
    with pytest.raises(ValueError, match="integer version"):
        write_json(path, {"n": 2})
    with pytest.raises(ValueError):
        write_json(path, {"version": 2, "n": math.nan})  # refused, and the old state kept whole
    assert read_json(path, version=2) == {"version": 2, "n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left


class _Counter:
    def __init__(self, path: Path) -> None:
        self.state_file = JsonStateFile(path, version=1, what="counter")
        self.n = -1

    def restore(self, state: Any) -> None:
        self.n = 0 if state is None else int(state["n"])


def test_a_damaged_state_file_is_set_aside_and_the_consumer_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "counter.json"
    path.write_text("{not json")
    c = _Counter(path)
    restore(c)  # type: ignore[arg-type]
    assert c.n == 0 and not path.exists() and (tmp_path / "counter.damaged").read_text() == "{not json"
