#!/usr/bin/env bash
# Bounded fuzzing of the untrusted-input boundary (docs/fuzzing.md).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Generates seed inputs (small tars made with GNU tar, their gzip/zstd
# forms, and small images made with our CLI and mkfs.erofs) into
# fuzz/corpus/<target>/, builds the cargo-fuzz targets once (nightly,
# AddressSanitizer, debug assertions and overflow checks on), runs each
# target for SECONDS_PER_TARGET seconds (default 60), and prints a table of
# runs, coverage, corpus size and crashes. Exits non-zero if any target
# crashed; the reproducer is in fuzz/artifacts/<target>/.
#
# Environment:
#   FUZZ_JOBS=N        run N targets at once (default 1; the machine is shared)
#   FUZZ_RSS_MB=N      libFuzzer -rss_limit_mb (default 2048)
#   FUZZ_TIMEOUT=N     libFuzzer per-input -timeout in seconds (default 10)
#   FUZZ_TMPDIR=DIR    where tar_to_image writes its images (default /dev/shm
#                      when it exists, else the system temporary directory)
#   FUZZ_NO_SEEDS=1    do not (re)generate seeds
#
# Not run in CI: it needs nightly and cargo-fuzz (SETUP_FUZZ=1
# scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECS=${1:-60}
shift || true
ALL_TARGETS=(tar_reader tar_to_image image_fsck gzip_front)
if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=("${ALL_TARGETS[@]}")
fi
case $SECS in
'' | *[!0-9]*)
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
    ;;
esac

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: needs a nightly toolchain and cargo-fuzz" >&2
    echo "  (rustup toolchain install nightly; cargo install cargo-fuzz --locked," >&2
    echo "   or SETUP_FUZZ=1 scripts/setup.sh)" >&2
    exit 1
fi

if [ -z "${FUZZ_TMPDIR:-}" ]; then
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then
        FUZZ_TMPDIR=/dev/shm
    else
        FUZZ_TMPDIR=${TMPDIR:-/tmp}
    fi
fi
export FUZZ_TMPDIR

# Flags shared by `build` and `run`, so that `run` does not rebuild. The
# default profile is optimised with debug assertions and overflow checks on
# (what we want: an arithmetic overflow on hostile input is a finding), and
# AddressSanitizer, which also gives libFuzzer its malloc limit.
FUZZ_FLAGS=()

# ---------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------

# Copy a file into a corpus directory under its content hash (the name
# libFuzzer itself uses), so regenerating seeds adds no duplicates. Always
# true: a missing seed is not worth stopping for.
add_seed() {
    local target=$1 file=$2
    [ -s "$file" ] || return 0
    mkdir -p "fuzz/corpus/$target"
    cp "$file" "fuzz/corpus/$target/$(sha1sum "$file" | cut -d' ' -f1)" || true
}

# `produce FILE CMD...`: run CMD (which writes FILE); on failure drop FILE
# and carry on, a missing seed is not worth stopping for. True when FILE
# was produced.
produce() {
    local file=$1
    shift
    if "$@" >/dev/null 2>&1 && [ -s "$file" ]; then
        return 0
    fi
    rm -f "$file"
    return 1
}

make_seeds() {
    local work
    work=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN
    local src=$work/src
    mkdir -p "$src/dir/sub" "$src/deep/a/b/c" "$src/opq"
    printf 'hello\n' >"$src/small"
    : >"$src/empty"
    head -c 4097 /dev/urandom >"$src/dir/blk-plus-one"
    head -c 511 /dev/zero >"$src/dir/zeros-511"
    printf 'x' >"$src/deep/a/b/c/leaf"
    ln -s small "$src/link"
    ln -s "$(printf 'target-%0200d' 0)" "$src/dir/long-link"
    ln "$src/small" "$src/dir/sub/hard"
    mkfifo "$src/fifo"
    if [ "$(id -u)" -eq 0 ]; then
        mknod "$src/chr" c 1 3
        mknod "$src/blk" b 7 0
    fi
    # OCI whiteouts (a plain file named .wh.X, and the opaque marker).
    : >"$src/.wh.gone"
    : >"$src/opq/.wh..wh..opq"
    # A name longer than the 100-byte ustar field, and a non-UTF-8 name.
    : >"$src/dir/$(printf 'n%.0s' $(seq 1 150))"
    : >"$src/$(printf 'caf\xe9')"
    chmod 4755 "$src/small"
    chmod 1777 "$src/dir"
    touch -h -d '@0' "$src/link"
    touch -d '1960-01-01' "$src/empty"
    # user xattrs, when the temporary file system takes them.
    setfattr -n user.seed -v value "$src/small" 2>/dev/null || true
    setfattr -n user.bin -v 0x00ff00 "$src/dir" 2>/dev/null || true
    # A sparse file (only in sparse.tar): GNU tar writes PAX sparse
    # headers for it.
    local sparse=$work/sparse
    head -c 100 /dev/urandom >"$sparse"
    truncate -s 65536 "$sparse"
    printf 'end' >>"$sparse"

    # Tars: every format GNU tar writes, xattrs, sparse, small ones; 512-byte
    # records (-b1) except for gnu.tar, so that seeds stay small.
    local tars=() t fmt
    for fmt in gnu oldgnu ustar pax v7; do
        t=$work/$fmt.tar
        local bf=-b1
        [ $fmt = gnu ] && bf=-b20
        produce "$t" tar --format=$fmt $bf --owner=0 --group=0 -cf "$t" -C "$src" . &&
            tars+=("$t")
    done
    t=$work/xattrs.tar
    produce "$t" tar --format=pax -b1 --xattrs --xattrs-include='*' -cf "$t" -C "$src" . &&
        tars+=("$t")
    t=$work/sparse.tar
    produce "$t" tar --format=pax -b1 --sparse -cf "$t" -C "$work" sparse src/small && tars+=("$t")
    t=$work/one.tar
    produce "$t" tar --format=gnu -b1 -cf "$t" -C "$src" small && tars+=("$t")
    t=$work/dirs.tar
    produce "$t" tar --format=ustar -b1 -cf "$t" -C "$src" deep opq && tars+=("$t")
    # An empty archive: just the end-of-archive blocks.
    t=$work/empty.tar
    head -c 1024 /dev/zero >"$t" && tars+=("$t")
    for t in "${tars[@]}"; do
        add_seed tar_reader "$t"
        add_seed tar_to_image "$t"
    done

    # Compressed streams: gzip, zstd, two gzip members, and a plain tar.
    for t in "$work/pax.tar" "$work/one.tar" "$work/gnu.tar"; do
        [ -f "$t" ] || continue
        gzip -9 -c "$t" >"$t.gz" && add_seed gzip_front "$t.gz"
        if command -v zstd >/dev/null; then
            zstd -q -c "$t" >"$t.zst" && add_seed gzip_front "$t.zst"
        fi
    done
    if [ -f "$work/one.tar.gz" ]; then
        cat "$work/one.tar.gz" "$work/one.tar.gz" >"$work/two-members.gz"
        add_seed gzip_front "$work/two-members.gz"
        add_seed gzip_front "$work/one.tar"
    fi

    # Images: our converter in its three modes, and mkfs.erofs.
    local cli=$ROOT/target/release/erofs-snapshotter
    if [ ! -x "$cli" ]; then
        echo "==> building the CLI for image seeds"
        cargo build --release -q -p erofs-snapshotter || true
    fi
    local small=$work/small-layer.tar img
    produce "$small" tar --format=pax -b1 --owner=0 --group=0 -cf "$small" -C "$src" \
        small empty link fifo dir/sub opq .wh.gone || true
    if [ -x "$cli" ] && [ -f "$small" ]; then
        img=$work/plain.erofs
        produce "$img" "$cli" convert "$small" "$img" && add_seed image_fsck "$img"
        img=$work/inline.erofs
        produce "$img" "$cli" convert --inline "$small" "$img" && add_seed image_fsck "$img"
        img=$work/index.erofs
        produce "$img" "$cli" convert --tar-index "$small" "$img" && add_seed image_fsck "$img"
    fi
    local mkfs
    mkfs=$(command -v mkfs.erofs || true)
    if [ -n "$mkfs" ]; then
        local msrc=$work/msrc
        mkdir -p "$msrc/d"
        printf 'hi\n' >"$msrc/a"
        head -c 5000 /dev/urandom >"$msrc/d/b"
        ln -s a "$msrc/l"
        ln "$msrc/a" "$msrc/d/hard"
        setfattr -n user.x -v y "$msrc/a" 2>/dev/null || true
        img=$work/mkfs-4k.erofs
        produce "$img" "$mkfs" -T0 -Uclear --all-root "$img" "$msrc" && add_seed image_fsck "$img"
        img=$work/mkfs-512.erofs
        produce "$img" "$mkfs" -T0 -Uclear -b 512 "$img" "$msrc" && add_seed image_fsck "$img"
        img=$work/mkfs-chunk.erofs
        produce "$img" "$mkfs" -T0 -Uclear -Enoinline_data --chunksize=4096 "$img" "$msrc" &&
            add_seed image_fsck "$img"
        if [ -f "$small" ]; then
            img=$work/mkfs-tari.erofs
            produce "$img" "$mkfs" -T0 -Uclear --tar=i "$img" "$small" && add_seed image_fsck "$img"
        fi
    fi
    return 0
}

if [ -z "${FUZZ_NO_SEEDS:-}" ]; then
    echo "==> seeds"
    make_seeds
fi
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
done

# ---------------------------------------------------------------------------
# Build and run
# ---------------------------------------------------------------------------

echo "==> cargo +nightly fuzz build ${FUZZ_FLAGS[*]:-}"
(cd fuzz && cargo +nightly fuzz build ${FUZZ_FLAGS[@]+"${FUZZ_FLAGS[@]}"})

LOGDIR=$(mktemp -d)
trap 'rm -rf "$LOGDIR"' EXIT

# Sorted artifact names (crash-*, timeout-*, oom-*, leak-*) of a target.
artifacts() {
    find "fuzz/artifacts/$1" -maxdepth 1 -type f -printf '%f\n' 2>/dev/null | sort
}

run_target() {
    local t=$1
    local before=$LOGDIR/$t.before
    artifacts "$t" >"$before"
    local start=$SECONDS rc=0
    (cd fuzz && cargo +nightly fuzz run ${FUZZ_FLAGS[@]+"${FUZZ_FLAGS[@]}"} "$t" -- \
        -max_total_time="$SECS" \
        -timeout="${FUZZ_TIMEOUT:-10}" \
        -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
        -print_final_stats=1 \
        -close_fd_mask=1) >"$LOGDIR/$t.log" 2>&1 || rc=$?
    echo "$rc $((SECONDS - start))" >"$LOGDIR/$t.rc"
}

JOBS=${FUZZ_JOBS:-1}
for t in "${TARGETS[@]}"; do
    echo "==> fuzz $t for ${SECS}s"
    run_target "$t" &
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do
        wait -n || true
    done
done
wait

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

failed=0
printf '\n%-14s %12s %8s %8s %8s %6s %8s\n' target runs cov ft corpus secs crashes
for t in "${TARGETS[@]}"; do
    log=$LOGDIR/$t.log
    read -r rc secs <"$LOGDIR/$t.rc"
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    # The last status line ("#N DONE cov: C ft: F corp: ...", or the last
    # "pulse"/"NEW" line when the run stopped on a crash).
    status=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
    [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$status")
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    new=$(comm -13 "$LOGDIR/$t.before" <(artifacts "$t") | wc -l)
    crashes=$new
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="rc=$rc"
    fi
    printf '%-14s %12s %8s %8s %8s %6s %8s\n' "$t" "${runs:-?}" "${cov:-?}" "${ft:-?}" "$corpus" "$secs" "$crashes"
    if [ "$rc" -ne 0 ] || [ "$new" -ne 0 ]; then
        failed=1
        echo "---- $t (exit $rc) ----" >&2
        # The panic message or sanitizer report, without the input dump.
        grep -E -A3 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY' "$log" |
            grep -v -E '^\s+[0-9]+: |^\s+at ' | head -30 >&2
        comm -13 "$LOGDIR/$t.before" <(artifacts "$t") |
            sed "s|^|  reproducer: fuzz/artifacts/$t/|" >&2
    fi
done
if [ "$failed" -ne 0 ]; then
    echo "scripts/fuzz.sh: crashes found (reproduce: cd fuzz && cargo +nightly fuzz run TARGET ARTIFACT)" >&2
    exit 1
fi
