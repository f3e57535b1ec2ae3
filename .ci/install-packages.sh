#!/usr/bin/env bash
# Debian packages that some tests use as real counterparts (they skip with a message
# where a package is missing; CI must have them, so it installs them here).
# - nginx-light: tests/tests/http_semantics.rs runs the HTTP semantics table against nginx.
# - docker-registry, containerd, skopeo, apache2-utils: tests/tests/registry_real.rs
#   (installed by tests/scripts/install-registry-tools.sh, which the test also calls).
set -euo pipefail

bash "$(dirname "$0")/../tests/scripts/install-registry-tools.sh"

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
if [ "${#need[@]}" -eq 0 ]; then
  echo "test packages already installed"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "not root: cannot install ${need[*]}; the tests that need them will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
