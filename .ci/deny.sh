#!/usr/bin/env bash
# Supply-chain check: `cargo deny --offline check` (advisories, bans, licenses, sources;
# policy in deny.toml) against the RustSec advisory-db snapshot beside the clone.
#
# The snapshot (../shared/advisory-db, read-only in CI, plain files without git metadata)
# is copied into a fresh git repository where cargo-deny looks for its database, with the
# commit and HEAD dated on the snapshot's date from its SNAPSHOT file: cargo-deny measures
# the database's age from those, so `maximum-db-staleness` in deny.toml is checked against
# the real age of the snapshot, not against the time of this copy. Nothing is fetched.
#
# Environment: SHOAL_ADVISORY_DB_SRC (default ../shared/advisory-db) is the snapshot;
# SHOAL_ADVISORY_DBS (default target/advisory-dbs) is where the repository is made.
set -euo pipefail
cd "$(dirname "$0")/.."

src="${SHOAL_ADVISORY_DB_SRC:-../shared/advisory-db}"
root="${SHOAL_ADVISORY_DBS:-target/advisory-dbs}"
if [ ! -f "$src/SNAPSHOT" ] || [ ! -d "$src/crates" ]; then
  echo "deny: no RustSec advisory-db snapshot at $src (want SNAPSHOT and crates/)." >&2
  echo "deny: CI has one in ../shared/advisory-db; elsewhere set SHOAL_ADVISORY_DB_SRC." >&2
  exit 1
fi
snap_date="$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}' "$src/SNAPSHOT" | head -n 1 || true)"
if [ -z "$snap_date" ]; then
  echo "deny: no YYYY-MM-DD date in $src/SNAPSHOT" >&2
  exit 1
fi
stamp="${snap_date}T00:00:00Z"

# cargo-deny keeps the database for a URL in <db-path>/<last path segment>-<xxhash64 of
# the URL>; this is the name for the default RustSec URL (cargo-deny 0.20).
mkdir -p "$root"
root="$(cd "$root" && pwd)"
db="$root/advisory-db-3157b0e258782691"
rm -rf "$db"
git init -q -b main "$db"
cp -R "$src/." "$db/"
chmod -R u+w "$db"
git -C "$db" add -A
GIT_AUTHOR_DATE="$stamp" GIT_COMMITTER_DATE="$stamp" \
  git -C "$db" -c user.name=ci -c user.email=ci@localhost -c commit.gpgsign=false \
  commit -qm "RustSec advisory-db snapshot of $snap_date"
touch -d "$stamp" "$db/.git/HEAD"
echo "deny: advisory-db snapshot of $snap_date ($(find "$db/crates" -name 'RUSTSEC-*.md' | wc -l) crate advisories)"

# --offline also means "only crates already in the local cargo cache": a Linux build
# never downloads target-specific (e.g. Windows-only) dependencies, so fetch every
# locked package first (crates.io is reachable from CI).
cargo fetch --locked
SHOAL_ADVISORY_DBS="$root" cargo deny --offline check
