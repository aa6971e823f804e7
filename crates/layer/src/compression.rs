//! Layer compression: detection by magic bytes and streaming decompression.
//!
//! OCI media types say how a layer is compressed, but registries and tools get
//! them wrong often enough that containerd sniffs the bytes instead
//! (`compression.DecompressStream`). We do the same: gzip (`1f 8b`), zstd
//! (`28 b5 2f fd`) and anything else is treated as an uncompressed tar, whose
//! own header checksum rejects garbage soon after.
//!
//! Integrity: a decoder must never hand out bytes it has not verified when the
//! format carries a checksum. gzip members end in CRC32 + ISIZE, which
//! `flate2` checks and reports as an error; zstd frames may carry a content
//! checksum, which libzstd verifies. A truncated stream is an error in both.
//! The layer digest check happens one level up (see [`crate::digest`]); these
//! checks are what catch corruption when a caller skips that.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::path::Path;

use erofs::pagebuf::PageBuf;

/// Read buffer size for blob input. Large reads keep the per-call overhead of
/// the decoders and of pipes/files negligible.
const INPUT_BUFFER: usize = 256 * 1024;

/// Number of bytes needed to recognise every supported format.
const SNIFF_LEN: usize = 4;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip, possibly several concatenated members (RFC 1952 §2.2).
    Gzip,
    /// zstd, possibly several concatenated frames.
    Zstd,
}

impl Compression {
    /// Human-readable name, as used in OCI media type suffixes.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Recognises the compression from the first bytes of a blob.
///
/// Short or empty input is [`Compression::None`]; the tar reader then decides
/// whether it is a valid (possibly empty) archive.
pub fn detect(prefix: &[u8]) -> Compression {
    match prefix {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::None,
    }
}

/// Wraps `input` in the decoder for `compression`.
///
/// Taking a [`BufRead`] lets the decoders consume the caller's buffer directly
/// (no second input buffer), which is also what [`sniff`] returns.
///
/// Errors: only zstd decoder construction can fail (allocation of its
/// context); decoding errors surface from `read`.
pub fn decompress<'a, R>(
    compression: Compression,
    input: R,
) -> io::Result<Box<dyn Read + Send + 'a>>
where
    R: BufRead + Send + 'a,
{
    Ok(match compression {
        Compression::None => Box::new(input),
        // MultiGzDecoder, not GzDecoder: layers produced by parallel
        // compressors (pigz --independent, some registries' re-compression)
        // are several gzip members, and Go's gzip.Reader reads them all. A
        // single-member decoder would silently stop after the first member.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        // The read::Decoder continues across concatenated frames by default
        // and fails on a truncated frame or a content checksum mismatch.
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
    })
}

/// The reader [`sniff`] returns: every byte of the input, the sniffed
/// ones first, through a page-aligned buffer. std's `BufReader` would put
/// its buffer 16 bytes past a page, where the kernel's copy into it is
/// about 3x slower (see [`erofs::pagebuf`]); on the compressed input that
/// time is spent on the inflate thread, the slowest stage.
pub struct Sniffed<R> {
    inner: R,
    buf: PageBuf,
    pos: usize,
    filled: usize,
}

impl<R: Read> Read for Sniffed<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // A read at least as big as the buffer goes straight to the
        // caller's memory, as `BufReader` does.
        if self.pos == self.filled && out.len() >= self.buf.len() {
            return self.inner.read(out);
        }
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Sniffed<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.filled {
            self.pos = 0;
            self.filled = 0;
            self.filled = loop {
                match self.inner.read(&mut self.buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.filled);
    }
}

/// Peeks at the first bytes of `input` without losing them.
///
/// Returns the detected compression and a buffered reader that still yields
/// every byte of `input`, starting with the sniffed ones.
///
/// Why a loop: on a pipe a single `read` may return fewer than four bytes
/// (the writer may have written one byte so far). The prefix is read into
/// the start of the buffer, where it is handed out first.
pub fn sniff<R: Read>(mut input: R) -> io::Result<(Compression, Sniffed<R>)> {
    let mut buf = PageBuf::new(INPUT_BUFFER);
    let mut filled = 0;
    while filled < SNIFF_LEN {
        match input.read(&mut buf[filled..SNIFF_LEN]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let compression = detect(&buf[..filled]);
    let reader = Sniffed {
        inner: input,
        buf,
        pos: 0,
        filled,
    };
    Ok((compression, reader))
}

/// Sniffs `input` and returns the decompressed stream.
pub fn open_reader<'a, R>(input: R) -> io::Result<(Compression, Box<dyn Read + Send + 'a>)>
where
    R: Read + Send + 'a,
{
    let (compression, buffered) = sniff(input)?;
    Ok((compression, decompress(compression, buffered)?))
}

/// Opens a layer blob from a file, or from standard input when `path` is
/// `None` or `-`, and returns the decompressed stream.
pub fn open_path(path: Option<&Path>) -> io::Result<(Compression, Box<dyn Read + Send + 'static>)> {
    match path {
        Some(p) if p != Path::new("-") => open_reader(File::open(p)?),
        _ => open_reader(io::stdin()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn read_all(c: Compression, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decompress(c, io::BufReader::new(data))?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn detects_magic() {
        let cases: &[(&[u8], Compression)] = &[
            (&[0x1f, 0x8b, 0x08, 0x00], Compression::Gzip),
            (&[0x1f, 0x8b], Compression::Gzip),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0x00], Compression::Zstd),
            (&[0x28, 0xb5, 0x2f], Compression::None),
            (b"usr/", Compression::None),
            (&[], Compression::None),
            (&[0x1f], Compression::None),
        ];
        for (prefix, want) in cases {
            assert_eq!(detect(prefix), *want, "{prefix:02x?}");
        }
    }

    #[test]
    fn gzip_multi_member_reads_all_members() {
        let mut blob = gzip(b"hello ");
        blob.extend(gzip(b"world"));
        blob.extend(gzip(b""));
        assert_eq!(read_all(Compression::Gzip, &blob).unwrap(), b"hello world");
    }

    #[test]
    fn gzip_crc_mismatch_is_an_error() {
        let mut blob = gzip(b"some layer content that is long enough");
        let len = blob.len();
        // Trailer: CRC32 (4 bytes) then ISIZE (4 bytes).
        blob[len - 8] ^= 0x01;
        let err = read_all(Compression::Gzip, &blob).unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::Interrupted);

        let mut blob = gzip(b"some layer content that is long enough");
        let len = blob.len();
        blob[len - 1] ^= 0x01; // ISIZE
        assert!(read_all(Compression::Gzip, &blob).is_err());
    }

    #[test]
    fn gzip_corrupt_deflate_data_is_an_error() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut blob = gzip(&data);
        let mid = blob.len() / 2;
        blob[mid] ^= 0xff;
        assert!(read_all(Compression::Gzip, &blob).is_err());
    }

    #[test]
    fn gzip_truncated_is_an_error() {
        let blob = gzip(b"some layer content");
        assert!(read_all(Compression::Gzip, &blob[..blob.len() - 3]).is_err());
    }

    #[test]
    fn zstd_roundtrip_multi_frame() {
        let mut blob = zstd::encode_all(&b"hello "[..], 3).unwrap();
        blob.extend(zstd::encode_all(&b"world"[..], 3).unwrap());
        assert_eq!(read_all(Compression::Zstd, &blob).unwrap(), b"hello world");
    }

    fn zstd_with_checksum(data: &[u8]) -> Vec<u8> {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.include_checksum(true).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn zstd_checksum_mismatch_is_an_error() {
        let mut blob = zstd_with_checksum(b"some layer content that is long enough");
        let len = blob.len();
        blob[len - 1] ^= 0x01; // last byte of the XXH64-based content checksum
        assert!(read_all(Compression::Zstd, &blob).is_err());
    }

    #[test]
    fn zstd_corrupt_or_truncated_is_an_error() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let blob = zstd_with_checksum(&data);
        let mut corrupt = blob.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        assert!(read_all(Compression::Zstd, &corrupt).is_err());
        assert!(read_all(Compression::Zstd, &blob[..blob.len() - 5]).is_err());
    }

    /// A reader that hands out one byte per call, like a slow pipe.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(slot)) => {
                    *slot = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn sniff_keeps_prefix_and_handles_short_reads() {
        let blob = gzip(b"payload");
        let (c, mut r) = open_reader(Trickle(&blob)).unwrap();
        assert_eq!(c, Compression::Gzip);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"payload");

        let (c, mut r) = sniff(Trickle(b"ab")).unwrap();
        assert_eq!(c, Compression::None);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab");
    }

    #[test]
    fn sniffed_mixes_small_buffered_and_large_reads() {
        let data: Vec<u8> = (0..3 * INPUT_BUFFER as u32 + 77)
            .map(|i| (i % 241) as u8)
            .collect();
        let (c, mut r) = sniff(&data[..]).unwrap();
        assert_eq!(c, Compression::None);
        assert_eq!(r.buf.as_ptr().addr() % erofs::pagebuf::ALIGN, 0);
        let mut out = vec![0; 3];
        r.read_exact(&mut out).unwrap();
        let mut big = vec![0; INPUT_BUFFER + 10];
        let n = r.read(&mut big).unwrap();
        out.extend_from_slice(&big[..n]);
        let n = r.fill_buf().unwrap().len();
        out.extend_from_slice(r.fill_buf().unwrap());
        r.consume(n);
        // The buffer is empty now: this read bypasses it.
        let n = r.read(&mut big).unwrap();
        assert_eq!(n, big.len());
        out.extend_from_slice(&big[..n]);
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn open_path_reads_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("layer.tar.zst");
        std::fs::write(&p, zstd::encode_all(&b"tar bytes"[..], 1).unwrap()).unwrap();
        let (c, mut r) = open_path(Some(&p)).unwrap();
        assert_eq!(c, Compression::Zstd);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"tar bytes");
    }
}
