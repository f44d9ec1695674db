# Sourced by the scripts: one virtualenv in .venv, installed from this repo's own files.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip
fi
_pip_log="$(mktemp)"
if ! "$ROOT/.venv/bin/python" -m pip install -q -e "$ROOT[$1]" >"$_pip_log" 2>&1; then
  cat "$_pip_log" >&2
  exit 1
fi
rm -f "$_pip_log"
export PATH="$ROOT/.venv/bin:$PATH"
