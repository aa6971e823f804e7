//! The size-limited writable layer: an ext4 image mounted through an
//! autoclear loop device. Needs root and mkfs.ext4; see `common`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::Write;
use std::process::Command;

use common::{Scratch, unmount_settled};
use sys::mount_ext4_image;

#[test]
fn ext4_image_mounts_writable_and_enforces_its_size() {
    require_root!();
    let s = Scratch::new();
    let image = s.join("rwlayer.img");
    fs::File::create(&image).unwrap().set_len(16 << 20).unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .status()
        .expect("mkfs.ext4 (e2fsprogs) must be installed");
    assert!(st.success());
    let mnt = s.join("mnt");
    fs::create_dir(&mnt).unwrap();
    mount_ext4_image(&image, &mnt).unwrap();
    fs::write(mnt.join("small"), b"fits").unwrap();
    // Writing past the image's size fails with ENOSPC: the quota.
    let mut f = fs::File::create(mnt.join("big")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let err = (0..32)
        .try_for_each(|_| f.write_all(&chunk))
        .and_then(|()| f.sync_all())
        .unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(sys::Errno::NOSPC.raw_os_error()),
        "{err}"
    );
    drop(f);
    unmount_settled(&mnt);
    s.assert_no_leaks();
}
