//! SHA-256 digests of streams, as OCI content addresses (`sha256:<hex>`).
//!
//! Two digests matter for a layer: the blob digest (of the compressed bytes,
//! checked against the manifest) and the diffID (of the *uncompressed* tar,
//! checked against the image config's `rootfs.diff_ids`). The diffID covers
//! the complete uncompressed stream, including the end-of-archive zero blocks
//! and whatever record padding follows them, so the stream must be drained
//! through the hasher after the tar reader has seen the end marker.
//!
//! Hashing in a `Read` adaptor means the bytes are hashed exactly once, while
//! they are hot in cache, by whoever pulls them.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A SHA-256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The algorithm prefix used in OCI descriptors.
    pub const ALGORITHM: &'static str = "sha256";

    /// Wraps a raw 32-byte SHA-256 value.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The raw hash value.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex of the hash, without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// SHA-256 of an in-memory buffer.
    pub fn of(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", Self::ALGORITHM, self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a `sha256:<64 lower-case hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseDigestError {
    /// Only `sha256` is supported.
    #[error("unsupported digest algorithm in {0:?} (only sha256 is supported)")]
    Algorithm(String),
    /// The encoded part is not 64 lower-case hex digits.
    #[error("invalid sha256 hex in digest {0:?}")]
    Hex(String),
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    /// Parses the OCI form. Upper-case hex is rejected, as the OCI image spec
    /// requires `[a-f0-9]{64}` for sha256: accepting it would give one blob two
    /// spellings.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(hex_part) = s.strip_prefix("sha256:") else {
            return Err(ParseDigestError::Algorithm(s.to_owned()));
        };
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(ParseDigestError::Hex(s.to_owned()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|_| ParseDigestError::Hex(s.to_owned()))?;
        Ok(Digest(out))
    }
}

/// A reader that SHA-256-hashes and counts every byte read through it.
pub struct DigestReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R> DigestReader<R> {
    /// Starts hashing everything subsequently read from `inner`.
    pub fn new(inner: R) -> Self {
        DigestReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Number of bytes read so far.
    pub fn byte_count(&self) -> u64 {
        self.bytes
    }

    /// Digest of the bytes read so far (the hasher keeps running).
    pub fn digest(&self) -> Digest {
        Digest(self.hasher.clone().finalize().into())
    }

    /// Ends hashing: the digest, the byte count and the inner reader.
    pub fn finish(self) -> (Digest, u64, R) {
        (
            Digest(self.hasher.finalize().into()),
            self.bytes,
            self.inner,
        )
    }

    /// The wrapped reader. Reading from it directly bypasses the hash.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        // `get` instead of indexing: a misbehaving inner reader claiming more
        // than buf.len() must not make us panic.
        let read = buf
            .get(..n)
            .ok_or_else(|| io::Error::other("reader returned more bytes than requested"))?;
        self.hasher.update(read);
        self.bytes = self.bytes.saturating_add(n as u64);
        Ok(n)
    }
}

impl<R> fmt::Debug for DigestReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestReader")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// A writer that SHA-256-hashes and counts every byte written through it:
/// the producing side's counterpart of [`DigestReader`] (a layer export
/// hashes the tar as it writes it, and the compressed bytes as they leave).
pub struct DigestWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> DigestWriter<W> {
    /// Starts hashing everything subsequently written to `inner`.
    pub fn new(inner: W) -> Self {
        DigestWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Ends hashing: the digest, the byte count and the inner writer (not
    /// flushed).
    pub fn finish(self) -> (Digest, u64, W) {
        (
            Digest(self.hasher.finalize().into()),
            self.bytes,
            self.inner,
        )
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Only what the inner writer accepted counts: the caller writes the
        // rest again.
        let written = buf
            .get(..n)
            .ok_or_else(|| io::Error::other("writer accepted more bytes than offered"))?;
        self.hasher.update(written);
        self.bytes = self.bytes.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W> fmt::Debug for DigestWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestWriter")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const ABC: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hashes_and_counts_everything_read() {
        let mut r = DigestReader::new(&b"abc"[..]);
        assert_eq!(r.digest().to_string(), EMPTY);
        let mut buf = [0u8; 2];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(r.byte_count(), 2);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        let (d, n, _) = r.finish();
        assert_eq!(n, 3);
        assert_eq!(d.to_string(), ABC);
        assert_eq!(d, Digest::of(b"abc"));
    }

    /// Accepts at most 2 bytes per call, like a congested pipe.
    struct Narrow(Vec<u8>);
    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(2);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writer_hashes_only_what_was_accepted() {
        let mut w = DigestWriter::new(Narrow(Vec::new()));
        assert_eq!(w.write(b"abc").unwrap(), 2);
        w.write_all(b"c").unwrap();
        let (d, n, inner) = w.finish();
        assert_eq!((d.to_string().as_str(), n), (ABC, 3));
        assert_eq!(inner.0, b"abc");
    }

    #[test]
    fn parses_only_canonical_sha256() {
        let d: Digest = ABC.parse().unwrap();
        assert_eq!(d.to_string(), ABC);
        assert!(matches!(
            ABC.to_uppercase().parse::<Digest>(),
            Err(ParseDigestError::Algorithm(_))
        ));
        let upper_hex = format!("sha256:{}", &ABC[7..].to_uppercase());
        assert!(matches!(
            upper_hex.parse::<Digest>(),
            Err(ParseDigestError::Hex(_))
        ));
        assert!(matches!(
            "sha512:00".parse::<Digest>(),
            Err(ParseDigestError::Algorithm(_))
        ));
        assert!(matches!(
            "sha256:abc".parse::<Digest>(),
            Err(ParseDigestError::Hex(_))
        ));
        assert!(matches!(
            format!("{ABC}0").parse::<Digest>(),
            Err(ParseDigestError::Hex(_))
        ));
    }
}
