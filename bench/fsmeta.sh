#!/usr/bin/env bash
# Side-by-side fsmeta benchmark: our `merge` against mkfs.erofs rebuild mode
# (erofs-utils >= 1.9.3) on chains of 10, 50 and 200 generated layers, each
# run producing the merged image and its VMDK descriptor.
#
#   bash bench/fsmeta.sh [RUNS]      (default 5 runs per command)
#
# Layers are generated once (deterministic tars, converted by our writer:
# 4 KiB blocks, no inline data, as VM mode needs) and cached in
# .cache/fsmeta/; the chain of N is the first N layers, so both tools read
# the very same images. Layer 0 is a base of 20,000 files in 1,000
# directories; every later layer adds 200 files in a directory of its own,
# rewrites 50 base files, deletes 20 (OCI whiteouts), hard-links two,
# replaces a base directory by a file, and every tenth layer makes a base
# directory opaque. Inputs are read from the page cache (warm); outputs
# are deleted before each run; commands alternate A B A B. Prints min and
# median wall time and peak RSS per command and the median ratios; paste
# the output into docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
CACHE=$PWD/.cache/fsmeta
LAYERS=$CACHE/layers
OUT=$CACHE/out
CHAINS=(10 50 200)
mkdir -p "$LAYERS" "$OUT"

cargo build --release --locked -p erofs-snapshotter >/dev/null 2>&1
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/erofs-snapshotter

# gen_tar I OUT: the tar of layer I (Python's tarfile, fixed metadata).
gen_tar() {
    python3 - "$1" "$2" <<'PY'
import io, random, sys, tarfile
i, out = int(sys.argv[1]), sys.argv[2]
rng = random.Random(i)
T = 1_700_000_000
def member(tf, name, kind=tarfile.REGTYPE, data=b"", link=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mtime, ti.uid, ti.gid = kind, T + i, 0, 0
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    ti.size, ti.linkname = len(data), link
    tf.addfile(ti, io.BytesIO(data) if data else None)
def blob(n):
    return rng.randbytes(n)
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
    if i == 0:
        for d in range(1000):
            member(tf, f"base/d{d:04}", tarfile.DIRTYPE)
            for f in range(20):
                member(tf, f"base/d{d:04}/f{f:02}", data=blob(rng.randrange(0, 4096)))
    else:
        member(tf, f"layer{i:03}", tarfile.DIRTYPE)
        for f in range(200):
            member(tf, f"layer{i:03}/f{f:03}", data=blob(rng.randrange(0, 8192)))
        member(tf, f"layer{i:03}/link", tarfile.LNKTYPE, link=f"layer{i:03}/f000")
        for _ in range(50):
            d, f = rng.randrange(1000), rng.randrange(20)
            member(tf, f"base/d{d:04}/f{f:02}", data=blob(rng.randrange(0, 4096)))
        for _ in range(20):
            d, f = rng.randrange(1000), rng.randrange(20)
            member(tf, f"base/d{d:04}/.wh.f{f:02}")
        member(tf, f"base/.wh.d{(i * 7) % 1000:04}")
        member(tf, f"base/d{(i * 7) % 1000:04}", data=b"a file now")
        if i % 10 == 0:
            d = (i * 13) % 1000
            member(tf, f"base/d{d:04}", tarfile.DIRTYPE)
            member(tf, f"base/d{d:04}/.wh..wh..opq")
            member(tf, f"base/d{d:04}/only", data=blob(100))
PY
}

max=${CHAINS[-1]}
for i in $(seq 0 $((max - 1))); do
    img=$LAYERS/l$(printf %03d "$i").erofs
    if [ ! -f "$img" ]; then
        gen_tar "$i" "$img.tar"
        "$BIN" convert "$img.tar" "$img.tmp" >/dev/null
        rm "$img.tar"
        mv "$img.tmp" "$img"
    fi
done
cat "$LAYERS"/*.erofs >/dev/null

echo "base layer: $(du -b "$LAYERS/l000.erofs" | cut -f1) bytes;" \
    "chain of $max: $(cat "$LAYERS"/*.erofs | wc -c) bytes of layers"
echo "machine: $(nproc) cores, $(uname -r), $(mkfs.erofs --version 2>&1 | head -n1)"

# time_cmd NAME CMD... : one run, appends "wall rss" to $OUT/NAME.times
time_cmd() {
    local name=$1
    shift
    rm -f "$OUT"/*.erofs "$OUT"/*.vmdk
    sync
    /usr/bin/time -f "%e %M" -o "$OUT/$name.one" "$@" >/dev/null 2>"$OUT/$name.err" || {
        cat "$OUT/$name.err" >&2
        exit 1
    }
    cat "$OUT/$name.one" >>"$OUT/$name.times"
}

all=("$LAYERS"/l*.erofs)
rm -f "$OUT"/*.times
for _ in $(seq "$RUNS"); do
    for n in "${CHAINS[@]}"; do
        chain=("${all[@]:0:n}")
        time_cmd "ours-$n" "$BIN" merge --out "$OUT/o.erofs" --vmdk "$OUT/o.vmdk" "${chain[@]}"
        time_cmd "mkfs-$n" mkfs.erofs --quiet --ovlfs-strip=1 -T0 --vmdk-desc="$OUT/m.vmdk" \
            "$OUT/m.erofs" "${chain[@]}"
    done
done

python3 - "$OUT" "${CHAINS[@]}" <<'PY'
import statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
chains = sys.argv[2:]
def load(n):
    rows = [l.split() for l in (out / f"{n}.times").read_text().splitlines() if l.strip()]
    return [float(r[0]) for r in rows], [int(r[1]) for r in rows]
print("\n| command | layers | runs | wall min (s) | wall median (s) | peak RSS median (MiB) |")
print("|---|---|---|---|---|---|")
for c in chains:
    for tool, label in (("ours", "erofs-snapshotter merge"), ("mkfs", "mkfs.erofs (rebuild)")):
        w, r = load(f"{tool}-{c}")
        print(f"| {label} | {c} | {len(w)} | {min(w):.3f} | {statistics.median(w):.3f} | {statistics.median(r)/1024:.1f} |")
print("\n| layers | mkfs.erofs / ours, median wall |")
print("|---|---|")
for c in chains:
    m = statistics.median(load(f"mkfs-{c}")[0])
    o = statistics.median(load(f"ours-{c}")[0])
    print(f"| {c} | {m / o:.2f}x faster |")
PY
