#!/usr/bin/env bash
# Set up everything the tests need (Debian tools, a virtual environment with the project and its
# test extras, installed once per pyproject.toml), lint, and run the test suite. Extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

missing=()
while read -r pkg; do
  [ -z "$pkg" ] || [ "${pkg:0:1}" = "#" ] && continue
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < scripts/debian-packages.txt
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null \
    || echo "WARNING: could not install ${missing[*]}; tests that need them will fail and say so" >&2
fi

. scripts/venv.sh
ensure_venv '.[test]'  # once per pyproject.toml: a clean clone (CI) installs everything
scripts/install-ohif.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
