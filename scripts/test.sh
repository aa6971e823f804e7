#!/usr/bin/env bash
# The project's test command: installs what the tests need (idempotent),
# checks formatting and lints, then runs every test, root and kernel tests
# included. Tests whose dependency is missing fail when CI is set.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the kernel-mount tests need root" >&2
    exit 1
fi

bash scripts/setup.sh
# Real-world trees (debootstrap rootfs, Python package tree), built once.
EROFS_TEST_CORPUS=$(bash scripts/corpus.sh)
export EROFS_TEST_CORPUS
# The 1 GB benchmark layer (minbase + tensorflow), built once.
EROFS_BENCH_LAYER=$(bash scripts/bench-layer.sh)
export EROFS_BENCH_LAYER

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
# Root tests mount images; run them one binary at a time so a failure
# names its test, with two threads to match the machine.
cargo test --workspace --locked -- --test-threads=2
echo "==> cargo test: the 1 GB pull (ignored above for its size)"
# --workspace as above: the same feature set, so nothing is rebuilt.
cargo test --workspace --locked --test pull -- --ignored pull_large
