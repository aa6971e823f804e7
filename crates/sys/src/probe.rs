//! Start-up probes: what the running kernel can do, found by trying rather
//! than by comparing version numbers (distribution kernels backport, and
//! file-backed EROFS is also a build option, CONFIG_EROFS_FS_BACKED_BY_FILE).
//!
//! No probe leaves anything behind: the superblocks and layers they create
//! belong to a mount context that is never attached to a mount point and is
//! freed when its descriptor closes.

use std::io::Write;
use std::path::Path;

use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::fsctx::FsContext;

/// A valid, empty EROFS image made by `mkfs.erofs -T0 -Uclear --all-root
/// -E^inline_data` (erofs-utils 1.9.4) from an empty directory: 4 KiB whose
/// only non-zero bytes are these, from offset 1024 (superblock with its
/// crc32c, then the root directory inode with `.` and `..` inline).
const PROBE_IMAGE_AT_1024: [u8; 0xbc] = [
    0xe2, 0xe1, 0xf5, 0xe0, 0x9d, 0xef, 0xdf, 0xb2, 0x03, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x24, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x04, 0x00, 0x00, 0x00, 0xed, 0x41, 0x02, 0x00, 0x1b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x24, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x18, 0x00, 0x02, 0x00, 0x24, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x19, 0x00, 0x02, 0x00, 0x2e, 0x2e, 0x2e, 0x00,
];

/// The 4 KiB probe image.
pub fn probe_image() -> Vec<u8> {
    let mut img = vec![0u8; 4096];
    img[1024..1024 + PROBE_IMAGE_AT_1024.len()].copy_from_slice(&PROBE_IMAGE_AT_1024);
    img
}

/// What the kernel supports, probed once at daemon start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFeatures {
    /// EROFS mounts straight from a regular file (Linux ≥ 6.12). Without
    /// it, pass [`crate::ErofsOptions::force_loop`].
    pub file_backed_erofs: bool,
    /// overlayfs's `lowerdir+` (Linux ≥ 6.8): no limit on the number of
    /// layers from the option string.
    pub overlay_lowerdir_plus: bool,
}

impl KernelFeatures {
    /// Runs every probe; `scratch` is a directory on the filesystem that
    /// will hold the layer images (see
    /// [`kernel_supports_file_backed_erofs`]).
    pub fn probe(scratch: &Path) -> Result<Self> {
        Ok(KernelFeatures {
            file_backed_erofs: kernel_supports_file_backed_erofs(scratch)?,
            overlay_lowerdir_plus: overlay_supports_lowerdir_plus()?,
        })
    }
}

/// Whether EROFS can mount a regular file directly. Writes a 4 KiB image
/// into `scratch` (removed again) and builds a superblock from it in a
/// detached mount context. `scratch` should be on the filesystem that holds
/// the layers, because file-backed mounts need the backing filesystem's
/// cooperation (it must support the read path EROFS uses).
///
/// `false` when the kernel answers `ENOTBLK` (no file-backed support) or has
/// no new mount API (< 5.2, far older than file-backed EROFS); an error when
/// EROFS itself is missing (`ENODEV`) or the probe image is refused for any
/// other reason, since then the loop fallback would fail too.
pub fn kernel_supports_file_backed_erofs(scratch: &Path) -> Result<bool> {
    let io_err = |op, e: std::io::Error| {
        Error::sys(op, scratch, Errno::from_io_error(&e).unwrap_or(Errno::IO))
    };
    let mut file = tempfile::Builder::new()
        .prefix(".erofs-probe-")
        .tempfile_in(scratch)
        .map_err(|e| io_err("create probe image in", e))?;
    file.write_all(&probe_image())
        .and_then(|()| file.flush())
        .map_err(|e| io_err("write probe image in", e))?;

    let path = file.path();
    let mut ctx = match FsContext::open("erofs", path.display().to_string(), scratch) {
        Ok(ctx) => ctx,
        Err(e) if e.errno() == Errno::NOSYS => return Ok(false),
        Err(e) => return Err(e),
    };
    ctx.set_flag("ro")?;
    ctx.set_path("source", path, path.as_os_str().as_encoded_bytes())?;
    match ctx.create() {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Errno::NOTBLK => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether overlayfs accepts `lowerdir+` (one layer per `fsconfig` call,
/// Linux ≥ 6.8). Asks a throwaway mount context to add `/` as a layer:
/// unknown parameters are `EINVAL`. `false` too without the new mount API;
/// an error if overlayfs is missing (`ENODEV`).
pub fn overlay_supports_lowerdir_plus() -> Result<bool> {
    let mut ctx = match FsContext::open("overlay", "overlay (probe)".to_owned(), Path::new("/")) {
        Ok(ctx) => ctx,
        Err(e) if e.errno() == Errno::NOSYS => return Ok(false),
        Err(e) => return Err(e),
    };
    match ctx.set_string("lowerdir+", b"/") {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Errno::INVAL => Ok(false),
        Err(e) => Err(e),
    }
}
