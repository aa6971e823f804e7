#!/usr/bin/env bash
# Demo: build the CLI, make a small OCI-style layer from Debian's
# busybox-static (with a whiteout and an opaque directory), convert it to
# EROFS in-process, validate it, mount it read-only and list it.
# Then the daemon behind a private containerd: a two-layer OCI image is
# imported (containerd's transfer service hands each layer to our differ,
# which streams it from containerd's content store into the snapshot's
# layer.erofs) and run with `ctr run`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >/dev/null
cargo build --release --locked -p erofs-snapshotter
# Cargo's target directory, wherever the caller put it.
target=${CARGO_TARGET_DIR:-$PWD/target}
bin=$target/release/erofs-snapshotter

work=$(mktemp -d /tmp/erofs-demo.XXXXXX)
mnt=$work/mnt
ctd="" ctd_pid="" snapd_pid="" own_run_dir=0
cleanup() {
    if [ -n "$ctd" ]; then ctd_cleanup; fi
    mountpoint -q "$mnt" && umount "$mnt"
    rm -rf "$work"
}
# Stop containerd and our daemon (by their own pids), unmount anything
# left under $ctd (deepest first), remove what runc and the shim created.
ctd_cleanup() {
    if [ -n "$ctd_pid" ] && kill -0 "$ctd_pid" 2>/dev/null; then
        local t c
        for t in $(ctr_ tasks ls -q 2>/dev/null); do
            ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
            ctr_ tasks rm -f "$t" >/dev/null 2>&1 || true
        done
        for c in $(ctr_ containers ls -q 2>/dev/null); do
            ctr_ containers rm "$c" >/dev/null 2>&1 || true
        done
        kill "$ctd_pid" 2>/dev/null || true
        wait "$ctd_pid" 2>/dev/null || true
    fi
    if [ -n "$snapd_pid" ]; then
        kill "$snapd_pid" 2>/dev/null || true
        wait "$snapd_pid" 2>/dev/null || true
    fi
    awk -v d="$ctd/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
    rmdir /sys/fs/cgroup/*/erofs-demo /sys/fs/cgroup/erofs-demo 2>/dev/null || true
    if [ "$own_run_dir" = 1 ]; then
        rmdir /run/containerd/s /run/containerd/runc/erofs-demo /run/containerd/runc \
            /run/containerd 2>/dev/null || true
    fi
}
trap cleanup EXIT

root=$work/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/var/cache"
cp /bin/busybox "$root/bin/busybox"
for app in sh ls cat echo uname; do ln -s busybox "$root/bin/$app"; done
echo "hello from an EROFS layer" > "$root/etc/motd"
chmod 1777 "$root/tmp"
touch "$root/etc/.wh.shadow" "$root/var/cache/.wh..wh..opq"
tar --numeric-owner --format=pax -C "$root" -czf "$work/layer.tar.gz" .

echo "==> convert"
"$bin" convert "$work/layer.tar.gz" "$work/layer.erofs"
echo "==> fsck (ours, then erofs-utils)"
"$bin" fsck "$work/layer.erofs"
fsck.erofs "$work/layer.erofs"
echo "==> inspect"
"$bin" inspect "$work/layer.erofs"
"$bin" inspect --ls /etc "$work/layer.erofs"
echo "==> mount"
mkdir -p "$mnt"
mount -t erofs -o ro "$work/layer.erofs" "$mnt"
ls -l "$mnt" "$mnt/bin" "$mnt/etc"
cat "$mnt/etc/motd"
"$mnt/bin/busybox" echo "busybox runs from the mounted image"

echo
echo "==> containerd: a two-layer image through erofs-snapshotter serve"
ctd_bin=/opt/containerd/usr/bin
for t in containerd ctr containerd-shim-runc-v2; do
    [ -x "$ctd_bin/$t" ] || { echo "missing $ctd_bin/$t (scripts/setup.sh)" >&2; exit 1; }
done
command -v runc >/dev/null || { echo "missing runc (scripts/setup.sh)" >&2; exit 1; }
"$ctd_bin/containerd" --version
# The image builder shared with tests/containerd.rs (tests/common/oci.rs);
# a debug build, which the test build has usually compiled already.
cargo build --locked -p erofs-snapshotter --example oci_image
oci_image=$target/debug/examples/oci_image

ctd=$work/ctd
[ -e /run/containerd ] || own_run_dir=1
mkdir -p "$ctd"
ns=erofs-demo
image=localhost/erofs-demo:1
# Not "erofs": containerd >= 2.1 has a built-in snapshotter of that name
# and refuses (panics on) a proxy plugin with the same id.
snapshotter=erofs-snapshotter
ctr_() { "$ctd_bin/ctr" -a "$ctd/ctd.sock" -n "$ns" "$@"; }

echo "==> image: layer 1 = busybox and files; layer 2 = a change, two whiteouts, an opaque dir"
l1=$ctd/layer1 l2=$ctd/layer2
mkdir -p "$l1/bin" "$l1/etc" "$l1/var/gone-dir" "$l1/opt/old" "$l1/tmp" \
    "$l2/etc" "$l2/var" "$l2/opt/old"
cp /bin/busybox "$l1/bin/busybox"
for app in sh ls cat echo uname; do ln -s busybox "$l1/bin/$app"; done
echo "motd from layer 1" >"$l1/etc/motd"
echo "deleted by layer 2" >"$l1/etc/doomed"
echo "deleted with its directory" >"$l1/var/gone-dir/file"
echo kept >"$l1/var/kept"
echo hidden >"$l1/opt/old/a"
chmod 1777 "$l1/tmp"
echo "motd from layer 2" >"$l2/etc/motd"
touch "$l2/etc/.wh.doomed" "$l2/var/.wh.gone-dir" "$l2/opt/old/.wh..wh..opq"
echo new >"$l2/opt/old/new"
"$oci_image" --name "$image" --out "$ctd/image.tar" "$l1" "$l2"

echo "==> start erofs-snapshotter serve and containerd (logs in $ctd)"
# The configuration the tests use (scripts/containerd-config.sh): our
# daemon as proxy snapshotter and differ on one socket, unpacking with
# both, and our differ first in the diff service's list for client-side
# unpack and Compare.
bash scripts/containerd-config.sh "$ctd" "$ctd/snap.sock" "$snapshotter" "$snapshotter-diff" \
    --rebase >"$ctd/containerd.toml"
"$bin" serve --root "$ctd/snap" --address "$ctd/snap.sock" --containerd-address "$ctd/ctd.sock" \
    >"$ctd/snapshotter.log" 2>&1 &
snapd_pid=$!
for _ in $(seq 100); do [ -S "$ctd/snap.sock" ] && break; sleep 0.1; done
[ -S "$ctd/snap.sock" ] || { cat "$ctd/snapshotter.log"; exit 1; }
PATH=$ctd_bin:$PATH "$ctd_bin/containerd" --config "$ctd/containerd.toml" --log-level debug \
    >"$ctd/containerd.log" 2>&1 &
ctd_pid=$!
for _ in $(seq 200); do ctr_ version >/dev/null 2>&1 && break; sleep 0.1; done
ctr_ version >/dev/null || { tail -n 50 "$ctd/containerd.log"; exit 1; }

echo "==> ctr images import --snapshotter $snapshotter"
ctr_ images import --snapshotter "$snapshotter" "$ctd/image.tar"
ctr_ images ls
ctr_ snapshots --snapshotter "$snapshotter" ls
echo "==> one EROFS image per layer in our root, written by our differ (per-layer timings):"
grep 'msg=apply' "$ctd/snapshotter.log"
for blob in "$ctd"/snap/snapshots/*/layer.erofs; do
    ls -l "$blob"
    "$bin" fsck "$blob"
    fsck.erofs "$blob" >/dev/null && echo "fsck.erofs: ok"
done
top=$(find "$ctd/snap/snapshots" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n | tail -n 1)
echo "layer 2's /etc (the whiteout is a 0:0 character device):"
"$bin" inspect --ls /etc "$ctd/snap/snapshots/$top/layer.erofs"

echo "==> ctr run --rm --snapshotter $snapshotter $image"
ctr_ run --rm --snapshotter "$snapshotter" --fifo-dir "$ctd/fifo" --runc-root "$ctd/runc" \
    "$image" demo /bin/sh -c \
    'uname -sr; cat /etc/motd; ls /etc/doomed 2>&1; ls /var; ls /opt/old; echo ok'

echo "==> Compare: a container changes files; its upper becomes an OCI layer in containerd's content store"
ctr_ run --snapshotter "$snapshotter" --fifo-dir "$ctd/fifo" --runc-root "$ctd/runc" \
    "$image" changed /bin/sh -c 'echo changed >/etc/motd; rm /var/kept; mkdir /new; echo hi >/new/file'
ctr_ tasks rm changed >/dev/null 2>&1 || true
ctr_ snapshots --snapshotter "$snapshotter" diff --keep changed >"$ctd/changed.tar.gz"
diff_digest=sha256:$(sha256sum "$ctd/changed.tar.gz" | cut -d' ' -f1)
grep 'msg=compare' "$ctd/snapshotter.log"
echo "layer $diff_digest (.wh.kept deletes /var/kept):"
tar -tzv --numeric-owner -f "$ctd/changed.tar.gz"
ctr_ containers rm changed
ctr_ content rm "$diff_digest"

echo "==> remove the image; containerd's GC removes the snapshots"
ctr_ images rm --sync "$image"
left() { find "$ctd/snap/snapshots" -mindepth 1 -maxdepth 1 | wc -l; }
mounted() { grep -c " $ctd/snap/" /proc/self/mountinfo || true; }
for _ in $(seq 100); do
    [ "$(left)" = 0 ] && [ "$(mounted)" = 0 ] && break
    sleep 0.1
done
echo "snapshots left: $(left), mounts left: $(mounted)"
[ "$(left)" = 0 ] && [ "$(mounted)" = 0 ]
