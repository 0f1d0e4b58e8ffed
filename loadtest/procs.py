"""Child processes of the benchmarks and the load-test runner: loopback ports, CPU pinning, clean stops.

    port = free_port()
    child = Child("sidecar-0", [sys.executable, "-m", "sentinel.cli", "sidecar", ...], log_dir=tmp)
    child.start()
    await child.wait_http_ready(http, f"http://127.0.0.1:{port}/readyz", timeout_s=30)
    ...
    child.stop()          # SIGTERM, then SIGKILL after a timeout; idempotent

Every process is addressed by its own pid only; nothing here signals a process it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

# psutil ships no type stubs (and types-psutil is not a dependency): use it untyped.
psutil: Any = importlib.import_module("psutil")

__all__ = ["ROOT", "Child", "child_env", "free_port", "log_tail", "pinned", "stop_process"]

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the usual race: bind it soon)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """``argv`` run with its CPU affinity set to ``cpu`` before exec (so all its threads inherit it)."""
    if cpu is None:
        return argv
    code = f"import os, sys; os.sched_setaffinity(0, {{{cpu}}}); os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", code, *argv]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment, the repository on ``PYTHONPATH``, no inherited ``SENTINEL_CONFIG``, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("SENTINEL_CONFIG", None)
    if extra:
        env.update(extra)
    return env


def stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 10.0) -> int | None:
    """SIGTERM, wait, then SIGKILL: ``proc`` is one of ours, addressed by its pid only."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
    return proc.returncode


def log_tail(log: IO[bytes] | str | Path, limit: int = 4000) -> str:
    """The last ``limit`` bytes of a log file (an open file or a path), decoded; "" if unreadable."""
    try:
        if isinstance(log, (str, Path)):
            name: Any = log
        else:
            log.flush()
            name = log.name
        with open(name, "rb") as f:
            data = f.read()
    except (OSError, AttributeError, TypeError):
        return ""
    return data[-limit:].decode(errors="replace")


class Child:
    """One child process with its stdout and stderr in ``log_dir/<name>.log``, and its psutil handle."""

    def __init__(self, name: str, argv: Sequence[str], *, log_dir: str | Path, env: Mapping[str, str] | None = None,
                 cpu: int | None = None, kind: str = "") -> None:
        self.name = name
        self.kind = kind or name
        self.argv = list(argv)
        self.env = child_env(env)
        self.cpu = cpu
        self.log_path = Path(log_dir) / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: Any = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(pinned(self.argv, self.cpu), cwd=ROOT, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, limit: int = 4000) -> str:
        return log_tail(self.log_path, limit)

    async def wait_http_ready(self, http: httpx.AsyncClient, url: str, timeout_s: float) -> None:
        """Poll ``url`` until it answers 200; fail early (with the log's tail) if the process exits."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode} during start-up\n"
                                   + self.tail())
            with contextlib.suppress(httpx.HTTPError):
                r = await http.get(url, timeout=1.0)
                if r.status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout_s:.0f}s ({url})\n" + self.tail())

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status (idempotent)."""
        return stop_process(self.proc, timeout_s)
