#!/usr/bin/env bash
# Run the fleet benchmark's named scenarios (default S1 S2 S3 S4) one after another,
# all systems in each run, writing benches/results/<S>.{json,md,png} and a log.
# Needs root. Takes about an hour on the reference 2-core machine (direct dominates).
# Usage: benches/scripts/fleet-all.sh [S1 S2 ...]
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(S1 S2 S3 S4)
out=benches/results
mkdir -p "$out"
cargo build --release -p shoal-benches -p shoal-agent -p shoal-tracker || exit 1
status=0
for s in "${scenarios[@]}"; do
    echo "== fleet $s ($(date -u +%H:%M:%S))"
    ./target/release/fleet --scenario "$s" --systems direct,bittorrent,shoal --keep-going \
        --json "$out/$s.json" --markdown "$out/$s.md" --plot "$out/$s.png" \
        2> >(tee "$out/$s.log" >&2) || status=1
done
exit $status
