//! One error type for the crate. Every variant carries an errno, so that
//! callers can branch on the cause (`ENOTBLK` means "no file-backed EROFS",
//! `EBUSY` "still in use", `EINVAL` on unmount "not mounted"), and every
//! message names the operation and the path it was applied to.
//!
//! Failures detected here rather than by the kernel (a path overlayfs cannot
//! express, an option string longer than a page, a malformed mountinfo line)
//! use the errno the kernel would have answered, `EINVAL` or `E2BIG`.

use std::fmt;
use std::path::PathBuf;

use rustix::io::Errno;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed system call or a request the kernel would refuse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call on `path` failed.
    #[error("{op} {}: {errno}", path.display())]
    Sys {
        /// What was attempted, e.g. `"open"`, `"FS_IOC_SETFLAGS"`.
        op: &'static str,
        path: PathBuf,
        errno: Errno,
    },

    /// One step of a mount failed. `kernel_log` holds what the filesystem
    /// wrote to the mount context (new mount API only), which is usually the
    /// only place the real reason is given ("failed to resolve '…'").
    #[error("mount {fs} {what} on {}: {step}: {errno}{}", target.display(), LogSuffix(kernel_log))]
    Mount {
        fs: &'static str,
        /// What is mounted: the image (and the loop device standing in for
        /// it), `(N layers)` for overlay, the bind source.
        what: String,
        target: PathBuf,
        /// The call and its argument, e.g. `fsconfig lowerdir+=/a/b`.
        step: String,
        errno: Errno,
        kernel_log: String,
    },

    /// A request refused before reaching the kernel.
    #[error("{op} {}: {reason}: {errno}", path.display())]
    Invalid {
        op: &'static str,
        path: PathBuf,
        reason: String,
        errno: Errno,
    },

    /// Binding a file to a loop device failed.
    #[error("{op} {} for {}: {errno}", device.display(), file.display())]
    Loop {
        op: &'static str,
        device: PathBuf,
        file: PathBuf,
        errno: Errno,
    },

    /// Every loop device handed out by `LOOP_CTL_GET_FREE` was taken by
    /// another attacher before we could configure it.
    #[error(
        "attach loop device for {}: lost the race for a free device {attempts} times: {errno}",
        path.display()
    )]
    LoopBusy {
        path: PathBuf,
        attempts: u32,
        errno: Errno,
    },

    /// A line of `/proc/self/mountinfo` did not have the documented shape.
    #[error("parse /proc/self/mountinfo line {line}: {reason}: {errno}")]
    MountInfo {
        line: usize,
        reason: String,
        errno: Errno,
    },
}

impl Error {
    /// The errno behind this error (the kernel's answer, or the one it would
    /// have given for a request refused here).
    pub fn errno(&self) -> Errno {
        match self {
            Error::Sys { errno, .. }
            | Error::Mount { errno, .. }
            | Error::Invalid { errno, .. }
            | Error::Loop { errno, .. }
            | Error::LoopBusy { errno, .. }
            | Error::MountInfo { errno, .. } => *errno,
        }
    }

    pub(crate) fn sys(op: &'static str, path: impl Into<PathBuf>, errno: Errno) -> Self {
        Error::Sys {
            op,
            path: path.into(),
            errno,
        }
    }

    pub(crate) fn invalid(
        op: &'static str,
        path: impl Into<PathBuf>,
        reason: impl Into<String>,
        errno: Errno,
    ) -> Self {
        Error::Invalid {
            op,
            path: path.into(),
            reason: reason.into(),
            errno,
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::new(std::io::Error::from(e.errno()).kind(), e)
    }
}

/// Formats the kernel's context log as ` (kernel: …)`; when there is none
/// (mount(2), or a filesystem such as EROFS that logs only to the kernel
/// ring buffer) points there instead.
struct LogSuffix<'a>(&'a str);

impl fmt::Display for LogSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            write!(f, " (details, if any, in dmesg)")
        } else {
            write!(f, " (kernel: {})", self.0)
        }
    }
}
