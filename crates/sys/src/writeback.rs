//! Starting writeback early. A layer image is written in one pass and then
//! fsynced; left to the kernel, most of it is still dirty at that point and
//! the fsync waits for all of it (about as long as the conversion itself
//! for a 1 GB layer). Asking for writeback while the file grows overlaps
//! the disk with inflate and conversion, and leaves the final fsync only
//! the tail.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use rustix::io::Errno;

use crate::error::{Error, Result};

/// Start writeback of every dirty page of `file` without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`); pages stay cached. `path`
/// names the file in errors.
#[allow(unsafe_code)]
pub fn start_writeback(file: &File, path: &Path) -> Result<()> {
    // SAFETY: sync_file_range takes a descriptor and three integers and
    // touches no memory of ours; `file` keeps the descriptor open for the
    // duration of the call. Offset 0 with length 0 means "to the end".
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if r == 0 {
        return Ok(());
    }
    let errno = Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO);
    Err(Error::sys("sync_file_range", path, errno))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    #[test]
    fn starts_writeback_of_a_regular_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[1u8; 1 << 20]).unwrap();
        start_writeback(f.as_file(), f.path()).unwrap();
        f.as_file().sync_all().unwrap();
    }

    #[test]
    fn names_the_file_on_failure() {
        // A pipe has no pages to write back: ESPIPE.
        let (r, _w) = std::io::pipe().unwrap();
        let fd: std::os::fd::OwnedFd = r.into();
        let file = File::from(fd);
        let err = start_writeback(&file, Path::new("/pipe")).unwrap_err();
        assert!(err.to_string().contains("/pipe"), "{err}");
    }
}
