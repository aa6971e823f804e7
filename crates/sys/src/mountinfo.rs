//! What is mounted: `/proc/self/mountinfo` and mount-point checks.
//!
//! The daemon needs this after a restart (which layer mounts are still
//! there) and for leak checks (nothing left under a snapshot directory
//! before it is removed). mountinfo is the only complete source: `st_dev`
//! comparisons miss bind mounts from the same filesystem.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of mountinfo (proc(5)), with the fields callers use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Field 1: unique mount id.
    pub mount_id: u64,
    /// Field 2: the parent's mount id.
    pub parent_id: u64,
    /// Field 5: where it is mounted, relative to our root, unescaped.
    pub mount_point: PathBuf,
    /// Field 6: per-mount options (`ro`, `nosuid`…).
    pub mount_options: String,
    /// After the separator: the filesystem type (`erofs`, `overlay`…).
    pub fs_type: String,
    /// The source as given at mount time (image path, `/dev/loopN`,
    /// `overlay`), unescaped.
    pub source: PathBuf,
    /// Per-superblock options (overlay's `lowerdir=`…), still escaped.
    pub super_options: String,
}

/// Every mount of this process's namespace, in mountinfo order (a parent
/// before the mounts on top of it, so unmount in reverse).
pub fn mounts() -> Result<Vec<MountInfo>> {
    let text = fs::read(MOUNTINFO).map_err(|e| {
        Error::sys(
            "read",
            MOUNTINFO,
            Errno::from_io_error(&e).unwrap_or(Errno::IO),
        )
    })?;
    parse(&text)
}

/// The mounts at or below `prefix` (compared by path components, after
/// resolving symlinks in `prefix` as mountinfo does), in mountinfo order:
/// unmount them in reverse.
pub fn mounts_under(prefix: &Path) -> Result<Vec<MountInfo>> {
    let prefix = fs::canonicalize(prefix).unwrap_or_else(|_| prefix.to_owned());
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&prefix))
        .collect())
}

/// Whether `path` is the root of a mount. A symlink is not followed (it is
/// never a mount point itself), and a path that does not exist is not a
/// mount point. Uses statx's `STATX_ATTR_MOUNT_ROOT` (Linux 5.8), which
/// sees bind mounts from the same filesystem, and mountinfo before that.
pub fn is_mountpoint(path: &Path) -> Result<bool> {
    let st = match rustix::fs::statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(Error::sys("statx", path, e)),
    };
    if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
        return Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT));
    }
    let path = fs::canonicalize(path).map_err(|e| {
        Error::sys(
            "canonicalize",
            path,
            Errno::from_io_error(&e).unwrap_or(Errno::IO),
        )
    })?;
    Ok(mounts()?.iter().any(|m| m.mount_point == path))
}

/// Parses mountinfo text. Malformed lines are errors, not skipped: a
/// silently dropped line would hide a mount from leak checks.
pub fn parse(text: &[u8]) -> Result<Vec<MountInfo>> {
    let mut out = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        out.push(parse_line(line).map_err(|reason| Error::MountInfo {
            line: i + 1,
            reason,
            errno: Errno::INVAL,
        })?);
    }
    Ok(out)
}

fn parse_line(line: &[u8]) -> std::result::Result<MountInfo, String> {
    // id parent major:minor root mount_point options [optional…] - fstype source super_options
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let sep = fields
        .iter()
        .skip(6)
        .position(|f| *f == b"-")
        .map(|p| p + 6)
        .ok_or_else(|| "no ' - ' separator after the sixth field".to_owned())?;
    if fields.len() < sep + 4 {
        return Err(format!(
            "{} fields after the separator, want 3",
            fields.len() - sep - 1
        ));
    }
    let number = |f: &[u8], what: &str| {
        std::str::from_utf8(f)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| format!("{what} {:?} is not a number", String::from_utf8_lossy(f)))
    };
    Ok(MountInfo {
        mount_id: number(fields[0], "mount id")?,
        parent_id: number(fields[1], "parent id")?,
        mount_point: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(fields[4]))),
        mount_options: String::from_utf8_lossy(fields[5]).into_owned(),
        fs_type: String::from_utf8_lossy(&unescape(fields[sep + 1])).into_owned(),
        source: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(fields[sep + 2]))),
        super_options: String::from_utf8_lossy(fields[sep + 3]).into_owned(),
    })
}

/// Undoes the kernel's `\ooo` octal escapes (space, tab, newline and
/// backslash are written as `\040`, `\011`, `\012`, `\134`). Anything that
/// is not a valid three-digit escape is kept as is.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(&[a, b, c]) = field.get(i + 1..i + 4)
            && [a, b, c].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let v = u32::from(a - b'0') * 64 + u32::from(b - b'0') * 8 + u32::from(c - b'0');
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parses_proc5_example_and_optional_fields() {
        let text = b"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                     37 36 0:33 / /a\\040b\\011c\\012d\\134e rw shared:2 master:3 - erofs /img\\040x ro\n\
                     38 36 0:34 / /o rw - overlay overlay rw,lowerdir=/a:/b\n";
        let m = parse(text).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mount_id, 36);
        assert_eq!(m[0].parent_id, 35);
        assert_eq!(m[0].mount_point, Path::new("/mnt2"));
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[0].source, Path::new("/dev/root"));
        assert_eq!(m[0].super_options, "rw,errors=continue");
        assert_eq!(
            m[1].mount_point.as_os_str().as_bytes(),
            b"/a b\tc\nd\\e".as_slice()
        );
        assert_eq!(m[1].source, Path::new("/img x"));
        assert_eq!(m[1].fs_type, "erofs");
        assert_eq!(m[2].fs_type, "overlay");
        assert_eq!(m[2].mount_options, "rw");
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        let err = parse(b"36 35 98:0 / /a rw - ext4 /dev/x rw\n1 2 3\n").unwrap_err();
        assert!(matches!(err, Error::MountInfo { line: 2, .. }), "{err}");
        assert_eq!(err.errno(), Errno::INVAL);
        let err = parse(b"x 35 98:0 / /a rw - ext4 /dev/x rw\n").unwrap_err();
        assert!(err.to_string().contains("mount id"), "{err}");
        let err = parse(b"36 35 98:0 / /a rw - ext4\n").unwrap_err();
        assert!(err.to_string().contains("after the separator"), "{err}");
    }

    #[test]
    fn unescape_keeps_invalid_escapes() {
        assert_eq!(unescape(b"a\\04"), b"a\\04");
        assert_eq!(unescape(b"a\\089b"), b"a\\089b");
        assert_eq!(unescape(b"\\040\\040"), b"  ");
        assert_eq!(unescape(b"tail\\"), b"tail\\");
    }
}
