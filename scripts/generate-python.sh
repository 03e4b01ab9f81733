#!/usr/bin/env bash
# Generates the Python client's messages and gRPC stubs into
# clients/python/taskstream/v1/ with grpcio-tools (protoc and its plugins as
# a Python module: nothing remote), at the versions requirements-dev.txt pins.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-python-tools.sh
python=.tools/python/bin/python
out=clients/python
rm -rf "$out/taskstream/v1"
"$python" -m grpc_tools.protoc -I proto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/taskstream/v1/*.proto
