#!/usr/bin/env bash
# Build (once) the benchmark layer, cached in .cache/bench/ (git-ignored):
#   rootfs/        a debootstrap --variant=minbase bookworm rootfs plus an
#                  unpacked tensorflow-cpu wheel (~1.2 GB, ~19k entries)
#   layer.tar      that rootfs as a reproducible pax tar
#   layer.tar.gz   the same, gzip -6
# Prints the cache directory. Needs root (debootstrap) and the Debian
# mirror / PyPI, which these machines reach. Used by bench/convert.sh,
# bench/pull.sh and the 1 GB pull test (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=$PWD/.cache/bench
mkdir -p "$CACHE"
root=$CACHE/rootfs

if [ ! -f "$CACHE/layer.tar" ]; then
    if [ ! -x "$root/bin/sh" ]; then
        rm -rf "$root"
        echo "bench-layer: debootstrap minbase into $root" >&2
        debootstrap --variant=minbase bookworm "$root" >"$CACHE/debootstrap.log"
    fi
    if [ ! -d "$root/usr/local/lib/python3.11/dist-packages/tensorflow" ]; then
        wheels=$CACHE/wheels
        mkdir -p "$wheels"
        ls "$wheels"/tensorflow_cpu-*.whl >/dev/null 2>&1 ||
            pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
                --platform manylinux2014_x86_64 -d "$wheels" 'tensorflow-cpu==2.17.*' >&2
        mkdir -p "$root/usr/local/lib/python3.11/dist-packages"
        python3 -m zipfile -e "$wheels"/tensorflow_cpu-*.whl \
            "$root/usr/local/lib/python3.11/dist-packages/"
    fi
    echo "bench-layer: tar $root" >&2
    tar --numeric-owner --format=pax --sort=name --mtime=@1700000000 \
        -C "$root" -cf "$CACHE/layer.tar.tmp" .
    mv "$CACHE/layer.tar.tmp" "$CACHE/layer.tar"
fi
if [ ! -f "$CACHE/layer.tar.gz" ]; then
    echo "bench-layer: gzip layer.tar" >&2
    gzip -6 -n -c "$CACHE/layer.tar" >"$CACHE/layer.tar.gz.tmp"
    mv "$CACHE/layer.tar.gz.tmp" "$CACHE/layer.tar.gz"
fi
echo "$CACHE"
