#!/usr/bin/env bash
# Install the OHIF Viewer v3 prebuilt dist/ (npm package @ohif/app, exact version and sha512 integrity
# pinned in consumer/portal/ohif/package-lock.json) into consumer/portal/ohif/node_modules (git-ignored).
# Only the package itself is installed: its dist/ is a complete webpack build, its dependencies are
# build-time ones. Does nothing when the pinned version is already there, so a restart works offline.
set -euo pipefail
cd "$(dirname "$0")/../consumer/portal/ohif"

wanted=$(sed -n 's/.*"@ohif\/app": *"\([^"]*\)".*/\1/p' package.json | head -n1)
installed=node_modules/@ohif/app/package.json
# A gzip copy beside each text file of dist/ (x.js.gz next to x.js): the portal sends it to browsers accepting
# gzip (aiohttp's FileResponse), about a quarter of the bytes. Made once; idempotent.
precompress() {
  find node_modules/@ohif/app/dist -type f \( -name '*.js' -o -name '*.css' -o -name '*.wasm' -o -name '*.json' \
       -o -name '*.svg' -o -name '*.txt' \) -size +1k | while read -r f; do
    [ -f "$f.gz" ] && [ "$f.gz" -nt "$f" ] || gzip -9 -n -k -f "$f"
  done
}

if [ -f "$installed" ] && [ -f node_modules/@ohif/app/dist/index.html ] \
   && grep -q "\"version\": *\"$wanted\"" "$installed"; then
  precompress
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian's npm (needed once to fetch the OHIF viewer)"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm >/dev/null
fi

echo "installing the OHIF viewer (@ohif/app $wanted)"
# npm ci: exactly the lock file, integrity checked; no install scripts run.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
test -f node_modules/@ohif/app/dist/index.html || { echo "@ohif/app $wanted has no dist/index.html" >&2; exit 1; }
precompress
