//! overlayfs and bind mounts against the running kernel. Needs root; see
//! `common` for the skip/CI rule. Every test ends with the leak check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::{Mounted, Scratch, kernel_version, mkfs, unmount_settled};
use sys::{
    ErofsOptions, Errno, Error, MountKind, is_mountpoint, mount_bind, mount_erofs, mount_overlay,
    mounts_under, overlay_supports_lowerdir_plus,
};

const LAYERS: usize = 130;

/// 130 EROFS layers, each mounted on its own directory, under an overlay
/// with an upper directory: the 128-layer case of containerd's test suite
/// plus margin, with a `lowerdir=` string far over a page.
#[test]
fn overlay_of_130_erofs_layers_with_upper() {
    let mkfs_bin = require_root_and_mkfs!();
    let s = Scratch::new();
    let mut guards = Vec::new();
    let mut lowers = Vec::new();
    // lowers[0] is the top layer.
    for i in 0..LAYERS {
        let src = s.mkdir(format!("src/{i:03}/dir"));
        fs::write(src.join(format!("f{i:03}")), format!("{i}\n")).unwrap();
        let root = src.parent().unwrap();
        fs::write(root.join(format!("layer-{i:03}")), format!("layer {i}\n")).unwrap();
        fs::write(root.join("shared"), format!("from {i}\n")).unwrap();
        let img = s.join(format!("src/{i:03}.erofs"));
        mkfs(&mkfs_bin, &img, root, &[]);
        // A longish mount-point name, like <root>/snapshots/<id>/fs.
        let mnt = s.mkdir(format!("snapshots/layer-mount-point-{i:03}/fs"));
        let kind = mount_erofs(&img, &mnt, &ErofsOptions::default()).unwrap();
        assert_ne!(kind, MountKind::BlockDevice);
        guards.push(Mounted(mnt.clone()));
        lowers.push(mnt);
    }
    let joined: usize = lowers.iter().map(|p| p.as_os_str().len() + 1).sum();
    assert!(joined > 4096, "lowerdir= would be only {joined} bytes");

    let upper = s.mkdir("rw/upper");
    let work = s.mkdir("rw/work");
    let merged = s.mkdir("merged");
    mount_overlay(
        &merged,
        &lowers,
        Some((&upper, &work)),
        &["index=off".to_owned()],
    )
    .unwrap();
    let merged_guard = Mounted(merged.clone());
    assert!(is_mountpoint(&merged).unwrap());

    // The top layer wins; every layer contributes its own file.
    assert_eq!(
        fs::read_to_string(merged.join("shared")).unwrap(),
        "from 0\n"
    );
    for i in [0, 1, 64, 128, LAYERS - 1] {
        assert_eq!(
            fs::read_to_string(merged.join(format!("layer-{i:03}"))).unwrap(),
            format!("layer {i}\n")
        );
    }
    let names: BTreeSet<_> = fs::read_dir(merged.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        LAYERS,
        "the merged dir/ must hold every layer's file"
    );
    assert_eq!(
        fs::read_to_string(merged.join(format!("dir/f{:03}", LAYERS - 1))).unwrap(),
        format!("{}\n", LAYERS - 1)
    );

    // Writes go to the upper directory; the layers stay as they were.
    fs::write(merged.join("new-file"), "written\n").unwrap();
    fs::write(merged.join("shared"), "changed\n").unwrap();
    fs::remove_file(merged.join("layer-005")).unwrap();
    assert_eq!(
        fs::read_to_string(upper.join("new-file")).unwrap(),
        "written\n"
    );
    assert_eq!(
        fs::read_to_string(upper.join("shared")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        fs::read_to_string(lowers[0].join("shared")).unwrap(),
        "from 0\n"
    );
    assert!(!merged.join("layer-005").exists());
    assert!(lowers[5].join("layer-005").exists());
    // A whiteout (0:0 character device) records the deletion.
    let wh = fs::symlink_metadata(upper.join("layer-005")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &wh.file_type()
    ));

    let under = mounts_under(s.path()).unwrap();
    assert_eq!(under.len(), LAYERS + 1);
    let ovl = under.iter().find(|m| m.mount_point == merged).unwrap();
    assert_eq!(ovl.fs_type, "overlay");
    assert_eq!(ovl.source, Path::new("overlay"));

    // Unmount top-down: the overlay, then the layers.
    unmount_settled(&merged);
    drop(merged_guard);
    for mnt in &lowers {
        unmount_settled(mnt);
    }
    drop(guards);
    s.assert_no_leaks();
}

/// Plain directories as lowers, each path over 255 bytes (what fsconfig
/// takes per value) and the set over two pages.
#[test]
fn overlay_with_layer_paths_longer_than_fsconfig_values() {
    require_root!();
    let s = Scratch::new();
    let long = format!("{}/{}", "x".repeat(200), "y".repeat(200));
    let mut lowers = Vec::new();
    for i in 0..20 {
        let dir = s.mkdir(format!("{long}/lower{i:02}"));
        fs::write(dir.join(format!("f{i}")), format!("{i}")).unwrap();
        fs::write(dir.join("top"), format!("{i}")).unwrap();
        lowers.push(dir);
    }
    assert!(lowers[0].as_os_str().len() > 255);
    let upper = s.mkdir(format!("{long}/upper"));
    let work = s.mkdir(format!("{long}/work"));
    let merged = s.mkdir("merged");

    let res = mount_overlay(&merged, &lowers, Some((&upper, &work)), &[]);
    if !overlay_supports_lowerdir_plus().unwrap() {
        // Pre-6.8: one string, ~8 KiB, cannot go through mount(2).
        let err = res.unwrap_err();
        assert_eq!(err.errno(), Errno::TOOBIG, "{err}");
        s.assert_no_leaks();
        return;
    }
    res.unwrap();
    let guard = Mounted(merged.clone());
    assert_eq!(fs::read_to_string(merged.join("top")).unwrap(), "0");
    assert_eq!(fs::read_to_string(merged.join("f19")).unwrap(), "19");
    fs::write(merged.join("w"), "w").unwrap();
    assert_eq!(fs::read_to_string(upper.join("w")).unwrap(), "w");
    unmount_settled(&merged);
    drop(guard);
    s.assert_no_leaks();
}

/// `:` and `,` (and `\`) in layer, upper and work paths.
#[test]
fn overlay_paths_with_separator_characters() {
    require_root!();
    let s = Scratch::new();
    let names = ["a:colon", "b,comma", "c\\backslash", "d::double"];
    let lowers: Vec<PathBuf> = names
        .iter()
        .map(|n| {
            let d = s.mkdir(n);
            fs::write(d.join(format!("in-{}", &n[..1])), *n).unwrap();
            d
        })
        .collect();
    let upper = s.mkdir("up:per,dir");
    let work = s.mkdir("wo:rk,dir");
    let merged = s.mkdir("merged");
    mount_overlay(&merged, &lowers, Some((&upper, &work)), &[]).unwrap();
    let guard = Mounted(merged.clone());
    for n in names {
        assert_eq!(
            fs::read_to_string(merged.join(format!("in-{}", &n[..1]))).unwrap(),
            n
        );
    }
    fs::write(merged.join("x"), "x").unwrap();
    assert!(upper.join("x").exists());
    unmount_settled(&merged);
    drop(guard);
    s.assert_no_leaks();
}

#[test]
fn read_only_overlay_without_upper() {
    require_root!();
    let s = Scratch::new();
    let top = s.mkdir("top");
    let bottom = s.mkdir("bottom");
    fs::write(top.join("f"), "top").unwrap();
    fs::write(bottom.join("f"), "bottom").unwrap();
    fs::write(bottom.join("g"), "g").unwrap();
    let merged = s.mkdir("merged");
    mount_overlay(&merged, &[top, bottom], None, &[]).unwrap();
    let guard = Mounted(merged.clone());
    assert_eq!(fs::read_to_string(merged.join("f")).unwrap(), "top");
    assert_eq!(fs::read_to_string(merged.join("g")).unwrap(), "g");
    let err = fs::write(merged.join("h"), "h").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(Errno::ROFS.raw_os_error()));
    unmount_settled(&merged);
    drop(guard);
    s.assert_no_leaks();
}

#[test]
fn overlay_errors_say_which_layer_and_why() {
    require_root!();
    let s = Scratch::new();
    let merged = s.mkdir("merged");

    let err = mount_overlay(&merged, &[], None, &[]).unwrap_err();
    assert_eq!(err.errno(), Errno::INVAL);

    let present = s.mkdir("present");
    let missing = s.join("missing-layer");
    let err = mount_overlay(&merged, &[present.clone(), missing.clone()], None, &[]).unwrap_err();
    assert!(matches!(err, Error::Mount { fs: "overlay", .. }), "{err}");
    assert_eq!(err.errno(), Errno::NOENT, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(missing.to_str().unwrap()), "{msg}");
    eprintln!("missing layer: {msg}");

    let err = mount_overlay(&merged, &[present], None, &["bogus=1".to_owned()]).unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
    s.assert_no_leaks();
}

#[test]
fn lowerdir_plus_probe_matches_the_kernel_version() {
    require_root!();
    let plus = overlay_supports_lowerdir_plus().unwrap();
    assert_eq!(plus, kernel_version() >= (6, 8), "lowerdir+ probe");
}

#[test]
fn bind_mounts_read_write_and_read_only() {
    require_root!();
    let s = Scratch::new();
    let src = s.mkdir("src");
    fs::write(src.join("f"), "f").unwrap();

    let rw = s.mkdir("rw");
    mount_bind(&src, &rw, false).unwrap();
    let rw_guard = Mounted(rw.clone());
    fs::write(rw.join("via-rw"), "x").unwrap();
    assert!(src.join("via-rw").exists());

    let ro = s.mkdir("ro");
    mount_bind(&src, &ro, true).unwrap();
    let ro_guard = Mounted(ro.clone());
    assert_eq!(fs::read_to_string(ro.join("f")).unwrap(), "f");
    let err = fs::write(ro.join("via-ro"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(Errno::ROFS.raw_os_error()));
    // Only the bind is read-only, not the source.
    fs::write(src.join("still-writable"), "x").unwrap();

    // A bind from the same filesystem has the same st_dev as its parent:
    // is_mountpoint must still see it.
    assert!(is_mountpoint(&ro).unwrap());
    assert!(!is_mountpoint(&src).unwrap());

    let under = mounts_under(s.path()).unwrap();
    assert_eq!(under.len(), 2);
    assert!(
        under
            .iter()
            .any(|m| m.mount_point == ro && m.mount_options.split(',').any(|o| o == "ro"))
    );

    unmount_settled(&ro);
    unmount_settled(&rw);
    drop((ro_guard, rw_guard));

    let err = mount_bind(&s.join("nope"), &rw, true).unwrap_err();
    assert_eq!(err.errno(), Errno::NOENT);
    assert!(err.to_string().contains("nope"), "{err}");
    s.assert_no_leaks();
}

/// Sanity check of the helper everything above relies on.
#[test]
fn scratch_drop_cleans_up_after_a_failed_test() {
    require_root!();
    let s = Scratch::new();
    let a = s.mkdir("a");
    let b = s.mkdir("b");
    mount_bind(&a, &b, false).unwrap();
    let inner = s.mkdir("b/inner"); // lands in a/inner through the bind
    mount_bind(&a, &inner, true).unwrap();
    let path = s.path().to_owned();
    assert_eq!(mounts_under(&path).unwrap().len(), 2);
    drop(s);
    assert!(mounts_under(&path).unwrap().is_empty());
    assert!(!path.exists());
}
