#!/usr/bin/env bash
# Fuzz smoke run: builds every cargo-fuzz target in fuzz/ and runs each for a bounded
# time on its committed corpus (fuzz/corpus/<target>/). Fails on any crash, panic,
# failed property assertion, timeout or out-of-memory; libFuzzer then leaves the input
# in fuzz/artifacts/<target>/ and this script prints the command to reproduce it.
#
# Needs the nightly toolchain and cargo-fuzz (.ci/install-tools.sh installs it).
# Environment:
#   SHOAL_FUZZ_SECONDS  seconds per target (default 35; 9 targets, ~5.5 min, plus the build)
#   SHOAL_FUZZ_TARGETS  space-separated subset (default: all of `cargo fuzz list`)
# New inputs libFuzzer finds go to a scratch copy of the corpus, not into the repository:
# a CI run leaves the checkout clean. See docs/fuzzing.md for longer campaigns.
#
# Built with `--sanitizer none` and debug assertions (`-a`): the fuzzed crates forbid
# unsafe code, so AddressSanitizer would only slow every execution down, while debug
# assertions turn integer overflow into a crash.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${SHOAL_FUZZ_SECONDS:-35}"
flags=(--sanitizer none --debug-assertions)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
echo "fuzz: building all targets"
cargo +nightly fuzz build "${flags[@]}"
targets="${SHOAL_FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in $targets; do
  if [ ! -d "fuzz/corpus/$t" ]; then
    echo "fuzz: no committed corpus for $t (fuzz/corpus/$t)" >&2
    failed+=("$t")
    continue
  fi
  mkdir -p "$scratch/$t"
  cp -R "fuzz/corpus/$t/." "$scratch/$t/"
  echo "== fuzz $t for ${secs}s"
  log="$scratch/$t.log"
  if cargo +nightly fuzz run "${flags[@]}" "$t" "$scratch/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    # "#<executions> DONE cov: ... exec/s: ..." is libFuzzer's last status line.
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true
  else
    tail -n 60 "$log" >&2
    echo "fuzz: $t FAILED; reproduce with: cargo +nightly fuzz run ${flags[*]} $t fuzz/artifacts/$t/<file>" >&2
    failed+=("$t")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: failing targets: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: all targets ran ${secs}s without a crash"
