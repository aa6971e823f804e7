//! Inode flags: `FS_IMMUTABLE_FL` on committed layer blobs.
//!
//! containerd sets it after Commit so that nothing, root included, can
//! modify or delete a layer while it is in use (containerd.md §3.2), and
//! clears it in Remove. An immutable file cannot be opened for writing,
//! renamed, linked or unlinked until the flag is cleared (CAP_LINUX_IMMUTABLE
//! required for both).

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{CWD, IFlags, Mode, OFlags};

use crate::error::{Error, Result};

/// Sets or clears `FS_IMMUTABLE_FL` on `path` (a file or directory; a
/// symlink is refused with `ELOOP` rather than followed). Does nothing if
/// the flag already has the wanted value. Filesystems without inode flags
/// (tmpfs before 6.0, overlayfs on some lowers) answer `ENOTTY` or
/// `EOPNOTSUPP`; containerd only warns then, so callers decide.
pub fn set_immutable(path: &Path, immutable: bool) -> Result<()> {
    let (fd, flags) = open_with_flags(path)?;
    let wanted = if immutable {
        flags | IFlags::IMMUTABLE
    } else {
        flags - IFlags::IMMUTABLE
    };
    if wanted == flags {
        return Ok(());
    }
    rustix::fs::ioctl_setflags(&fd, wanted).map_err(|e| Error::sys("FS_IOC_SETFLAGS", path, e))
}

/// Whether `path` has `FS_IMMUTABLE_FL` set.
pub fn is_immutable(path: &Path) -> Result<bool> {
    Ok(open_with_flags(path)?.1.contains(IFlags::IMMUTABLE))
}

/// Open `path` (never following a symlink) and read its inode flags.
fn open_with_flags(path: &Path) -> Result<(OwnedFd, IFlags)> {
    // Read-only is enough for FS_IOC_SETFLAGS, and is the only way to open
    // an immutable file at all. NONBLOCK: never hang on a FIFO.
    let fd = rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys("open", path, e))?;
    let flags =
        rustix::fs::ioctl_getflags(&fd).map_err(|e| Error::sys("FS_IOC_GETFLAGS", path, e))?;
    Ok((fd, flags))
}
