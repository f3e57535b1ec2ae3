#!/usr/bin/env bash
# Cold-miss benchmark: curl straight from nginx next to curl through a Shoal agent
# whose cache is empty (a new agent process on a new cache directory per
# measurement), nginx being the agent's origin; 1 client on one object and N clients
# on N distinct objects (each SIZE / N), interleaved rounds (ABBA), the agent's RSS
# sampled. Reports figures, never fails on them (exit 0 = the runs completed,
# 2 = harness error).
#
# Environment: COLD_SIZE (default 2GiB; needs about 2 x SIZE free under /var/tmp plus
# SIZE for the cache: use 1GiB when space is short), COLD_OUT (default
# target/coldbench). Extra arguments go to coldbench (e.g. --rounds 5 --same
# --agent-env MALLOC_ARENA_MAX=2).
set -euo pipefail
cd "$(dirname "$0")/../.."

have() { command -v "$1" >/dev/null 2>&1; }
missing=()
have nginx || missing+=(nginx)
have curl || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && have apt-get; then
        echo "coldbench: installing ${missing[*]}"
        { apt-get update && apt-get install -y "${missing[@]}"; } || true
    fi
    have nginx || { echo "coldbench: nginx is required (apt-get install -y nginx)"; exit 2; }
    have curl || { echo "coldbench: curl is required (apt-get install -y curl)"; exit 2; }
fi

echo "coldbench: cargo build --release -p shoal-agent -p shoal-benches"
cargo build --release -p shoal-agent -p shoal-benches --bin shoal-agent --bin coldbench

out="${COLD_OUT:-target/coldbench}"
mkdir -p "$out"
df -h /var/tmp | tail -1
exec ./target/release/coldbench --size "${COLD_SIZE:-2GiB}" \
    --json "$out/cold.json" --markdown "$out/cold.md" "$@"
