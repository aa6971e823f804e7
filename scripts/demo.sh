#!/usr/bin/env bash
# Demo: build the CLI, make a small OCI-style layer from Debian's
# busybox-static (with a whiteout and an opaque directory), convert it to
# EROFS in-process, validate it, mount it read-only and list it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >/dev/null
cargo build --release --locked -p erofs-snapshotter
bin=$PWD/target/release/erofs-snapshotter

work=$(mktemp -d /tmp/erofs-demo.XXXXXX)
mnt=$work/mnt
cleanup() {
    mountpoint -q "$mnt" && umount "$mnt"
    rm -rf "$work"
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
