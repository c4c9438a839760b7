#!/usr/bin/env bash
# Debian's Chromium for the console's browser tests (driven by Playwright through
# executable_path; Playwright never downloads a browser). Safe to run again.
set -euo pipefail

if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
# The Python side: Playwright's package bundles its driver (no `playwright install`).
python3 -c "import playwright" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check 'playwright>=1.44'
/usr/bin/chromium --version
