"""One virtual environment per instrumentation family, built once and cached.

The families' pins clash (OpenLIT wants ``openai < 3``; the GenAI v2 instrumentation needs an
``opentelemetry-util-genai`` that still has ``instruments`` and an older SDK), so each gets its own
venv under ``.interop-venvs/<family>-<hash>/`` at the repository root (git-ignored), or under
``$SENTINEL_INTEROP_VENVS``. The hash covers
the pinned requirements and the Python version, so a changed pin builds a new venv and reruns
reuse the old one. A venv counts only once its ``.complete`` marker is written.

Build them ahead of a test run (also what CI caches, keyed on this file)::

    .venv/bin/python -m tests.interop.venvs            # all families
    .venv/bin/python -m tests.interop.venvs openlit    # one
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

__all__ = ["FAMILIES", "REQUIREMENTS", "VENV_ROOT", "ensure_venv", "venv_dir"]

#: Where the venvs live: ``SENTINEL_INTEROP_VENVS`` if set (CI points it at a cache that outlives the
#: clone), else ``.interop-venvs/`` at the repository root.
VENV_ROOT = Path(os.environ.get("SENTINEL_INTEROP_VENVS") or Path(__file__).resolve().parents[2] / ".interop-venvs")

_OTEL = "1.45.2"  # opentelemetry-sdk and its OTLP exporters
_OPENAI = "2.54.0"  # the newest openai < 3 (OpenLIT 1.45 refuses 3.x)

#: Family -> pinned requirements (the instrumentation, the openai client, the SDK, the exporters).
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "openllmetry": (
        "opentelemetry-instrumentation-openai==0.62.4",
        f"openai=={_OPENAI}",
        f"opentelemetry-sdk=={_OTEL}",
        f"opentelemetry-exporter-otlp-proto-grpc=={_OTEL}",
        f"opentelemetry-exporter-otlp-proto-http=={_OTEL}",
    ),
    "openinference": (
        "openinference-instrumentation-openai==0.1.66",
        f"openai=={_OPENAI}",
        f"opentelemetry-sdk=={_OTEL}",
        f"opentelemetry-exporter-otlp-proto-grpc=={_OTEL}",
        f"opentelemetry-exporter-otlp-proto-http=={_OTEL}",
    ),
    "genai-v2": (
        "opentelemetry-instrumentation-openai-v2==2.4b0",
        # 1.x of util-genai dropped the ``instruments`` module 2.4b0 imports
        "opentelemetry-util-genai==0.4b0",
        f"openai=={_OPENAI}",
        "opentelemetry-sdk==1.39.1",
        "opentelemetry-exporter-otlp-proto-grpc==1.39.1",
        "opentelemetry-exporter-otlp-proto-http==1.39.1",
    ),
    # OpenLIT depends on a dozen opentelemetry-instrumentation-* packages; left free, pip backtracks
    # into a dead end, so the contrib release is pinned (it pins the SDK 1.39 line)
    "openlit": (
        "openlit==1.45.0",
        f"openai=={_OPENAI}",
        "opentelemetry-instrumentation==0.60b1",
        "opentelemetry-sdk==1.39.1",
        "opentelemetry-exporter-otlp==1.39.1",
    ),
}
FAMILIES: tuple[str, ...] = tuple(REQUIREMENTS)


def venv_dir(family: str) -> Path:
    """Where the family's venv lives: named by the hash of its pins and the Python version."""
    spec = "\n".join((f"python {sys.version_info.major}.{sys.version_info.minor}", *REQUIREMENTS[family]))
    return VENV_ROOT / f"{family}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def ensure_venv(family: str) -> Path:
    """The family venv's python, building the venv first if it is not complete."""
    root = venv_dir(family)
    python = root / "bin" / "python"
    if (root / ".complete").exists():
        return python
    for stale in VENV_ROOT.glob(f"{family}-*"):  # older pins of this family
        if stale != root and stale.is_dir():
            shutil.rmtree(stale)
    venv.EnvBuilder(clear=True, with_pip=True).create(root)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS[family]],
                   check=True, env=env)
    (root / ".complete").write_text("\n".join(REQUIREMENTS[family]) + "\n")
    return python


if __name__ == "__main__":
    for name in sys.argv[1:] or FAMILIES:
        print(name, ensure_venv(name), flush=True)
