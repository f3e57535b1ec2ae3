#!/usr/bin/env bash
# Cache-hit serving benchmark: a Shoal agent (its own process) next to nginx
# (Debian package, sendfile on) serving the same file on loopback; one stream and N
# streams in interleaved rounds, time to first byte, wrk cross-check. Reports figures,
# never fails on them (exit 0 = the runs completed, 2 = harness error).
#
# Runs three agent memory configurations, one hitbench run each:
#   hot      memory cache larger than the file: every chunk served from memory
#   default  the production default (256MiB): part from memory, part from disk
#   disk     memory cache off: every chunk read from its file and BLAKE3-verified
#
# Environment: HIT_SIZE (default 1GiB), HIT_HOT_MEMORY (default 1536MiB; must be at
# least 1.125 x HIT_SIZE), HIT_MODES (default "hot default disk"), HIT_OUT (default
# target/hitbench), HIT_PERF=1 to `perf record` the agent into $HIT_OUT/perf-MODE/.
# Extra arguments go to every hitbench run (e.g. --rounds 7 --duration 8).
set -euo pipefail
cd "$(dirname "$0")/../.."

have() { command -v "$1" >/dev/null 2>&1; }
missing=()
have nginx || missing+=(nginx)
have wrk || missing+=(wrk)
if [ "${HIT_PERF:-0}" = 1 ] && ! have perf; then missing+=(linux-perf); fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && have apt-get; then
        echo "hitbench: installing ${missing[*]}"
        { apt-get update && apt-get install -y "${missing[@]}"; } || true
    fi
    have nginx || { echo "hitbench: nginx is required (apt-get install -y nginx)"; exit 2; }
fi

echo "hitbench: cargo build --release -p shoal-agent -p shoal-benches"
cargo build --release -p shoal-agent -p shoal-benches --bin shoal-agent --bin hitbench --bin hitbound

size="${HIT_SIZE:-1GiB}"
out="${HIT_OUT:-target/hitbench}"
mkdir -p "$out"
rc=0
for mode in ${HIT_MODES:-hot default disk}; do
    case "$mode" in
        hot) mem="${HIT_HOT_MEMORY:-1536MiB}" ;;
        default) mem=256MiB ;;
        disk) mem=0 ;;
        *) echo "hitbench: unknown mode $mode (hot, default, disk)"; exit 2 ;;
    esac
    extra=()
    if [ "${HIT_PERF:-0}" = 1 ]; then extra+=(--perf-dir "$out/perf-$mode"); fi
    echo "hitbench: mode $mode (memory cache $mem), file $size"
    ./target/release/hitbench --size "$size" --memory-size "$mem" \
        --json "$out/$mode.json" --markdown "$out/$mode.md" "${extra[@]}" "$@" || rc=$?
done
# Unquoted on purpose: split HIT_MODES into words as the loop above does.
# shellcheck disable=SC2086
echo "hitbench: reports in $out/{$(echo ${HIT_MODES:-hot default disk} | tr ' ' ',')}.md"
exit $rc
