#!/usr/bin/env bash
# Install everything the test suite needs into ./.venv and run it (the README's second command).
# Also installs Debian's chromium + chromium-driver for the report's browser test when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# (pip's "Location ... is ignored" warnings come from this machine's local package mirror config)
.venv/bin/python -m pip install -q -e '.[test]' 2> >(grep -v "is ignored: it is neither" >&2)
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing chromium and chromium-driver (browser test of the HTML report)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "[test] chromium/chromedriver not found and not root: the browser test will be skipped"
  fi
fi
echo "[test] validating every search space"
.venv/bin/study validate search_spaces/*.yaml
echo "[test] lint (ruff)"
.venv/bin/ruff check .
echo "[test] running the test suite"
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@"
