"""The repository stands on its own: nothing it ships reads or names a path outside itself.

A user clones the repository into an empty directory and runs the tests and benchmarks; data they
need is in ``testdata/`` (see its README). These checks scan every file git tracks.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO / "testdata"

# Absolute paths of one machine (home and work folders, a developer's checkout) and any path that
# climbs out of the repository to a sibling folder.
FORBIDDEN = re.compile(
    "|".join([r"/wo" r"rk/", r"/ho" r"me/[a-z]", r"/Us" r"ers/[A-Za-z]", r"/ro" r"ot/", r"\.\./sha" r"red",
              r"/\s*\"sha" r"red\""])
)
# Upstream files copied unchanged (they name nothing of ours), and this file's own examples.
EXEMPT_PREFIXES = ("testdata/",)


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = []
    for name in out.decode().split("\0"):
        if not name or name.startswith(EXEMPT_PREFIXES):
            continue
        path = REPO / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:                       # binary (images, compiled protos)
            continue
        files.append(path)
    return files


def offending_lines(text: str) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if FORBIDDEN.search(line)]


@pytest.mark.parametrize(("line", "bad"), [
    # Built from pieces so that this file itself names no such path.
    ('DATA = Path("/wo' 'rk/sha' 'red/data/otlp")', True),
    ('TABULAR = Path(__file__).resolve().parents[2] / "sha' 'red" / "data" / "tabular"', True),
    ("see `../sha" "red/DESIGN.md`", True),
    ("cd /ho" "me/alice/src/sentinel", True),
    ('DATA = Path(__file__).resolve().parents[1] / "testdata" / "otlp"', False),
    ("data_dir: /var/lib/sentinel", False),
])
def test_the_pattern_catches_paths_outside_the_repo(line: str, bad: bool) -> None:
    assert bool(offending_lines(line)) is bad


def test_no_file_names_a_path_outside_the_repository() -> None:
    files = _tracked_text_files()
    assert len(files) > 100                             # the scan really ran over the tree
    found = []
    for path in files:
        text = path.read_text(errors="replace")
        found += [f"{path.relative_to(REPO)}:{n}: {line}" for n, line in offending_lines(text)]
    assert not found, "paths outside the repository:\n" + "\n".join(found)


# Every file the tests and benchmarks read from testdata/ (testdata/README.md says where each came from).
TESTDATA_FILES = [
    "README.md",
    "otlp/LICENSE", "otlp/trace.json", "otlp/metrics.json", "otlp/logs.json", "otlp/events.json",
    "nab/LICENSE.txt", "nab/labels/combined_windows.json", "nab/labels/combined_labels.json",
    "tabular/ADBench_LICENSE.txt", "tabular/16_http.npz", "tabular/23_mammography.npz",
    "tabular/30_satellite.npz", "tabular/32_shuttle.npz",
    "k8s/LICENSE", "k8s/istio-crds-used.yaml",
]


def test_testdata_is_present_with_licences() -> None:
    missing = [f for f in TESTDATA_FILES if not (TESTDATA / f).is_file()]
    assert not missing, f"testdata/ is missing {missing} (see testdata/README.md)"
    assert len(list((TESTDATA / "nab" / "data").glob("*/*.csv"))) == 23
    readme = (TESTDATA / "README.md").read_text()
    for folder in ("otlp/", "nab/", "tabular/", "k8s/"):
        assert f"`{folder}`" in readme, f"testdata/README.md does not describe {folder}"
