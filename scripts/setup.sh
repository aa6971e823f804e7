#!/usr/bin/env bash
# Install everything the erofs-snapshotter tests need on a Debian bookworm
# machine (run as root, or via sudo).
#
#   * Debian trixie + sid apt sources (deb + deb-src), pinned low so bookworm
#     stays the default.
#   * Tools and -dev libraries from bookworm.
#   * erofs-utils (>= 1.9.3) built from Debian sid's source package and
#     installed to /opt/erofs-utils, linked into /usr/local/bin.
#   * containerd 2.x from sid, unpacked (not installed) into /opt/containerd.
#   * Go 1.24 from trixie, unpacked into /opt/go124.
#   * cargo-fuzz, only when SETUP_FUZZ=1.
#
# Idempotent: every step checks whether its result is already in place and
# skips itself if so, so a second run only verifies and prints versions.
#
# Environment:
#   EROFS_SNAP_CACHE   download/build directory (default /var/cache/erofs-snapshotter)
#   SETUP_JOBS         parallel make jobs for erofs-utils (default 2)
#   SETUP_APT_UPDATE=1 force `apt-get update` even when the lists look fresh
#   SETUP_FUZZ=1       also install cargo-fuzz (needs a nightly toolchain to use)
set -euo pipefail
set -o errtrace

CACHE_DIR="${EROFS_SNAP_CACHE:-/var/cache/erofs-snapshotter}"
JOBS="${SETUP_JOBS:-2}"

EROFS_PREFIX=/opt/erofs-utils
EROFS_MIN_VERSION=1.9.3
CONTAINERD_PREFIX=/opt/containerd
GO_SERIES=1.24
GO_PREFIX=/opt/go124
GO_ROOT="$GO_PREFIX/usr/lib/go-$GO_SERIES"

APT_SOURCES_FILE=/etc/apt/sources.list.d/erofs-snapshotter-trixie-sid.sources
APT_PREFS_FILE=/etc/apt/preferences.d/erofs-snapshotter-trixie-sid
APT_LISTS_MAX_AGE_DAYS=3

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

STEP=init
log() { printf '[setup:%s] %s\n' "$STEP" "$*"; }
warn() { printf '[setup:%s] WARNING: %s\n' "$STEP" "$*" >&2; }
die() {
    printf '[setup:%s] ERROR: %s\n' "$STEP" "$*" >&2
    exit 1
}
step() {
    STEP=$1
    shift
    printf '\n[setup:%s] ==== %s\n' "$STEP" "$*"
}
# shellcheck disable=SC2154 # rc is assigned inside the trap string
trap 'rc=$?; printf "[setup:%s] FAILED (exit %s) at line %s: %s\n" "$STEP" "$rc" "$LINENO" "$BASH_COMMAND" >&2' ERR

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo --preserve-env=EROFS_SNAP_CACHE,SETUP_JOBS,SETUP_APT_UPDATE,SETUP_FUZZ \
            bash "$0" "$@"
    fi
    die "must run as root (or have sudo)"
fi

# version_ge A B: true when Debian version A >= B.
version_ge() { dpkg --compare-versions "$1" ge "$2"; }

# First dotted version number in the given text ("mkfs.erofs 1.9.3" -> 1.9.3).
first_version() { grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' <<<"$1" | head -n1 || true; }

# write_if_changed PATH CONTENT: returns 0 when the file was (re)written.
write_if_changed() {
    local path=$1 content=$2
    if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then
        return 1
    fi
    printf '%s\n' "$content" >"$path.tmp.$$"
    chmod 0644 "$path.tmp.$$"
    mv -f "$path.tmp.$$" "$path"
    return 0
}

# is_installed PKG: the package is fully installed per dpkg.
is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# Version of PKG offered by the suite/codename REL ("sid", "trixie"), looked
# up in $MADISON (apt-cache madison output, fetched once: each apt-cache call
# costs ~2s).
MADISON=""
suite_version() {
    local pkg=$1 rel=$2
    printf '%s\n' "$MADISON" |
        awk -F'|' -v pkg="$pkg" -v rel="$rel" '
            !found && $1 ~ ("^ *" pkg " *$") && $3 ~ ("[ /]" rel "/") && $3 ~ /Packages/ { gsub(/ /, "", $2); print $2; found = 1 }'
}

# relocate_symlinks TREE PREFIX: TREE is unpacked now but will live at
# PREFIX; repoint absolute symlinks (e.g. /usr/share/go-1.24/src) into PREFIX.
relocate_symlinks() {
    local tree=$1 prefix=$2 link target
    while IFS= read -r -d '' link; do
        target=$(readlink "$link")
        case $target in
        /*)
            if [ -e "$tree$target" ] || [ -L "$tree$target" ]; then
                ln -sfn "$prefix$target" "$link"
            fi
            ;;
        esac
    done < <(find "$tree" -type l -print0)
}

# unpack_debs_into PREFIX STAMP PKG/SUITE...: apt-get download the packages
# into CACHE_DIR/debs and dpkg -x them into a fresh copy of PREFIX that then
# replaces the old one. STAMP goes to PREFIX/.setup-stamp.
unpack_debs_into() {
    local prefix=$1 stamp=$2
    shift 2
    local debdir="$CACHE_DIR/debs" tmp spec pkg deb
    mkdir -p "$debdir"
    chown _apt "$debdir" 2>/dev/null || true
    # leftovers of an interrupted run
    rm -rf "$(dirname "$prefix")/.$(basename "$prefix").tmp."*
    tmp=$(mktemp -d "$(dirname "$prefix")/.$(basename "$prefix").tmp.XXXXXX")
    for spec in "$@"; do
        pkg=${spec%%/*}
        rm -f "$debdir/${pkg}"_*.deb
        if ! (cd "$debdir" && apt-get download -q "$spec"); then
            rm -rf "$tmp"
            die "apt-get download $spec failed (try SETUP_APT_UPDATE=1)"
        fi
        deb=$(ls -1 "$debdir/${pkg}"_*.deb | head -n1)
        log "unpacking $(basename "$deb") into $prefix"
        dpkg -x "$deb" "$tmp"
    done
    relocate_symlinks "$tmp" "$prefix"
    printf '%s\n' "$stamp" >"$tmp/.setup-stamp"
    chmod 0755 "$tmp"
    rm -rf "$prefix"
    mv "$tmp" "$prefix"
}

#############################################################################
step apt-sources "Debian trixie + sid sources (pinned low)"

# Reuse the mirror that the existing configuration uses for this release.
. /etc/os-release
HOST_CODENAME=${VERSION_CODENAME:-bookworm}
MIRROR=$(apt-get indextargets --format '$(TARGET_OF) $(RELEASE) $(REPO_URI)' 2>/dev/null |
    awk -v rel="$HOST_CODENAME" '!found && $1 == "deb" && $2 == rel { print $3; found = 1 }')
if [ -z "$MIRROR" ]; then
    # Fallback: parse the source files directly.
    MIRROR=$(
        {
            cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
                sed -E 's/\[[^]]*\]//' | awk '$1 == "deb" { print $2 }'
            cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
                awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }'
        } | grep -E '/debian/?$' | head -n1 || true
    )
fi
[ -n "$MIRROR" ] || die "could not find the Debian mirror used by /etc/apt/sources.list*"
MIRROR=${MIRROR%/}
log "mirror: $MIRROR (from the existing $HOST_CODENAME sources)"

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
signed_by=""
[ -f "$KEYRING" ] && signed_by="Signed-By: $KEYRING"

sources_content="# Managed by erofs-snapshotter scripts/setup.sh: newer Debian suites for
# packages bookworm lacks (erofs-utils source, containerd 2.x, Go 1.24).
# Pinned low in $APT_PREFS_FILE.
Types: deb deb-src
URIs: $MIRROR
Suites: trixie
Components: main
$signed_by

Types: deb deb-src
URIs: $MIRROR
Suites: sid
Components: main
$signed_by"

prefs_content="# Managed by erofs-snapshotter scripts/setup.sh: keep $HOST_CODENAME the default.
Package: *
Pin: release n=trixie
Pin-Priority: 100

Package: *
Pin: release n=sid
Pin-Priority: 50"

need_update=0
if write_if_changed "$APT_SOURCES_FILE" "$sources_content"; then
    log "wrote $APT_SOURCES_FILE"
    need_update=1
else
    log "$APT_SOURCES_FILE up to date"
fi
mkdir -p "$(dirname "$APT_PREFS_FILE")"
if write_if_changed "$APT_PREFS_FILE" "$prefs_content"; then
    log "wrote $APT_PREFS_FILE"
    need_update=1
else
    log "$APT_PREFS_FILE up to date"
fi

# Are the lists for all three suites there, and was our last successful
# update recent? (The lists' own mtimes are the server's Last-Modified, so we
# keep a stamp of our own.)
APT_STAMP="$CACHE_DIR/.apt-update-stamp"
for rel in "$HOST_CODENAME" trixie sid; do
    if ! ls /var/lib/apt/lists/*_dists_"${rel}"_InRelease >/dev/null 2>&1; then
        log "no apt lists for $rel yet"
        need_update=1
    fi
done
if ! ls /var/lib/apt/lists/*_dists_sid_main_source_Sources* >/dev/null 2>&1; then
    log "no deb-src lists for sid yet"
    need_update=1
fi
if [ ! -f "$APT_STAMP" ]; then
    log "no record of an apt-get update by this script"
    need_update=1
elif [ -n "$(find "$APT_STAMP" -mtime +"$APT_LISTS_MAX_AGE_DAYS")" ]; then
    log "last apt-get update more than $APT_LISTS_MAX_AGE_DAYS days ago"
    need_update=1
fi
[ "${SETUP_APT_UPDATE:-0}" = 1 ] && need_update=1

if [ "$need_update" = 1 ]; then
    log "apt-get update"
    apt-get update -q
    mkdir -p "$CACHE_DIR"
    touch "$APT_STAMP"
else
    log "apt lists fresh (updated $(date -r "$APT_STAMP" '+%F %T')); skipping apt-get update (SETUP_APT_UPDATE=1 forces it)"
fi

# Sanity: bookworm must still win for ordinary packages.
cand=$(apt-cache policy e2fsprogs | awk '/Candidate:/ { print $2 }')
log "e2fsprogs candidate: $cand (should be the $HOST_CODENAME version)"

#############################################################################
step apt-install "packages from $HOST_CODENAME"

PACKAGES=(
    # filesystem / image tools
    e2fsprogs debootstrap attr busybox-static util-linux file qemu-utils
    # compression
    zstd gzip pigz xz-utils
    # build toolchain (erofs-utils and -sys crates)
    build-essential dpkg-dev pkg-config autoconf automake libtool
    # erofs-utils build dependencies, by hand from bookworm (sid's
    # build-dep would drag in sid packages)
    uuid-dev liblz4-dev liblzma-dev zlib1g-dev libzstd-dev libdeflate-dev
    # misc
    python3 protobuf-compiler ca-certificates
    # OCI / container tooling
    skopeo docker-registry runc
)

missing=()
for p in "${PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    log "all ${#PACKAGES[@]} packages already installed"
else
    log "installing: ${missing[*]}"
    # Don't let maintainer scripts start daemons (docker-registry, ...).
    temp_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        temp_policy=1
    fi
    apt_rc=0
    apt-get install -y -q --no-install-recommends "${missing[@]}" || apt_rc=$?
    [ "$temp_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$apt_rc" = 0 ] || die "apt-get install failed ($apt_rc)"
fi

#############################################################################
step erofs-utils "erofs-utils >= $EROFS_MIN_VERSION from sid source into $EROFS_PREFIX"

installed_erofs_version() {
    local out
    [ -x "$EROFS_PREFIX/bin/mkfs.erofs" ] || return 0
    out=$("$EROFS_PREFIX/bin/mkfs.erofs" --version 2>&1 || true)
    first_version "$out"
}

have=$(installed_erofs_version)
if [ -n "$have" ] && version_ge "$have" "$EROFS_MIN_VERSION"; then
    log "already installed: $have (>= $EROFS_MIN_VERSION); skipping build"
else
    [ -n "$have" ] && log "installed version $have is too old; rebuilding"
    sid_src=$(apt-cache showsrc erofs-utils 2>/dev/null |
        awk '/^Version:/ { print $2 }' | sort -V | tail -n1 || true)
    log "newest erofs-utils source known to apt: ${sid_src:-none}"
    build_dir="$CACHE_DIR/erofs-utils-build"
    rm -rf "$build_dir"
    mkdir -p "$build_dir"
    # _apt must be able to write here, or apt warns and downloads unsandboxed.
    chown _apt "$build_dir" 2>/dev/null || true
    (cd "$build_dir" && apt-get source -q erofs-utils/sid)
    src=$(find "$build_dir" -mindepth 1 -maxdepth 1 -type d -name 'erofs-utils-*' | head -n1)
    [ -n "$src" ] || die "apt-get source did not unpack erofs-utils"
    deb_version=$(cd "$src" && dpkg-parsechangelog -S Version)
    upstream=${deb_version#*:}
    upstream=${upstream%-*}
    upstream=${upstream%%+*}
    upstream=${upstream%%~*}
    log "sid source: erofs-utils $deb_version (upstream $upstream) in $src"
    version_ge "$upstream" "$EROFS_MIN_VERSION" ||
        die "sid has erofs-utils $upstream < $EROFS_MIN_VERSION"

    cd "$src"
    log "autogen.sh"
    ./autogen.sh >"$build_dir/autogen.log" 2>&1 || {
        tail -n 30 "$build_dir/autogen.log" >&2
        die "autogen.sh failed"
    }

    cfg_help=$(./configure --help)
    has_opt() { grep -qE -- "(^|[[:space:]])$1([=[:space:]]|$)" <<<"$cfg_help"; }
    have_pc() { pkg-config --exists "$1" 2>/dev/null; }
    cfg=(--prefix="$EROFS_PREFIX")
    # opt_if OPTION CONDITION...: add OPTION when configure knows it and the
    # condition (a command) succeeds.
    # Features whose default is "auto" are listed by --help only in their
    # --disable-X form; configure accepts --enable-X for them too (and then
    # fails if the library is missing instead of silently dropping it).
    known_opt() {
        has_opt "$1" || has_opt "${1/#--enable-/--disable-}" ||
            has_opt "${1/#--disable-/--enable-}" ||
            has_opt "${1/#--with-/--without-}" || has_opt "${1/#--without-/--with-}"
    }
    opt_if() {
        local opt=$1
        shift
        known_opt "${opt%%=*}" || return 0
        if "$@"; then cfg+=("$opt"); fi
    }
    # compression: lz4 / lzma / zstd / deflate / zlib when the libs are there
    opt_if --enable-lz4 have_pc liblz4
    opt_if --enable-lzma have_pc liblzma
    opt_if --with-libzstd have_pc libzstd
    opt_if --with-libdeflate have_pc libdeflate
    opt_if --with-zlib have_pc zlib
    opt_if --with-uuid have_pc uuid
    opt_if --enable-multithreading true
    # Explicitly off, so the result does not depend on which -dev packages
    # happen to be on the machine: FUSE (erofsfuse), and features needing
    # libraries bookworm lacks or the tests do not use: Intel QPL, SELinux
    # labels, S3/OCI remote input (libcurl/openssl/libxml2/json-c), ublk and
    # fanotify backends (libnl3/liburing), system libxxhash (erofs-utils falls
    # back to its bundled xxhash).
    for o in --disable-fuse --without-qpl --without-selinux --without-libcurl \
        --without-openssl --without-libxml2 --without-json-c --without-libnl3 \
        --without-xxhash --disable-s3 --disable-oci --disable-ublk \
        --disable-fanotify; do
        known_opt "$o" && cfg+=("$o")
    done
    log "configure ${cfg[*]}"
    ./configure "${cfg[@]}" >"$build_dir/configure.log" 2>&1 || {
        tail -n 40 "$build_dir/configure.log" >&2
        die "configure failed (see $build_dir/configure.log)"
    }
    log "make -j$JOBS"
    make -j"$JOBS" >"$build_dir/make.log" 2>&1 || {
        tail -n 40 "$build_dir/make.log" >&2
        die "make failed (see $build_dir/make.log)"
    }
    log "make install"
    rm -rf "$EROFS_PREFIX"
    make install >"$build_dir/install.log" 2>&1 || {
        tail -n 40 "$build_dir/install.log" >&2
        die "make install failed"
    }
    printf '%s\n' "$deb_version" >"$EROFS_PREFIX/.setup-stamp"
    cp "$build_dir/configure.log" "$EROFS_PREFIX/.configure.log"
    cd /
    have=$(installed_erofs_version)
    version_ge "${have:-0}" "$EROFS_MIN_VERSION" ||
        die "built mkfs.erofs reports '${have}', expected >= $EROFS_MIN_VERSION"
fi

for b in mkfs.erofs fsck.erofs dump.erofs; do
    [ -x "$EROFS_PREFIX/bin/$b" ] || die "$EROFS_PREFIX/bin/$b missing"
    if [ "$(readlink /usr/local/bin/$b 2>/dev/null || true)" != "$EROFS_PREFIX/bin/$b" ]; then
        ln -sfn "$EROFS_PREFIX/bin/$b" "/usr/local/bin/$b"
        log "linked /usr/local/bin/$b -> $EROFS_PREFIX/bin/$b"
    fi
done
log "mkfs.erofs --version: $(/usr/local/bin/mkfs.erofs --version 2>&1 | head -n1)"
fsck_help=$(/usr/local/bin/fsck.erofs --help 2>&1 || true)
grep -q -- '--extract' <<<"$fsck_help" || die "fsck.erofs --help does not mention --extract"
log "fsck.erofs supports --extract"
# Functional smoke test: every compressor round-trips through fsck --extract.
smoke="$CACHE_DIR/erofs-smoke"
rm -rf "$smoke"
mkdir -p "$smoke/in/dir"
seq 1 20000 >"$smoke/in/dir/numbers.txt"
printf 'hello\n' >"$smoke/in/hello"
ln -s dir/numbers.txt "$smoke/in/link"
compressors=()
for z in lz4 lz4hc lzma deflate zstd; do
    rm -rf "$smoke/out"
    if /usr/local/bin/mkfs.erofs --quiet -z"$z" "$smoke/img-$z" "$smoke/in" >"$smoke/mkfs.log" 2>&1 &&
        /usr/local/bin/fsck.erofs --extract="$smoke/out" "$smoke/img-$z" >"$smoke/fsck.log" 2>&1 &&
        diff -r --no-dereference "$smoke/in" "$smoke/out" >/dev/null; then
        compressors+=("$z")
    else
        cat "$smoke/mkfs.log" "$smoke/fsck.log" >&2 || true
        die "mkfs.erofs -z$z / fsck.erofs --extract round trip failed"
    fi
done
rm -rf "$smoke"
log "mkfs.erofs -> fsck.erofs --extract round trip OK for: ${compressors[*]}"
on_path=$(command -v mkfs.erofs || true)
[ "$on_path" = /usr/local/bin/mkfs.erofs ] ||
    warn "mkfs.erofs on PATH is '$on_path', not /usr/local/bin/mkfs.erofs"

#############################################################################
step containerd "containerd 2.x from sid into $CONTAINERD_PREFIX (not started)"

MADISON=$(apt-cache madison containerd "golang-$GO_SERIES-go" "golang-$GO_SERIES-src" 2>/dev/null || true)
ctd_version=$(suite_version containerd sid)
[ -n "$ctd_version" ] || die "sid has no containerd package (apt lists stale? SETUP_APT_UPDATE=1)"
log "sid containerd version: $ctd_version"
case ${ctd_version#*:} in
2.*) ;;
*) die "sid containerd is $ctd_version, expected 2.x" ;;
esac
if [ -x "$CONTAINERD_PREFIX/usr/bin/containerd" ] &&
    [ "$(cat "$CONTAINERD_PREFIX/.setup-stamp" 2>/dev/null || true)" = "containerd=$ctd_version" ]; then
    log "already unpacked; skipping"
else
    unpack_debs_into "$CONTAINERD_PREFIX" "containerd=$ctd_version" containerd/sid
fi
for b in containerd ctr; do
    [ -x "$CONTAINERD_PREFIX/usr/bin/$b" ] || die "$CONTAINERD_PREFIX/usr/bin/$b missing"
done
log "$("$CONTAINERD_PREFIX/usr/bin/containerd" --version)"
log "$("$CONTAINERD_PREFIX/usr/bin/ctr" --version)"

#############################################################################
step go "Go $GO_SERIES from trixie into $GO_PREFIX"

go_version=$(suite_version "golang-$GO_SERIES-go" trixie)
src_version=$(suite_version "golang-$GO_SERIES-src" trixie)
[ -n "$go_version" ] && [ -n "$src_version" ] ||
    die "trixie has no golang-$GO_SERIES-go/-src (apt lists stale? SETUP_APT_UPDATE=1)"
log "trixie golang-$GO_SERIES-go $go_version, golang-$GO_SERIES-src $src_version"
go_stamp="golang-$GO_SERIES-go=$go_version golang-$GO_SERIES-src=$src_version"
if [ -x "$GO_ROOT/bin/go" ] &&
    [ "$(cat "$GO_PREFIX/.setup-stamp" 2>/dev/null || true)" = "$go_stamp" ]; then
    log "already unpacked; skipping"
else
    unpack_debs_into "$GO_PREFIX" "$go_stamp" \
        "golang-$GO_SERIES-go/trixie" "golang-$GO_SERIES-src/trixie"
fi
cat >"$GO_PREFIX/env.sh.tmp" <<EOF
# Source this to use Go $GO_SERIES from $GO_PREFIX (written by scripts/setup.sh).
export GOROOT=$GO_ROOT
export PATH=$GO_ROOT/bin:\$PATH
export GOTOOLCHAIN=local
EOF
mv -f "$GO_PREFIX/env.sh.tmp" "$GO_PREFIX/env.sh"

go_env=(env GOROOT="$GO_ROOT" PATH="$GO_ROOT/bin:$PATH" GOFLAGS=-mod=mod
    GOTOOLCHAIN=local GOPROXY=off GOCACHE="$CACHE_DIR/go-build"
    GOPATH="$CACHE_DIR/gopath")
log "$("${go_env[@]}" "$GO_ROOT/bin/go" version)"
hello="$CACHE_DIR/go-hello"
rm -rf "$hello"
mkdir -p "$hello"
cat >"$hello/go.mod" <<EOF
module example.invalid/hello

go $GO_SERIES
EOF
cat >"$hello/main.go" <<'EOF'
package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
)

func main() {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := []byte("hello from archive/tar\n")
	if err := tw.WriteHeader(&tar.Header{Name: "hello.txt", Mode: 0o644, Size: int64(len(body))}); err != nil {
		panic(err)
	}
	if _, err := tw.Write(body); err != nil {
		panic(err)
	}
	if err := tw.Close(); err != nil {
		panic(err)
	}
	tr := tar.NewReader(&buf)
	hdr, err := tr.Next()
	if err != nil {
		panic(err)
	}
	data, err := io.ReadAll(tr)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s: %s", hdr.Name, data)
}
EOF
(cd "$hello" && "${go_env[@]}" "$GO_ROOT/bin/go" build -o hello .) || die "go build of archive/tar hello-world failed"
out=$("$hello/hello")
[ "$out" = "hello.txt: hello from archive/tar" ] || die "hello-world printed '$out'"
log "archive/tar hello-world builds and runs: $out"

#############################################################################
step cargo-fuzz "cargo-fuzz (SETUP_FUZZ=1 only)"

if [ "${SETUP_FUZZ:-0}" != 1 ]; then
    log "SETUP_FUZZ not set; skipping"
else
    CARGO=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
    RUSTUP=$(command -v rustup || echo "$HOME/.cargo/bin/rustup")
    [ -x "$CARGO" ] || die "cargo not found"
    have_nightly=0
    if [ -x "$RUSTUP" ] && "$RUSTUP" toolchain list | grep -q '^nightly'; then
        have_nightly=1
        log "nightly toolchain present"
    elif [ -x "$RUSTUP" ] && timeout 120 "$RUSTUP" toolchain install nightly --profile minimal; then
        have_nightly=1
        log "installed nightly toolchain"
    fi
    if [ "$have_nightly" != 1 ]; then
        log "no nightly toolchain could be obtained; not installing cargo-fuzz (it needs nightly)"
    elif "$CARGO" fuzz --version >/dev/null 2>&1; then
        log "already installed: $("$CARGO" fuzz --version 2>&1)"
    else
        log "cargo install --locked cargo-fuzz"
        "$CARGO" install --locked cargo-fuzz
        log "installed: $("$CARGO" fuzz --version 2>&1); run it as 'cargo +nightly fuzz ...'"
    fi
fi

#############################################################################
step summary "installed versions"

ver() { # LABEL COMMAND...
    local label=$1 out
    shift
    out=$("$@" 2>&1 | head -n1 || true)
    printf '  %-22s %s\n' "$label" "${out:-?}"
}
ver mkfs.erofs /usr/local/bin/mkfs.erofs --version
ver "erofs-utils (deb src)" cat "$EROFS_PREFIX/.setup-stamp"
ver containerd "$CONTAINERD_PREFIX/usr/bin/containerd" --version
ver ctr "$CONTAINERD_PREFIX/usr/bin/ctr" --version
ver go "$GO_ROOT/bin/go" version
ver runc runc --version
ver skopeo skopeo --version
ver docker-registry docker-registry --version
ver protoc protoc --version
ver busybox sh -c 'busybox | head -n1'
ver debootstrap sh -c 'dpkg-query -W -f="\${Version}" debootstrap'
ver mke2fs sh -c 'mke2fs -V 2>&1 | head -n1'
ver qemu-img qemu-img --version
ver zstd zstd --version
ver pigz pigz --version
ver setfattr setfattr --version
ver python3 /usr/bin/python3 --version
ver gcc gcc --version
log "paths: $EROFS_PREFIX/bin/{mkfs,fsck,dump}.erofs (linked in /usr/local/bin),"
log "       $CONTAINERD_PREFIX/usr/bin/{containerd,ctr}, $GO_ROOT/bin/go (source $GO_PREFIX/env.sh)"
log "done in ${SECONDS}s"
