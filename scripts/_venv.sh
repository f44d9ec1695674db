# Sourced by the scripts: one virtualenv in .venv, installed from this repo's own files.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip
fi
"$ROOT/.venv/bin/python" -m pip install -q -e "$ROOT[$1]"
export PATH="$ROOT/.venv/bin:$PATH"
