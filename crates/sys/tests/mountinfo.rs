//! mountinfo parsing and mount-point checks against real mounts whose
//! paths need the kernel's octal escapes. Needs root; see `common`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;

use common::{Mounted, Scratch, mkfs, unmount_settled};
use sys::{ErofsOptions, is_mountpoint, mount_bind, mount_erofs, mounts_under};

#[test]
fn mount_points_with_spaces_tabs_and_backslashes() {
    let mkfs_bin = require_root_and_mkfs!();
    let s = Scratch::new();
    let src = s.mkdir("src");
    fs::write(src.join("f"), "f").unwrap();
    // The image name has a space too: mountinfo escapes the source field.
    let img = s.join("layer one.erofs");
    mkfs(&mkfs_bin, &img, &src, &[]);

    let spaced = s.mkdir("mount point with spaces");
    let odd = s.mkdir("tab\there back\\slash");
    let kind = mount_erofs(&img, &spaced, &ErofsOptions::default()).unwrap();
    let g1 = Mounted(spaced.clone());
    mount_bind(&src, &odd, true).unwrap();
    let g2 = Mounted(odd.clone());

    let under = mounts_under(s.path()).unwrap();
    assert_eq!(under.len(), 2, "{under:#?}");
    let erofs = under.iter().find(|m| m.mount_point == spaced).unwrap();
    assert_eq!(erofs.fs_type, "erofs");
    if kind == sys::MountKind::FileBacked {
        assert_eq!(erofs.source, img);
    }
    let bind = under.iter().find(|m| m.mount_point == odd).unwrap();
    assert!(bind.mount_point.as_os_str().as_bytes().contains(&b'\t'));
    assert!(is_mountpoint(&spaced).unwrap());
    assert!(is_mountpoint(&odd).unwrap());

    // A prefix is matched by components: ".../mount point" is not under
    // ".../mount".
    assert!(mounts_under(&s.join("mount")).unwrap().is_empty());
    assert_eq!(mounts_under(&spaced).unwrap().len(), 1);

    unmount_settled(&odd);
    unmount_settled(&spaced);
    drop((g1, g2));
    s.assert_no_leaks();
}

#[test]
fn is_mountpoint_edge_cases() {
    require_root!();
    let s = Scratch::new();
    // Missing paths and plain directories are not mount points.
    assert!(!is_mountpoint(&s.join("missing")).unwrap());
    assert!(!is_mountpoint(s.path()).unwrap());
    assert!(is_mountpoint(std::path::Path::new("/")).unwrap());
    assert!(is_mountpoint(std::path::Path::new("/proc")).unwrap());

    // A symlink to a mount point is not one itself.
    let dir = s.mkdir("dir");
    let target = s.mkdir("target");
    mount_bind(&dir, &target, false).unwrap();
    let g = Mounted(target.clone());
    let link = s.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(is_mountpoint(&target).unwrap());
    assert!(!is_mountpoint(&link).unwrap());
    // mounts_under resolves symlinks in the prefix, as mountinfo does.
    assert_eq!(mounts_under(&link).unwrap().len(), 1);
    unmount_settled(&target);
    drop(g);
    s.assert_no_leaks();
}
