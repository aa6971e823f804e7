//! The kernel interface of the snapshotter, and the only crate of the
//! workspace allowed to contain `unsafe`.
//!
//! Every other crate forbids `unsafe_code`; this one denies it and lets a
//! function opt in with `#[allow(unsafe_code)]` and a `// SAFETY:` comment,
//! so that the whole unsafe surface is a handful of ioctls that rustix does
//! not wrap (loop devices, fs-verity). Everything else goes through rustix's
//! safe API.
//!
//! * [`mount`]: read-only EROFS mounts of an image file (file-backed on
//!   Linux ≥ 6.12, loop device before), overlayfs with any number of lower
//!   layers, bind mounts, unmount.
//! * [`loopdev`]: `LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE` with autoclear,
//!   retrying the race with other attachers as containerd does.
//! * [`mountinfo`]: `/proc/self/mountinfo` parsing, mount-point checks and
//!   the mounts below a directory (restart re-discovery, leak checks).
//! * [`flags`]: `FS_IMMUTABLE_FL` on committed layer blobs.
//! * [`verity`]: fs-verity enable/measure; "the filesystem cannot do it" is
//!   a value ([`VerityStatus::Unsupported`]), not an error.
//! * [`probe`]: start-up checks of what the running kernel supports.
//!
//! Errors are one [`Error`] type whose messages name the operation, the path
//! and the errno, and whose [`Error::errno`] lets callers branch on the
//! cause (`ENOTBLK`, `EBUSY`, `EINVAL`…).

pub mod flags;
pub mod loopdev;
pub mod mount;
pub mod mountinfo;
pub mod probe;
pub mod verity;
pub mod writeback;

mod error;
mod fsctx;
#[cfg(test)]
mod testutil;

pub use error::{Error, Result};
pub use flags::set_immutable;
pub use loopdev::{LoopDevice, attach_loop, detach_loop_device, loop_devices};
pub use mount::{
    ErofsOptions, MountKind, mount_bind, mount_erofs, mount_ext4_image, mount_overlay,
    overlay_escape, unmount,
};
pub use mountinfo::{MountInfo, is_mountpoint, mounts_under};
pub use probe::{
    KernelFeatures, kernel_supports_file_backed_erofs, overlay_supports_lowerdir_plus,
};
pub use rustix::io::Errno;
pub use verity::{VerityDigest, VerityMeasurement, VerityStatus, enable_verity, measure_verity};
pub use writeback::start_writeback;
