//! Archive names to layer-relative path components.
//!
//! A tar entry name is untrusted bytes. Downstream code builds an in-memory
//! tree from components and never joins names onto host paths, but the
//! *meaning* of a name must still be the one containerd gives it, and some
//! names must not get one at all:
//!
//! * A leading `/` is stripped: absolute names are relative to the layer root,
//!   as with GNU tar and containerd (`filepath.Join("/", Clean(name))`).
//! * Empty components (`a//b`, trailing `/`) and `.` components are dropped.
//! * `..` is **rejected**, even where lexical cleaning would keep the result
//!   inside the root (`a/../b`). containerd cleans such names; nothing
//!   legitimate produces them, and refusing them removes a whole class of
//!   "where does this resolve" questions (compare go-containerregistry#2227).
//! * An empty name is rejected: containerd and moby turned `""` into `.` and
//!   let it overwrite the root's metadata (docker/cli#7111; OCI test image
//!   `tianon/test:badtars-empty-filename`).
//! * NUL bytes and components longer than 255 bytes (`NAME_MAX`, also the EROFS
//!   limit) are rejected; the kernel could not represent them.
//!
//! A name that normalises to no components (`.`, `./`, `/`) denotes the layer
//! root; callers use such an entry only for the root directory's metadata.
//!
//! Names are bytes, not UTF-8: Linux file names are arbitrary bytes except
//! `/` and NUL, and real layers contain Latin-1 names.

/// Longest file name component Linux (and EROFS) accepts.
pub const NAME_MAX: usize = 255;

/// Why an archive name cannot become a layer path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The raw name is the empty string.
    #[error("empty entry name")]
    Empty,
    /// The name contains a `..` component.
    #[error("entry name {0:?} contains a '..' component")]
    DotDot(String),
    /// The name contains a NUL byte.
    #[error("entry name {0:?} contains a NUL byte")]
    Nul(String),
    /// A component is longer than [`NAME_MAX`] bytes.
    #[error("entry name {name:?} has a component of {len} bytes (limit {NAME_MAX})")]
    ComponentTooLong {
        /// The offending name (lossily decoded, for the message).
        name: String,
        /// Length of the longest offending component.
        len: usize,
    },
}

/// Splits an archive name into normalised components; see the module docs.
///
/// Returns an empty vector for names denoting the layer root.
pub fn normalize(raw: &[u8]) -> Result<Vec<Vec<u8>>, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    if raw.contains(&0) {
        return Err(PathError::Nul(lossy()));
    }
    let mut out = Vec::new();
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(PathError::DotDot(lossy())),
            c if c.len() > NAME_MAX => {
                return Err(PathError::ComponentTooLong {
                    name: lossy(),
                    len: c.len(),
                });
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let long255 = vec![b'x'; 255];
        let long256 = vec![b'x'; 256];
        let mut with_long255 = b"dir/".to_vec();
        with_long255.extend(&long255);
        let mut with_long256 = b"dir/".to_vec();
        with_long256.extend(&long256);

        let ok: &[(&[u8], &[&[u8]])] = &[
            (b"a", &[b"a"]),
            (b"a/b/c", &[b"a", b"b", b"c"]),
            (b"/a/b", &[b"a", b"b"]),
            (b"///a//b///", &[b"a", b"b"]),
            (b"./a", &[b"a"]),
            (b"././a/./b/.", &[b"a", b"b"]),
            (b"dir/", &[b"dir"]),
            (b".", &[]),
            (b"./", &[]),
            (b"/", &[]),
            (b"//./", &[]),
            (b"...", &[b"..."]),
            (b"..a/a..", &[b"..a", b"a.."]),
            (b".wh..wh..opq", &[b".wh..wh..opq"]),
            (b"a\\..\\b", &[b"a\\..\\b"]),
            (&[0xff, 0xfe, b'/', 0x80], &[&[0xff, 0xfe], &[0x80]]),
            (&with_long255, &[b"dir", &long255]),
        ];
        for (raw, want) in ok {
            let got = normalize(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            let want: Vec<Vec<u8>> = want.iter().map(|c| c.to_vec()).collect();
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(raw));
        }

        type Check = fn(&PathError) -> bool;
        let bad: &[(&[u8], Check)] = &[
            (b"", |e| matches!(e, PathError::Empty)),
            (b"..", |e| matches!(e, PathError::DotDot(_))),
            (b"../a", |e| matches!(e, PathError::DotDot(_))),
            (b"a/../b", |e| matches!(e, PathError::DotDot(_))),
            (b"/..", |e| matches!(e, PathError::DotDot(_))),
            (b"a/..", |e| matches!(e, PathError::DotDot(_))),
            (b"a/../", |e| matches!(e, PathError::DotDot(_))),
            (b"a\0b", |e| matches!(e, PathError::Nul(_))),
            (&with_long256, |e| {
                matches!(e, PathError::ComponentTooLong { len: 256, .. })
            }),
        ];
        for (raw, check) in bad {
            let err = normalize(raw).unwrap_err();
            assert!(
                check(&err),
                "{:?}: unexpected {err:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
