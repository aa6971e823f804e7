//! Loop devices: a block device in front of an image file, for kernels
//! without file-backed EROFS mounts (< 6.12) and for anything that needs a
//! real block device.
//!
//! Attaching is `LOOP_CTL_GET_FREE` on `/dev/loop-control`, then
//! `LOOP_CONFIGURE` (Linux 5.8) on the device it names, which binds the file
//! and sets the flags in one step. Between the two calls another process
//! may take the same device; the kernel then answers `EBUSY` and we ask for
//! another one, up to [`MAX_ATTEMPTS`] times with a small random back-off,
//! as containerd does. Kernels before 5.8 answer `EINVAL` to
//! `LOOP_CONFIGURE`, and we fall back to `LOOP_SET_FD` + `LOOP_SET_STATUS64`.
//!
//! Every device is attached with `LO_FLAGS_AUTOCLEAR`: the kernel detaches
//! it by itself when its last user goes away, i.e. when the last open file
//! descriptor is closed *and* nothing mounted from it remains. So a
//! [`LoopDevice`] that is dropped without being mounted disappears at once,
//! and one that was mounted disappears at unmount, even if this process has
//! crashed in between. Nothing has to remember to detach it.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use linux_raw_sys::loop_device::{
    LO_FLAGS_AUTOCLEAR, LO_FLAGS_DIRECT_IO, LO_FLAGS_READ_ONLY, loop_config, loop_info64,
};
use rustix::fs::{CWD, Mode, OFlags};
use rustix::io::Errno;
use rustix::ioctl::{self, Ioctl, IoctlOutput, NoArg, Opcode, Setter};

use crate::error::{Error, Result};

/// How many times a lost race for a free device is retried (containerd's
/// number).
pub const MAX_ATTEMPTS: u32 = 100;

const LOOP_CONTROL: &str = "/dev/loop-control";

const LOOP_CTL_GET_FREE: Opcode = linux_raw_sys::loop_device::LOOP_CTL_GET_FREE as Opcode;
const LOOP_CONFIGURE: Opcode = linux_raw_sys::loop_device::LOOP_CONFIGURE as Opcode;
const LOOP_SET_FD: Opcode = linux_raw_sys::loop_device::LOOP_SET_FD as Opcode;
const LOOP_SET_STATUS64: Opcode = linux_raw_sys::loop_device::LOOP_SET_STATUS64 as Opcode;
const LOOP_CLR_FD: Opcode = linux_raw_sys::loop_device::LOOP_CLR_FD as Opcode;

/// An attached loop device. Holding it keeps the device open (and thus
/// attached); dropping it closes the descriptor, after which autoclear
/// detaches the device as soon as nothing is mounted from it.
#[derive(Debug)]
pub struct LoopDevice {
    fd: OwnedFd,
    number: u32,
    path: PathBuf,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `N` in `/dev/loopN`.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Detaches now (`LOOP_CLR_FD`). If the device is still mounted, the
    /// kernel only marks it for autoclear and it goes away at unmount.
    pub fn detach(self) -> Result<()> {
        clear_fd(&self.fd).map_err(|e| Error::sys("LOOP_CLR_FD", &self.path, e))
    }
}

/// Attaches `file` to a free loop device, with autoclear (see the module
/// docs), read-only if `read_only`, and with direct I/O on the backing file
/// if `direct_io` (the page cache then holds the data once, not twice; the
/// kernel silently keeps buffered I/O where the backing filesystem or the
/// file's alignment does not allow direct I/O).
pub fn attach_loop(file: &Path, read_only: bool, direct_io: bool) -> Result<LoopDevice> {
    attach(file, read_only, direct_io, Configure::Modern)
}

/// Which ioctls bind the file: `LOOP_CONFIGURE` (5.8+), falling back to the
/// pre-5.8 pair when the kernel does not know it; `Legacy` forces the pair
/// (tests of the fallback on new kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Configure {
    Modern,
    Legacy,
}

pub(crate) fn attach(
    file: &Path,
    read_only: bool,
    direct_io: bool,
    mut how: Configure,
) -> Result<LoopDevice> {
    let access = if read_only {
        OFlags::RDONLY
    } else {
        OFlags::RDWR
    };
    let backing = rustix::fs::openat(CWD, file, access | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::sys("open loop backing file", file, e))?;
    let control = rustix::fs::openat(
        CWD,
        LOOP_CONTROL,
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys("open", LOOP_CONTROL, e))?;

    let mut flags = LO_FLAGS_AUTOCLEAR as u32;
    if read_only {
        flags |= LO_FLAGS_READ_ONLY as u32;
    }
    if direct_io {
        flags |= LO_FLAGS_DIRECT_IO as u32;
    }
    let info = loop_info(file, flags);

    for attempt in 1..=MAX_ATTEMPTS {
        let number =
            get_free(&control).map_err(|e| Error::sys("LOOP_CTL_GET_FREE", LOOP_CONTROL, e))?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        // The device node itself is opened read-write even for a read-only
        // attachment: the kernel derives LO_FLAGS_READ_ONLY from the backing
        // descriptor and our flag, not from this one.
        let dev = rustix::fs::openat(CWD, &path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::sys("open loop device", &path, e))?;

        let bound = match how {
            Configure::Modern => match configure(&dev, &backing, info) {
                // Pre-5.8 kernels: unknown loop ioctls are EINVAL.
                Err(Errno::INVAL) => {
                    how = Configure::Legacy;
                    configure_legacy(&dev, &backing, info)
                }
                other => other,
            },
            Configure::Legacy => configure_legacy(&dev, &backing, info),
        };
        match bound {
            Ok(()) => {
                return Ok(LoopDevice {
                    fd: dev,
                    number,
                    path,
                });
            }
            // Someone else bound this device between GET_FREE and now.
            Err(Errno::BUSY) => {
                let max_ms = u64::from(attempt.min(10));
                std::thread::sleep(Duration::from_millis(fastrand::u64(1..=max_ms)));
            }
            Err(e) => {
                let op = match how {
                    Configure::Modern => "LOOP_CONFIGURE",
                    Configure::Legacy => "LOOP_SET_FD/LOOP_SET_STATUS64",
                };
                return Err(Error::Loop {
                    op,
                    device: path,
                    file: file.to_owned(),
                    errno: e,
                });
            }
        }
    }
    Err(Error::LoopBusy {
        path: file.to_owned(),
        attempts: MAX_ATTEMPTS,
        errno: Errno::BUSY,
    })
}

/// `loop_info64` with the flags and, for `losetup -l` and the kernel log,
/// the file name (truncated to the 63 bytes the field holds).
fn loop_info(file: &Path, flags: u32) -> loop_info64 {
    let mut name = [0u8; 64];
    let bytes = file.as_os_str().as_bytes();
    let n = bytes.len().min(name.len() - 1);
    name[..n].copy_from_slice(&bytes[..n]);
    loop_info64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: flags,
        lo_file_name: name,
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    }
}

/// `LOOP_CTL_GET_FREE`, whose answer is the ioctl's return value, which
/// none of rustix's ioctl patterns returns.
struct GetFree;

// SAFETY: LOOP_CTL_GET_FREE takes no argument (the pointer is null and never
// read) and returns the device number as the ioctl's return value; it
// writes no user memory, so IS_MUTATING may be false.
#[allow(unsafe_code)]
unsafe impl Ioctl for GetFree {
    type Output = u32;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        LOOP_CTL_GET_FREE
    }

    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        core::ptr::null_mut()
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _: *mut core::ffi::c_void,
    ) -> rustix::io::Result<u32> {
        // A successful call returns the (non-negative) device number.
        u32::try_from(out).map_err(|_| Errno::RANGE)
    }
}

#[allow(unsafe_code)]
fn get_free(control: &OwnedFd) -> rustix::io::Result<u32> {
    // SAFETY: `control` is /dev/loop-control, for which LOOP_CTL_GET_FREE is
    // defined, and GetFree's Ioctl impl matches that ioctl (see above).
    unsafe { ioctl::ioctl(control.as_fd(), GetFree) }
}

#[allow(unsafe_code)]
fn configure(dev: &OwnedFd, backing: &OwnedFd, info: loop_info64) -> rustix::io::Result<()> {
    let fd = u32::try_from(backing.as_raw_fd()).map_err(|_| Errno::BADF)?;
    let config = loop_config {
        fd,
        block_size: 0, // the backing file's logical block size
        info,
        __reserved: [0; 8],
    };
    // SAFETY: `dev` is a loop device; LOOP_CONFIGURE reads a `struct
    // loop_config` through its argument, which Setter passes by pointer to
    // a value it owns for the duration of the call. `fd` stays open for the
    // call because `backing` is borrowed.
    unsafe {
        ioctl::ioctl(
            dev.as_fd(),
            Setter::<LOOP_CONFIGURE, loop_config>::new(config),
        )
    }
}

/// The pre-5.8 way: bind, then set the flags. A failure after binding
/// unbinds again so that no half-configured device is left behind.
#[allow(unsafe_code)]
fn configure_legacy(dev: &OwnedFd, backing: &OwnedFd, info: loop_info64) -> rustix::io::Result<()> {
    let fd = usize::try_from(backing.as_raw_fd()).map_err(|_| Errno::BADF)?;
    // SAFETY: LOOP_SET_FD takes the backing descriptor as an integer
    // argument, which IntegerSetter passes by value; it stays open for the
    // call because `backing` is borrowed.
    unsafe {
        ioctl::ioctl(
            dev.as_fd(),
            ioctl::IntegerSetter::<LOOP_SET_FD>::new_usize(fd),
        )
    }?;
    // READ_ONLY cannot be set through SET_STATUS (the kernel derives it
    // from the backing descriptor at SET_FD); the others can.
    let mut status = info;
    status.lo_flags &= !(LO_FLAGS_READ_ONLY as u32);
    // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64` through its
    // argument, passed by pointer to a value Setter owns during the call.
    let set = unsafe {
        ioctl::ioctl(
            dev.as_fd(),
            Setter::<LOOP_SET_STATUS64, loop_info64>::new(status),
        )
    };
    if let Err(e) = set {
        // Best effort: the error that matters is the SET_STATUS one.
        let _ = clear_fd(dev);
        return Err(e);
    }
    Ok(())
}

#[allow(unsafe_code)]
fn clear_fd(dev: &OwnedFd) -> rustix::io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument and touches no user memory.
    unsafe { ioctl::ioctl(dev.as_fd(), NoArg::<LOOP_CLR_FD>::new()) }
}

/// Detaches the loop device at `dev` (`/dev/loopN`) that someone else
/// attached: the clean-up for devices found by [`loop_devices`] (a crashed
/// process's, or a test's). Like [`LoopDevice::detach`], a device that is
/// still mounted is only marked for autoclear.
pub fn detach_loop_device(dev: &Path) -> Result<()> {
    let fd = rustix::fs::openat(CWD, dev, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::sys("open loop device", dev, e))?;
    match clear_fd(&fd) {
        // ENXIO: it was already unbound.
        Ok(()) | Err(Errno::NXIO) => Ok(()),
        Err(e) => Err(Error::sys("LOOP_CLR_FD", dev, e)),
    }
}

/// Every bound loop device and its backing file, from
/// `/sys/block/loop*/loop/backing_file` (leak checks, diagnostics). A
/// device that is detached while being listed is skipped.
pub fn loop_devices() -> Result<Vec<(PathBuf, PathBuf)>> {
    let sys = Path::new("/sys/block");
    let entries = fs::read_dir(sys).map_err(|e| io_error("read_dir", sys, &e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("read_dir", sys, &e))?;
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_prefix("loop")) else {
            continue;
        };
        let backing = entry.path().join("loop/backing_file");
        match fs::read(&backing) {
            Ok(mut bytes) => {
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                }
                let file = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
                out.push((PathBuf::from(format!("/dev/loop{number}")), file));
            }
            // Unbound devices have no loop/ attributes.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("read", &backing, &e)),
        }
    }
    out.sort();
    Ok(out)
}

fn io_error(op: &'static str, path: &Path, e: &std::io::Error) -> Error {
    Error::sys(op, path, Errno::from_io_error(e).unwrap_or(Errno::IO))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::testutil::{Cleanup, require_root};

    fn attr(dev: &LoopDevice, name: &str) -> String {
        let p = Path::new("/sys/block")
            .join(format!("loop{}", dev.number()))
            .join(name);
        fs::read_to_string(p).unwrap().trim().to_owned()
    }

    fn bound_to(file: &Path) -> usize {
        loop_devices()
            .unwrap()
            .iter()
            .filter(|(_, f)| f == file)
            .count()
    }

    /// The pre-5.8 pair (LOOP_SET_FD + LOOP_SET_STATUS64), forced on this
    /// kernel: same flags, same autoclear behaviour.
    #[test]
    fn legacy_configure_sets_the_same_flags() {
        if !require_root() {
            return;
        }
        let t = Cleanup::new();
        let file = t.path().join("backing");
        fs::write(&file, vec![0u8; 1 << 16]).unwrap();
        let file = fs::canonicalize(&file).unwrap();

        let dev = attach(&file, true, false, Configure::Legacy).unwrap();
        assert_eq!(attr(&dev, "ro"), "1");
        assert_eq!(attr(&dev, "loop/autoclear"), "1");
        assert_eq!(bound_to(&file), 1);
        drop(dev);
        t.wait_for_no_loops(&file);

        let dev = attach(&file, false, false, Configure::Legacy).unwrap();
        assert_eq!(attr(&dev, "ro"), "0");
        dev.detach().unwrap();
        t.wait_for_no_loops(&file);
    }

    #[test]
    fn attach_errors_name_the_file() {
        if !require_root() {
            return;
        }
        let t = Cleanup::new();
        let missing = t.path().join("missing");
        let err = attach_loop(&missing, true, false).unwrap_err();
        assert_eq!(err.errno(), Errno::NOENT);
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
