#!/usr/bin/env bash
# Builds protoc-gen-go and protoc-gen-connect-go into .tools/go/bin at the
# versions clients/go/go.mod pins (its `tool` directives: the same module
# versions the client's runtime uses, so generated code and runtime match).
# `npm run generate` runs this first; it is quick once Go's build cache is warm.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null; then
  echo "npm run generate needs Go (1.26+) for the Go client's code: https://go.dev/dl/" >&2
  exit 1
fi
GOBIN="$PWD/.tools/go/bin" GOFLAGS=-mod=readonly go -C clients/go install tool
