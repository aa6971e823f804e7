//! FS_IMMUTABLE_FL and fs-verity on real files. Needs root (setting the
//! immutable flag needs CAP_LINUX_IMMUTABLE); see `common`.
//!
//! The development machines have no fs-verity, so the verity tests check
//! that "unsupported" comes back as a value, never as an error, and only
//! check a real digest where the filesystem can make one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use common::Scratch;
use sys::flags::is_immutable;
use sys::verity::HASH_ALG_SHA256;
use sys::{Errno, VerityMeasurement, VerityStatus, enable_verity, measure_verity, set_immutable};

/// Clears the flag on drop, so that a failing assertion cannot leave an
/// undeletable file behind (Scratch also sweeps, this is belt and braces).
struct Immutable<'a>(&'a Path);

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = set_immutable(self.0, false);
    }
}

fn is_eperm(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(Errno::PERM.raw_os_error())
}

#[test]
fn immutable_blocks_writes_and_unlink_until_cleared() {
    require_root!();
    let s = Scratch::new();
    let file = s.join("layer.erofs");
    fs::write(&file, "image").unwrap();

    set_immutable(&file, true).unwrap();
    let _guard = Immutable(&file);
    assert!(is_immutable(&file).unwrap());
    // Idempotent.
    set_immutable(&file, true).unwrap();

    let err = fs::OpenOptions::new().append(true).open(&file).unwrap_err();
    assert!(is_eperm(&err), "write open: {err}");
    let err = fs::remove_file(&file).unwrap_err();
    assert!(is_eperm(&err), "unlink: {err}");
    let err = fs::rename(&file, s.join("renamed")).unwrap_err();
    assert!(is_eperm(&err), "rename: {err}");
    // Reading still works.
    assert_eq!(fs::read_to_string(&file).unwrap(), "image");

    set_immutable(&file, false).unwrap();
    assert!(!is_immutable(&file).unwrap());
    fs::write(&file, "rewritten").unwrap();
    fs::remove_file(&file).unwrap();
    s.assert_no_leaks();
}

#[test]
fn immutable_directory_refuses_new_entries() {
    require_root!();
    let s = Scratch::new();
    let dir = s.mkdir("snap");
    set_immutable(&dir, true).unwrap();
    let _guard = Immutable(&dir);
    let err = fs::write(dir.join("x"), "x").unwrap_err();
    assert!(is_eperm(&err), "{err}");
    set_immutable(&dir, false).unwrap();
    fs::write(dir.join("x"), "x").unwrap();
}

#[test]
fn immutable_errors_name_the_path() {
    require_root!();
    let s = Scratch::new();
    let missing = s.join("missing");
    let err = set_immutable(&missing, true).unwrap_err();
    assert_eq!(err.errno(), Errno::NOENT);
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");

    // Symlinks are refused, not followed.
    let file = s.join("f");
    fs::write(&file, "f").unwrap();
    let link = s.join("l");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let err = set_immutable(&link, true).unwrap_err();
    assert_eq!(err.errno(), Errno::LOOP, "{err}");
    assert!(!is_immutable(&file).unwrap());
}

#[test]
fn verity_on_the_repository_filesystem() {
    require_root!();
    let s = Scratch::new();
    let file = s.join("layer.erofs");
    fs::write(&file, vec![0x5au8; 3 * 4096 + 17]).unwrap();

    match enable_verity(&file).unwrap() {
        VerityStatus::Unsupported => {
            // This machine: no CONFIG_FS_VERITY / no ext4 verity feature.
            eprintln!("fs-verity unsupported here (expected on the dev machines)");
            assert_eq!(
                measure_verity(&file).unwrap(),
                VerityMeasurement::Unsupported
            );
            // Still writable: nothing was changed.
            fs::write(&file, "x").unwrap();
        }
        VerityStatus::Enabled => {
            let VerityMeasurement::Digest(d) = measure_verity(&file).unwrap() else {
                panic!("enabled but not measurable");
            };
            assert_eq!(d.algorithm, HASH_ALG_SHA256);
            assert_eq!(d.digest.len(), 32);
            assert_eq!(enable_verity(&file).unwrap(), VerityStatus::AlreadyEnabled);
            let err = fs::OpenOptions::new().write(true).open(&file).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        }
        VerityStatus::AlreadyEnabled => panic!("a new file cannot already have verity"),
    }

    let missing = s.join("missing");
    let err = enable_verity(&missing).unwrap_err();
    assert_eq!(err.errno(), Errno::NOENT);
    assert!(err.to_string().contains("missing"), "{err}");
}

/// tmpfs has never had fs-verity: the ioctl is ENOTTY there, which must
/// also read as Unsupported.
#[test]
fn verity_on_tmpfs_is_unsupported() {
    require_root!();
    let shm = Path::new("/dev/shm");
    let is_tmpfs = rustix::fs::statfs(shm)
        .map(|st| st.f_type == 0x0102_1994)
        .unwrap_or(false);
    if !is_tmpfs {
        eprintln!("NOTE: /dev/shm is not tmpfs here; ENOTTY case not exercised");
        return;
    }
    let file = tempfile::NamedTempFile::new_in(shm).unwrap();
    fs::write(file.path(), "x").unwrap();
    assert_eq!(
        enable_verity(file.path()).unwrap(),
        VerityStatus::Unsupported
    );
    assert_eq!(
        measure_verity(file.path()).unwrap(),
        VerityMeasurement::Unsupported
    );
}
