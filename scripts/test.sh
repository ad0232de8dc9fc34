#!/usr/bin/env bash
# Install everything the test suite needs into ./.venv and run all of it (the README's second command;
# .ci/run calls it with CI=true). Also installs Debian's chromium + chromium-driver for the browser
# tests when run as root.
#
#   bash scripts/test.sh                 # every tier (pytest -m ""), after the checks below
#   bash scripts/test.sh -m e2e          # extra arguments go to pytest (a later -m replaces -m "")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# (pip's "Location ... is ignored" warnings come from this machine's local package mirror config)
.venv/bin/python -m pip install -q -e '.[test]' 2> >(grep -v "is ignored: it is neither" >&2)
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing chromium and chromium-driver (browser tests of the HTML reports)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "[test] chromium/chromedriver not found and not root: the browser tests will be skipped"
  fi
fi
echo "[test] validating every search space"
.venv/bin/study validate search_spaces/*.yaml
echo "[test] lint (ruff)"
.venv/bin/ruff check .
echo "[test] generated docs tables are current (python scripts/gen_docs.py rewrites them)"
.venv/bin/python scripts/gen_docs.py --check
echo "[test] docs site (mkdocs build --strict)"
.venv/bin/mkdocs build --strict --quiet
echo "[test] running every test tier (fast, e2e, fault, cluster, browser, gpu)"
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 -m "" "$@"
