#!/usr/bin/env bash
# Side-by-side conversion benchmark: our in-process writer against
# mkfs.erofs (erofs-utils >= 1.9.3) on one ~1 GB, ~20k-file layer.
#
#   bash bench/convert.sh [RUNS]      (default 5 runs per command)
#
# The layer (a debootstrap minbase rootfs plus an unpacked tensorflow-cpu
# wheel) is built once and cached in .cache/bench/ by scripts/bench-layer.sh.
# Inputs are read from the page cache (warm); each output is deleted before
# its run so no run pays for unlinking the previous image. Commands run
# in rounds, each command once per round, so drift hits all alike. Prints
# per command the min/median wall time, the median CPU seconds (user +
# system: how much of the two cores it keeps busy) and peak RSS, then
# each comparison as the ratio of the medians and as the median (min-max)
# of its per-round ratios; paste the output into docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
CACHE=$(bash scripts/bench-layer.sh)

# Two builds: `--example` alone would select only the example and leave
# a stale binary in place.
cargo build --release --locked -p erofs-snapshotter --bins >/dev/null 2>&1
cargo build --release --locked -p layer --example inflate >/dev/null 2>&1
BIN=$PWD/target/release/erofs-snapshotter
INFLATE=$PWD/target/release/examples/inflate
OUT=$CACHE/out
mkdir -p "$OUT"
cat "$CACHE/layer.tar" "$CACHE/layer.tar.gz" >/dev/null

echo "layer: $(du -b "$CACHE/layer.tar" | cut -f1) bytes tar," \
    "$(du -b "$CACHE/layer.tar.gz" | cut -f1) bytes gzip," \
    "$(tar -tf "$CACHE/layer.tar" | wc -l) entries"
echo "machine: $(nproc) cores, $(uname -r), $(mkfs.erofs --version 2>&1 | head -n1)"

# time_cmd NAME CMD... : one run, appends "wall rss user sys" to $OUT/NAME.times
time_cmd() {
    local name=$1
    shift
    rm -f "$OUT"/*.erofs
    sync
    /usr/bin/time -f "%e %M %U %S" -o "$OUT/$name.one" "$@" >/dev/null 2>"$OUT/$name.err" || {
        cat "$OUT/$name.err" >&2
        exit 1
    }
    cat "$OUT/$name.one" >>"$OUT/$name.times"
}

# Each compared pair runs back to back (mkfs-gz/ours-gz, ours-gz/inflate,
# inflate/zcat, mkfs-tar/ours-tar), so a ratio taken within one round
# sees the host at one speed.
pairs=(
    "mkfs-gz|sh -c 'zcat $CACHE/layer.tar.gz | mkfs.erofs --quiet --tar=f -Enoinline_data -T0 $OUT/m.erofs'"
    "ours-gz|$BIN convert $CACHE/layer.tar.gz $OUT/o.erofs"
    "ours-inflate|$INFLATE $CACHE/layer.tar.gz"
    "zcat|sh -c 'zcat $CACHE/layer.tar.gz >/dev/null'"
    "mkfs-tar|mkfs.erofs --quiet --tar=f -Enoinline_data -T0 $OUT/m.erofs $CACHE/layer.tar"
    "ours-tar|$BIN convert $CACHE/layer.tar $OUT/o.erofs"
)
rm -f "$OUT"/*.times
for _ in $(seq "$RUNS"); do
    for p in "${pairs[@]}"; do
        name=${p%%|*}
        eval "time_cmd $name ${p#*|}"
    done
done

python3 - "$OUT" <<'PY'
import statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
def load(n):
    rows = [l.split() for l in (out / f"{n}.times").read_text().splitlines() if l.strip()]
    wall = [float(r[0]) for r in rows]
    rss = [int(r[1]) for r in rows]
    cpu = [float(r[2]) + float(r[3]) for r in rows]
    return wall, rss, cpu
names = ["mkfs-gz", "ours-gz", "mkfs-tar", "ours-tar", "zcat", "ours-inflate"]
data = {n: load(n) for n in names}
print(f"\n| command | runs | wall min (s) | wall median (s) | CPU median (s) | peak RSS median (MiB) |")
print("|---|---|---|---|---|---|")
for n in names:
    w, r, c = data[n]
    print(f"| {n} | {len(w)} | {min(w):.2f} | {statistics.median(w):.2f} | {statistics.median(c):.2f} | {statistics.median(r)/1024:.1f} |")
def ratio(a, b):
    """Ratio of the medians, and the median, min and max of the ratios
    within each round (the two ran seconds apart)."""
    of_medians = statistics.median(data[a][0]) / statistics.median(data[b][0])
    rounds = [x / y for x, y in zip(data[a][0], data[b][0])]
    return f"{of_medians:.2f}x | {statistics.median(rounds):.2f}x ({min(rounds):.2f}-{max(rounds):.2f}) |"
print()
print("| comparison | ratio of medians | median of per-round ratios (min-max) |")
print("|---|---|---|")
print(f"| zcat \\| mkfs.erofs --tar=f  /  ours from .tar.gz | {ratio('mkfs-gz','ours-gz')}")
print(f"| mkfs.erofs --tar=f  /  ours from .tar | {ratio('mkfs-tar','ours-tar')}")
print(f"| ours from .tar.gz  /  our inflate alone | {ratio('ours-gz','ours-inflate')}")
print(f"| zcat alone  /  our inflate alone | {ratio('zcat','ours-inflate')}")
PY
