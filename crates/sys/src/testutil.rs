//! Helpers for the unit tests that need root (the integration tests in
//! `tests/` have their own, fuller set).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// False (after a loud note) when not root; panics instead under CI, where
/// a skipped root test must not pass.
pub(crate) fn require_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs root, and CI must run it as root"
    );
    eprintln!("\n*** SKIPPED: needs root (mounts, loop devices) ***\n");
    false
}

/// A temporary directory that unmounts everything below it and detaches
/// loop devices backed by its files on drop.
pub(crate) struct Cleanup {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Cleanup {
    pub(crate) fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sys-unit-")
            .tempdir()
            .unwrap();
        let path = std::fs::canonicalize(dir.path()).unwrap();
        Cleanup {
            dir: Some(dir),
            path,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn mkdir(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = self.path.join(p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Documents that `p` is a mount this test made (the sweep on drop
    /// finds it either way).
    pub(crate) fn mounted(&self, p: &Path) {
        assert!(crate::is_mountpoint(p).unwrap());
    }

    pub(crate) fn assert_no_mounts(&self) {
        let left = crate::mounts_under(&self.path).unwrap();
        assert!(left.is_empty(), "leaked mounts: {left:#?}");
    }

    pub(crate) fn wait_for_no_loops(&self, file: &Path) {
        let start = Instant::now();
        while crate::loop_devices()
            .unwrap()
            .iter()
            .any(|(_, f)| f == file)
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "loop device leaked"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(mounts) = crate::mounts_under(&self.path) {
            for m in mounts.iter().rev() {
                let _ = crate::unmount(&m.mount_point, true);
            }
        }
        if let Ok(loops) = crate::loop_devices() {
            for (dev, file) in loops {
                if file.starts_with(&self.path) {
                    let _ = crate::detach_loop_device(&dev);
                }
            }
        }
        drop(self.dir.take());
    }
}
