"""The sidecar process freezes its start-up objects out of garbage collection (sentinel/gc_policy.py).

Run in a child interpreter: freezing this test process would keep every cycle earlier tests left.
"""

from __future__ import annotations

import json
import subprocess
import sys

from loadtest.procs import ROOT, child_env

_CHILD = r"""
import asyncio, gc, json, time
from prometheus_client import CollectorRegistry
from sidecar.app import Sidecar, _ProcessSidecar
from sidecar.config import SidecarConfig

async def main(cls):
    config = SidecarConfig(grpc_listen="127.0.0.1:0", http_listen="", metrics_listen="", aggregator_url="")
    s = cls(config, registry=CollectorRegistry())
    await s.start()
    try:
        t = time.perf_counter()
        gc.collect()
        return {"frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects()),
                "collect_s": time.perf_counter() - t}
    finally:
        await s.shutdown()

print(json.dumps([asyncio.run(main(Sidecar)), asyncio.run(main(_ProcessSidecar))]))
"""


def test_the_sidecar_process_leaves_its_start_up_objects_out_of_collections() -> None:
    out = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, env=child_env(), capture_output=True,
                         text=True, timeout=120, check=True)
    library, process = json.loads(out.stdout.strip().splitlines()[-1])
    # A Sidecar built as a library (tests, embedding) freezes nothing; the process does, once started.
    assert library["frozen"] == 0
    assert process["frozen"] > 50_000
    # What a full collection still walks is what was made after start-up: a small fraction
    # (the price table, loaded lazily on first use, is loaded before the freeze).
    assert process["tracked"] < library["tracked"] / 5


_AGGREGATOR_CHILD = r"""
import asyncio, gc, sys, tempfile
import aggregator.app as app
from aggregator.config import AggregatorConfig

async def fake_run_until_signalled(service, start_errors, *, on_reload=None):
    return gc.get_freeze_count()  # what run() froze before it would have started the service

app.run_until_signalled = fake_run_until_signalled
with tempfile.TemporaryDirectory() as d:
    print(asyncio.run(app.run(AggregatorConfig(listen="127.0.0.1:0", data_dir=d, grpc_listen=""))))
"""


def test_the_aggregator_process_freezes_its_start_up_objects_before_it_starts() -> None:
    out = subprocess.run([sys.executable, "-c", _AGGREGATOR_CHILD], cwd=ROOT, env=child_env(), capture_output=True,
                         text=True, timeout=120, check=True)
    assert int(out.stdout.strip().splitlines()[-1]) > 50_000
