//! fs-verity on layer blobs: `FS_IOC_ENABLE_VERITY` makes a file read-only
//! forever and has the kernel check every page read against a Merkle tree;
//! `FS_IOC_MEASURE_VERITY` returns the tree's root digest.
//!
//! "This filesystem or kernel cannot do fs-verity" is an expected answer,
//! not a failure: the kernel says `EOPNOTSUPP` (ext4/f2fs/btrfs without the
//! feature, or a kernel without CONFIG_FS_VERITY) or `ENOTTY` (filesystems
//! that never heard of the ioctl), and we return
//! [`VerityStatus::Unsupported`]. Whether that is fatal is the caller's
//! policy (containerd fails Commit when verity was requested).

use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{CWD, Mode, OFlags};
use rustix::io::Errno;
use rustix::ioctl::{self, Opcode, Setter, Updater};

use crate::error::{Error, Result};

const FS_IOC_ENABLE_VERITY: Opcode = linux_raw_sys::ioctl::FS_IOC_ENABLE_VERITY as Opcode;
const FS_IOC_MEASURE_VERITY: Opcode = linux_raw_sys::ioctl::FS_IOC_MEASURE_VERITY as Opcode;

/// `FS_VERITY_HASH_ALG_SHA256`.
pub const HASH_ALG_SHA256: u16 = 1;
/// `FS_VERITY_MAX_DIGEST_SIZE` (SHA-512).
const MAX_DIGEST_SIZE: usize = 64;

/// Result of [`enable_verity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerityStatus {
    /// Enabled by this call.
    Enabled,
    /// The file already had fs-verity (`EEXIST`).
    AlreadyEnabled,
    /// The filesystem or kernel has no fs-verity.
    Unsupported,
}

/// Result of [`measure_verity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerityMeasurement {
    Digest(VerityDigest),
    /// The filesystem supports fs-verity but this file does not have it
    /// (`ENODATA`).
    NotEnabled,
    /// The filesystem or kernel has no fs-verity.
    Unsupported,
}

/// A file's fs-verity digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityDigest {
    /// `FS_VERITY_HASH_ALG_*` ([`HASH_ALG_SHA256`] for ours).
    pub algorithm: u16,
    pub digest: Vec<u8>,
}

/// `struct fsverity_enable_arg` (linux/fsverity.h), which linux-raw-sys
/// does not have.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct EnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}

/// `struct fsverity_digest` with room for the largest digest.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DigestArg {
    algorithm: u16,
    /// In: the buffer size; out: the digest size.
    size: u16,
    digest: [u8; MAX_DIGEST_SIZE],
}

fn is_unsupported(e: Errno) -> bool {
    // ENOTSUP is EOPNOTSUPP on Linux.
    matches!(e, Errno::NOTTY | Errno::OPNOTSUPP)
}

/// Enables fs-verity (SHA-256, no salt, no signature) on `file`, with
/// Merkle-tree blocks of min(page size, the filesystem block size), as
/// containerd does. Fails with `ETXTBSY` while any descriptor has the file
/// open for writing.
#[allow(unsafe_code)]
pub fn enable_verity(file: &Path) -> Result<VerityStatus> {
    let fd = open_read(file)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::sys("fstat", file, e))?;
    let page = rustix::param::page_size();
    let block = usize::try_from(st.st_blksize)
        .ok()
        .filter(|&b| b > 0)
        .map_or(page, |b| b.min(page));
    let arg = EnableArg {
        version: 1,
        hash_algorithm: u32::from(HASH_ALG_SHA256),
        block_size: u32::try_from(block).unwrap_or(4096),
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    // SAFETY: FS_IOC_ENABLE_VERITY reads a `struct fsverity_enable_arg`
    // through its argument; EnableArg has that exact repr(C) layout, Setter
    // passes a pointer to a value it owns for the whole call, and the salt
    // and signature pointers are null with zero sizes, so the kernel reads
    // no other user memory.
    let res = unsafe {
        ioctl::ioctl(
            fd.as_fd(),
            Setter::<FS_IOC_ENABLE_VERITY, EnableArg>::new(arg),
        )
    };
    match res {
        Ok(()) => Ok(VerityStatus::Enabled),
        Err(Errno::EXIST) => Ok(VerityStatus::AlreadyEnabled),
        Err(e) if is_unsupported(e) => Ok(VerityStatus::Unsupported),
        Err(e) => Err(Error::sys("FS_IOC_ENABLE_VERITY", file, e)),
    }
}

/// Reads `file`'s fs-verity digest.
#[allow(unsafe_code)]
pub fn measure_verity(file: &Path) -> Result<VerityMeasurement> {
    let fd = open_read(file)?;
    let mut arg = DigestArg {
        algorithm: 0,
        size: MAX_DIGEST_SIZE as u16,
        digest: [0; MAX_DIGEST_SIZE],
    };
    // SAFETY: FS_IOC_MEASURE_VERITY reads the 4-byte header of a `struct
    // fsverity_digest` and writes the header plus at most `size` digest
    // bytes after it; DigestArg is that header followed by `size` bytes, and
    // Updater passes a pointer to `arg`, which outlives the call.
    let res = unsafe {
        ioctl::ioctl(
            fd.as_fd(),
            Updater::<FS_IOC_MEASURE_VERITY, DigestArg>::new(&mut arg),
        )
    };
    match res {
        Ok(()) => {
            let n = usize::from(arg.size).min(MAX_DIGEST_SIZE);
            Ok(VerityMeasurement::Digest(VerityDigest {
                algorithm: arg.algorithm,
                digest: arg.digest[..n].to_vec(),
            }))
        }
        Err(Errno::NODATA) => Ok(VerityMeasurement::NotEnabled),
        Err(e) if is_unsupported(e) => Ok(VerityMeasurement::Unsupported),
        Err(e) => Err(Error::sys("FS_IOC_MEASURE_VERITY", file, e)),
    }
}

fn open_read(file: &Path) -> Result<rustix::fd::OwnedFd> {
    rustix::fs::openat(
        CWD,
        file,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys("open", file, e))
}
