//! Reading OCI image layers: everything between the blob bytes and an
//! EROFS image of the layer's tar.
//!
//! The path a layer takes, on two threads:
//!
//! ```text
//! blob ─► compression (gzip/zstd/plain by magic bytes) ─► pipeline::spawn (chunks, sha256)
//!      ─► convert::stream_chunks: tar::TarReader ─► path::normalize / whiteout::classify
//!                                                ─► erofs::writer (file data, then metadata)
//! ```
//!
//! * [`compression`] sniffs gzip/zstd/plain by magic bytes and decompresses;
//!   decoder checksum failures (gzip CRC32/ISIZE, zstd content checksum) are
//!   errors, never silently accepted.
//! * [`pipeline`] runs the reading (and inflating) on a thread of its own
//!   and hands the parser page-aligned chunks; the stream's sha256 (the
//!   diffID) is computed by whichever of the two threads is waiting.
//!   The diffID is the SHA-256 of the *whole* uncompressed stream,
//!   including the end-of-archive blocks and any padding after them, so
//!   the stream is always read to its end ([`tar::TarReader::finish`]).
//! * [`tar`] is our own pull-based tar reader. Its acceptance behaviour is that
//!   of Go's `archive/tar` (what containerd unpacks with): an archive never
//!   yields a different entry list here than in containerd, which is the
//!   property the TARmageddon family of bugs (CVE-2025-62518, CVE-2026-33055)
//!   broke in other Rust readers. Where we deliberately differ, we only ever
//!   *reject* more (old-GNU `S` sparse files, unknown entry types, ids that do
//!   not fit); see the module docs. PAX-format GNU sparse files are expanded
//!   as Go does.
//! * [`path`] turns an archive name into layer-relative components and rejects
//!   `..`, so nothing downstream ever sees an escaping name.
//! * [`whiteout`] classifies OCI/AUFS whiteout names (`.wh.NAME`,
//!   `.wh..wh..opq`).
//! * [`convert`] applies the entries to a tree with `tar -x` semantics and
//!   streams file data into the image; [`dir`] does the same for a
//!   directory (an overlay upper at Commit).
//! * [`digest`] hashes what passes through a reader or writer.
//!
//! The other direction, for the differ's `Compare`: [`export`] turns an
//! overlay upper directory into an OCI layer tar (optionally compressed),
//! computing the diffID and blob digest as it streams.
//!
//! It writes only where it is told (the image, the exported tar, and in
//! tar-index mode an unnamed spool file in a given directory); it is the
//! untrusted-input boundary.

pub mod compression;
pub mod convert;
pub mod digest;
pub mod dir;
pub mod export;
pub mod path;
mod pipe;
pub mod pipeline;
pub mod tar;
pub mod whiteout;

pub use compression::Compression;
pub use digest::{Digest, DigestReader, DigestWriter};
pub use path::{PathError, normalize};
pub use tar::{Entry, EntryKind, Limits, SparseRegion, TarError, TarReader};
pub use whiteout::{Whiteout, WhiteoutError, classify};

/// Shared archive builders and the adversarial corpus, also used by the
/// integration tests (`tests/common`), so unit tests, integration tests and the
/// Go differential test all exercise the same bytes.
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod testkit;
