//! The VMDK descriptor that presents a merged image and its layers to a VM
//! as one disk, and the `layers.manifest` listing those layers.
//!
//! This lives in the format crate, not the snapshotter, because it is the
//! other half of the device table [`crate::merge`] writes: the disk is
//! `fsmeta ‖ layer 1 ‖ … ‖ layer n`, and the kernel (mounting it without
//! `device=` options) finds each layer at the unified block address the
//! table records, so both must round each file the same way. It is plain
//! text with no I/O, like the rest of the crate.
//!
//! What QEMU accepts (`shared/docs/vm-mode.md` §4, tested with qemu-img
//! 10.0.2): only `RW` extent lines are read, `ZERO` extents are dropped,
//! `FLAT` needs its offset field, file names are at most 511 bytes between
//! double quotes, relative names resolve against the descriptor's
//! directory, and an extent longer than its file reads as zeros past the
//! end of the file.

use std::path::Path;

const SECTOR: u64 = 512;

/// Extents are whole blocks of the merged image, as the device table
/// counts them.
const BLOCK: u64 = 4096;

/// `twoGbMaxExtentFlat` promises extents of at most 2 GiB; longer files
/// become several lines into the same file, as mkfs.erofs writes them.
const MAX_EXTENT_SECTORS: u64 = (2 << 30) / SECTOR;

/// Longest file name QEMU's descriptor parser reads.
pub const MAX_PATH_LEN: usize = 511;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmdkError {
    #[error("{path}: not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("{path}: {len} bytes, longer than the {MAX_PATH_LEN} a VMDK extent name can hold")]
    PathTooLong { path: String, len: usize },
    #[error("{path}: contains a double quote or a line break, which cannot be written")]
    BadCharacter { path: String },
}

fn checked(path: &Path) -> Result<&str, VmdkError> {
    let shown = || path.display().to_string();
    let s = path
        .to_str()
        .ok_or_else(|| VmdkError::NotUtf8 { path: shown() })?;
    if s.len() > MAX_PATH_LEN {
        return Err(VmdkError::PathTooLong {
            path: shown(),
            len: s.len(),
        });
    }
    if s.contains(['"', '\n', '\r']) {
        return Err(VmdkError::BadCharacter { path: shown() });
    }
    Ok(s)
}

/// A `twoGbMaxExtentFlat` descriptor: the merged image (`fsmeta`, `fsmeta_len`
/// bytes) first, then each layer (path, length in bytes), oldest first.
/// Paths are written as given; relative ones are resolved by QEMU against
/// the descriptor's directory. Each file's extent is its length rounded up
/// to a 4 KiB block (QEMU reads the rounding as zeros), so the next file
/// starts where the device table expects it.
pub fn descriptor<P: AsRef<Path>>(
    fsmeta: &Path,
    fsmeta_len: u64,
    layers: &[(P, u64)],
) -> Result<String, VmdkError> {
    let mut extents = String::new();
    let mut total = 0u64;
    let files = std::iter::once((fsmeta, fsmeta_len))
        .chain(layers.iter().map(|(p, len)| (p.as_ref(), *len)));
    for (path, len) in files {
        let name = checked(path)?;
        let sectors = len.div_ceil(BLOCK) * (BLOCK / SECTOR);
        let mut offset = 0;
        while offset < sectors {
            let n = (sectors - offset).min(MAX_EXTENT_SECTORS);
            extents.push_str(&format!("RW {n} FLAT \"{name}\" {offset}\n"));
            offset += n;
        }
        total += sectors;
    }
    // Any stable value will do; ffffffff means "no disk" (parentCID).
    let cid = match crc32c::crc32c(extents.as_bytes()) {
        u32::MAX => u32::MAX - 1,
        c => c,
    };
    let cylinders = total.div_ceil(63 * 16);
    Ok(format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"twoGbMaxExtentFlat\"\n\
         \n\
         # Extent description\n\
         {extents}\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"16\"\n\
         ddb.geometry.sectors = \"63\"\n\
         ddb.adapterType = \"ide\"\n"
    ))
}

/// The `layers.manifest` written next to the descriptor: one layer path
/// per line, oldest first, the same strings and order as the `device=`
/// options, so a runtime can check the disk against the mount it is asked
/// to perform.
pub fn layers_manifest<P: AsRef<Path>>(layers: &[P]) -> Result<String, VmdkError> {
    let mut out = String::new();
    for p in layers {
        out.push_str(checked(p.as_ref())?);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fsmeta_then_layers_in_whole_blocks() {
        let d = descriptor(
            Path::new("/s/9/fsmeta.erofs"),
            8192,
            &[("/s/1/layer.erofs", 4096u64), ("b c.erofs", 1536)],
        )
        .unwrap();
        let extents: Vec<&str> = d.lines().filter(|l| l.starts_with("RW ")).collect();
        assert_eq!(
            extents,
            [
                "RW 16 FLAT \"/s/9/fsmeta.erofs\" 0",
                "RW 8 FLAT \"/s/1/layer.erofs\" 0",
                "RW 8 FLAT \"b c.erofs\" 0",
            ]
        );
        assert!(d.contains("createType=\"twoGbMaxExtentFlat\"\n"));
        assert!(d.contains("parentCID=ffffffff\n"));
        assert!(d.contains("ddb.geometry.cylinders = \"1\"\n"));
        // Deterministic.
        let again = descriptor(
            Path::new("/s/9/fsmeta.erofs"),
            8192,
            &[("/s/1/layer.erofs", 4096u64), ("b c.erofs", 1536)],
        )
        .unwrap();
        assert_eq!(d, again);
    }

    #[test]
    fn extents_over_two_gib_are_split() {
        let five_gib = 5u64 << 30;
        let d = descriptor(Path::new("m"), 4096, &[("big", five_gib)]).unwrap();
        let extents: Vec<&str> = d.lines().filter(|l| l.starts_with("RW ")).collect();
        assert_eq!(
            extents,
            [
                "RW 8 FLAT \"m\" 0",
                "RW 4194304 FLAT \"big\" 0",
                "RW 4194304 FLAT \"big\" 4194304",
                "RW 2097152 FLAT \"big\" 8388608",
            ]
        );
    }

    #[test]
    fn unwritable_paths_are_refused() {
        let long = "a".repeat(MAX_PATH_LEN + 1);
        assert!(matches!(
            descriptor(Path::new(&long), 4096, &[] as &[(&str, u64)]),
            Err(VmdkError::PathTooLong { len: 512, .. })
        ));
        assert!(matches!(
            descriptor(Path::new("m"), 4096, &[("a\"b", 4096u64)]),
            Err(VmdkError::BadCharacter { .. })
        ));
        assert!(matches!(
            layers_manifest(&["a\nb"]),
            Err(VmdkError::BadCharacter { .. })
        ));
        use std::os::unix::ffi::OsStrExt;
        let bad = std::ffi::OsStr::from_bytes(b"\xff");
        assert!(matches!(
            layers_manifest(&[Path::new(bad)]),
            Err(VmdkError::NotUtf8 { .. })
        ));
    }

    #[test]
    fn manifest_lists_layers_oldest_first() {
        assert_eq!(
            layers_manifest(&["/s/1/layer.erofs", "/s/2/layer.erofs"]).unwrap(),
            "/s/1/layer.erofs\n/s/2/layer.erofs\n"
        );
    }
}
