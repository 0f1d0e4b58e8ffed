"""The Dockerfile (Docker cannot build here): runtime-only install, non-root UID, entrypoint, ports."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_base_image_user_and_entrypoint() -> None:
    steps = instructions()
    assert {args.split()[0] for word, args in steps if word == "FROM"} == {"python:3.11-slim"}
    final = final_stage()
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] == "65532"
    [entrypoint] = [args for word, args in final if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["sentinel"]
    assert _exposed() == {4317, 4318, 8081, 9090, 9091, 8443}


def _exposed() -> set[int]:
    return {int(p) for word, args in final_stage() if word == "EXPOSE" for p in args.split()}


def test_exposes_every_default_listen_port() -> None:
    """Each component's default listen addresses (the aggregator's HTTP and gRPC ones included) are exposed."""
    import dataclasses

    from aggregator.config import AggregatorConfig
    from sidecar.config import SidecarConfig
    from webhook_injector.settings import InjectorSettings

    ports = set()
    for cls in (AggregatorConfig, SidecarConfig, InjectorSettings):
        for f in dataclasses.fields(cls):
            if f.name.endswith("listen") and isinstance(f.default, str) and f.default:
                ports.add(int(f.default.rpartition(":")[2]))
    assert {9090, 9091} <= ports
    assert ports <= _exposed()


def test_environment_names_real_settings() -> None:
    """A SENTINEL_* variable set in the image is a setting of some component (no silently ignored names)."""
    import dataclasses

    from aggregator.config import AggregatorConfig
    from sidecar.config import SidecarConfig
    from webhook_injector.settings import InjectorSettings

    known = {"SENTINEL_" + f.name.upper() for cls in (AggregatorConfig, SidecarConfig, InjectorSettings)
             for f in dataclasses.fields(cls)}
    for word, args in instructions():
        if word == "ENV":
            for name in re.findall(r"(?:^|\s)(SENTINEL_\w+)=", args):
                assert name in known, name


def test_installs_the_project_without_the_dev_extra() -> None:
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    assert re.search(r"pip install (\S+ )*\.(\s|$)", runs)
    assert "[dev]" not in runs and "requirements" not in runs


def test_every_package_is_copied_and_not_ignored() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {src for word, args in instructions() if word == "COPY" and "--from" not in args
              for src in args.split()[:-1]}
    assert packages <= copied
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} <= allowed


def test_the_image_ships_no_loadtest() -> None:
    """loadtest/ is a development tool (benchmarks, the load-test suite): not copied, not in the wheel."""
    copied = {src for word, args in instructions() if word == "COPY" and "--from" not in args
              for src in args.split()[:-1]}
    assert not any(src.strip("./").startswith("loadtest") for src in copied)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(fnmatch.fnmatch(name, pattern) for pattern in include for name in ("loadtest", "loadtest.suite"))
    assert "!loadtest/" not in (ROOT / ".dockerignore").read_text().splitlines()
