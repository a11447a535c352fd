#!/usr/bin/env bash
# Set up a virtual environment (the first time, or when pyproject.toml changed) and start the whole
# network on this machine; later starts need no network. With no --database-url (or
# XDS_DATABASE_URL) an embedded PostgreSQL keeps its data under ./data.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
. scripts/venv.sh
ensure_venv . '.[test]'  # the test command's install includes everything start needs
scripts/install-ohif.sh  # once per pinned version; later starts need no network
exec .venv/bin/xds-local "$@"
