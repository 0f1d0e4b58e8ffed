"""The checked-in sentinel/v1 modules are what scripts/gen_proto.sh generates from proto/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "sentinel/v1/alerts.proto"
GENERATED = ("sentinel/v1/alerts_pb2.py", "sentinel/v1/alerts_pb2.pyi", "sentinel/v1/alerts_pb2_grpc.py")


def test_checked_in_code_matches_the_proto(tmp_path: Path) -> None:
    # The same command as scripts/gen_proto.sh, with the output in tmp_path.
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}",
           f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", f"proto/{PROTO}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    stale = [p for p in GENERATED if (tmp_path / p).read_bytes() != (ROOT / p).read_bytes()]
    assert not stale, f"{', '.join(stale)} out of date with proto/{PROTO}: run scripts/gen_proto.sh"


def test_the_script_runs_that_command() -> None:
    script = (ROOT / "scripts" / "gen_proto.sh").read_text()
    assert f"-m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/{PROTO}" in script


def test_generated_modules_import() -> None:
    from sentinel.v1 import alerts_pb2, alerts_pb2_grpc

    service = alerts_pb2.DESCRIPTOR.services_by_name["AlertService"]
    assert [m.name for m in service.methods] == ["Watch", "GetAlert", "ListAlerts"]
    assert hasattr(alerts_pb2_grpc, "AlertServiceStub")
