"""Servers of a fault test's own: a PostgreSQL (``initdb``) and a RabbitMQ node, each in a temporary
directory on its own port, started and stopped by their own pid. The machine's shared servers
(PostgreSQL 5432, RabbitMQ 5672 and its node ``rabbit``) are never touched.

- :class:`OwnPostgres` runs as the ``postgres`` user through ``setpriv`` (PostgreSQL refuses root);
  needs root, ``setpriv`` and PostgreSQL 15's ``initdb`` (:func:`own_postgres_missing`).
- :class:`OwnRabbitMQ` runs ``rabbitmq-server`` as a node ``sentinel-test-<port>@localhost`` with
  everything in its directory: its config file (one loopback listener), no plugins, its mnesia and
  log directories, its Erlang distribution port and a private cookie (its own ``HOME``). Stopping
  it keeps the mnesia directory, so durable queues and persistent messages survive a restart, as
  on a broker host. It registers with the machine's ``epmd`` (a name of its own, nothing else).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from loadtest.procs import free_port, psutil

__all__ = ["OwnPostgres", "OwnRabbitMQ", "own_postgres_missing", "own_rabbitmq_missing"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def _wait(cond: object, timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():  # type: ignore[operator]
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


def own_postgres_missing() -> str | None:
    """Why a PostgreSQL of the test's own cannot run here (``None``: it can)."""
    if os.geteuid() != 0 or not (PG_BIN / "initdb").exists() or shutil.which("setpriv") is None:
        return "needs root, setpriv and PostgreSQL 15's initdb to run a server of its own"
    return None


class OwnPostgres:
    """A throwaway PostgreSQL server: ``start`` / ``stop`` by its own pid, same data and port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sentinel-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                           "--no-sync"])

    @staticmethod
    def _as_postgres(argv: list[str]) -> None:
        subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv], check=True,
                       capture_output=True, timeout=120)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres:s3cret-pw@127.0.0.1:{self.port}/{db}"

    def start(self) -> float:
        """Start the server (same data and port as before); seconds until it accepted connections."""
        t0 = time.monotonic()
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - the server writes it until stopped
        self.proc = subprocess.Popen(
            ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", str(PG_BIN / "postgres"),
             "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off"], stdout=log, stderr=log)
        log.close()

        def up() -> bool:
            try:
                with psycopg.connect(self.url(), connect_timeout=1):
                    return True
            except psycopg.Error:
                return False

        _wait(up, 30, "the test's own PostgreSQL accepting connections")
        return time.monotonic() - t0

    def stop(self, how: signal.Signals = signal.SIGINT) -> None:
        """SIGINT: fast shutdown (clients disconnected, a checkpoint written); SIGQUIT: immediate shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(how)  # setpriv execs postgres: this pid is the postmaster
            self.proc.wait(30)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def own_rabbitmq_missing() -> str | None:
    """Why a RabbitMQ node of the test's own cannot run here (``None``: it can)."""
    if not (RABBITMQ_BIN / "rabbitmq-server").exists() or not (RABBITMQ_BIN / "rabbitmqctl").exists():
        return f"needs rabbitmq-server and rabbitmqctl in {RABBITMQ_BIN} to run a broker of its own"
    return None


class OwnRabbitMQ:
    """A throwaway RabbitMQ node; ``start`` (waits until it accepts AMQP), ``stop`` (``rabbitmqctl stop``),
    ``kill`` (SIGKILL of its ``beam.smp``), ``close`` (stop and remove its directory)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sentinel-rabbitmq-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"sentinel-test-{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        home = self.dir / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"  # private: the CLI (same HOME) and the node share it, nobody else
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's: that one names the shared node
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
                    "HOME": str(home), "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                    "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
                    "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
                    "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                    "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"), "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                    "RABBITMQ_PID_FILE": str(self.dir / "node.pid"), "ERL_EPMD_ADDRESS": "127.0.0.1",
                    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}"}

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def accepting(self) -> bool:
        """The AMQP port answers a connection (the broker listens only once it has booted)."""
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True
        return False

    def start(self, timeout_s: float = 90) -> float:
        """Boot the node (same directory and port as before); seconds until it accepted connections."""
        t0 = time.monotonic()
        log = open(self.dir / "server.out", "ab")  # noqa: SIM115 - the server writes it until stopped
        self.proc = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")], env=self.env, cwd=self.dir,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        try:
            _wait(lambda: self.accepting() or self.proc is None or self.proc.poll() is not None, timeout_s,
                  f"RabbitMQ node {self.node} accepting connections")
        except AssertionError:
            self.kill()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited {self.proc.returncode}: {self.tail()}")
        return time.monotonic() - t0

    def tail(self, lines: int = 20) -> str:
        out = []
        for f in [self.dir / "server.out", *sorted((self.dir / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                out += f.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    def stop(self, timeout_s: float = 60) -> None:
        """``rabbitmqctl -n <node> stop``: the node shuts down in order (this node only)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, "stop"], env=self.env,
                       capture_output=True, timeout=timeout_s, check=False)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def vm_pid(self) -> int | None:
        """The pid of the node's Erlang VM (``beam.smp``): a child of the server script this test started."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name().startswith("beam"):
                    return int(child.pid)
        return None

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM (a crash: no orderly shutdown), then its script (both by pid)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pid = self.vm_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            self.proc.wait(30)  # the script exits once its VM is gone
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(30)
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
