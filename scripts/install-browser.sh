#!/usr/bin/env bash
# Installs Debian's Chromium for test/browser.test.ts, unless one is there
# (at CHROMIUM_PATH, or /usr/bin/chromium). Playwright drives it; it never
# downloads a browser of its own.
set -euo pipefail
chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  echo "Chromium is installed: $chromium"
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  sudo=""
elif command -v sudo >/dev/null; then
  sudo="sudo"
else
  echo "installing Chromium needs root: run 'apt-get install chromium' as root, or set CHROMIUM_PATH to a Chromium" >&2
  exit 1
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium
"$chromium" --version
