"""aggregator.analysis.baselines.store: moments, sketch accuracy, keys, seasonality, merging, saving, the LRU bound."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ddsketch import DDSketch

from aggregator.analysis.baselines.store import (
    DEFAULT_METRICS,
    DEFAULT_RELATIVE_ACCURACY,
    BaselineConfig,
    BaselineKey,
    BaselineStore,
    MetricBaseline,
    hour_of_week,
)
from sentinel.config import ConfigError
from sentinel.model import COLUMNS, FeatureBatch

# 2023-11-13 00:00:00 UTC, a Monday.
MONDAY_NS = 1_699_833_600 * 1_000_000_000
HOUR_NS = 3_600 * 1_000_000_000


def make_batch(n: int, *, seed: int = 0, keys: int = 4, regions: tuple[str | None, ...] = ("eu", "us"),
               t0: int = MONDAY_NS, step_ns: int = 1_000_000_000, error_p: float = 0.05) -> FeatureBatch:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = i % keys
        row: dict[str, Any] = {
            "time_unix_nano": t0 + i * step_ns,
            "service": f"svc{k % 2}", "request_model": f"model{k // 2}", "operation": "chat",
            "region": regions[i % len(regions)],
            "latency_ms": float(rng.lognormal(5, 1)), "ttft_ms": float(rng.lognormal(4, 1)),
            "input_tokens": float(rng.integers(10, 4000)), "output_tokens": float(rng.integers(1, 1000)),
            "tokens_per_s": float(rng.lognormal(3, 0.5)), "cost_usd": float(rng.lognormal(-6, 1)),
            "is_error": int(rng.random() < error_p),
        }
        rows.append(tuple(row.get(c) for c in COLUMNS))
    return FeatureBatch.from_rows(rows)


def metric_state(m: MetricBaseline) -> tuple[Any, ...]:
    return (m.count, m.mean, m.variance, m.min, m.max, tuple(m.quantile(q) for q in (0.5, 0.95, 0.99)))


# --- MetricBaseline -------------------------------------------------------------------------------


def test_batch_update_equals_one_by_one() -> None:
    values = np.random.default_rng(1).lognormal(3, 1, 5_000)
    batch = MetricBaseline.of(values)
    single = MetricBaseline()
    reference = DDSketch(DEFAULT_RELATIVE_ACCURACY)  # the library's own per-value path
    for v in values:
        single.update(np.array([v]))
        reference.add(float(v))
    assert batch.count == single.count == 5_000
    assert batch.mean == pytest.approx(single.mean, rel=1e-12)
    assert batch.variance == pytest.approx(single.variance, rel=1e-9)
    assert batch.variance == pytest.approx(np.var(values), rel=1e-9)
    assert (batch.min, batch.max) == (single.min, single.max) == (values.min(), values.max())
    for q in (0.5, 0.95, 0.99):
        assert batch.quantile(q) == single.quantile(q) == reference.get_quantile_value(q)


def test_nan_skipped() -> None:
    m = MetricBaseline.of(np.array([1.0, math.nan, 3.0, math.nan]))
    assert (m.count, m.mean, m.variance, m.min, m.max) == (2, 2.0, 1.0, 1.0, 3.0)
    empty = MetricBaseline.of(np.array([math.nan]))
    assert empty.count == 0
    assert empty.summary() == {"count": 0, "mean": None, "std": None, "min": None, "max": None,
                               "p50": None, "p95": None, "p99": None}


def test_zeros_and_negatives_are_counted() -> None:
    m = MetricBaseline.of(np.array([0.0, 0.0, 0.0, -2.0, 5.0]))
    assert m.count == 5
    assert m.quantile(0.5) == 0.0
    assert m.quantile(0.0) == pytest.approx(-2.0, rel=DEFAULT_RELATIVE_ACCURACY)


@pytest.mark.parametrize("accuracy", [0.01, 0.02, 0.05])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_quantiles_within_documented_relative_error(accuracy: float, sigma: float) -> None:
    values = np.random.default_rng(7).lognormal(4, sigma, 50_000)
    m = MetricBaseline(accuracy)
    for chunk in np.array_split(values, 25):
        m.update(chunk)
    for q in (0.5, 0.95, 0.99):
        # DDSketch returns a value within `accuracy` of the sample at rank q * (n - 1), numpy's "lower" method.
        exact = np.percentile(values, q * 100, method="lower")
        assert abs(m.quantile(q) - exact) <= accuracy * exact


def test_merge_equals_all_values() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.lognormal(2, 1, 3_000), rng.lognormal(3, 0.5, 1_000)
    merged = MetricBaseline.of(a)
    merged.merge(MetricBaseline.of(b))
    whole = MetricBaseline.of(np.concatenate([a, b]))
    assert merged.count == whole.count
    assert merged.mean == pytest.approx(whole.mean, rel=1e-12)
    assert merged.variance == pytest.approx(whole.variance, rel=1e-9)
    assert (merged.min, merged.max) == (whole.min, whole.max)
    for q in (0.5, 0.95, 0.99):
        assert merged.quantile(q) == whole.quantile(q)


def test_metric_dict_round_trip_is_json() -> None:
    m = MetricBaseline.of(np.random.default_rng(3).lognormal(1, 1, 500))
    data = json.loads(json.dumps(m.to_dict()))
    back = MetricBaseline.from_dict(data)
    assert metric_state(back) == metric_state(m)
    back.merge(m)  # the restored sketch still merges with a live one
    assert back.count == 1_000


# --- BaselineStore --------------------------------------------------------------------------------


def test_global_and_regional_keys() -> None:
    store = BaselineStore(BaselineConfig())
    store.update(make_batch(400, regions=("eu", "us", None)))
    key = BaselineKey("svc0", "model0", "chat")
    glob, eu, us = (store.get(key._replace(region=r)) for r in (None, "eu", "us"))
    assert glob is not None and eu is not None and us is not None
    # Rows without a region count in the global baseline only.
    assert glob["calls"] > eu["calls"] + us["calls"]
    assert glob["metrics"]["latency_ms"]["count"] == glob["calls"]
    assert {d["region"] for d in store.query(service="svc0", model="model0")} == {None, "eu", "us"}
    assert {d["region"] for d in store.query(region=None)} == {None}
    assert [d["model"] for d in store.query(service="svc1", region="eu")] == ["model0", "model1"]
    assert store.query(operation="embeddings") == []
    assert set(glob["metrics"]) == set(DEFAULT_METRICS)
    assert set(glob["metrics"]["cost_usd"]) == {"count", "mean", "std", "min", "max", "p50", "p95", "p99"}


def test_store_matches_numpy_per_key() -> None:
    batch = make_batch(1_000)
    store = BaselineStore(BaselineConfig())
    store.update(batch)
    rows = [i for i in range(batch.n) if batch.strings["service"][i] == "svc1"
            and batch.strings["request_model"][i] == "model0" and batch.strings["region"][i] == "us"]
    served = store.get(BaselineKey("svc1", "model0", "chat", "us"))
    assert served is not None
    latency = batch.numeric["latency_ms"][rows]
    assert served["metrics"]["latency_ms"]["mean"] == pytest.approx(latency.mean())
    assert served["metrics"]["latency_ms"]["std"] == pytest.approx(latency.std())
    assert served["error_rate"] == pytest.approx(batch.numeric["is_error"][rows].mean())


def test_error_rate() -> None:
    store = BaselineStore(BaselineConfig(metrics=("latency_ms",)))
    store.update(make_batch(200, keys=1, regions=("eu",), error_p=0.0))
    store.update(make_batch(200, keys=1, regions=("eu",), error_p=1.0))
    served = store.get(BaselineKey("svc0", "model0", "chat", None))
    assert served is not None
    assert (served["calls"], served["errors"], served["error_rate"]) == (400, 200, 0.5)


def test_nan_rows_count_as_calls_not_values() -> None:
    batch = make_batch(10, keys=1, regions=(None,))
    batch.numeric["ttft_ms"][:4] = np.nan
    store = BaselineStore(BaselineConfig())
    store.update(batch)
    served = store.get(BaselineKey("svc0", "model0", "chat"))
    assert served is not None
    assert served["calls"] == 10
    assert served["metrics"]["ttft_ms"]["count"] == 6
    assert served["metrics"]["latency_ms"]["count"] == 10


def test_hour_of_week() -> None:
    times = np.array([MONDAY_NS, MONDAY_NS + HOUR_NS - 1, MONDAY_NS + 25 * HOUR_NS, MONDAY_NS + 167 * HOUR_NS,
                      MONDAY_NS + 168 * HOUR_NS, 0], dtype=np.int64)
    # 1970-01-01 00:00 UTC was a Thursday: hour 3 * 24.
    assert hour_of_week(times).tolist() == [0, 0, 25, 167, 0, 72]


def test_seasonality_buckets() -> None:
    # 3 hours of traffic, one row a minute, starting Monday 02:00 UTC.
    batch = make_batch(180, keys=1, regions=("eu",), t0=MONDAY_NS + 2 * HOUR_NS, step_ns=60 * 1_000_000_000)
    plain = BaselineStore(BaselineConfig())
    plain.update(batch)
    assert len(plain) == 2  # global + eu, no seasonal entries
    assert plain.query(hour=2) == []
    seasonal = BaselineStore(BaselineConfig(seasonality=True))
    seasonal.update(batch)
    assert len(seasonal) == 2 * 4  # (global, eu) x (all week, hours 2, 3, 4)
    for hour in (2, 3, 4):
        served = seasonal.query(hour=hour)
        assert [(d["region"], d["hour_of_week"], d["calls"]) for d in served] == [(None, hour, 60),
                                                                                  ("eu", hour, 60)]
    assert seasonal.get(BaselineKey("svc0", "model0", "chat"))["calls"] == 180  # type: ignore[index]
    assert seasonal.query(hour=5) == []


def test_store_merge_equals_one_store() -> None:
    config = BaselineConfig(seasonality=True)
    first, second = make_batch(600, seed=1), make_batch(400, seed=2, t0=MONDAY_NS + 30 * HOUR_NS)
    a, b, whole = BaselineStore(config), BaselineStore(config), BaselineStore(config)
    a.update(first)
    b.update(second)
    whole.update(FeatureBatch.concat([first, second]))
    a.merge(b)
    assert len(a) == len(whole)
    for hour in (None, 0, 30):
        got, want = a.query(hour=hour), whole.query(hour=hour)
        assert len(got) == len(want) > 0
        for g, w in zip(got, want, strict=True):
            assert {k: g[k] for k in ("service", "model", "region", "calls", "errors")} == \
                   {k: w[k] for k in ("service", "model", "region", "calls", "errors")}
            for name in DEFAULT_METRICS:
                gm, wm = g["metrics"][name], w["metrics"][name]
                assert gm == pytest.approx(wm, rel=1e-9), name


def test_save_load_round_trip(tmp_path: Path) -> None:
    config = BaselineConfig(seasonality=True)
    store = BaselineStore(config)
    store.update(make_batch(500))
    path = tmp_path / "baselines.json"
    store.save(path)
    with path.open() as f:
        doc = json.load(f)  # plain JSON, no pickle
    assert doc["version"] == 1 and len(doc["baselines"]) == len(store)
    assert [p.name for p in tmp_path.iterdir()] == ["baselines.json"]  # no temporary file left
    restored = BaselineStore(config)
    restored.load(path)
    assert restored.query() == store.query()
    assert restored.query(hour=0) == store.query(hour=0)
    # Restored baselines keep learning from where they were.
    more = make_batch(100, seed=9)
    store.update(more)
    restored.update(more)
    assert restored.query() == store.query()


def test_load_refuses_other_version(tmp_path: Path) -> None:
    path = tmp_path / "baselines.json"
    path.write_text(json.dumps({"version": 99, "baselines": []}))
    with pytest.raises(ValueError, match="version 99"):
        BaselineStore(BaselineConfig()).load(path)


def test_max_keys_evicts_least_recently_updated() -> None:
    store = BaselineStore(BaselineConfig(max_keys=3, metrics=("latency_ms",)))
    for model in ("a", "b", "c"):
        store.update(FeatureBatch.from_rows([_row(model)]))
    store.update(FeatureBatch.from_rows([_row("a")]))  # "a" is now the most recent
    store.update(FeatureBatch.from_rows([_row("d")]))
    assert len(store) == 3
    assert store.evicted == 1
    assert sorted(d["model"] for d in store.query()) == ["a", "c", "d"]


def _row(model: str) -> tuple[Any, ...]:
    row = {"time_unix_nano": MONDAY_NS, "service": "svc", "request_model": model, "operation": "chat",
           "latency_ms": 10.0, "is_error": 0}
    return tuple(row.get(c) for c in COLUMNS)


@pytest.mark.parametrize(("overrides", "key"), [
    ({"metrics": ("latency_ms", "bogus")}, "baselines.metrics"),
    ({"metrics": ("is_error",)}, "baselines.metrics"),
    ({"metrics": ()}, "baselines.metrics"),
    ({"metrics": ("cost_usd", "cost_usd")}, "baselines.metrics"),
    ({"max_keys": 0}, "baselines.max_keys"),
    ({"relative_accuracy": 0.0}, "baselines.relative_accuracy"),
    ({"relative_accuracy": 1.0}, "baselines.relative_accuracy"),
])
def test_config_errors_name_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}:"):
        BaselineStore(BaselineConfig(**overrides))


# --- the bulk sketch update (numpy keys through DDSketch's own mapping) ------------------------------


@pytest.mark.parametrize("accuracy", [0.01, 0.02, 0.05])
def test_numpy_keys_equal_the_mappings_own(accuracy: float) -> None:
    from aggregator.analysis.baselines.store import _sketch_keys

    mapping = DDSketch(accuracy)._mapping
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.lognormal(0, 6, 200_000), rng.uniform(1e-9, 1e9, 50_000),
                             # values on and next to the bucket boundaries, where a last-bit difference would show
                             np.array([mapping._pow_gamma(k) for k in range(-400, 400)]),
                             np.nextafter(np.array([mapping._pow_gamma(k) for k in range(-400, 400)]), np.inf)])
    ours = _sketch_keys(mapping, values)
    theirs = np.array([mapping.key(float(x)) for x in values])
    assert np.array_equal(ours, theirs)


def test_bulk_update_gives_the_librarys_bins_exactly() -> None:
    from ddsketch.pb.proto import DDSketchProto

    rng = np.random.default_rng(12)
    values = np.concatenate([rng.lognormal(4, 1.5, 20_000), np.zeros(30), -rng.lognormal(1, 1, 40)])
    rng.shuffle(values)
    bulk = MetricBaseline()
    for chunk in np.array_split(values, 7):
        bulk.update(chunk)
    reference = DDSketch(DEFAULT_RELATIVE_ACCURACY)
    for v in values:
        reference.add(float(v))
    ours = DDSketchProto.to_proto(bulk.sketch)  # type: ignore[no-untyped-call]
    theirs = DDSketchProto.to_proto(reference)  # type: ignore[no-untyped-call]
    assert ours == theirs
    assert bulk.sketch.count == reference.count and bulk.sketch.sum == pytest.approx(reference.sum, rel=1e-12)
    for q in (0.0, 0.01, 0.5, 0.95, 0.99, 1.0):
        assert bulk.sketch.get_quantile_value(q) == reference.get_quantile_value(q)


def test_store_update_equals_per_key_sketches_of_the_same_rows() -> None:
    batch = make_batch(3_000, seed=13, keys=6, regions=("eu", None, "us"))
    store = BaselineStore(BaselineConfig(seasonality=True))
    for lo in range(0, batch.n, 500):
        store.update(FeatureBatch(n=min(500, batch.n - lo),
                                  numeric={k: v[lo:lo + 500] for k, v in batch.numeric.items()},
                                  strings={k: v[lo:lo + 500] for k, v in batch.strings.items()}))
    s = batch.strings
    for key in {BaselineKey(a, b, c, None) for a, b, c in zip(s["service"], s["request_model"], s["operation"],
                                                              strict=True)}:
        rows = [i for i in range(batch.n) if (s["service"][i], s["request_model"][i], s["operation"][i])
                == key[:3]]
        got = store.baseline(key)
        assert got is not None and got.calls == len(rows)
        for m in DEFAULT_METRICS:
            reference = DDSketch(DEFAULT_RELATIVE_ACCURACY)
            for i in rows:
                reference.add(float(batch.numeric[m][i]))
            for q in (0.5, 0.95, 0.99):
                assert got.metrics[m].sketch.get_quantile_value(q) == reference.get_quantile_value(q)


def test_deferred_bins_give_the_same_saved_store_as_adding_each_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sketch bins wait up to PENDING_BATCHES batches and are added together (speed, issue 16): the
    # saved store, layout of every dense store included, must equal adding each batch's bins at once.
    import aggregator.analysis.baselines.store as store_module

    batch = make_batch(6_000, seed=14, keys=6, regions=("eu", None, "us"))
    batches = [FeatureBatch(n=min(250, batch.n - lo), numeric={k: v[lo:lo + 250] for k, v in batch.numeric.items()},
                            strings={k: v[lo:lo + 250] for k, v in batch.strings.items()})
               for lo in range(0, batch.n, 250)]
    docs = []
    for pending in (store_module.PENDING_BATCHES, 1):
        monkeypatch.setattr(store_module, "PENDING_BATCHES", pending)
        store = BaselineStore(BaselineConfig(seasonality=True))
        for i, b in enumerate(batches):
            store.update(b)
            if i == 5:  # a read in between adds that baseline's pending bins on its own
                store.query(service="svc0")
        docs.append(json.dumps(store.to_doc(), sort_keys=True))
    assert docs[0] == docs[1]


def test_labels_in_order_of_first_appearance() -> None:
    from aggregator.analysis.baselines.store import _labels

    batch = make_batch(500, seed=15, keys=5, regions=("us", None, "eu"), step_ns=HOUR_NS // 7)
    s = batch.strings
    hours = hour_of_week(batch.numeric["time_unix_nano"])
    for h in (None, hours):
        rows = list(zip(zip(s["service"], s["request_model"], s["operation"], s["region"], strict=True),
                        [None] * batch.n if h is None else h.tolist(), strict=True))
        index: dict[Any, int] = {}
        expected = [index.setdefault(r, len(index)) for r in rows]  # what the store did row by row before
        labels, codes = _labels(batch, h)
        assert labels == list(index) and codes.tolist() == expected
