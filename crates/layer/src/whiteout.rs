//! OCI/AUFS whiteout names.
//!
//! Layers delete lower-layer files with marker entries (OCI image-spec
//! `layer.md`, "Whiteouts"):
//!
//! * `.wh.NAME` removes `NAME` from the same directory of lower layers;
//! * `.wh..wh..opq` makes its parent directory opaque (hides all lower
//!   content of that directory).
//!
//! Rules beyond the happy path:
//!
//! * A bare `.wh.` (empty target) is an error: image-spec#1301/#1314 made it a
//!   MUST. `.wh..` and `.wh...` would whiteout `.` or `..` (the directory
//!   itself or its parent) and are errors for the same reason.
//! * Other names starting with `.wh..wh.` (`.wh..wh.plnk`, `.wh..wh.aufs`,
//!   `.wh..wh.orph`) are AUFS bookkeeping that leaked into some old images.
//!   We classify them as [`Whiteout::AufsMetadata`] and the caller **skips**
//!   the entry (its data is discarded): moby's `UnpackLayer` skips them too,
//!   the files were never meant to be visible, and treating `.wh..wh.plnk` as
//!   "whiteout `.wh.plnk`" (what a naive prefix strip does) would invent a
//!   name nothing asked for. Rejecting would break those old images for no
//!   safety gain. (moby additionally resolves hard links that point into
//!   `.wh..wh.plnk`; such a link then fails here as a link to a missing
//!   entry, which is the safe outcome.)
//!
//! Only the last component is classified; a `.wh.` prefix on an intermediate
//! directory is an ordinary name, as in containerd.

/// The whiteout prefix.
pub const PREFIX: &[u8] = b".wh.";
/// The opaque-directory marker name.
pub const OPAQUE: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS-internal names.
pub const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// What the last component of an entry name means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// An ordinary name.
    Plain,
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh.NAME`: remove `NAME` (borrowed from the input) from the parent.
    Whiteout(&'a [u8]),
    /// AUFS-internal `.wh..wh.*` name: skip the entry.
    AufsMetadata,
}

/// Why a whiteout name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhiteoutError {
    /// `.wh.` with nothing after it.
    #[error("whiteout entry with an empty target name ('.wh.')")]
    EmptyTarget,
    /// `.wh..` or `.wh...`.
    #[error("whiteout entry targets '{0}'")]
    DotTarget(&'static str),
}

/// Classifies a single path component (not a full path).
pub fn classify(name: &[u8]) -> Result<Whiteout<'_>, WhiteoutError> {
    if name == OPAQUE {
        return Ok(Whiteout::Opaque);
    }
    if name.starts_with(AUFS_META_PREFIX) {
        return Ok(Whiteout::AufsMetadata);
    }
    match name.strip_prefix(PREFIX) {
        None => Ok(Whiteout::Plain),
        Some(b"") => Err(WhiteoutError::EmptyTarget),
        Some(b".") => Err(WhiteoutError::DotTarget(".")),
        Some(b"..") => Err(WhiteoutError::DotTarget("..")),
        Some(target) => Ok(Whiteout::Whiteout(target)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&[u8], Result<Whiteout<'_>, WhiteoutError>)] = &[
            (b"file", Ok(Whiteout::Plain)),
            (b".wh", Ok(Whiteout::Plain)),
            (b"a.wh.b", Ok(Whiteout::Plain)),
            (b".WH.x", Ok(Whiteout::Plain)),
            (b".wh.x", Ok(Whiteout::Whiteout(b"x"))),
            (b".wh.....", Ok(Whiteout::Whiteout(b"...."))),
            (b".wh..x", Ok(Whiteout::Whiteout(b".x"))),
            (b".wh..wh", Ok(Whiteout::Whiteout(b".wh"))),
            (b".wh..wh..opq", Ok(Whiteout::Opaque)),
            (b".wh..wh..opqx", Ok(Whiteout::AufsMetadata)),
            (b".wh..wh.plnk", Ok(Whiteout::AufsMetadata)),
            (b".wh..wh.", Ok(Whiteout::AufsMetadata)),
            (
                &[b'.', b'w', b'h', b'.', 0xff],
                Ok(Whiteout::Whiteout(&[0xff])),
            ),
            (b".wh.", Err(WhiteoutError::EmptyTarget)),
            (b".wh..", Err(WhiteoutError::DotTarget("."))),
            (b".wh...", Err(WhiteoutError::DotTarget(".."))),
        ];
        for (name, want) in cases {
            assert_eq!(&classify(name), want, "{:?}", String::from_utf8_lossy(name));
        }
    }
}
