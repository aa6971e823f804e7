//! VM-mode merged metadata (`erofs-snapshotter merge`) against the kernel:
//! the fsmeta mounted with its layers as devices must show exactly what
//! overlayfs shows over the same layers mounted one by one; the VMDK disk
//! (as QEMU reads it) must mount on its own, with no `device=` options;
//! erofs-utils' fsck and ours must accept the result; and chains of
//! hundreds of layers must work.
//!
//! Needs root, a kernel with EROFS file-backed mounts (6.12+) and
//! overlayfs, erofs-utils (fsck.erofs, mkfs.erofs) and qemu-img. These
//! tests fail, never skip, when any of that is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Panics unless everything the tests need is there: a skipped VM-mode
/// test would hide a broken merge.
fn prereqs(cmds: &[&str]) {
    assert!(is_root(), "fsmeta tests need root (mount(2))");
    let known = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for f in ["erofs", "overlay"] {
        assert!(
            known
                .lines()
                .any(|l| l.split_whitespace().last() == Some(f)),
            "kernel filesystem {f} missing from /proc/filesystems"
        );
    }
    for c in cmds {
        assert!(
            have(c),
            "{c} not found on PATH (scripts/setup.sh installs it)"
        );
    }
}

/// Convert the tar `build` writes into a layer image `dir/name.erofs`.
fn tar_layer(dir: &Path, name: &str, build: impl FnOnce(&mut TarBuilder)) -> PathBuf {
    let mut t = TarBuilder::new();
    build(&mut t);
    let tar = dir.join(format!("{name}.tar"));
    fs::write(&tar, t.finish()).unwrap();
    let img = dir.join(format!("{name}.erofs"));
    convert_ok(&tar, &img, &[]);
    img
}

/// A member with header fields set by `edit`.
fn member(t: &mut TarBuilder, name: &str, flag: u8, data: &[u8], edit: impl FnOnce(&mut Header)) {
    let mut h = Header::new(name.as_bytes(), flag, data.len() as u64);
    edit(&mut h);
    t.entry_long(h, data);
}

/// Three layers exercising every merge rule: whiteouts, opaque
/// directories (also one in a middle layer under a directory that goes
/// on above), a directory deleted and recreated, files and directories
/// replacing each other, replaced symlinks, hard links partly hidden or
/// replaced above, xattrs, devices, owners, modes and times.
fn rules_chain(dir: &Path) -> Vec<PathBuf> {
    let l1 = tar_layer(dir, "l1", |t| {
        t.dir("./");
        member(t, "etc/", typeflag::DIR, b"", |h| h.mode = 0o750);
        t.pax(&[("SCHILY.xattr.user.k", b"lower value")]);
        t.file("etc/conf", b"lower conf");
        t.file("a/gone", b"gone");
        t.file("a/stay", b"stay");
        t.file("b/old", b"b old");
        t.file("b/sub/deep", b"b deep");
        t.file("rd/x", b"rd x");
        t.file("mid/old", b"mid old");
        t.file("o/lower", b"o lower");
        t.file("x/a", b"x a");
        t.file("f", b"f file");
        t.file("d/sub/g", b"d sub g");
        t.symlink("s", b"one");
        t.symlink("s2", b"two");
        t.file("h1", b"h");
        t.hardlink("h2", "h1");
        t.file("p", b"p");
        t.hardlink("q", "p");
        t.hardlink("r", "p");
        member(t, "dev/null", typeflag::CHAR, b"", |h| {
            h.mode = 0o666;
            h.devmajor = 1;
            h.devminor = 3;
        });
        member(t, "dev/loop0", typeflag::BLOCK, b"", |h| {
            h.mode = 0o660;
            h.gid = 6;
            h.devmajor = 7;
            h.devminor = 0;
        });
        member(t, "fifo", typeflag::FIFO, b"", |_| {});
        t.file("empty", b"");
        t.file("big", &pattern(300_000, 1));
        member(t, "setuid", typeflag::FILE, b"#!/bin/sh\n", |h| {
            h.mode = 0o4755;
            h.uid = 70000;
            h.gid = 1000;
        });
    });
    let l2 = tar_layer(dir, "l2", |t| {
        member(t, "etc/", typeflag::DIR, b"", |h| {
            h.mode = 0o755;
            h.uid = 1000;
            h.mtime = 1_650_000_000;
        });
        t.pax(&[("SCHILY.xattr.user.k", b"upper value")]);
        member(t, "etc/conf", typeflag::FILE, b"upper conf", |h| {
            h.mtime = 1_650_000_001
        });
        t.file("a/.wh.gone", b"");
        t.file("b/.wh..wh..opq", b"");
        t.file("b/new", b"b new");
        t.file(".wh.rd", b"");
        t.pax(&[("SCHILY.xattr.user.dir", b"mid")]);
        member(t, "mid/", typeflag::DIR, b"", |h| h.mode = 0o700);
        t.file("mid/.wh..wh..opq", b"");
        t.file("mid/middle", b"mid middle");
        t.file("x", b"x is a file");
        t.file("f/g", b"f is a dir");
        t.file("d", b"d is a file");
        t.symlink("s", b"uno");
        t.file("s2/in", b"s2 is a dir");
        t.file(".wh.h2", b"");
        t.file("r", b"r replaced");
        t.pax(&[("SCHILY.xattr.user.dir", b"n")]);
        t.dir("n/");
        t.file("n/.wh.ghost", b"");
        t.file("n/real", &pattern(5000, 2));
        t.file("big", &pattern(123_456, 3));
    });
    let l3 = tar_layer(dir, "l3", |t| {
        t.file("rd/y", b"rd y");
        t.file("x/b", b"x b");
        t.file("mid/top", b"mid top");
        t.file("b/top", b"b top");
        t.file("a/.wh.stay", b"");
        t.pax(&[("SCHILY.xattr.user.dir", b"o")]);
        t.dir("o/");
        t.file("o/.wh..wh..opq", b"");
        t.file("o/upper", b"o upper");
        t.file("l3a", b"linked in l3");
        t.hardlink("l3b", "l3a");
        member(t, "perm", typeflag::FILE, b"perm", |h| {
            h.mode = 0o2711;
            h.mtime = 1_234_567_890;
        });
    });
    vec![l1, l2, l3]
}

/// Merge with the CLI; returns (fsmeta, vmdk, manifest).
fn merge(dir: &Path, layers: &[PathBuf]) -> (PathBuf, PathBuf, PathBuf) {
    let fsmeta = dir.join("fsmeta.erofs");
    let vmdk = dir.join("merged.vmdk");
    let manifest = dir.join("layers.manifest");
    let mut args = vec![
        "merge".into(),
        "--out".into(),
        fsmeta.clone().into_os_string(),
        "--vmdk".into(),
        vmdk.clone().into_os_string(),
        "--manifest".into(),
        manifest.clone().into_os_string(),
    ];
    args.extend(layers.iter().map(|l| l.clone().into_os_string()));
    cli(args).ok();
    (fsmeta, vmdk, manifest)
}

/// What overlayfs shows over `layers` (oldest first), each mounted on its
/// own under `mnt`.
fn overlay_view(layers: &[PathBuf], mnt: &Path) -> Snapshot {
    let mounts: Vec<Mount> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| mount_erofs(l, &mnt.join(format!("layer{i}"))))
        .collect();
    let lowers: Vec<PathBuf> = mounts
        .iter()
        .rev()
        .map(|m| m.path().to_path_buf())
        .collect();
    let ov = Mount::overlay_many(&lowers, &mnt.join("overlay"))
        .unwrap_or_else(|e| panic!("overlay of {} layers: {e}", layers.len()));
    let view = snapshot(ov.path());
    drop(ov);
    drop(mounts);
    view
}

fn fsmeta_view(fsmeta: &Path, layers: &[PathBuf], mnt: &Path) -> Snapshot {
    let m = Mount::erofs_devices(fsmeta, layers, mnt)
        .unwrap_or_else(|e| panic!("mounting {} with its devices: {e}", fsmeta.display()));
    snapshot(m.path())
}

/// fsmeta vs. overlayfs. Overlayfs reports 1 link for merged directories
/// and hides its private xattrs; and a lower-layer file keeps the link
/// count it has in its layer even when some of its names are hidden or
/// replaced above (so a single remaining name still looks hard-linked),
/// while the merged image counts the names it really has (checked
/// separately).
fn vs_overlay(stale_nlink: &[&str]) -> DiffOpts {
    DiffOpts {
        ignore_dir_nlink: true,
        ignore_xattr_prefixes: vec![b"trusted.overlay.".to_vec()],
        ignore_fields: stale_nlink
            .iter()
            .flat_map(|p| ["nlink", "link_group"].map(|f| (Some(p.as_bytes().to_vec()), f)))
            .collect(),
        ..DiffOpts::default()
    }
}

fn get<'a>(s: &'a Snapshot, p: &str) -> &'a EntryInfo {
    s.get(p.as_bytes())
        .unwrap_or_else(|| panic!("{p} missing from the merged tree"))
}

/// Guard against a vacuous comparison: the merged tree really shows the
/// outcome of each rule.
fn check_rules_outcome(s: &Snapshot) {
    let absent = [
        "a/gone",
        "a/stay",
        "b/old",
        "b/sub",
        "rd/x",
        "mid/old",
        "x/a",
        "d/sub",
        "h2",
        "n/ghost",
        "a/.wh.gone",
        ".wh.rd",
    ];
    for p in absent {
        assert!(!s.contains_key(p.as_bytes()), "{p} should be hidden");
    }
    for p in [
        "b/new",
        "b/top",
        "rd/y",
        "mid/middle",
        "mid/top",
        "x/b",
        "f/g",
        "s2/in",
        "n/real",
    ] {
        assert_eq!(get(s, p).kind, Kind::File, "{p}");
    }
    assert_eq!(get(s, "d").kind, Kind::File);
    assert_eq!(get(s, "s").symlink.as_deref(), Some(&b"uno"[..]));
    assert_eq!(get(s, "dev/null").rdev, Some((1, 3)));
    assert_eq!(get(s, "dev/loop0").kind, Kind::BlockDev);
    assert_eq!(get(s, "fifo").kind, Kind::Fifo);
    assert_eq!(get(s, "setuid").mode, 0o4755);
    assert_eq!(get(s, "setuid").uid, 70000);
    let etc = get(s, "etc");
    assert_eq!((etc.mode, etc.uid, etc.mtime), (0o755, 1000, 1_650_000_000));
    assert_eq!(
        get(s, "etc/conf").xattrs,
        [(b"user.k".to_vec(), b"upper value".to_vec())]
    );
    // Overlay markers are dropped (trusted.overlay.origin on n, opaque
    // on o), other xattrs kept; mid's topmost copy is l3's implicit one.
    for d in ["n", "o"] {
        assert_eq!(
            get(s, d).xattrs,
            [(b"user.dir".to_vec(), d.as_bytes().to_vec())],
            "{d}"
        );
    }
    assert!(get(s, "mid").xattrs.is_empty());
    assert_eq!(get(s, "big").size, 123_456);
    assert_eq!(get(s, "h1").nlink, 1);
    assert_eq!(get(s, "p").nlink, 2);
    assert_eq!(get(s, "q").link_group.as_deref(), Some(&b"p"[..]));
    assert_eq!(get(s, "l3b").link_group.as_deref(), Some(&b"l3a"[..]));
    assert!(get(s, "r").link_group.is_none());
}

#[test]
fn fsmeta_with_devices_equals_overlayfs_over_the_layers() {
    prereqs(&[]);
    let tmp = tempdir();
    let layers = rules_chain(tmp.path());
    let (fsmeta, _, manifest) = merge(tmp.path(), &layers);
    let merged = fsmeta_view(&fsmeta, &layers, &tmp.path().join("fsmeta"));
    let overlay = overlay_view(&layers, &tmp.path().join("mnt"));
    assert_same(
        "fsmeta vs overlayfs",
        "fsmeta with device=",
        &merged,
        "overlayfs over the layers",
        &overlay,
        &vs_overlay(&["h1", "p", "q"]),
    );
    check_rules_outcome(&merged);
    let want: String = layers
        .iter()
        .map(|l| format!("{}\n", fs::canonicalize(l).unwrap().display()))
        .collect();
    assert_eq!(fs::read_to_string(manifest).unwrap(), want);
}

#[test]
fn vmdk_disk_read_by_qemu_mounts_without_devices() {
    prereqs(&["qemu-img"]);
    let tmp = tempdir();
    let layers = rules_chain(tmp.path());
    let (fsmeta, vmdk, _) = merge(tmp.path(), &layers);
    let raw = tmp.path().join("disk.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "vmdk", "-O", "raw"])
        .arg(&vmdk)
        .arg(&raw))
    .ok();
    let mut flat = fs::read(&fsmeta).unwrap();
    for l in &layers {
        flat.extend_from_slice(&fs::read(l).unwrap());
    }
    assert!(
        fs::read(&raw).unwrap() == flat,
        "the disk QEMU reads is not fsmeta followed by the layers"
    );
    let disk = mount_erofs(&raw, &tmp.path().join("disk"));
    let flat_view = snapshot(disk.path());
    drop(disk);
    let with_devices = fsmeta_view(&fsmeta, &layers, &tmp.path().join("fsmeta"));
    assert_same(
        "flat disk vs fsmeta with devices",
        "disk.raw (no device=)",
        &flat_view,
        "fsmeta with device=",
        &with_devices,
        &DiffOpts::default(),
    );
    check_rules_outcome(&flat_view);
}

#[test]
fn fsck_accepts_fsmeta_with_its_devices() {
    prereqs(&["fsck.erofs"]);
    let tmp = tempdir();
    let layers = rules_chain(tmp.path());
    let (fsmeta, _, _) = merge(tmp.path(), &layers);
    let mut theirs = Command::new("fsck.erofs");
    for l in &layers {
        theirs.arg(format!("--device={}", l.display()));
    }
    run(theirs.arg(&fsmeta)).ok();
    let mut ours = vec!["fsck".into(), fsmeta.clone().into_os_string()];
    for l in &layers {
        ours.push("--device".into());
        ours.push(l.clone().into_os_string());
    }
    let r = cli(ours).ok();
    assert!(r.stdout.contains(": ok:"), "{}", r.stdout);
    // Without its devices, our fsck cannot read the data and says so.
    cli(["fsck".into(), fsmeta.into_os_string()]).failed();
}

#[test]
fn two_hundred_layers_merge_and_mount() {
    prereqs(&[]);
    let tmp = tempdir();
    const N: usize = 200;
    // Layer i adds keep/k{i} and shared/s{i}, deletes keep/k{i-1} when i is
    // even, and makes shared/ opaque every 50 layers; every layer replaces
    // top (so the topmost copy must win).
    let layers: Vec<PathBuf> = (0..N)
        .map(|i| {
            tar_layer(tmp.path(), &format!("l{i:03}"), |t| {
                t.file(&format!("keep/k{i}"), format!("k{i}").as_bytes());
                if i % 2 == 0 && i > 0 {
                    t.file(&format!("keep/.wh.k{}", i - 1), b"");
                }
                if i % 50 == 0 {
                    t.file("shared/.wh..wh..opq", b"");
                }
                t.file(&format!("shared/s{i}"), format!("s{i}").as_bytes());
                t.file("top", format!("layer {i}").as_bytes());
            })
        })
        .collect();
    let (fsmeta, _, _) = merge(tmp.path(), &layers);
    let merged = fsmeta_view(&fsmeta, &layers, &tmp.path().join("fsmeta"));
    let keep: Vec<String> = (0..N)
        .filter(|i| !(i % 2 == 1 && i + 1 < N))
        .map(|i| format!("keep/k{i}"))
        .collect();
    for p in &keep {
        assert_eq!(get(&merged, p).kind, Kind::File, "{p}");
    }
    let shared: Vec<String> = (150..N).map(|i| format!("shared/s{i}")).collect();
    for p in &shared {
        get(&merged, p);
    }
    assert_eq!(merged.len(), 1 + 2 + keep.len() + shared.len() + 1);
    assert_eq!(
        get(&merged, "top").sha256,
        Some(sha256_bytes(format!("layer {}", N - 1).as_bytes()))
    );
    let overlay = overlay_view(&layers, &tmp.path().join("mnt"));
    assert_same(
        "200 layers: fsmeta vs overlayfs",
        "fsmeta with device=",
        &merged,
        "overlayfs over the layers",
        &overlay,
        &vs_overlay(&[]),
    );
}

/// Layers built by mkfs.erofs (`--tar=f --aufs -Enoinline_data`) merge too,
/// and our fsmeta shows what mkfs.erofs's own rebuild mode shows.
#[test]
fn mkfs_built_layers_merge_like_mkfs_rebuild_mode() {
    prereqs(&["mkfs.erofs"]);
    let tmp = tempdir();
    let ours = rules_chain(tmp.path());
    let layers: Vec<PathBuf> = ours
        .iter()
        .map(|l| {
            let tar = l.with_extension("tar");
            let out = l.with_extension("mkfs.erofs");
            run(Command::new("mkfs.erofs")
                .args(["--quiet", "--tar=f", "--aufs", "-Enoinline_data", "-T0"])
                .arg(&out)
                .arg(&tar))
            .ok();
            out
        })
        .collect();
    let (fsmeta, _, _) = merge(tmp.path(), &layers);
    let merged = fsmeta_view(&fsmeta, &layers, &tmp.path().join("fsmeta"));
    let reference = tmp.path().join("mkfs-fsmeta.erofs");
    run(Command::new("mkfs.erofs")
        .args(["--quiet", "--ovlfs-strip=1", "-T0"])
        .arg(&reference)
        .args(&layers))
    .ok();
    let theirs = fsmeta_view(&reference, &layers, &tmp.path().join("mkfs"));
    // erofs-utils 1.9.4 still merges x/a: x is a directory in l1, a file in
    // l2 and a directory again in l3. overlayfs (checked below) stops at
    // l2's file, as a tar extraction of the three layers would.
    let mut mkfs_bug = DiffOpts::default();
    mkfs_bug.ignore_paths.push(b"x/a".to_vec());
    assert!(theirs.contains_key(&b"x/a"[..]), "erofs-utils fixed x/a?");
    assert_same(
        "fsmeta of mkfs-built layers: ours vs mkfs.erofs rebuild",
        "ours",
        &merged,
        "mkfs.erofs --ovlfs-strip=1",
        &theirs,
        &mkfs_bug,
    );
    let overlay = overlay_view(&layers, &tmp.path().join("mnt"));
    assert_same(
        "fsmeta of mkfs-built layers vs overlayfs",
        "ours",
        &merged,
        "overlayfs",
        &overlay,
        &vs_overlay(&["h1", "p", "q"]),
    );
}

#[test]
fn layers_that_cannot_be_referenced_are_refused_by_name() {
    prereqs(&[]);
    let tmp = tempdir();
    let tar = tmp.path().join("l.tar");
    let mut t = TarBuilder::new();
    t.file("a", b"short tail");
    fs::write(&tar, t.finish()).unwrap();
    let plain = tmp.path().join("plain.erofs");
    convert_ok(&tar, &plain, &[]);
    for (flag, why) in [("--inline", "stored inline"), ("--tar-index", "tar index")] {
        let bad = tmp.path().join(format!("bad{flag}.erofs"));
        convert_ok(&tar, &bad, &[flag]);
        let out = tmp.path().join("fsmeta.erofs");
        let r = cli([
            "merge".into(),
            "--out".into(),
            out.clone().into_os_string(),
            plain.clone().into_os_string(),
            bad.clone().into_os_string(),
        ])
        .failed();
        assert!(
            r.stderr.contains("cannot be merged")
                && r.stderr.contains(why)
                && r.stderr.contains(&*bad.to_string_lossy()),
            "{flag}: {}",
            r.stderr
        );
        assert!(!out.exists(), "no partial fsmeta left behind");
    }
}
