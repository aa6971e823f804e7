#!/usr/bin/env bash
# Build (once) the real-world trees the tests convert, cached in
# .cache/corpus/ (git-ignored):
#   minbase/  a debootstrap --variant=minbase bookworm rootfs
#   pytree/   many small files: unpacked pure-Python wheels from PyPI
# Prints the corpus directory. Needs root (debootstrap) and the Debian
# mirror / PyPI, which these machines reach.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${EROFS_TEST_CORPUS:-$PWD/.cache/corpus}
mkdir -p "$CORPUS"

if [ ! -f "$CORPUS/minbase/.done" ]; then
    rm -rf "$CORPUS/minbase"
    echo "corpus: debootstrap minbase into $CORPUS/minbase" >&2
    debootstrap --variant=minbase bookworm "$CORPUS/minbase" >"$CORPUS/debootstrap.log" 2>&1 ||
        { tail -20 "$CORPUS/debootstrap.log" >&2; exit 1; }
    touch "$CORPUS/minbase/.done"
fi

if [ ! -f "$CORPUS/pytree/.done" ]; then
    rm -rf "$CORPUS/pytree" "$CORPUS/wheels"
    mkdir -p "$CORPUS/wheels" "$CORPUS/pytree"
    echo "corpus: pip download into $CORPUS/wheels" >&2
    # Pure-Python packages with thousands of small files (botocore's data
    # files, sympy's modules).
    pip download --quiet --no-deps --only-binary=:all: -d "$CORPUS/wheels" \
        'botocore==1.35.*' 'sympy==1.13.*' >&2
    for w in "$CORPUS"/wheels/*.whl; do
        python3 -m zipfile -e "$w" "$CORPUS/pytree/"
    done
    touch "$CORPUS/pytree/.done"
fi
echo "$CORPUS"
