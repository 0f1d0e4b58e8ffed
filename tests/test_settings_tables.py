"""Every settings table in the READMEs is generated from the code and current.

The tables are written by ``scripts/settings_tables.py`` (see its docstring); this test runs its
``--check``, so a new setting, a removed one or a changed default without regenerated docs fails.
The sidecar's ``detection:`` map is documented as a YAML block with every default; that block
must parse to exactly the default configuration.
"""

from __future__ import annotations

import dataclasses
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.detectors.local_config import LocalDetectionConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "settings_tables.py"


def test_every_settings_table_is_current() -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_the_check_notices_a_stale_default(tmp_path: Path) -> None:
    ns = runpy.run_path(str(SCRIPT))
    text = (REPO / "sidecar" / "README.md").read_text()
    assert ns["render"](text, ns["defaultdict"](set)) == text
    stale = text.replace("| `'127.0.0.1:4317'` |", "| `'127.0.0.1:4999'` |", 1)
    assert stale != text
    assert ns["render"](stale, ns["defaultdict"](set)) == text


@pytest.mark.parametrize("value", [60.0, 1e-6, (1, 2), None, True, {"a": 1}])
def test_defaults_are_formatted(value: object) -> None:
    ns = runpy.run_path(str(SCRIPT))
    assert ns["format_default"](value) in {"60", "1e-06", "[1, 2]", "none", "true", "{a: 1}"}


def test_the_detection_yaml_block_is_the_default_configuration() -> None:
    readme = (REPO / "sidecar" / "detectors" / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if b.startswith("detection:")]
    documented = LocalDetectionConfig.from_mapping(yaml.safe_load(block)["detection"])
    assert dataclasses.asdict(documented) == dataclasses.asdict(LocalDetectionConfig())
