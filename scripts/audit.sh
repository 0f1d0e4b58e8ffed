#!/usr/bin/env bash
# Audit the installed dependencies for known vulnerabilities with pip-audit (PyPI's advisory data).
# pip-audit needs PyPI's JSON API; where it is not reachable (the build machines here reach only
# the package indexes), pip-audit would report every package as "not found" and "no known
# vulnerabilities" — a false all-clear — so this script says it skipped instead, and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
# pip-audit asks the per-release endpoint; its answer must carry the "vulnerabilities" field.
probe=$(curl -s --max-time 10 https://pypi.org/pypi/pip/24.0/json | grep -c '"vulnerabilities"' || true)
if [ "$probe" = "0" ]; then
  echo "audit.sh: PyPI's JSON API (vulnerability data) is not reachable from here; pip-audit skipped"
  exit 0
fi
"$PY" -m pip install --quiet pip-audit
freeze=$(mktemp)
trap 'rm -f "$freeze"' EXIT
"$PY" -m pip freeze --exclude-editable > "$freeze"
"$PY" -m pip_audit --strict --requirement "$freeze" --no-deps --disable-pip
