"""A started sidecar process has not imported what only other processes need (its memory budget).

Issue 16 asks for a sidecar under 80 MiB; its imports were ~90 MiB of the 112 it held once started.
Here ``sentinel sidecar`` runs as its own process with ``-X importtime`` (which names every module
the process imports, in the real start-up path: the command line, the settings, every component)
until ``/readyz`` answers, and none of the modules below may be among them. Figures:
sidecar/README.md, Memory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Top-level modules a sidecar must never import, with what they cost or why they are someone else's.
NOT_IMPORTED = {
    "aggregator": "the aggregator's settings alone import its detectors, alerting, API (~16 MiB)",
    "webhook_injector": "the webhook's settings and server",
    "loadtest": "benchmarks and load tests",
    "kubernetes": "the webhook's --self-signed mode",
    "cryptography": "the webhook's certificates, the aggregator's JWTs",
    "jwt": "the aggregator's JWT bearer tokens",
    "re2": "the aggregator's silences",
    "aio_pika": "the aggregator's RabbitMQ sink",
    "sqlite3": "the aggregator's alert store",
    "genai_prices": "prices come from the compact sentinel/price_table.json (~14 MiB with pydantic and httpx2)",
    "pydantic": "only genai-prices needed it",
    "httpx2": "only genai-prices' auto-update needed it",
    "httpx": "the forwarder, pass-through and local alerts use aiohttp's client (aiohttp serves the receivers)",
    "anyio": "httpx's asyncio backend",
    "sklearn": "the reference IsolationForest of tests and benchmarks",
    "matplotlib": "the load-test reports",
    "zipfile": "importlib.metadata's (sentinel.service.version reads the METADATA file itself, ~0.7 MiB)",
    "csv": "importlib.metadata's",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _imported_by_a_started_sidecar(tmp_path: Path) -> set[str]:
    metrics = _free_port()
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "sentinel.cli", "sidecar", "--grpc-listen", "127.0.0.1:0",
             "--http-listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{metrics}",
             "--aggregator-url", "http://127.0.0.1:9", "--upstream-url", "http://127.0.0.1:9",
             "--log-level", "warning"],
            cwd=REPO, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, stderr.read_text()[-2000:]
                assert time.monotonic() < deadline, "the sidecar did not get ready within 60 s"
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    # "import time:       123 |        456 |     package.module"
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in stderr.read_text().splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_a_started_sidecar_has_not_imported_other_processes_dependencies(tmp_path: Path) -> None:
    imported = _imported_by_a_started_sidecar(tmp_path)
    assert {"grpc", "aiohttp", "numpy", "sidecar"} <= imported, "the import list was not read"
    found = sorted(imported & NOT_IMPORTED.keys())
    assert not found, "a started sidecar imported: " + "; ".join(f"{m} ({NOT_IMPORTED[m]})" for m in found)
