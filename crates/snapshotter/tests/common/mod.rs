//! Shared by the root-only tests of this crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

/// False (after a loud note) when not root; panics instead under CI, where
/// a skipped root test must not pass.
pub fn root_or_skip() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs root and must not be skipped on CI"
    );
    eprintln!("SKIPPED: needs root");
    false
}

/// Mount points at or below `root`.
pub fn mounts_under(root: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = root.to_string_lossy().into_owned();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// A temporary directory for a snapshotter root. The daemon's layer
/// mounts outlive it by design, so a test that fails midway would leave
/// them behind: on drop, everything mounted below is detached first.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    pub fn new() -> Scratch {
        Scratch(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap())
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Deepest first: mountinfo lists parents before children.
        for m in mounts_under(self.0.path()).iter().rev() {
            let _ = sys::unmount(Path::new(m), true);
        }
    }
}
