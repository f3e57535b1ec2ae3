#!/usr/bin/env bash
# Installs the pinned tools that .ci/run needs beyond the Rust toolchain, from crates.io
# (the only network CI has). Idempotent: a tool already on PATH at the pinned version is
# left alone, so a warm machine pays nothing.
set -euo pipefail

# cargo-deny: supply-chain checks (deny.toml). 0.20.2 needs rustc >= 1.88.
CARGO_DENY_VERSION=0.20.2

have_version() { # tool, version: is `tool --version` exactly that version?
  command -v "$1" >/dev/null 2>&1 && [ "$("$1" --version 2>/dev/null | awk '{print $2}')" = "$2" ]
}

if have_version cargo-deny "$CARGO_DENY_VERSION"; then
  echo "cargo-deny $CARGO_DENY_VERSION already installed"
else
  echo "installing cargo-deny $CARGO_DENY_VERSION from crates.io"
  cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi

# cargo-fuzz: builds and runs the libFuzzer targets in fuzz/ (.ci/fuzz.sh) on the nightly
# toolchain. The tool itself builds on stable.
CARGO_FUZZ_VERSION=0.13.2

if have_version cargo-fuzz "$CARGO_FUZZ_VERSION"; then
  echo "cargo-fuzz $CARGO_FUZZ_VERSION already installed"
else
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
