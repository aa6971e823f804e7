#!/usr/bin/env bash
# Print a containerd 2.x configuration for a private instance: everything
# below DIR, no CRI (nor the plugins CRI brings along) and no NRI socket,
# erofs-snapshotter's daemon on SNAP_SOCK as proxy snapshotter
# `erofs-snapshotter` (and as proxy differ `erofs-snapshotter-diff` on the
# same socket when that is the DIFFER, then also first in the diff
# service's list), and one transfer-service unpack entry, so that `ctr
# images pull` and `ctr images import` unpack with SNAPSHOTTER and DIFFER.
# The built-in EROFS differ gets reproducible mkfs.erofs options
# (containerd.md §1.2).
#
#   scripts/containerd-config.sh DIR SNAP_SOCK SNAPSHOTTER DIFFER \
#       [--max-concurrent-unpacks N] [--rebase]
#
# --max-concurrent-unpacks and --rebase (the proxy snapshotter's
# capability) enable parallel unpack in containerd >= 2.2; 2.1 ignores
# them. Used by the containerd tests (tests/common/cluster.rs),
# scripts/demo.sh and bench/pull.sh.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 DIR SNAP_SOCK SNAPSHOTTER DIFFER [--max-concurrent-unpacks N] [--rebase]" >&2
    exit 2
fi
dir=$1 sock=$2 snapshotter=$3 differ=$4
shift 4
max_unpacks="" capabilities=""
while [ $# -gt 0 ]; do
    case $1 in
    --max-concurrent-unpacks)
        max_unpacks="  max_concurrent_unpacks = $2"
        shift 2
        ;;
    --rebase)
        capabilities='  capabilities = ["rebase"]'
        shift
        ;;
    *)
        echo "$0: unknown option $1" >&2
        exit 2
        ;;
    esac
done
case $(uname -m) in
x86_64) arch=amd64 ;;
aarch64) arch=arm64 ;;
*) arch=$(uname -m) ;;
esac

cat <<EOF
version = 3
root = "$dir/ctd-root"
state = "$dir/ctd-state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.runtime",
  "io.containerd.cri.v1.images",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = "$dir/ctd.sock"

[ttrpc]
  address = "$dir/ctd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"

[plugins."io.containerd.differ.v1.erofs"]
  mkfs_options = ["-T0", "--mkfs-time", "--sort=none"]

[plugins."io.containerd.transfer.v1.local"]
$max_unpacks

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/$arch"
  snapshotter = "$snapshotter"
  differ = "$differ"

[proxy_plugins.erofs-snapshotter]
  type = "snapshot"
  address = "$sock"
$capabilities
EOF
if [ "$differ" = erofs-snapshotter-diff ]; then
    cat <<EOF

[proxy_plugins.erofs-snapshotter-diff]
  type = "diff"
  address = "$sock"

# Client-side unpack (ctr run of an image not unpacked yet) and Compare
# (ctr snapshots diff) go through the diff service, which tries these in
# order; ours answers Unimplemented for mounts that are not its own.
[plugins."io.containerd.service.v1.diff-service"]
  default = ["erofs-snapshotter-diff", "walking"]
EOF
fi
