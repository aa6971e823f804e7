//! Shared pieces of the root-only integration tests: the root/mkfs gates,
//! a scratch directory that cleans up every mount under it even when a test
//! panics, and the leak check every test ends with.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sys::{loop_devices, mounts_under, unmount};

/// Returns from the test unless we are root: a loud note normally, a
/// failure under CI (`CI` set), where a skipped root test must not pass.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::is_root() {
            if std::env::var_os("CI").is_some() {
                panic!("this test needs root, and CI must run it as root");
            }
            eprintln!(
                "\n************************************************************\n\
                 SKIPPED {}: needs root (mounts, loop devices)\n\
                 ************************************************************\n",
                $crate::common::test_name()
            );
            return;
        }
    };
}

/// Like `require_root!`, also requiring mkfs.erofs; evaluates to its path.
#[macro_export]
macro_rules! require_root_and_mkfs {
    () => {{
        $crate::require_root!();
        match $crate::common::mkfs_erofs() {
            Some(p) => p,
            None => {
                if std::env::var_os("CI").is_some() {
                    panic!("mkfs.erofs not found; CI needs it (scripts/setup.sh installs it)");
                }
                eprintln!(
                    "\n************************************************************\n\
                     SKIPPED {}: mkfs.erofs not found\n\
                     ************************************************************\n",
                    $crate::common::test_name()
                );
                return;
            }
        }
    }};
}

/// libtest names each test's thread after the test.
pub fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned()
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

const MKFS_CANDIDATES: &[&str] = &[
    "/usr/local/bin/mkfs.erofs",
    "/opt/erofs-utils/bin/mkfs.erofs",
];

pub fn mkfs_erofs() -> Option<PathBuf> {
    MKFS_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `mkfs.erofs [extra…] image dir`, deterministic, quiet.
pub fn mkfs(mkfs: &Path, image: &Path, dir: &Path, extra: &[&str]) {
    let out = Command::new(mkfs)
        .args(["--quiet", "-T0", "-Uclear", "--all-root"])
        .args(extra)
        .arg(image)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.erofs {} failed: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch directory on the repository's filesystem (ext4 here; `/tmp`
/// may be tmpfs elsewhere, which has no inode flags or file-backed EROFS
/// guarantees). Dropping it first unmounts everything below it (deepest
/// first, detaching busy ones), detaches loop devices backed by files in
/// it (autoclear should have done that; this is for when it did not), and
/// clears IMMUTABLE flags it finds, so a failing test leaves nothing
/// behind and the directory removable.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sys-test-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        // Canonical, because mountinfo and sysfs report resolved paths.
        let path = fs::canonicalize(dir.path()).unwrap();
        Scratch {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    pub fn mkdir(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = self.join(p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// Loop devices whose backing file is under this directory.
    pub fn loops(&self) -> Vec<(PathBuf, PathBuf)> {
        loop_devices()
            .unwrap()
            .into_iter()
            .filter(|(_, file)| file.starts_with(&self.path))
            .collect()
    }

    /// Asserts that nothing is mounted below the directory and that no
    /// loop device is backed by a file in it. Autoclear runs when the last
    /// opener closes, which udev probing can delay a little, so loops get
    /// a few seconds.
    pub fn assert_no_leaks(&self) {
        let mounts = mounts_under(&self.path).unwrap();
        assert!(mounts.is_empty(), "leaked mounts: {mounts:#?}");
        wait_for("loop devices to autoclear", || self.loops().is_empty());
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mounts) = mounts_under(&self.path) {
            for m in mounts.iter().rev() {
                let _ = unmount(&m.mount_point, true);
            }
        }
        if let Ok(loops) = loop_devices() {
            for (dev, file) in loops {
                if file.starts_with(&self.path) {
                    let _ = sys::detach_loop_device(&dev);
                }
            }
        }
        clear_immutable_below(&self.path);
        drop(self.dir.take());
    }
}

fn clear_immutable_below(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let _ = sys::set_immutable(&p, false);
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            clear_immutable_below(&p);
        }
    }
}

/// Polls `cond` for up to 10 s.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmount `target` (not lazily), retrying briefly on EBUSY: a test on
/// another thread that spawns a command (mkfs.erofs) forks a child that
/// holds copies of our open descriptors until it execs, so a file just
/// closed here can pin the mount for a moment (seen twice on CI).
pub fn unmount_settled(target: &Path) {
    let start = Instant::now();
    loop {
        match sys::unmount(target, false) {
            Ok(()) => return,
            Err(e) if e.errno() == sys::Errno::BUSY && start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("unmounting {}: {e}", target.display()),
        }
    }
}

/// Unmounts its path on drop (detaching if busy), for mounts a test makes
/// and wants gone before the end of the test even when it fails midway.
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = unmount(&self.0, true);
    }
}

/// The kernel's (major, minor) release, e.g. (6, 18).
pub fn kernel_version() -> (u32, u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// `/sys/block/loopN/<attr>` of a `/dev/loopN` path, trimmed.
pub fn loop_attr(dev: &Path, attr: &str) -> String {
    let name = dev.file_name().unwrap();
    fs::read_to_string(Path::new("/sys/block").join(name).join(attr))
        .unwrap()
        .trim()
        .to_owned()
}
