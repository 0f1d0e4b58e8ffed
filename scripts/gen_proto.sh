#!/bin/sh
# Regenerate the checked-in Python modules of proto/ (sentinel/v1/alerts_pb2*.py, .pyi) with the
# grpcio-tools of the dev extra. tests/test_proto_generated.py runs the same command into a
# temporary directory and fails when the checked-in files differ, so run this after editing a .proto.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/sentinel/v1/alerts.proto
