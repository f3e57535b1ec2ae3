#!/usr/bin/env bash
# Container-image benchmarks with the real components (docs/benchmarks.md, "Container
# images"): a cold `ctr images pull` through one agent vs straight from the
# distribution registry, and an eight-node flash crowd (registry blob bytes / image
# blob bytes). Root, release build, loopback only; installs its packages first.
#
#   benches/scripts/registry_pull.sh
#   SHOAL_BENCH_IMAGE_SCALE=8 SHOAL_BENCH_ROUNDS=5 benches/scripts/registry_pull.sh   # 248 MiB image: ctr ends on a 100 ms tick
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/scripts/install-registry-tools.sh
cargo test --release -p shoal-tests --test registry_bench -- --ignored --nocapture --test-threads 1
