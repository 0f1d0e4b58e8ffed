"""SIGHUP to real ``sentinel aggregator`` and ``sentinel sidecar`` processes: still running, healthy, reloaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

# Real processes (the system tier, `make test-system`).
pytestmark = pytest.mark.system


def _until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def run(args: list[str], ready_url: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{args[0]}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "sentinel.cli", *args], stdout=subprocess.DEVNULL,
                                    stderr=out)
        procs.append(proc)
        _until(lambda: proc.poll() is not None or _ok(ready_url), f"{args[0]} to be ready")
        assert proc.poll() is None, log.read_text()
        return proc, log

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_sighup_reloads_the_aggregator_which_keeps_running(
        tmp_path: Path, start: Callable[..., tuple[subprocess.Popen[bytes], Path]]) -> None:
    port = free_port()
    config = tmp_path / "aggregator.yaml"
    config.write_text("alerts:\n  min_confidence: 0.5\nsave_interval_s: 60\n")
    url = f"http://127.0.0.1:{port}"
    proc, log = start(["aggregator", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--grpc-listen", "",
                       "--data-dir", str(tmp_path / "data")], url + "/readyz")

    config.write_text("alerts:\n  min_confidence: 0.9\nsave_interval_s: 30\n")
    os.kill(proc.pid, signal.SIGHUP)
    _until(lambda: "reload: applied alerts.min_confidence" in log.read_text(), "the reload to apply")
    text = log.read_text()
    assert "reload requested (SIGHUP)" in text
    assert "restart needed for save_interval_s" in text
    assert proc.poll() is None and _ok(url + "/readyz") and _ok(url + "/healthz")

    config.write_text("alerts: {min_confidence: 7}\n")  # invalid: refused whole, the running settings kept
    os.kill(proc.pid, signal.SIGHUP)
    _until(lambda: "reload refused" in log.read_text(), "the reload to be refused")
    assert "invalid setting alerts.min_confidence" in log.read_text()
    assert proc.poll() is None and _ok(url + "/readyz")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_sighup_leaves_the_sidecar_running(
        tmp_path: Path, start: Callable[..., tuple[subprocess.Popen[bytes], Path]]) -> None:
    metrics = free_port()
    config = tmp_path / "sidecar.yaml"
    config.write_text("batch_max_rows: 100\n")
    proc, log = start(["sidecar", "--config", str(config), "--grpc-listen", "127.0.0.1:0", "--http-listen",
                       "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{metrics}",
                       "--aggregator-url", f"http://127.0.0.1:{free_port()}"],
                      f"http://127.0.0.1:{metrics}/readyz")
    config.write_text("batch_max_rows: 200\nlog_level: debug\n")
    os.kill(proc.pid, signal.SIGHUP)
    _until(lambda: "reload: applied log_level" in log.read_text(), "the reload")
    assert "restart needed for batch_max_rows" in log.read_text()
    assert proc.poll() is None and _ok(f"http://127.0.0.1:{metrics}/healthz")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_sentinel_config_apply_changes_a_running_aggregator_in_place(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SENTINEL_ADMIN_TOKENS": "admin-secret"}
    log = tmp_path / "aggregator.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sentinel.cli", "aggregator", "--listen", f"127.0.0.1:{port}",
                                 "--grpc-listen", "", "--data-dir", str(tmp_path / "data")],
                                stdout=subprocess.DEVNULL, stderr=out, env=env)
    try:
        _until(lambda: proc.poll() is not None or _ok(url + "/readyz"), "the aggregator to be ready")
        settings = tmp_path / "live.yaml"
        settings.write_text("alerts:\n  min_confidence: 0.85\n  storm_max_alerts: 5\n")
        cli = [sys.executable, "-m", "sentinel.cli", "config", "--url", url]
        cli_env = {**os.environ, "SENTINEL_API_TOKEN": "admin-secret"}
        r = subprocess.run([*cli, "apply", str(settings), "--comment", "tighten"], capture_output=True, text=True,
                           env=cli_env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "alerts.min_confidence: 0.5 -> 0.85" in r.stdout and "version 2" in r.stdout
        assert proc.poll() is None  # the same process, not restarted
        headers = {"Authorization": "Bearer admin-secret"}
        doc = httpx.get(url + "/api/v1/config", headers=headers, timeout=5).json()
        assert doc["version"] == 2 and doc["settings"]["alerts.storm_max_alerts"] == 5
        audit = httpx.get(url + "/api/v1/audit", headers=headers, timeout=5).json()["entries"]
        assert {"config.apply", "config.version"} <= {e["action"] for e in audit}
        r = subprocess.run([*cli, "history"], capture_output=True, text=True, env=cli_env, timeout=60)
        assert r.returncode == 0 and "tighten" in r.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
