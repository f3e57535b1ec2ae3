#!/usr/bin/env bash
# Debian packages that tests/tests/registry_real.rs uses as real counterparts of a
# container-image pipeline: the distribution registry (`docker-registry`, 2.8 on
# bookworm), `containerd` + `ctr` (1.6), `skopeo` (pushes the seeded image) and
# `apache2-utils` (`htpasswd -B`, the bcrypt line of the registry's htpasswd auth).
# Idempotent: installs only what is missing. Not root: says so and exits 0 (the tests
# skip with a message). Called by .ci/install-packages.sh and by the tests' setup.
set -euo pipefail

need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v ctr >/dev/null 2>&1 || need+=(containerd)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
if [ "${#need[@]}" -eq 0 ]; then
  echo "registry test tools already installed"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "not root: cannot install ${need[*]}; tests/tests/registry_real.rs will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Packages only: the registry's and containerd's systemd units are not started here
# (policy-rc.d refuses service starts while installing); the tests start their own.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  own_policy=1
fi
trap 'if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
apt-get update -qq
# shellcheck disable=SC2046 # word splitting of the de-duplicated list is wanted
apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
