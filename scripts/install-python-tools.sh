#!/usr/bin/env bash
# A virtual environment in .tools/python with clients/python/requirements-dev.txt:
# grpcio-tools generates clients/python/taskstream/v1/, and pytest runs the
# Python client's tests. Reinstalled only when the requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.tools/python
requirements=clients/python/requirements-dev.txt
stamp="$venv/requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
echo "$want" > "$stamp"
