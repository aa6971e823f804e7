//! Overlay upper directory → OCI layer tar: the pure half of the differ's
//! `Compare`, what containerd gets from `fs.DiffDirChanges(lower, upper,
//! DiffSourceOverlayFS)` and `archive.WriteDiff`.
//!
//! An overlay upper already *is* the change set: what it holds was added
//! or changed, a 0:0 character device (or, on 6.7+ kernels, an empty file
//! with `trusted.overlay.whiteout`) deletes the lower entry of that name,
//! and `trusted.overlay.opaque = "y"` hides a whole lower directory. So no
//! lower walk is needed: the upper is read once and translated to the OCI
//! forms (`.wh.NAME`, `DIR/.wh..wh..opq`).
//!
//! The walk uses the same openat-based primitives as [`crate::dir`]: no
//! lookup follows a symlink, so a link pointing anywhere (`/`, `../..`) is
//! exported as a link and never descended, and a tree changed under us
//! fails instead of leaking a file from outside the root.
//!
//! The output is deterministic for a given upper: depth-first, parents
//! before children, names sorted bytewise (Go's `filepath.Walk` order),
//! empty user and group names, no access or change times, and whiteout
//! markers dated by their own inode rather than by the clock.
//!
//! Where a header field is too small (names over 100 bytes or not ASCII,
//! ids over 2097151, sizes of 8 GiB and more, times before 1970, after
//! 2242 or with nanoseconds) the value goes into a PAX record, as Go's
//! `archive/tar` does in PAX format; xattrs are `SCHILY.xattr.*` records.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use erofs::pagebuf::PageBuf;
use rustix::fs::FileType;

use crate::compression::Compression;
use crate::digest::{Digest, DigestWriter};
use crate::dir::{self, DirError, Opened, Xattr};
use crate::whiteout;

/// `application/vnd.oci.image.layer.v1.tar`.
pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// `application/vnd.oci.image.layer.v1.tar+gzip`, containerd's default.
pub const MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// `application/vnd.oci.image.layer.v1.tar+zstd`.
pub const MEDIA_TYPE_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema 2 gzip layer.
pub const MEDIA_TYPE_DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A layer media type we can produce, and the compression it implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerMediaType {
    /// The canonical media type for the output descriptor.
    pub media_type: &'static str,
    pub compression: Compression,
}

/// A requested media type we cannot produce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported layer media type {0:?}: expected {MEDIA_TYPE_TAR}, {MEDIA_TYPE_TAR_GZIP}, \
     {MEDIA_TYPE_TAR_ZSTD} or {MEDIA_TYPE_DOCKER_GZIP}"
)]
pub struct UnsupportedMediaType(pub String);

/// Maps the media type of a diff request to what to write. An empty
/// request means a gzip OCI layer, as in containerd's differs.
pub fn layer_media_type(requested: &str) -> Result<LayerMediaType, UnsupportedMediaType> {
    let (media_type, compression) = match requested {
        "" | MEDIA_TYPE_TAR_GZIP => (MEDIA_TYPE_TAR_GZIP, Compression::Gzip),
        MEDIA_TYPE_TAR => (MEDIA_TYPE_TAR, Compression::None),
        MEDIA_TYPE_TAR_ZSTD => (MEDIA_TYPE_TAR_ZSTD, Compression::Zstd),
        MEDIA_TYPE_DOCKER_GZIP => (MEDIA_TYPE_DOCKER_GZIP, Compression::Gzip),
        other => return Err(UnsupportedMediaType(other.to_owned())),
    };
    Ok(LayerMediaType {
        media_type,
        compression,
    })
}

/// How to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    pub compression: Compression,
    /// containerd's `DiffRequest.source_date_epoch`: modification times
    /// later than this (seconds since the epoch) are clamped to it.
    pub source_date_epoch: Option<i64>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            compression: Compression::Gzip,
            source_date_epoch: None,
        }
    }
}

/// Counts of one export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Tar entries written, whiteout and opaque markers included (PAX
    /// extension headers are not entries).
    pub entries: u64,
    /// `.wh.NAME` markers written (from 0:0 devices or xwhiteouts).
    pub whiteouts: u64,
    /// `.wh..wh..opq` markers written.
    pub opaque_dirs: u64,
    /// Entries written as hard links to an earlier path.
    pub hard_links: u64,
    /// Sockets left out: a tar cannot hold them (Go's `archive/tar`
    /// refuses them too).
    pub skipped_sockets: u64,
    /// Overlay-private `trusted.overlay.*` xattrs left out.
    pub dropped_xattrs: u64,
}

/// A finished layer: what an OCI descriptor and the
/// `containerd.io/uncompressed` label need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// SHA-256 of the uncompressed tar.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    /// SHA-256 of the bytes written to the output (equal to `diff_id`
    /// without compression).
    pub digest: Digest,
    pub size: u64,
    pub stats: ExportStats,
}

/// Why an upper directory could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading the upper directory")]
    Dir(#[from] DirError),
    #[error("writing the layer stream")]
    Write(#[source] io::Error),
    #[error("{path}: size changed while being exported (header says {expected} bytes)")]
    SizeChanged { path: PathBuf, expected: u64 },
    #[error("{path}: names starting with .wh. are whiteout markers in OCI layers")]
    ReservedName { path: PathBuf },
    #[error(
        "{path}: overlay xattr {name} (redirect_dir/metacopy): part of this entry lives in a \
         lower layer, which a layer tar cannot express"
    )]
    OverlayFeature { path: PathBuf, name: String },
    #[error("{path}: xattr name {name:?} contains '=', which a PAX record cannot hold")]
    XattrName { path: PathBuf, name: String },
    #[error("{path}: device number {major}:{minor} does not fit a tar header")]
    Device {
        path: PathBuf,
        major: u32,
        minor: u32,
    },
}

/// Writes the layer tar of `upper` to `out`, uncompressed, and flushes
/// it. The upper's root directory itself is not an entry (names are
/// `etc/`, `etc/passwd`); if it is opaque, `.wh..wh..opq` comes first.
pub fn export<W: Write>(
    upper: &Path,
    out: W,
    source_date_epoch: Option<i64>,
) -> Result<ExportStats, ExportError> {
    let mut exporter = Exporter {
        root: upper,
        out,
        epoch: source_date_epoch,
        links: HashMap::new(),
        stats: ExportStats::default(),
        buf: PageBuf::new(COPY_BUFFER),
        header: Vec::with_capacity(3 * BLOCK),
    };
    exporter.walk()?;
    exporter
        .out
        .write_all(&[0; 2 * BLOCK])
        .and_then(|()| exporter.out.flush())
        .map_err(ExportError::Write)?;
    Ok(exporter.stats)
}

/// [`export`] compressed as `opts` asks, with both digests and sizes
/// computed while the bytes stream to `out` (which is flushed, not
/// synced).
pub fn export_layer<W: Write>(
    upper: &Path,
    out: W,
    opts: &ExportOptions,
) -> Result<Exported, ExportError> {
    let blob = DigestWriter::new(out);
    let encoder = Encoder::new(opts.compression, blob).map_err(ExportError::Write)?;
    // Headers are written 512 bytes at a time; batching them keeps the
    // hasher and the encoder working on large buffers.
    let mut tar = BufWriter::with_capacity(TAR_BUFFER, DigestWriter::new(encoder));
    let stats = export(upper, &mut tar, opts.source_date_epoch)?;
    let tar = tar
        .into_inner()
        .map_err(|e| ExportError::Write(e.into_error()))?;
    let (diff_id, uncompressed_size, encoder) = tar.finish();
    let blob = encoder.finish().map_err(ExportError::Write)?;
    let (digest, size, mut out) = blob.finish();
    out.flush().map_err(ExportError::Write)?;
    Ok(Exported {
        diff_id,
        uncompressed_size,
        digest,
        size,
        stats,
    })
}

const BLOCK: usize = 512;
const COPY_BUFFER: usize = 256 * 1024;
const TAR_BUFFER: usize = 256 * 1024;

/// Overlay-private xattrs: never part of a layer.
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";

/// The output compressor.
enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(compression: Compression, out: W) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Encoder::Plain(out),
            // flate2's default header has no name and mtime 0, so the
            // output depends on the input only.
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            Compression::Zstd => {
                // Level 0 is libzstd's default (3), what containerd's
                // encoder defaults to as well; the content checksum lets
                // readers catch corruption, as with gzip's CRC.
                let mut e = zstd::stream::write::Encoder::new(out, 0)?;
                e.include_checksum(true)?;
                Encoder::Zstd(e)
            }
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// One directory being listed: its descriptor, its archive name with a
/// trailing `/` (empty for the root) and the names not yet visited.
struct Frame {
    fd: OwnedFd,
    prefix: Vec<u8>,
    names: std::vec::IntoIter<Vec<u8>>,
}

struct Exporter<'a, W: Write> {
    root: &'a Path,
    out: W,
    epoch: Option<i64>,
    /// Archive name of the first path of each multiply-linked inode.
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: ExportStats,
    /// File contents pass through here; page-aligned because the kernel
    /// fills it (see [`erofs::pagebuf`]).
    buf: PageBuf,
    header: Vec<u8>,
}

/// The xattrs of one entry, split into what the layer carries and what
/// the overlay-private ones say.
#[derive(Default)]
struct Xattrs {
    kept: Vec<Xattr>,
    opaque: bool,
    xwhiteout: bool,
}

impl<W: Write> Exporter<'_, W> {
    fn walk(&mut self) -> Result<(), ExportError> {
        let (fd, st) = dir::open_root(self.root)?;
        let root_xattrs = self.xattrs(&fd, FileType::Directory, self.root)?;
        if root_xattrs.opaque {
            let (mtime, nsec) = self.mtime_of(&st);
            self.marker(b"", whiteout::OPAQUE, mtime, nsec)?;
            self.stats.opaque_dirs += 1;
        }
        let names = dir::list_names(&fd, self.root)?;
        // Depth-first with an explicit stack: one open descriptor per
        // level, and parents are written before their children.
        let mut stack = vec![Frame {
            fd,
            prefix: Vec::new(),
            names: names.into_iter(),
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                stack.pop();
                continue;
            };
            let Some((fd, mut prefix)) = self.entry(&frame.fd, &frame.prefix, &name)? else {
                continue;
            };
            let path = self.host_path(&prefix);
            if stack.len() >= dir::MAX_DEPTH {
                return Err(DirError::TooDeep {
                    path,
                    limit: dir::MAX_DEPTH,
                }
                .into());
            }
            let names = dir::list_names(&fd, &path)?;
            prefix.push(b'/');
            stack.push(Frame {
                fd,
                prefix,
                names: names.into_iter(),
            });
        }
        Ok(())
    }

    fn host_path(&self, rel: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(rel))
    }

    /// `source_date_epoch` clamping of one inode's mtime.
    fn mtime_of(&self, st: &rustix::fs::Stat) -> (i64, u32) {
        clamp_mtime(st.st_mtime, st.st_mtime_nsec as u32, self.epoch)
    }

    fn xattrs(
        &mut self,
        fd: &OwnedFd,
        ftype: FileType,
        path: &Path,
    ) -> Result<Xattrs, ExportError> {
        let mut x = Xattrs::default();
        for (name, value) in dir::read_xattrs(fd, ftype, path)? {
            if let Some(ovl) = name.strip_prefix(OVERLAY_XATTR_PREFIX) {
                match ovl {
                    // "x" marks a directory holding xwhiteouts, not an
                    // opaque one.
                    b"opaque" => x.opaque = value == b"y",
                    b"whiteout" => x.xwhiteout = true,
                    b"redirect" | b"metacopy" => {
                        return Err(ExportError::OverlayFeature {
                            path: path.to_path_buf(),
                            name: String::from_utf8_lossy(&name).into_owned(),
                        });
                    }
                    _ => {}
                }
                self.stats.dropped_xattrs += 1;
                continue;
            }
            // Readers split a record at its first '=' (Go does), so such a
            // name would come back as a different xattr.
            if name.contains(&b'=') {
                return Err(ExportError::XattrName {
                    path: path.to_path_buf(),
                    name: String::from_utf8_lossy(&name).into_owned(),
                });
            }
            x.kept.push((name, value));
        }
        Ok(x)
    }

    /// Writes the entry for `prefix` + `name`; returns the opened directory
    /// and its archive name (without trailing `/`) when it is one, to be
    /// descended next.
    fn entry(
        &mut self,
        dirfd: &OwnedFd,
        prefix: &[u8],
        name: &[u8],
    ) -> Result<Option<(OwnedFd, Vec<u8>)>, ExportError> {
        let mut rel = prefix.to_vec();
        rel.extend_from_slice(name);
        let path = self.host_path(&rel);
        // A real file named like a marker would read back as a deletion
        // (or, next to a whiteout of the same name, as two entries).
        if name.starts_with(whiteout::PREFIX) {
            return Err(ExportError::ReservedName { path });
        }
        let Opened { st, ftype, fd } = dir::open_entry(dirfd, OsStr::from_bytes(name), &path)?;
        let (mtime, mtime_nsec) = self.mtime_of(&st);
        let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
        match ftype {
            FileType::Socket => {
                self.stats.skipped_sockets += 1;
                return Ok(None);
            }
            // Checked before hard links: overlayfs makes whiteouts by
            // linking one shared inode, yet each is its own deletion.
            FileType::CharacterDevice if (major, minor) == (0, 0) => {
                self.whiteout(prefix, name, mtime, mtime_nsec)?;
                return Ok(None);
            }
            FileType::Unknown => return Err(DirError::FileType { path }.into()),
            _ => {}
        }
        let xattrs = self.xattrs(&fd, ftype, &path)?;
        if ftype == FileType::RegularFile && xattrs.xwhiteout {
            self.whiteout(prefix, name, mtime, mtime_nsec)?;
            return Ok(None);
        }
        let mut hdr = Header {
            name: &rel,
            link: &[],
            typeflag: b'0',
            mode: st.st_mode & 0o7777,
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
            size: 0,
            mtime,
            mtime_nsec,
            dev: (0, 0),
            xattrs: &xattrs.kept,
        };
        if ftype != FileType::Directory && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                // The inode's xattrs travel with its first path.
                let first = first.clone();
                hdr.typeflag = b'1';
                hdr.link = &first;
                hdr.xattrs = &[];
                self.write_header(&hdr)?;
                self.stats.hard_links += 1;
                return Ok(None);
            }
            self.links.insert(key, rel.clone());
        }
        match ftype {
            FileType::Directory => {
                let mut dir_name = rel.clone();
                dir_name.push(b'/');
                hdr.name = &dir_name;
                hdr.typeflag = b'5';
                self.write_header(&hdr)?;
                if xattrs.opaque {
                    // Right after the directory, before any child: an
                    // applier that honours markers anywhere must not
                    // remove what this layer itself adds.
                    self.marker(&dir_name, whiteout::OPAQUE, mtime, mtime_nsec)?;
                    self.stats.opaque_dirs += 1;
                }
                return Ok(Some((fd, rel)));
            }
            FileType::RegularFile => {
                hdr.size = st.st_size as u64;
                self.write_header(&hdr)?;
                self.copy_data(File::from(fd), hdr.size, &path)?;
            }
            FileType::Symlink => {
                // Read through the O_PATH descriptor (empty path): the
                // target of the very link we stat'ed.
                let target = rustix::fs::readlinkat(&fd, c"", Vec::new())
                    .map_err(dir::io_err(&path))?
                    .into_bytes();
                hdr.typeflag = b'2';
                hdr.link = &target;
                self.write_header(&hdr)?;
            }
            FileType::CharacterDevice | FileType::BlockDevice => {
                if !fits_octal(u64::from(major), 8) || !fits_octal(u64::from(minor), 8) {
                    return Err(ExportError::Device { path, major, minor });
                }
                hdr.typeflag = if ftype == FileType::CharacterDevice {
                    b'3'
                } else {
                    b'4'
                };
                hdr.dev = (major, minor);
                self.write_header(&hdr)?;
            }
            FileType::Fifo => {
                hdr.typeflag = b'6';
                self.write_header(&hdr)?;
            }
            FileType::Socket | FileType::Unknown => {}
        }
        Ok(None)
    }

    fn whiteout(
        &mut self,
        prefix: &[u8],
        name: &[u8],
        mtime: i64,
        nsec: u32,
    ) -> Result<(), ExportError> {
        let mut marker = whiteout::PREFIX.to_vec();
        marker.extend_from_slice(name);
        self.marker(prefix, &marker, mtime, nsec)?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// An empty, root-owned, mode 0 regular file, as containerd writes
    /// whiteout markers.
    fn marker(
        &mut self,
        prefix: &[u8],
        name: &[u8],
        mtime: i64,
        mtime_nsec: u32,
    ) -> Result<(), ExportError> {
        let mut full = prefix.to_vec();
        full.extend_from_slice(name);
        self.write_header(&Header {
            name: &full,
            link: &[],
            typeflag: b'0',
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime,
            mtime_nsec,
            dev: (0, 0),
            xattrs: &[],
        })
    }

    fn write_header(&mut self, hdr: &Header<'_>) -> Result<(), ExportError> {
        self.header.clear();
        hdr.encode(&mut self.header);
        self.out
            .write_all(&self.header)
            .map_err(ExportError::Write)?;
        self.stats.entries += 1;
        Ok(())
    }

    /// Copies exactly `size` bytes (the size in the header already
    /// written) and the padding after them.
    fn copy_data(&mut self, mut file: File, size: u64, path: &Path) -> Result<(), ExportError> {
        let changed = || ExportError::SizeChanged {
            path: path.to_path_buf(),
            expected: size,
        };
        let read_err = |e: io::Error| {
            ExportError::Dir(DirError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        };
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left).map_or(self.buf.len(), |l| l.min(self.buf.len()));
            let n = match file.read(&mut self.buf[..want]) {
                Ok(0) => return Err(changed()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            };
            self.out
                .write_all(&self.buf[..n])
                .map_err(ExportError::Write)?;
            left -= n as u64;
        }
        // A file that grew since its header was written would otherwise be
        // cut silently.
        loop {
            match file.read(&mut self.buf[..1]) {
                Ok(0) => break,
                Ok(_) => return Err(changed()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_err(e)),
            }
        }
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        self.out
            .write_all(&[0; BLOCK][..pad])
            .map_err(ExportError::Write)
    }
}

/// containerd's `source_date_epoch` rule: times after the epoch become
/// the epoch; earlier ones stay as they are.
fn clamp_mtime(sec: i64, nsec: u32, epoch: Option<i64>) -> (i64, u32) {
    match epoch {
        Some(e) if (sec, nsec) > (e, 0) => (e, 0),
        _ => (sec, nsec),
    }
}

/// One tar member's header, before encoding.
struct Header<'a> {
    /// Archive name; directories end in `/`.
    name: &'a [u8],
    link: &'a [u8],
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    dev: (u32, u32),
    xattrs: &'a [Xattr],
}

// ustar field offsets and widths (POSIX.1-1988).
const NAME: (usize, usize) = (0, 100);
const MODE: (usize, usize) = (100, 8);
const UID: (usize, usize) = (108, 8);
const GID: (usize, usize) = (116, 8);
const SIZE: (usize, usize) = (124, 12);
const MTIME: (usize, usize) = (136, 12);
const CHKSUM: (usize, usize) = (148, 8);
const TYPEFLAG: usize = 156;
const LINKNAME: (usize, usize) = (157, 100);
const MAGIC: (usize, usize) = (257, 8);
const DEVMAJOR: (usize, usize) = (329, 8);
const DEVMINOR: (usize, usize) = (337, 8);

impl Header<'_> {
    /// Appends the member's header blocks to `out`: a PAX extended header
    /// (typeflag `x`) with its records when some value needs one, then the
    /// ustar block.
    fn encode(&self, out: &mut Vec<u8>) {
        let mut pax: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        if !fits_string(self.name, NAME.1) {
            pax.insert(b"path".to_vec(), self.name.to_vec());
        }
        if !fits_string(self.link, LINKNAME.1) {
            pax.insert(b"linkpath".to_vec(), self.link.to_vec());
        }
        for (key, value, width) in [
            (&b"uid"[..], self.uid, UID.1),
            (b"gid", self.gid, GID.1),
            (b"size", self.size, SIZE.1),
        ] {
            if !fits_octal(value, width) {
                pax.insert(key.to_vec(), value.to_string().into_bytes());
            }
        }
        let mtime_field = u64::try_from(self.mtime)
            .ok()
            .filter(|&t| fits_octal(t, MTIME.1));
        if mtime_field.is_none() || self.mtime_nsec != 0 {
            pax.insert(
                b"mtime".to_vec(),
                pax_time(self.mtime, self.mtime_nsec).into_bytes(),
            );
        }
        for (name, value) in self.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name);
            pax.insert(key, value.clone());
        }
        if !pax.is_empty() {
            let mut records = Vec::new();
            for (k, v) in &pax {
                pax_record(&mut records, k, v);
            }
            let mut block = ustar_block();
            put_str(&mut block, NAME, &pax_header_name(self.name));
            put_octal(&mut block, MODE, 0);
            put_octal(&mut block, UID, 0);
            put_octal(&mut block, GID, 0);
            put_octal(&mut block, SIZE, records.len() as u64);
            put_octal(&mut block, MTIME, 0);
            block[TYPEFLAG] = b'x';
            put_octal(&mut block, DEVMAJOR, 0);
            put_octal(&mut block, DEVMINOR, 0);
            checksum(&mut block);
            out.extend_from_slice(&block);
            out.extend_from_slice(&records);
            out.resize(out.len().next_multiple_of(BLOCK), 0);
        }
        let mut block = ustar_block();
        // Values that do not fit were recorded above; the fields then hold
        // a best effort (ASCII prefix of a name, zero for numbers), which
        // is what Go writes and what readers without PAX would see.
        put_str(&mut block, NAME, &ascii_prefix(self.name, NAME.1));
        put_octal(&mut block, MODE, u64::from(self.mode));
        put_octal(&mut block, UID, self.uid);
        put_octal(&mut block, GID, self.gid);
        put_octal(&mut block, SIZE, self.size);
        put_octal(&mut block, MTIME, mtime_field.unwrap_or(0));
        block[TYPEFLAG] = self.typeflag;
        put_str(&mut block, LINKNAME, &ascii_prefix(self.link, LINKNAME.1));
        put_octal(&mut block, DEVMAJOR, u64::from(self.dev.0));
        put_octal(&mut block, DEVMINOR, u64::from(self.dev.1));
        checksum(&mut block);
        out.extend_from_slice(&block);
    }
}

/// An empty ustar block (`ustar\0`, version `00`, as Go's PAX format).
fn ustar_block() -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    put_str(&mut block, MAGIC, b"ustar\x0000");
    block
}

fn put_str(block: &mut [u8; BLOCK], (at, width): (usize, usize), s: &[u8]) {
    let n = s.len().min(width);
    block[at..at + n].copy_from_slice(&s[..n]);
}

/// Whether `value` fits a NUL-terminated octal field of `width` bytes.
fn fits_octal(value: u64, width: usize) -> bool {
    let digits = width - 1;
    digits >= 22 || value >> (3 * digits) == 0
}

/// Zero-padded octal with a trailing NUL; a value that does not fit is
/// written as zero (its PAX record carries it).
fn put_octal(block: &mut [u8; BLOCK], (at, width): (usize, usize), value: u64) {
    let mut v = if fits_octal(value, width) { value } else { 0 };
    let field = &mut block[at..at + width];
    field[width - 1] = 0;
    for digit in field[..width - 1].iter_mut().rev() {
        *digit = b'0' + (v & 7) as u8;
        v >>= 3;
    }
}

fn checksum(block: &mut [u8; BLOCK]) {
    let (at, width) = CHKSUM;
    block[at..at + width].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    // Six digits, NUL, space: the traditional form every reader accepts.
    let text = format!("{sum:06o}\0 ");
    block[at..at + width].copy_from_slice(text.as_bytes());
}

/// Whether a name can live in a ustar field of `width` bytes as it is.
/// Non-ASCII names go to PAX records (UTF-8 there by convention; Go
/// does the same) so that no reader guesses an encoding.
fn fits_string(s: &[u8], width: usize) -> bool {
    s.len() <= width && s.is_ascii()
}

fn ascii_prefix(s: &[u8], width: usize) -> Vec<u8> {
    s.iter().copied().filter(u8::is_ascii).take(width).collect()
}

/// Name of the extended header for `name`: `DIR/PaxHeaders.0/BASE`, the
/// name Go uses, so tools that ignore PAX show something recognisable.
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let (dir, base) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => (&trimmed[..=i], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    let mut out = dir.to_vec();
    out.extend_from_slice(b"PaxHeaders.0/");
    out.extend_from_slice(base);
    let mut out = ascii_prefix(&out, NAME.1);
    while out.last() == Some(&b'/') {
        out.pop();
    }
    out
}

/// `LEN KEY=VALUE\n`, where LEN counts the whole record including itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let digits = |n: usize| n.to_string().len();
    let mut len = base + digits(base);
    if digits(len) > digits(base) {
        len += 1;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A PAX time: seconds, and a fraction without trailing zeros when there
/// is one. Negative times count the fraction away from zero (-1.5 is one
/// and a half seconds before the epoch: `sec = -2, nsec = 5e8`).
fn pax_time(sec: i64, nsec: u32) -> String {
    if nsec == 0 {
        return sec.to_string();
    }
    let text = if sec < 0 {
        format!("-{}.{:09}", (sec + 1).unsigned_abs(), 1_000_000_000 - nsec)
    } else {
        format!("{sec}.{nsec:09}")
    };
    text.trim_end_matches('0').to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::tar::{EntryKind, Limits, TarReader};

    fn header<'a>(name: &'a [u8], xattrs: &'a [Xattr]) -> Header<'a> {
        Header {
            name,
            link: &[],
            typeflag: b'0',
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 1_700_000_000,
            mtime_nsec: 0,
            dev: (0, 0),
            xattrs,
        }
    }

    /// Encodes one header followed by the end marker and reads the entry
    /// back with our reader (no data: a large size is only declared).
    fn round_trip(h: &Header<'_>) -> (Vec<u8>, crate::tar::Entry) {
        let mut bytes = Vec::new();
        h.encode(&mut bytes);
        let encoded = bytes.clone();
        bytes.extend_from_slice(&[0; 2 * BLOCK]);
        let mut r = TarReader::new(&bytes[..], Limits::default());
        let e = r.next_entry().unwrap().unwrap();
        (encoded, e)
    }

    #[test]
    fn short_ascii_names_need_no_pax() {
        let (bytes, e) = round_trip(&header(b"etc/passwd", &[]));
        assert_eq!(bytes.len(), BLOCK);
        assert_eq!(e.path, b"etc/passwd");
        assert_eq!((e.mode, e.mtime, e.mtime_nsec), (0o644, 1_700_000_000, 0));
        assert!(e.uname.is_empty() && e.gname.is_empty());
    }

    #[test]
    fn overflowing_fields_go_to_pax() {
        let long = vec![b'n'; 150];
        let link = vec![b'l'; 101];
        let xattrs = vec![(b"user.k".to_vec(), b"v\0\n=".to_vec())];
        let mut h = header(&long, &xattrs);
        h.typeflag = b'2';
        h.link = &link;
        h.uid = 3_000_000;
        h.gid = 2_097_151; // the largest that fits
        h.mtime = -101;
        h.mtime_nsec = 500_000_000;
        let (bytes, e) = round_trip(&h);
        assert_eq!(e.kind, EntryKind::Symlink);
        assert_eq!(e.path, long);
        assert_eq!(e.link_name, link);
        assert_eq!((e.uid, e.gid), (3_000_000, 2_097_151));
        assert_eq!((e.mtime, e.mtime_nsec), (-101, 500_000_000));
        assert_eq!(e.xattrs, xattrs);
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(" gid="), "gid fits the header");
        assert!(text.contains(" mtime=-100.5\n"));
    }

    #[test]
    fn sizes_of_8_gib_and_more_go_to_pax() {
        let mut h = header(b"big", &[]);
        h.size = (8 << 30) - 1;
        let (bytes, e) = round_trip(&h);
        assert_eq!((bytes.len(), e.size), (BLOCK, (8 << 30) - 1));
        h.size = 9 << 30;
        let (bytes, e) = round_trip(&h);
        assert_eq!((bytes.len(), e.size), (3 * BLOCK, 9 << 30));
    }

    #[test]
    fn non_ascii_names_go_to_pax() {
        let name = "café/naïve".as_bytes();
        let (bytes, e) = round_trip(&header(name, &[]));
        assert_eq!(e.path, name);
        let pax_name = b"caf/PaxHeaders.0/nave";
        assert!(bytes.windows(pax_name.len()).any(|w| w == pax_name));
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for (k, v) in [("a", "bcd"), ("a", "bcde"), ("key", &"v".repeat(93)[..])] {
            let mut out = Vec::new();
            pax_record(&mut out, k.as_bytes(), v.as_bytes());
            let text = String::from_utf8(out).unwrap();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), text.len(), "{text:?}");
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(5, 0), "5");
        assert_eq!(pax_time(5, 120_000_000), "5.12");
        assert_eq!(pax_time(0, 1), "0.000000001");
        assert_eq!(pax_time(-1, 0), "-1");
        assert_eq!(pax_time(-2, 500_000_000), "-1.5");
        assert_eq!(pax_time(-1, 999_999_999), "-0.000000001");
    }

    #[test]
    fn clamping_follows_source_date_epoch() {
        assert_eq!(clamp_mtime(100, 5, None), (100, 5));
        assert_eq!(clamp_mtime(100, 5, Some(100)), (100, 0));
        assert_eq!(clamp_mtime(100, 0, Some(100)), (100, 0));
        assert_eq!(clamp_mtime(99, 999, Some(100)), (99, 999));
        assert_eq!(clamp_mtime(-5, 0, Some(-10)), (-10, 0));
    }

    #[test]
    fn pax_header_names() {
        assert_eq!(pax_header_name(b"a"), b"PaxHeaders.0/a");
        assert_eq!(pax_header_name(b"etc/"), b"PaxHeaders.0/etc");
        assert_eq!(pax_header_name(b"a/b/c"), b"a/b/PaxHeaders.0/c");
        assert_eq!(pax_header_name(&[b'x'; 200]).len(), 100);
    }

    #[test]
    fn media_types() {
        for (req, mt, c) in [
            ("", MEDIA_TYPE_TAR_GZIP, Compression::Gzip),
            (MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_GZIP, Compression::Gzip),
            (MEDIA_TYPE_TAR, MEDIA_TYPE_TAR, Compression::None),
            (MEDIA_TYPE_TAR_ZSTD, MEDIA_TYPE_TAR_ZSTD, Compression::Zstd),
            (
                MEDIA_TYPE_DOCKER_GZIP,
                MEDIA_TYPE_DOCKER_GZIP,
                Compression::Gzip,
            ),
        ] {
            let got = layer_media_type(req).unwrap();
            assert_eq!((got.media_type, got.compression), (mt, c), "{req:?}");
        }
        for bad in [
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "application/vnd.erofs.layer.v1",
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.docker.image.rootfs.diff.tar",
        ] {
            let err = layer_media_type(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
