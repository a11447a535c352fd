#!/usr/bin/env bash
# Set up a virtual environment and start the whole network on this machine. With no
# --database-url (or XDS_DATABASE_URL) an embedded PostgreSQL keeps its data under ./data.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
scripts/install-ohif.sh
exec .venv/bin/xds-local "$@"
