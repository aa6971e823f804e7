//! EROFS mounts and loop devices against the running kernel, with images
//! from mkfs.erofs. Needs root; see `common` for the skip/CI rule. Every
//! test ends by asserting that no mount and no loop device it made is left.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{Mounted, Scratch, kernel_version, loop_attr, mkfs, unmount_settled, wait_for};
use sys::{
    ErofsOptions, Errno, Error, MountKind, attach_loop, is_mountpoint,
    kernel_supports_file_backed_erofs, loop_devices, mount_erofs, mounts_under, unmount,
};

/// A source tree with a file, a nested file and a symlink, and its image.
fn small_image(mkfs_bin: &Path, s: &Scratch, name: &str) -> PathBuf {
    let src = s.mkdir(format!("{name}-src/sub"));
    fs::write(src.parent().unwrap().join("hello.txt"), "hello erofs\n").unwrap();
    fs::write(src.join("nested"), vec![7u8; 10_000]).unwrap();
    std::os::unix::fs::symlink("hello.txt", src.parent().unwrap().join("link")).unwrap();
    let img = s.join(format!("{name}.erofs"));
    mkfs(mkfs_bin, &img, src.parent().unwrap(), &[]);
    img
}

fn assert_small_tree(mnt: &Path) {
    assert_eq!(
        fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello erofs\n"
    );
    assert_eq!(fs::read(mnt.join("sub/nested")).unwrap(), vec![7u8; 10_000]);
    assert_eq!(
        fs::read_link(mnt.join("link")).unwrap(),
        Path::new("hello.txt")
    );
    // Read-only, whatever the way it was mounted.
    let err = fs::write(mnt.join("new"), "x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(Errno::ROFS.raw_os_error()),
        "{err}"
    );
}

fn loops_for(file: &Path) -> Vec<PathBuf> {
    loop_devices()
        .unwrap()
        .into_iter()
        .filter(|(_, f)| f == file)
        .map(|(d, _)| d)
        .collect()
}

#[test]
fn file_backed_mount_shows_the_files() {
    let mkfs_bin = require_root_and_mkfs!();
    let s = Scratch::new();
    let img = small_image(&mkfs_bin, &s, "a");
    let mnt = s.mkdir("mnt");

    let file_backed = kernel_supports_file_backed_erofs(s.path()).unwrap();
    let kind = mount_erofs(&img, &mnt, &ErofsOptions::default()).unwrap();
    let guard = Mounted(mnt.clone());
    if file_backed {
        assert_eq!(kind, MountKind::FileBacked);
        assert!(
            loops_for(&img).is_empty(),
            "a file-backed mount used a loop device"
        );
    } else {
        eprintln!("NOTE: no file-backed EROFS in this kernel; the loop fallback was used");
        assert_eq!(kind, MountKind::Loop);
    }
    assert!(is_mountpoint(&mnt).unwrap());
    assert_small_tree(&mnt);

    let under = mounts_under(s.path()).unwrap();
    assert_eq!(under.len(), 1, "{under:#?}");
    assert_eq!(under[0].mount_point, mnt);
    assert_eq!(under[0].fs_type, "erofs");
    if file_backed {
        // The real path, so that a restarted daemon can match it.
        assert_eq!(under[0].source, img);
    }
    assert!(under[0].mount_options.split(',').any(|o| o == "ro"));

    unmount_settled(&mnt);
    drop(guard);
    assert!(!is_mountpoint(&mnt).unwrap());
    s.assert_no_leaks();
}

#[test]
fn file_backed_support_matches_the_kernel_version() {
    require_root!();
    let s = Scratch::new();
    let supported = kernel_supports_file_backed_erofs(s.path()).unwrap();
    let (major, minor) = kernel_version();
    eprintln!("kernel {major}.{minor}: file-backed EROFS = {supported}");
    if (major, minor) < (6, 12) {
        assert!(!supported);
    } else {
        // CONFIG_EROFS_FS_BACKED_BY_FILE could be off, but is on in every
        // kernel we deploy to; fail loudly if that ever changes.
        assert!(supported, "kernel ≥ 6.12 without file-backed EROFS");
    }
    // The probe image is gone and nothing was mounted.
    assert_eq!(fs::read_dir(s.path()).unwrap().count(), 0);
    s.assert_no_leaks();
}

#[test]
fn forced_loop_mount_works_and_autoclears() {
    let mkfs_bin = require_root_and_mkfs!();
    let s = Scratch::new();
    let img = small_image(&mkfs_bin, &s, "b");
    let mnt = s.mkdir("mnt");

    let opts = ErofsOptions {
        force_loop: true,
        // As containerd writes them; both ignored.
        extra: vec!["ro".into(), "loop".into()],
        ..Default::default()
    };
    let kind = mount_erofs(&img, &mnt, &opts).unwrap();
    let guard = Mounted(mnt.clone());
    assert_eq!(kind, MountKind::Loop);
    assert_small_tree(&mnt);

    let devs = loops_for(&img);
    assert_eq!(devs.len(), 1, "{devs:?}");
    assert_eq!(loop_attr(&devs[0], "ro"), "1");
    assert_eq!(loop_attr(&devs[0], "loop/autoclear"), "1");
    let under = mounts_under(s.path()).unwrap();
    assert_eq!(under.len(), 1);
    assert_eq!(under[0].source, devs[0]);

    unmount_settled(&mnt);
    drop(guard);
    // Autoclear: the unmount released the last reference.
    wait_for("the loop device to autoclear", || {
        loops_for(&img).is_empty()
    });
    s.assert_no_leaks();
}

#[test]
fn attach_mount_unmount_leaves_no_loop_device() {
    let mkfs_bin = require_root_and_mkfs!();
    let s = Scratch::new();
    let img = small_image(&mkfs_bin, &s, "c");
    let mnt = s.mkdir("mnt");
    assert!(s.loops().is_empty());

    let dev = attach_loop(&img, true, false).unwrap();
    let path = dev.path().to_owned();
    assert_eq!(loops_for(&img), vec![path.clone()]);
    assert_eq!(path, PathBuf::from(format!("/dev/loop{}", dev.number())));
    assert_eq!(loop_attr(&path, "ro"), "1");
    assert_eq!(loop_attr(&path, "loop/autoclear"), "1");

    // A block device is mounted as is.
    let kind = mount_erofs(&path, &mnt, &ErofsOptions::default()).unwrap();
    let guard = Mounted(mnt.clone());
    assert_eq!(kind, MountKind::BlockDevice);
    // Closing our descriptor leaves the device to the mount.
    drop(dev);
    assert_eq!(loops_for(&img), vec![path.clone()]);
    assert_small_tree(&mnt);

    unmount_settled(&mnt);
    drop(guard);
    wait_for("the loop device to autoclear", || {
        loops_for(&img).is_empty()
    });
    s.assert_no_leaks();
}

#[test]
fn unmounted_loop_devices_go_away_on_drop_and_detach() {
    let mkfs_bin = require_root_and_mkfs!();
    let s = Scratch::new();
    let img = small_image(&mkfs_bin, &s, "d");

    let dev = attach_loop(&img, true, false).unwrap();
    assert_eq!(loops_for(&img).len(), 1);
    drop(dev);
    wait_for("autoclear on close", || loops_for(&img).is_empty());

    let dev = attach_loop(&img, false, false).unwrap();
    assert_eq!(loop_attr(dev.path(), "ro"), "0");
    dev.detach().unwrap();
    wait_for("detach", || loops_for(&img).is_empty());

    // Direct I/O is honoured on ext4 with a block-aligned image.
    let dev = attach_loop(&img, true, true).unwrap();
    assert_eq!(loop_attr(dev.path(), "loop/dio"), "1");
    drop(dev);
    s.assert_no_leaks();
}

#[test]
fn concurrent_attachers_get_distinct_devices() {
    let mkfs_bin = require_root_and_mkfs!();
    let s = Scratch::new();
    let img = small_image(&mkfs_bin, &s, "e");

    // Threads racing through GET_FREE → CONFIGURE hit EBUSY and retry.
    let devs: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    (0..4)
                        .map(|_| attach_loop(&img, true, false).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut numbers: Vec<u32> = devs.iter().map(|d| d.number()).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), 24, "two attachers got the same device");
    assert_eq!(loops_for(&img).len(), 24);
    drop(devs);
    s.assert_no_leaks();
}

#[test]
fn multi_device_image_mounts_file_backed_and_through_loops() {
    let mkfs_bin = require_root_and_mkfs!();
    let s = Scratch::new();
    let src = s.mkdir("src/sub");
    fs::write(s.join("src/a"), "small\n").unwrap();
    let big: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(src.join("big"), &big).unwrap();
    let img = s.join("meta.erofs");
    let blob = s.join("blob.erofs");
    // Chunked file data lives in the extra device ("blob"), as in merged
    // layer metadata.
    mkfs(
        &mkfs_bin,
        &img,
        &s.join("src"),
        &[&format!("--blobdev={}", blob.display()), "--chunksize=4096"],
    );

    for force_loop in [false, true] {
        let mnt = s.mkdir(format!("mnt-{force_loop}"));
        let opts = ErofsOptions {
            devices: vec![blob.clone()],
            force_loop,
            ..Default::default()
        };
        let kind = mount_erofs(&img, &mnt, &opts).unwrap();
        let guard = Mounted(mnt.clone());
        if force_loop {
            assert_eq!(kind, MountKind::Loop);
            assert_eq!(loops_for(&img).len(), 1);
            assert_eq!(loops_for(&blob).len(), 1);
        }
        assert_eq!(fs::read(mnt.join("sub/big")).unwrap(), big);
        assert_eq!(fs::read_to_string(mnt.join("a")).unwrap(), "small\n");
        unmount_settled(&mnt);
        drop(guard);
    }
    s.assert_no_leaks();
}

#[test]
fn long_image_paths_are_mounted_under_their_real_name() {
    let mkfs_bin = require_root_and_mkfs!();
    let s = Scratch::new();
    // Over the 255 bytes fsconfig takes for a value.
    let deep = s.mkdir(format!("{}/{}", "d".repeat(150), "e".repeat(150)));
    let img = small_image(&mkfs_bin, &s, "f");
    let long_img = deep.join("layer.erofs");
    fs::rename(&img, &long_img).unwrap();
    assert!(long_img.as_os_str().len() > 300);
    let mnt = s.mkdir("mnt");

    let kind = mount_erofs(&long_img, &mnt, &ErofsOptions::default()).unwrap();
    let guard = Mounted(mnt.clone());
    assert_ne!(kind, MountKind::BlockDevice);
    assert_small_tree(&mnt);
    let under = mounts_under(s.path()).unwrap();
    if kind == MountKind::FileBacked {
        assert_eq!(under[0].source, long_img);
    }
    unmount_settled(&mnt);
    drop(guard);
    s.assert_no_leaks();
}

#[test]
fn errors_name_the_path_and_the_errno() {
    let mkfs_bin = require_root_and_mkfs!();
    let s = Scratch::new();
    let mnt = s.mkdir("mnt");

    let missing = s.join("missing.erofs");
    let err = mount_erofs(&missing, &mnt, &ErofsOptions::default()).unwrap_err();
    assert_eq!(err.errno(), Errno::NOENT);
    let msg = err.to_string();
    assert!(msg.contains(missing.to_str().unwrap()), "{msg}");
    assert!(msg.contains("os error 2"), "{msg}");

    // A directory is neither an image file nor a block device.
    let err = mount_erofs(&mnt, &mnt, &ErofsOptions::default()).unwrap_err();
    assert_eq!(err.errno(), Errno::INVAL, "{err}");
    assert!(err.to_string().contains("not a regular file"), "{err}");

    // Not an EROFS image: the kernel's complaint is in the message.
    let junk = s.join("junk.erofs");
    fs::write(&junk, vec![0u8; 8192]).unwrap();
    let err = mount_erofs(&junk, &mnt, &ErofsOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Mount { fs: "erofs", .. }), "{err}");
    assert_eq!(err.errno(), Errno::INVAL, "{err}");
    eprintln!("junk image: {err}");

    // The same through the loop path leaves no device behind.
    let opts = ErofsOptions {
        force_loop: true,
        ..Default::default()
    };
    let err = mount_erofs(&junk, &mnt, &opts).unwrap_err();
    assert_eq!(err.errno(), Errno::INVAL, "{err}");

    // A bad extra option.
    let img = small_image(&mkfs_bin, &s, "g");
    let opts = ErofsOptions {
        extra: vec!["no_such_option".into()],
        ..Default::default()
    };
    let err = mount_erofs(&img, &mnt, &opts).unwrap_err();
    assert!(err.to_string().contains("no_such_option"), "{err}");

    // Unmounting what is not mounted is EINVAL, and says where.
    let err = unmount(&mnt, false).unwrap_err();
    assert_eq!(err.errno(), Errno::INVAL);
    assert!(err.to_string().contains(mnt.to_str().unwrap()), "{err}");
    s.assert_no_leaks();
}

#[test]
fn busy_mount_is_detached_only_when_asked() {
    let mkfs_bin = require_root_and_mkfs!();
    let s = Scratch::new();
    let img = small_image(&mkfs_bin, &s, "h");
    let mnt = s.mkdir("mnt");
    mount_erofs(&img, &mnt, &ErofsOptions::default()).unwrap();
    let guard = Mounted(mnt.clone());

    let open = fs::File::open(mnt.join("hello.txt")).unwrap();
    let err = unmount(&mnt, false).unwrap_err();
    assert_eq!(err.errno(), Errno::BUSY, "{err}");
    assert!(is_mountpoint(&mnt).unwrap());

    unmount(&mnt, true).unwrap();
    assert!(!is_mountpoint(&mnt).unwrap());
    // The detached mount lives on for the open file.
    assert_eq!(open.metadata().unwrap().size(), 12);
    drop(open);
    drop(guard);
    s.assert_no_leaks();
}

#[test]
fn mount_point_missing_is_enoent() {
    let mkfs_bin = require_root_and_mkfs!();
    let s = Scratch::new();
    let img = small_image(&mkfs_bin, &s, "i");
    let err = mount_erofs(&img, &s.join("nope"), &ErofsOptions::default()).unwrap_err();
    assert_eq!(err.errno(), Errno::NOENT, "{err}");
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), ErrorKind::NotFound);
    s.assert_no_leaks();
}
