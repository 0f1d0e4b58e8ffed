"""Fault 10: the volume under the aggregator's journal fills up (issue 15, case 8).

A real aggregator on a real small filesystem: the test mounts its own tmpfs (needs root, as on the
project's machines and CI; skipped elsewhere), fills it, frees it, and unmounts it at the end.
aggregator/README.md: the 503 of a full journal names the cause, and commits resume by themselves.
(A read-only spool volume, case 7, cannot be made here: tmpfs refuses to go read-only while the
sidecar holds a segment open for writing, and root ignores permissions; ``test_spool_read_only.py``
runs the sidecar without ``CAP_DAC_OVERRIDE`` and takes the directory's write permission instead,
and ``tests/test_tasks.py`` injects the EROFS into the real spool.)
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sentinel import wire
from sentinel.model import FeatureBatch
from tests.faults.conftest import FaultEnv, observe
from tests.test_aggregator_ingest import _row

pytestmark = pytest.mark.system


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_journal_volume_is_named_and_recovers_without_a_restart(faults: FaultEnv) -> None:
    agg = faults.aggregator()
    with _tmpfs(agg.data_dir, "6m"):
        agg.start()
        filler = agg.data_dir / "filler"
        url = f"{agg.url}/v1/ingest"
        now = time.time_ns()
        rows = FeatureBatch.from_rows([_row(now, i) for i in range(1_000)])
        answers: list[httpx.Response] = []
        with httpx.Client(timeout=10.0) as c:
            filler.write_bytes(random.randbytes(3 * 1024 * 1024))  # the rest of the volume
            seq = 0
            while seq < 200:
                r = c.post(url, content=wire.encode(rows, sidecar="s", seq=seq),
                           headers={"Content-Type": wire.CONTENT_TYPE})
                answers.append(r)
                if r.status_code == 503:
                    break
                seq += 1
            full = answers[-1]
            filler.unlink()  # space is freed
            retry = c.post(url, content=wire.encode(rows, sidecar="s", seq=seq),
                           headers={"Content-Type": wire.CONTENT_TYPE})
            after = c.post(url, content=wire.encode(rows, sidecar="s", seq=seq + 1),
                           headers={"Content-Type": wire.CONTENT_TYPE})
        full_count = agg.metrics()("sentinel_aggregator_journal_full_total")
        assert agg.term() == 0
    assert full.status_code == 503, [a.status_code for a in answers]
    error = full.json()["error"]
    assert "database or disk is full" in error and "cannot rollback" not in error, error
    assert retry.status_code == 200 and retry.json()["status"] == "accepted", retry.text
    assert after.status_code == 200
    observe("10b journal volume full (6 MiB tmpfs, 1,000-row batches)", accepted_before_full=seq,
            error=error[:60], journal_full_total=int(full_count), retry_after_freeing=retry.json()["status"])
