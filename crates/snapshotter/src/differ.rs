//! The differ's Apply, independent of gRPC: one layer blob into one
//! snapshot's `layer.erofs`.
//!
//! Three threads when the blob is compressed: *fetch* reads the blob and
//! hashes it (the compressed digest, checked against the descriptor),
//! *inflate* decompresses, and the caller's thread parses the tar, hashes
//! the diffID and writes the image. With a plain tar the fetch hash is
//! already the diffID and there is no inflate stage. Nothing reaches
//! `layer.erofs` unless every check passed: the image is written to a
//! temporary file beside it and renamed into place, after an fsync or,
//! by default, with a record that a background fsync clears (see
//! `durability`).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use layer::Compression;
use layer::convert::{ConvertError, ConvertOptions, stream_chunks};
use layer::digest::Digest;
use layer::pipeline::{self, ChunkSource, ReadChunks};

use crate::durability;
use crate::layout::{BLOB, TEMP_PREFIX};

/// The media type Apply returns for a tar layer: the descriptor of the
/// uncompressed stream, whose digest is the diffID.
pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Layers that already are EROFS images (containerd's constant).
pub const MEDIA_TYPE_EROFS: &str = "application/vnd.erofs.layer.v1.erofs";

/// What a descriptor's media type says the blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A tar stream, compressed as stated.
    Tar(Compression),
    /// An EROFS image, possibly zstd-compressed.
    Erofs { zstd: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("unsupported media type {0:?}")]
    MediaType(String),
    #[error(
        "media type {0:?} is encrypted; decrypting stream processors are not supported by this differ"
    )]
    Encrypted(String),
    #[error(
        "blob {digest} is {found}-compressed but its media type {media_type:?} says {expected}"
    )]
    CompressionMismatch {
        digest: String,
        media_type: String,
        expected: Compression,
        found: Compression,
    },
    #[error("blob {expected}: read {found} (sha256 of {bytes} bytes)")]
    DigestMismatch {
        expected: String,
        found: String,
        bytes: u64,
    },
    #[error("blob {digest}: descriptor says {expected} bytes, read {found}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        found: u64,
    },
    #[error("blob digest {0:?} is not sha256:<64 hex digits>")]
    BadDigest(String),
    #[error("converting layer {digest}")]
    Convert {
        digest: String,
        source: ConvertError,
    },
    #[error("layer {digest} is not a valid EROFS image")]
    Fsck {
        digest: String,
        source: erofs::fsck::FsckError,
    },
    #[error("layer {digest}: reading the EROFS image")]
    ReadImage {
        digest: String,
        source: erofs::reader::ReadError,
    },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0} thread failed")]
    Thread(&'static str),
}

impl ApplyError {
    /// Input the caller got wrong (or that is hostile), as opposed to a
    /// failure on our side.
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, ApplyError::Io { .. } | ApplyError::Thread(_))
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ApplyError + 'a {
    move |source| ApplyError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Map a media type to what Apply does with it: the types containerd's
/// `images.DiffCompression` accepts, plus native EROFS layers. Encrypted
/// layers need a stream processor, which we do not run.
pub fn classify(media_type: &str) -> Result<LayerKind, ApplyError> {
    if media_type.ends_with("+encrypted") {
        return Err(ApplyError::Encrypted(media_type.to_string()));
    }
    if let Some(rest) = media_type.strip_prefix("application/vnd.erofs.layer") {
        return match rest.rsplit_once('+') {
            None => Ok(LayerKind::Erofs { zstd: false }),
            Some((_, "zstd")) => Ok(LayerKind::Erofs { zstd: true }),
            Some(_) => Err(ApplyError::MediaType(media_type.to_string())),
        };
    }
    let kind = match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
        _ => return Err(ApplyError::MediaType(media_type.to_string())),
    };
    Ok(LayerKind::Tar(kind))
}

/// The layer to apply, as containerd describes it.
#[derive(Debug, Clone)]
pub struct Blob {
    /// The containerd namespace it is read in (recorded, so that a layer
    /// torn by a crash can be read again).
    pub namespace: String,
    pub media_type: String,
    pub digest: String,
    /// 0 when unknown.
    pub size: u64,
}

/// Where each part of an Apply's time went. Stage times exclude waiting
/// for the stage before, so they add up to at most the wall time on one
/// core and show which stage bounds the pipeline.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Waiting for blob bytes (containerd's content store or the disk).
    pub read: Duration,
    /// sha256 of the blob and, when compressed, of its tar (the diffID),
    /// done by whichever thread was waiting for another.
    pub hash: Duration,
    pub inflate: Duration,
    /// Tar parsing, writing file data and metadata.
    pub convert: Duration,
    pub fsync: Duration,
    pub total: Duration,
    pub blob_bytes: u64,
    pub tar_bytes: u64,
    pub entries: u64,
}

/// What Apply produced: the descriptor to return and how it went.
#[derive(Debug, Clone)]
pub struct Applied {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub timings: Timings,
    /// The image is not on disk yet: Commit queues its fsync.
    pub deferred: bool,
}

/// How to write layers.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Tar index instead of a full conversion (`enable_tar_index`).
    pub tar_index: bool,
    /// Answer before the image is on disk, leaving a
    /// `durability::PENDING` record for the background fsync that Commit
    /// queues (`layer_sync = "deferred"`). Where the filesystem cannot
    /// hold the record, the image is fsynced first anyway.
    pub defer_sync: bool,
}

/// A reader that counts the time spent inside `read`.
struct Timed<R> {
    inner: R,
    nanos: Arc<AtomicU64>,
}

impl<R: Read> Read for Timed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let start = Instant::now();
        let r = self.inner.read(buf);
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        r
    }
}

fn parse_digest(d: &str) -> Result<Digest, ApplyError> {
    d.parse().map_err(|_| ApplyError::BadDigest(d.to_string()))
}

/// Apply `blob` (its bytes in `input`) into snapshot directory `dir`.
pub fn apply(
    dir: &Path,
    blob: &Blob,
    input: Box<dyn Read + Send>,
    opts: &ApplyOptions,
) -> Result<Applied, ApplyError> {
    let start = Instant::now();
    let kind = classify(&blob.media_type)?;
    let expected = parse_digest(&blob.digest)?;
    let read_nanos = Arc::new(AtomicU64::new(0));
    let timed = Timed {
        inner: input,
        nanos: read_nanos.clone(),
    };
    let (fetched, fetch) = pipeline::spawn("fetch", Box::new(timed), true)
        .map_err(io_err("starting the fetch thread for", dir))?;
    let fetch_wait = fetched.wait_clock();
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary file in", dir))?;
    let out = tmp.reopen().map_err(io_err("opening", tmp.path()))?;

    let mut timings = Timings::default();
    // When the fsync is waited for, the disk should work while the CPUs
    // convert. When it is deferred, early writeback would only make the
    // store's fsync at Commit wait for it (see `durability`).
    let flusher = if opts.defer_sync {
        None
    } else {
        Some(
            Flusher::start(&out, tmp.path())
                .map_err(io_err("starting writeback of", tmp.path()))?,
        )
    };
    let (media_type, digest, size, file) = match kind {
        LayerKind::Tar(compression) => {
            let (found, decoded) =
                layer::compression::open_reader(fetched).map_err(|e| ApplyError::Convert {
                    digest: blob.digest.clone(),
                    source: e.into(),
                })?;
            if found != compression {
                return Err(ApplyError::CompressionMismatch {
                    digest: blob.digest.clone(),
                    media_type: blob.media_type.clone(),
                    expected: compression,
                    found,
                });
            }
            let converted = if found == Compression::None {
                convert(dir, ReadChunks::new(decoded), out, opts, &blob.digest)
                    .map(|streamed| (streamed, fetch_wait.clone(), None))
            } else {
                let (pipe, inflate) = pipeline::spawn("inflate", decoded, true)
                    .map_err(io_err("starting the inflate thread for", dir))?;
                let inflate_wait = pipe.wait_clock();
                let r = convert(dir, pipe, out, opts, &blob.digest);
                let inflated = inflate.join().map_err(|_| ApplyError::Thread("inflate"))?;
                r.map(|streamed| (streamed, inflate_wait, Some(inflated)))
            };
            let fetched = fetch.join().map_err(|_| ApplyError::Thread("fetch"))?;
            let (streamed, convert_wait, inflated) = converted?;
            check_blob(blob, &expected, &fetched)?;
            let diff_id = match &inflated {
                Some(i) => i.digest,
                // Plain tar: the blob's digest is the diffID.
                None => fetched.digest,
            };
            let (file, report) =
                streamed
                    .finish(None, diff_id)
                    .map_err(|source| ApplyError::Convert {
                        digest: blob.digest.clone(),
                        source,
                    })?;
            timings.read = Duration::from_nanos(read_nanos.load(Ordering::Relaxed));
            timings.hash =
                fetched.hashing + inflated.as_ref().map_or(Duration::ZERO, |i| i.hashing);
            if let Some(i) = &inflated {
                timings.inflate = i.busy.saturating_sub(fetch_wait.get());
            }
            timings.convert = (report.convert + report.finish).saturating_sub(convert_wait.get());
            timings.blob_bytes = fetched.bytes;
            timings.tar_bytes = report.tar_bytes;
            timings.entries = report.entries;
            let diff_id = report.diff_id.map(|d| d.to_string()).unwrap_or_default();
            (MEDIA_TYPE_TAR.to_string(), diff_id, report.tar_bytes, file)
        }
        LayerKind::Erofs { zstd } => {
            let mut source: Box<dyn Read + Send> = if zstd {
                layer::compression::decompress(Compression::Zstd, io::BufReader::new(fetched))
                    .map_err(io_err("decompressing", Path::new(&blob.digest)))?
            } else {
                Box::new(fetched)
            };
            let mut hashing = layer::DigestReader::new(&mut source);
            let mut file = out;
            let copied = io::copy(&mut hashing, &mut file);
            let image_digest = hashing.digest();
            drop(source);
            let fetched = fetch.join().map_err(|_| ApplyError::Thread("fetch"))?;
            let size = copied.map_err(io_err("copying into", tmp.path()))?;
            check_blob(blob, &expected, &fetched)?;
            check_image(tmp.path(), &blob.digest)?;
            timings.read = Duration::from_nanos(read_nanos.load(Ordering::Relaxed));
            timings.blob_bytes = fetched.bytes;
            if zstd {
                // containerd returns the decompressed image's descriptor.
                (
                    MEDIA_TYPE_EROFS.to_string(),
                    image_digest.to_string(),
                    size,
                    file,
                )
            } else {
                (
                    blob.media_type.clone(),
                    blob.digest.clone(),
                    blob.size.max(size),
                    file,
                )
            }
        }
    };
    drop(flusher);
    let deferred = opts.defer_sync && {
        let record = durability::Record {
            boot_id: durability::boot_id().map_err(io_err("reading", Path::new("boot_id")))?,
            namespace: blob.namespace.clone(),
            digest: blob.digest.clone(),
            media_type: blob.media_type.clone(),
            size: blob.size,
            diff_id: digest.clone(),
            tar_index: opts.tar_index,
            failure: None,
        };
        // Before the rename: the image must never be there without it.
        durability::mark_pending(dir, &record).map_err(io_err("recording the layer in", dir))?
    };
    if !deferred {
        timings.fsync = sync(&file, tmp.path())?;
    }
    let target = dir.join(BLOB);
    fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(io_err("chmod", tmp.path()))?;
    if let Err(e) = tmp.persist(&target) {
        if deferred {
            let _ = durability::clear_pending(dir);
        }
        return Err(io_err("renaming into", &target)(e.error));
    }
    if !deferred {
        let dir_sync = Instant::now();
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", dir))?;
        timings.fsync += dir_sync.elapsed();
    }
    timings.total = start.elapsed();
    Ok(Applied {
        media_type,
        digest,
        size,
        timings,
        deferred,
    })
}

/// Stream the tar into `out`. `input` lends its chunks (for a compressed
/// layer, the inflate thread's): file data goes from them to the image
/// without another copy. The diffID is hashed by the thread that produces
/// the tar (fetch or inflate), not here.
fn convert<S: ChunkSource>(
    dir: &Path,
    input: S,
    out: File,
    opts: &ApplyOptions,
    digest: &str,
) -> Result<layer::convert::Streamed, ApplyError> {
    let copts = ConvertOptions {
        tar_index: opts.tar_index,
        compute_diff_id: false,
        ..Default::default()
    };
    stream_chunks(input, out, dir, &copts).map_err(|source| ApplyError::Convert {
        digest: digest.to_string(),
        source,
    })
}

fn check_blob(
    blob: &Blob,
    expected: &Digest,
    fetched: &pipeline::ProducerStats,
) -> Result<(), ApplyError> {
    if blob.size > 0 && fetched.bytes != blob.size {
        return Err(ApplyError::SizeMismatch {
            digest: blob.digest.clone(),
            expected: blob.size,
            found: fetched.bytes,
        });
    }
    match &fetched.digest {
        Some(d) if d == expected => Ok(()),
        found => Err(ApplyError::DigestMismatch {
            expected: blob.digest.clone(),
            found: found.map(|d| d.to_string()).unwrap_or_default(),
            bytes: fetched.bytes,
        }),
    }
}

/// A native EROFS layer comes from a registry, not from our writer:
/// validate it completely before the kernel ever sees it.
fn check_image(path: &Path, digest: &str) -> Result<(), ApplyError> {
    let image = erofs::reader::Image::open(path).map_err(|source| ApplyError::ReadImage {
        digest: digest.to_string(),
        source,
    })?;
    let opts = erofs::fsck::CheckOptions {
        read_data: true,
        ..Default::default()
    };
    erofs::fsck::check(&image, &opts).map_err(|source| ApplyError::Fsck {
        digest: digest.to_string(),
        source,
    })?;
    Ok(())
}

/// How often writeback of the image is started while it is written.
const WRITEBACK_INTERVAL: Duration = Duration::from_millis(50);

/// Starts writeback of the image every [`WRITEBACK_INTERVAL`] until
/// dropped, so the disk works while the CPUs inflate and convert and the
/// final fsync waits only for the tail (see `sys::start_writeback`).
struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start(file: &File, path: &Path) -> io::Result<Flusher> {
        let file = file.try_clone()?;
        let path = path.to_path_buf();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(WRITEBACK_INTERVAL)
                {
                    // Only an optimisation: the fsync at the end is what
                    // makes the image durable, so a failure just stops it.
                    if sys::start_writeback(&file, &path).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Flusher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sync(file: &File, path: &Path) -> Result<Duration, ApplyError> {
    let start = Instant::now();
    file.sync_all().map_err(io_err("fsync", path))?;
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn media_types() {
        for (mt, kind) in [
            (
                "application/vnd.oci.image.layer.v1.tar",
                LayerKind::Tar(Compression::None),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                LayerKind::Tar(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                LayerKind::Tar(Compression::Zstd),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                LayerKind::Tar(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                LayerKind::Tar(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                LayerKind::Tar(Compression::Zstd),
            ),
            (MEDIA_TYPE_EROFS, LayerKind::Erofs { zstd: false }),
            (
                "application/vnd.erofs.layer.v1.erofs+zstd",
                LayerKind::Erofs { zstd: true },
            ),
        ] {
            assert_eq!(classify(mt).unwrap(), kind, "{mt}");
        }
        assert!(matches!(
            classify("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"),
            Err(ApplyError::Encrypted(_))
        ));
        for bad in [
            "",
            "application/octet-stream",
            "application/vnd.oci.image.layer.v1.tar+lz4",
            "application/vnd.erofs.layer.v1.erofs+gzip",
        ] {
            assert!(
                matches!(classify(bad), Err(ApplyError::MediaType(_))),
                "{bad}"
            );
        }
    }
}
