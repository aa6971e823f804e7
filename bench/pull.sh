#!/usr/bin/env bash
# Pull benchmark: `ctr images pull` from a registry on loopback through
# containerd's transfer service, then the first `ctr run` of a trivial
# command, for three snapshotter/differ pairs:
#   overlayfs  containerd's overlayfs snapshotter + walking differ
#   erofs      containerd's built-in EROFS snapshotter + differ (mkfs.erofs
#              -T0 --mkfs-time --sort=none)
#   ours       erofs-snapshotter's snapshotter + differ (proxy plugins),
#              reading blobs from containerd's content directory
#              (`content_dir`)
#
#   bash bench/pull.sh [RUNS]      (default 3 runs per image and mode)
#
# Images (tests/common/images.rs, built by examples/test_images.rs):
#   small  the debootstrap minbase rootfs, one gzip layer (scripts/corpus.sh)
#   many   42 small generated gzip layers
#   large  minbase + tensorflow-cpu, one 1.18 GB layer (scripts/bench-layer.sh)
# Every run gets a fresh containerd root and state (and a fresh daemon
# root for ours); modes alternate within each run so drift hits all alike.
# The registry's blobs stay in the page cache (warm), as do the binaries.
# Prints min/median per image and mode, median ratios, and our daemon's
# per-stage Apply times (its `msg=apply` log lines, summed per pull).
# Environment: MODES (default "overlayfs erofs ours"), IMAGES (default
# "small many large"), OURS_CONFIG (extra lines for our daemon's
# configuration, e.g. 'layer_sync = "sync"'), RUN ("start": time only the
# start of a detached container, `ctr run -d … sleep 60`, instead of
# `ctr run --rm … true` with its teardown), CARGO_TARGET_DIR.
# Needs root, containerd 2.x, runc, skopeo and docker-registry
# (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
MODES=${MODES:-overlayfs erofs ours}
IMAGES=${IMAGES:-small many large}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
CTD_BIN=/opt/containerd/usr/bin
export PATH=$CTD_BIN:$PATH

CORPUS=$(bash scripts/corpus.sh)
BENCH_LAYER=$(bash scripts/bench-layer.sh)
cargo build --release --locked -p erofs-snapshotter --bin erofs-snapshotter \
    --example test_images >/dev/null 2>&1
BIN=$TARGET/release/erofs-snapshotter

WORK=$(mktemp -d /tmp/erofs-bench-pull.XXXXXX)
OUT=$WORK/out
mkdir -p "$OUT"
own_run_dir=0
[ -d /run/containerd ] || own_run_dir=1
registry_pid="" ctd_pid="" snapd_pid="" run_dir=""

# Our processes by pid, leftover shims of our containerd by their
# -address argument, mounts below the run directory deepest first.
stop_run() {
    local pid
    for pid in $ctd_pid $snapd_pid; do
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    ctd_pid="" snapd_pid=""
    [ -n "$run_dir" ] || return 0
    for pid in $(grep -l -s -F "$run_dir/ctd.sock" /proc/[0-9]*/cmdline | cut -d/ -f3); do
        tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q '^[^ ]*containerd-shim-runc-v2 ' &&
            kill -9 "$pid" 2>/dev/null || true
    done
    awk -v d="$run_dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo |
        sort -r | while read -r mp; do umount "$mp" 2>/dev/null || umount -l "$mp"; done
    rm -rf "$run_dir"
    run_dir=""
}
cleanup() {
    stop_run
    [ -z "$registry_pid" ] || { kill "$registry_pid"; wait "$registry_pid" 2>/dev/null || true; }
    rmdir /sys/fs/cgroup/bench-pull 2>/dev/null || true
    if [ "$own_run_dir" = 1 ]; then
        rmdir /run/containerd/runc/bench-pull /run/containerd/runc /run/containerd/s \
            /run/containerd 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# A port the kernel just handed out, for the registry.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG=127.0.0.1:$port
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: $REG
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 300); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://$REG/v2/')" 2>/dev/null && break
    sleep 0.1
done

# shellcheck disable=SC2086 # IMAGES is a list
"$TARGET/release/examples/test_images" --work "$WORK/images" --corpus "$CORPUS" \
    --bench "$BENCH_LAYER" $IMAGES >"$WORK/images.txt"
while read -r name layout layers; do
    skopeo --insecure-policy copy --quiet --dest-tls-verify=false --preserve-digests \
        "oci:$layout" "docker://$REG/$name:1"
    size=$(du -sbL "$layout/blobs" | cut -f1)
    echo "image $name: $layers layers, $size bytes of blobs"
done <"$WORK/images.txt"
echo "machine: $(nproc) cores, $(uname -r), $(containerd --version | cut -d' ' -f3), $(mkfs.erofs --version 2>&1 | head -n1)"

snapshotter_of() {
    case $1 in
    overlayfs) echo "overlayfs walking" ;;
    erofs) echo "erofs erofs" ;;
    ours) echo "erofs-snapshotter erofs-snapshotter-diff" ;;
    esac
}

# one_run IMAGE MODE: fresh containerd (and daemon), pull, run; appends
# "pull_s run_s" to $OUT/IMAGE.MODE and, for ours, the summed apply stages.
one_run() {
    local image=$1 mode=$2 snapshotter differ t0 t1 t2
    read -r snapshotter differ <<<"$(snapshotter_of "$mode")"
    run_dir=$WORK/run
    mkdir -p "$run_dir"
    if [ "$mode" = ours ]; then
        # Blobs straight from containerd's content store, as a node
        # configured with content_dir reads them (docs/configuration.md).
        printf 'content_dir = "%s"\n%s\n' "$run_dir/ctd-root/io.containerd.content.v1.content" \
            "${OURS_CONFIG:-}" >"$run_dir/snapd.toml"
        "$BIN" serve --config "$run_dir/snapd.toml" --root "$run_dir/snap" \
            --address "$run_dir/snap.sock" --containerd-address "$run_dir/ctd.sock" \
            >"$run_dir/snapd.log" 2>&1 &
        snapd_pid=$!
        for _ in $(seq 300); do [ -S "$run_dir/snap.sock" ] && break; sleep 0.02; done
    fi
    bash scripts/containerd-config.sh "$run_dir" "$run_dir/snap.sock" \
        "$snapshotter" "$differ" >"$run_dir/containerd.toml"
    containerd --config "$run_dir/containerd.toml" >"$run_dir/containerd.log" 2>&1 &
    ctd_pid=$!
    local ctr=(ctr -a "$run_dir/ctd.sock" -n bench-pull)
    for _ in $(seq 300); do "${ctr[@]}" version >/dev/null 2>&1 && break; sleep 0.05; done
    sync
    t0=$(date +%s%N)
    "${ctr[@]}" images pull --plain-http --snapshotter "$snapshotter" "$REG/$image:1" \
        >"$run_dir/pull.log" 2>&1 || { tail -5 "$run_dir/pull.log" "$run_dir/snapd.log" >&2 || true; return 1; }
    t1=$(date +%s%N)
    if [ "${RUN:-}" = start ]; then
        # Only the start: the task runs on; its teardown (whose overlay
        # unmount syncs the upper's filesystem) is not timed.
        "${ctr[@]}" run -d --snapshotter "$snapshotter" --fifo-dir "$run_dir/fifo" \
            --runc-root "$run_dir/runc" "$REG/$image:1" bench sleep 60 >/dev/null
        t2=$(date +%s%N)
        "${ctr[@]}" task kill -s SIGKILL bench >/dev/null 2>&1 || true
        for _ in $(seq 100); do
            "${ctr[@]}" task delete bench >/dev/null 2>&1 && break
            sleep 0.1
        done
        "${ctr[@]}" containers delete bench >/dev/null 2>&1 || true
    else
        "${ctr[@]}" run --rm --snapshotter "$snapshotter" --fifo-dir "$run_dir/fifo" \
            --runc-root "$run_dir/runc" "$REG/$image:1" bench true >/dev/null
        t2=$(date +%s%N)
    fi
    echo "$(((t1 - t0) / 1000000)) $(((t2 - t1) / 1000000))" >>"$OUT/$image.$mode"
    if [ "$mode" = ours ]; then
        awk '/ msg=apply / { for (i = 1; i <= NF; i++) { split($i, kv, "=");
                if (kv[1] ~ /_ms$/) s[kv[1]] += kv[2] } }
             /msg=commit / { for (i = 1; i <= NF; i++) { split($i, kv, "=");
                if (kv[1] == "commit_ms") s["commit_ms"] += kv[2] } }
             END { for (k in s) printf "%s=%.0f ", k, s[k]; print "" }' \
            "$run_dir/snapd.log" >>"$OUT/$image.stages"
    fi
    stop_run
}

for _ in $(seq "$RUNS"); do
    for image in $IMAGES; do
        for mode in $MODES; do
            one_run "$image" "$mode" || echo "FAILED: $image $mode (see above)" >&2
        done
    done
done

python3 - "$OUT" "$IMAGES" "$MODES" <<'PY'
import statistics, sys, pathlib
out, images, modes = pathlib.Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
def load(image, mode):
    p = out / f"{image}.{mode}"
    if not p.exists():
        return None
    rows = [l.split() for l in p.read_text().splitlines() if l.strip()]
    pull = [int(r[0]) / 1000 for r in rows]
    run = [int(r[1]) / 1000 for r in rows]
    return pull, run, [p + r for p, r in zip(pull, run)]
data = {(i, m): load(i, m) for i in images for m in modes}
print("\n| image | mode | runs | pull min (s) | pull median (s) | first run min (s) | first run median (s) | pull + run median (s) |")
print("|---|---|---|---|---|---|---|---|")
for i in images:
    for m in modes:
        d = data[(i, m)]
        if d is None:
            print(f"| {i} | {m} | 0 | failed | | | | |")
            continue
        p, r, t = d
        print(f"| {i} | {m} | {len(p)} | {min(p):.2f} | {statistics.median(p):.2f} "
              f"| {min(r):.2f} | {statistics.median(r):.2f} | {statistics.median(t):.2f} |")
if "ours" in modes:
    print("\n| image | pull: ours / erofs | pull: ours / overlayfs | run: ours / erofs "
          "| run: ours / overlayfs | pull + run: ours / erofs | pull + run: ours / overlayfs |")
    print("|---|---|---|---|---|---|---|")
    def ratio(i, m, k):
        a, b = data[(i, "ours")], data.get((i, m))
        if a is None or b is None:
            return "–"
        return f"{statistics.median(a[k]) / statistics.median(b[k]):.2f}"
    for i in images:
        print(f"| {i} | {ratio(i, 'erofs', 0)} | {ratio(i, 'overlayfs', 0)} "
              f"| {ratio(i, 'erofs', 1)} | {ratio(i, 'overlayfs', 1)} "
              f"| {ratio(i, 'erofs', 2)} | {ratio(i, 'overlayfs', 2)} |")
    keys = ["read_ms", "hash_ms", "inflate_ms", "convert_ms", "fsync_ms", "total_ms", "commit_ms"]
    print("\nours, per pull, summed over its layers (median of runs, ms; stages overlap in time):")
    print("\n| image | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for i in images:
        p = out / f"{i}.stages"
        if not p.exists():
            continue
        runs = [dict(kv.split("=") for kv in l.split()) for l in p.read_text().splitlines() if l.strip()]
        med = [statistics.median(float(r.get(k, 0)) for r in runs) for k in keys]
        print(f"| {i} | " + " | ".join(f"{v:.0f}" for v in med) + " |")
PY
