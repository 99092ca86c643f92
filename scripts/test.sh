#!/usr/bin/env bash
# The project's test command: installs what the tests need, validates the generated CRDs
# with Kubernetes' own code, then checks formatting, lints with warnings denied, and runs
# every test.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/install-test-deps.sh
export PATH="$repo/.tools/venv/bin:$PATH"
# Snapshots never update themselves in CI: a mismatch fails.
if [ -n "${CI:-}" ]; then export INSTA_UPDATE=no; fi
# Incremental compilation keeps a second copy of every crate's state: disk a fresh CI
# machine may not have, for no gain in a one-off build.
export CARGO_INCREMENTAL=0
df -h "$repo" | sed 's/^/disk: /'
# A CRD the API server would refuse fails fast, before anything compiles.
"$repo/.tools/k8s/bin/crd-check" crds/crds.yaml charts/postgres-operator/crds/crds.yaml
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Benchmarks are run on demand (cargo bench), not as tests.
cargo test --lib --bins --tests --locked --no-fail-fast --no-run
df -h "$repo" | sed 's/^/disk after the build: /'
cargo test --lib --bins --tests --locked --no-fail-fast
cargo bench --profile dev --bench controller --locked -- --clusters 100  # must settle, no writes once settled; no timing asserted
