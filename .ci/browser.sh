#!/usr/bin/env bash
# Installs headless Chromium for the status page's browser test (Debian's
# chromium package), if missing. Idempotent; needs root or sudo. The test
# finds the browser on PATH (or in $LEVEE_CHROMIUM) and skips without it
# unless LEVEE_BROWSER_TEST=1, which .ci/run sets after calling this.
set -euo pipefail
have() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
if have; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
have || { echo "chromium is not on PATH after installing it" >&2; exit 1; }
chromium --version
