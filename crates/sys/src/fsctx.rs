//! The new mount API (`fsopen` → `fsconfig` → `fsmount` → `move_mount`)
//! behind one small type, shared by the EROFS and overlay mounts and the
//! probes.
//!
//! Two properties make it worth the extra calls over `mount(2)`:
//! * options are passed one at a time, so no option string is ever limited
//!   to a page (the 128-layer overlay problem);
//! * the filesystem writes the reason for a failure to the context, which we
//!   read back into the error ([`Error::Mount`]'s `kernel_log`).
//!
//! One limit remains: the kernel copies each `FSCONFIG_SET_STRING` value
//! with `strndup_user(value, 256)`, so a value of 256 bytes or more is
//! refused with `EINVAL`. [`FsContext::set_path`] gets around it for paths
//! by opening the path and passing `/proc/self/fd/N`, which the kernel
//! resolves back to the same object.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create, fsconfig_set_flag,
    fsconfig_set_string, fsmount, fsopen, move_mount,
};

use crate::error::{Error, Result};

/// Longest value `FSCONFIG_SET_STRING` accepts (the kernel's
/// `strndup_user(value, 256)` counts the terminating NUL).
pub(crate) const MAX_FSCONFIG_VALUE: usize = 255;

/// An open filesystem context for one mount of `fs` on `target`.
pub(crate) struct FsContext {
    fd: OwnedFd,
    fs: &'static str,
    /// For error messages: what is being mounted.
    what: String,
    target: PathBuf,
    /// Files opened to stand in for long paths as `/proc/self/fd/N`; they
    /// must stay open until the superblock is created, because some
    /// filesystems (EROFS) only resolve the path then.
    held: Vec<OwnedFd>,
}

impl FsContext {
    /// `fsopen(fs)`. `ENOSYS` (kernel < 5.2) is returned as is so that the
    /// caller can fall back to `mount(2)`.
    pub(crate) fn open(fs: &'static str, what: String, target: &Path) -> Result<Self> {
        match fsopen(fs, FsOpenFlags::FSOPEN_CLOEXEC) {
            Ok(fd) => Ok(FsContext {
                fd,
                fs,
                what,
                target: target.to_owned(),
                held: Vec::new(),
            }),
            Err(errno) => Err(Error::Mount {
                fs,
                what,
                target: target.to_owned(),
                step: format!("fsopen {fs}"),
                errno,
                kernel_log: String::new(),
            }),
        }
    }

    fn fail(&self, step: String, errno: Errno) -> Error {
        Error::Mount {
            fs: self.fs,
            what: self.what.clone(),
            target: self.target.clone(),
            step,
            errno,
            kernel_log: self.drain_log(),
        }
    }

    /// Reads the messages the filesystem logged to this context (one per
    /// `read`, until `ENODATA`), e.g. `e overlayfs: failed to resolve 'x'`.
    fn drain_log(&self) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        // The kernel keeps at most 8 messages per context.
        for _ in 0..16 {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(n) if n > 0 => {
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    out.push(msg.trim_end().to_owned());
                }
                _ => break,
            }
        }
        out.join("; ")
    }

    /// `FSCONFIG_SET_FLAG key`.
    pub(crate) fn set_flag(&mut self, key: &str) -> Result<()> {
        fsconfig_set_flag(self.fd.as_fd(), key).map_err(|e| self.fail(format!("fsconfig {key}"), e))
    }

    /// `FSCONFIG_SET_STRING key=value`; the value must fit
    /// [`MAX_FSCONFIG_VALUE`].
    pub(crate) fn set_string(&mut self, key: &str, value: &[u8]) -> Result<()> {
        let step = || format!("fsconfig {key}={}", String::from_utf8_lossy(value));
        if value.len() > MAX_FSCONFIG_VALUE {
            return Err(Error::Mount {
                fs: self.fs,
                what: self.what.clone(),
                target: self.target.clone(),
                step: step(),
                errno: Errno::TOOBIG,
                kernel_log: format!("values are limited to {MAX_FSCONFIG_VALUE} bytes"),
            });
        }
        fsconfig_set_string(self.fd.as_fd(), key, OsStr::from_bytes(value))
            .map_err(|e| self.fail(step(), e))
    }

    /// Sets `key` to a path. `value` is the path as the filesystem wants to
    /// read it (possibly escaped); if it is too long for fsconfig, `path` is
    /// opened and passed as `/proc/self/fd/N`, which needs no escaping.
    pub(crate) fn set_path(&mut self, key: &str, path: &Path, value: &[u8]) -> Result<()> {
        if value.len() <= MAX_FSCONFIG_VALUE {
            return self.set_string(key, value);
        }
        let fd = rustix::fs::openat(CWD, path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| self.fail(format!("open {} (for {key})", path.display()), e))?;
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        self.held.push(fd);
        self.set_string(key, proc_path.as_bytes())
    }

    /// A mount option as `mount(8)` would write it: `key=value` is a string,
    /// a bare `key` a flag.
    pub(crate) fn set_option(&mut self, opt: &str) -> Result<()> {
        match opt.split_once('=') {
            Some((key, value)) => self.set_string(key, value.as_bytes()),
            None => self.set_flag(opt),
        }
    }

    /// `FSCONFIG_CMD_CREATE`: builds the superblock. Errors like `ENOTBLK`
    /// (EROFS on a regular file, kernel < 6.12) surface here.
    pub(crate) fn create(&mut self) -> Result<()> {
        fsconfig_create(self.fd.as_fd()).map_err(|e| self.fail("fsconfig create".to_owned(), e))
    }

    /// `fsmount` + `move_mount` onto the target. The mount is attached only
    /// by the last call, so a failure leaves nothing mounted.
    pub(crate) fn attach(mut self, attrs: MountAttrFlags) -> Result<()> {
        self.create()?;
        let mnt = fsmount(self.fd.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs)
            .map_err(|e| self.fail("fsmount".to_owned(), e))?;
        move_mount(
            mnt.as_fd(),
            "",
            CWD,
            &self.target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| self.fail("move_mount".to_owned(), e))
    }
}
