#!/usr/bin/env bash
# CI smoke test of the fleet benchmark (correctness only, no timing assertions):
# builds the release binaries, runs the `quick` scenario for every system and fails if
# any node of any system did not get the origin's exact bytes, if a system could not
# run, if Shoal's origin bytes exceed 1.2 x the object size, or if the harness left a
# namespace or process behind. Needs root and network namespaces; where they are not
# available it prints a SKIP line and exits 0.
#
# Environment: FLEET_SYSTEMS (default direct,bittorrent,shoal),
#              FLEET_OUT (default target/fleet-quick) for the JSON, Markdown and PNG.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

skip() {
    echo "SKIP fleet-quick: $*"
    exit 0
}

[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, tc)"
command -v ip >/dev/null 2>&1 || skip "iproute2 (ip) is not installed"
probe="shf-probe-$$"
if ! err=$(ip netns add "$probe" 2>&1); then
    skip "ip netns is unavailable here: $err"
fi
probe_ok=1
ip -n "$probe" link add v0 type veth peer name v1 >/dev/null 2>&1 || probe_ok=0
if [ "$probe_ok" = 1 ] && ! tc -n "$probe" qdisc add dev v0 root tbf rate 10mbit burst 64kb latency 50ms >/dev/null 2>&1; then
    probe_ok=2
fi
ip netns delete "$probe" >/dev/null 2>&1
[ "$probe_ok" = 0 ] && skip "veth pairs cannot be created in a network namespace"
[ "$probe_ok" = 2 ] && skip "tc qdisc tbf is unavailable"

systems="${FLEET_SYSTEMS:-direct,bittorrent,shoal}"
out="${FLEET_OUT:-target/fleet-quick}"
mkdir -p "$out"

packages=(-p shoal-benches)
case "$systems" in *shoal*) packages+=(-p shoal-agent -p shoal-tracker) ;; esac
echo "fleet-quick: cargo build --release ${packages[*]}"
cargo build --release "${packages[@]}" || { echo "fleet-quick: FAILED (build)"; exit 1; }

./target/release/fleet --scenario quick --systems "$systems" --keep-going \
    --json "$out/fleet-quick.json" --markdown "$out/fleet-quick.md" \
    --plot "$out/fleet-quick.png" --max-shoal-origin-ratio 1.2
rc=$?
case $rc in
    0) echo "fleet-quick: OK ($systems)" ;;
    1) echo "fleet-quick: FAILED: a system failed, a node got wrong or no bytes, or Shoal's origin bytes > 1.2 x F (see $out/fleet-quick.md)" ;;
    3) echo "fleet-quick: FAILED: teardown left namespaces or processes behind" ;;
    *) echo "fleet-quick: FAILED: harness error (exit $rc)" ;;
esac
exit $rc
