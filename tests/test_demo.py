"""``sentinel demo``, the README's main job, as a user runs it: alerts within 30 seconds, exit 0."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

# Real processes: `sentinel demo` as a subprocess (the system tier, `make test-system`).
pytestmark = pytest.mark.system


@pytest.mark.timeout(150)
def test_demo_shows_alerts_within_30_seconds() -> None:
    start = time.monotonic()
    command = [sys.executable, "-m", "sentinel.cli", "demo", "--seconds", "30", "--listen", "127.0.0.1:0"]
    first_alert: float | None = None
    lines: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if first_alert is None and "] ALERT " in line:
                first_alert = time.monotonic() - start
        assert proc.wait(timeout=60) == 0, "".join(lines)
    output = "".join(lines)
    assert "web page:  http://127.0.0.1:" in output
    assert first_alert is not None and first_alert < 30, output
    assert "slow provider on support-chat alerted: yes" in output and "error burst on search-rag alerted: yes" in output
