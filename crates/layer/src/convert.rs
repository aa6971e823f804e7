//! OCI layer tar stream → EROFS image.
//!
//! Members are applied to an [`erofs::tree::Tree`] in stream order with
//! `tar -x` semantics (later members replace earlier ones, directories
//! merge, missing parents appear) and OCI whiteouts are translated to
//! overlayfs ones. File contents go straight into the image as they
//! stream past; nothing touches the host filesystem except the output.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use erofs::tree::{ChunkAddr, Content, FileData, Meta, Node, Tree, TreeError};
use erofs::writer::{Device, ImageWriter, Output, Summary, WriteError, WriterOptions};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::path::{self, PathError};
use crate::pipeline::{Chunk, ChunkSource, ReadChunks};
use crate::tar::{Entry, EntryKind, Limits, TarError, TarReader};
use crate::whiteout::{self, Whiteout, WhiteoutError};

/// Block size of tar indexes: tar data starts on 512-byte boundaries.
const TAR_INDEX_BLKSZBITS: u8 = 9;

/// How to convert.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Keep file tails inline (see [`WriterOptions::inline_data`]).
    pub inline_data: bool,
    /// Build a tar index: metadata only, file data referenced inside the
    /// tar appended after the index (`mkfs.erofs --tar=i`).
    pub tar_index: bool,
    pub limits: Limits,
    /// Compute the diffID here, on the parsing thread. Off when the
    /// producer of the stream hashes it (see [`crate::pipeline::spawn`],
    /// which shares the work between two threads); the report then has no
    /// diffID.
    pub compute_diff_id: bool,
    /// Upper bound on the bytes of holes in GNU sparse files of one layer:
    /// holes expand to zeros on the way into the image, so a tiny layer
    /// could otherwise declare terabytes of them.
    pub max_sparse_holes: u64,
    /// Upper bound on inodes in the tree.
    pub max_inodes: usize,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            inline_data: false,
            tar_index: false,
            limits: Limits::default(),
            compute_diff_id: true,
            max_sparse_holes: 16 << 30,
            max_inodes: 4_000_000,
        }
    }
}

/// Why a layer could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("tar stream")]
    Tar(#[from] TarError),
    #[error("entry {name:?} at offset {offset}")]
    Path {
        name: String,
        offset: u64,
        source: PathError,
    },
    #[error("entry {name:?} at offset {offset}")]
    Whiteout {
        name: String,
        offset: u64,
        source: WhiteoutError,
    },
    #[error("entry {name:?} at offset {offset}")]
    Tree {
        name: String,
        offset: u64,
        source: TreeError,
    },
    #[error("entry {name:?} at offset {offset}: hard link target")]
    LinkTarget {
        name: String,
        offset: u64,
        source: PathError,
    },
    #[error("entry {name:?} at offset {offset}: {why}")]
    Entry {
        name: String,
        offset: u64,
        why: String,
    },
    #[error("entry {name:?} at offset {offset}")]
    Data {
        name: String,
        offset: u64,
        source: WriteError,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What a conversion did and how long each stage took.
#[derive(Debug, Clone, Default)]
pub struct ConvertReport {
    /// sha256 of the whole uncompressed stream: the OCI diffID.
    pub diff_id: Option<Digest>,
    pub tar_bytes: u64,
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Xattrs in namespaces EROFS cannot store.
    pub dropped_xattrs: u64,
    pub summary: Summary,
    /// Wall time of reading the stream: parsing and writing file data,
    /// hashing when asked to, and waiting for the stream's producer.
    pub convert: Duration,
    /// Laying out and writing metadata.
    pub finish: Duration,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Applier<'w, F: Output> {
    tree: Tree,
    writer: &'w mut ImageWriter<F>,
    tar_index: bool,
    /// Hole bytes still allowed, of `max_holes`
    /// (`ConvertOptions::max_sparse_holes`).
    holes_left: u64,
    max_holes: u64,
    report: ConvertReport,
}

impl<F: Output> Applier<'_, F> {
    fn apply<R: BufRead>(&mut self, tar: &mut TarReader<R>, e: &Entry) -> Result<(), ConvertError> {
        let name = || lossy(&e.path);
        let offset = e.header_offset;
        let tree_err = |source| ConvertError::Tree {
            name: name(),
            offset,
            source,
        };
        let entry_err = |why: String| ConvertError::Entry {
            name: name(),
            offset,
            why,
        };
        let mut comps = path::normalize(&e.path).map_err(|source| ConvertError::Path {
            name: name(),
            offset,
            source,
        })?;
        let meta = Meta {
            perm: (e.mode & 0o7777) as u16,
            uid: u32::try_from(e.uid).map_err(|_| entry_err(format!("uid {} too large", e.uid)))?,
            gid: u32::try_from(e.gid).map_err(|_| entry_err(format!("gid {} too large", e.gid)))?,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
        };
        if let Some(last) = comps.last() {
            let class = whiteout::classify(last).map_err(|source| ConvertError::Whiteout {
                name: name(),
                offset,
                source,
            })?;
            match class {
                Whiteout::Plain => {}
                Whiteout::AufsMetadata => return Ok(()),
                Whiteout::Opaque => {
                    comps.pop();
                    self.report.opaque_dirs += 1;
                    return self.tree.set_opaque(&comps).map_err(tree_err);
                }
                Whiteout::Whiteout(target) => {
                    let target = target.to_vec();
                    comps.pop();
                    comps.push(target);
                    self.report.whiteouts += 1;
                    return self.tree.whiteout(&comps, meta).map_err(tree_err);
                }
            }
        }
        let mut xattrs = BTreeMap::new();
        for (k, v) in &e.xattrs {
            if erofs::tree::validate_xattr(k, v).is_err() {
                self.report.dropped_xattrs += 1;
                continue;
            }
            xattrs.insert(k.clone(), v.clone());
        }
        let content = match e.kind {
            EntryKind::Directory => Content::Dir(BTreeMap::new()),
            EntryKind::Regular => {
                if let Some(regions) = &e.sparse {
                    let stored: u64 = regions.iter().map(|r| r.length).sum();
                    let holes = e.size.saturating_sub(stored);
                    self.holes_left = self.holes_left.checked_sub(holes).ok_or_else(|| {
                        entry_err(format!(
                            "sparse files of this layer hold more than {} bytes of holes",
                            self.max_holes
                        ))
                    })?;
                }
                let data = if self.tar_index {
                    index_chunks(e).map_err(entry_err)?
                } else {
                    self.writer
                        .add_file_data_buf(e.size, &mut tar.data())
                        .map_err(|source| ConvertError::Data {
                            name: name(),
                            offset,
                            source,
                        })?
                };
                Content::File(data)
            }
            EntryKind::HardLink => {
                let target =
                    path::normalize(&e.link_name).map_err(|source| ConvertError::Path {
                        name: lossy(&e.link_name),
                        offset,
                        source,
                    })?;
                return self.tree.hard_link(&comps, &target).map_err(tree_err);
            }
            EntryKind::Symlink => Content::Symlink(e.link_name.clone()),
            EntryKind::CharDevice => Content::CharDevice {
                major: e.dev_major,
                minor: e.dev_minor,
            },
            EntryKind::BlockDevice => Content::BlockDevice {
                major: e.dev_major,
                minor: e.dev_minor,
            },
            EntryKind::Fifo => Content::Fifo,
        };
        let mut node = Node::new(meta, content);
        node.xattrs = xattrs;
        self.tree.insert(&comps, node).map_err(tree_err)?;
        Ok(())
    }
}

/// Chunk-based file data pointing into the tar (device 1) for tar-index
/// mode: one chunk per file where possible (section 11 of the format
/// reference).
fn index_chunks(e: &Entry) -> Result<FileData, String> {
    // A GNU sparse file's stored bytes are not its logical content (holes
    // are omitted), so one contiguous range from data_offset would point at
    // the wrong bytes, and past the entry into later headers.
    if e.sparse.is_some() {
        return Err("GNU sparse files cannot be referenced in tar-index mode".into());
    }
    if e.size == 0 {
        return Ok(FileData::EMPTY);
    }
    let blocks = e.size.div_ceil(512);
    let chunkbits = (64 - (blocks - 1).leading_zeros()).min(31) as u8;
    let per = 1u64 << chunkbits;
    let first = e.data_offset / 512;
    let chunks = (0..blocks.div_ceil(per))
        .map(|i| {
            u32::try_from(first + i * per)
                .map(|blkaddr| ChunkAddr { device: 1, blkaddr })
                .map_err(|_| format!("data at offset {} is beyond 2 TiB", e.data_offset))
        })
        .collect::<Result<_, _>>()?;
    Ok(FileData::Chunked {
        size: e.size,
        chunkbits,
        chunks,
    })
}

/// The consumer's view of the stream: chunks lent to the tar parser and
/// the writer, each also hashed whole (the diffID) and copied into a spool
/// file (the tar kept for tar-index mode) when asked, always counted.
struct Stream<S> {
    src: S,
    cur: Option<Chunk>,
    pos: usize,
    done: bool,
    hashing: Option<Sha256>,
    spool: Option<File>,
    bytes: u64,
}

impl<S: ChunkSource> BufRead for Stream<S> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while !self.done && self.cur.as_ref().is_none_or(|c| self.pos == c.len()) {
            // Dropped before the next arrives, so its buffer can go home.
            self.cur = None;
            self.pos = 0;
            match self.src.next_chunk()? {
                Some(c) => {
                    self.bytes += c.len() as u64;
                    if let Some(h) = &mut self.hashing {
                        h.update(&c[..]);
                    }
                    if let Some(s) = &mut self.spool {
                        s.write_all(&c)?;
                    }
                    self.cur = Some(c);
                }
                None => self.done = true,
            }
        }
        Ok(match &self.cur {
            Some(c) if !self.done => &c[self.pos..],
            _ => &[],
        })
    }

    fn consume(&mut self, n: usize) {
        let len = self.cur.as_ref().map_or(0, |c| c.len());
        self.pos = (self.pos + n).min(len);
    }
}

impl<S: ChunkSource> Read for Stream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = buf.len().min(avail.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// A layer whose stream has been read completely: file data is in the
/// image, metadata is in memory. [`Streamed::finish`] writes the rest.
pub struct Streamed {
    writer: ImageWriter<File>,
    tree: Tree,
    spool: Option<File>,
    /// Size of the tar device in 512-byte blocks (tar index only).
    device_blocks: u32,
    report: ConvertReport,
}

impl Streamed {
    /// What was read; the summary is filled in by `finish`.
    pub fn report(&self) -> &ConvertReport {
        &self.report
    }

    /// Write metadata and superblock (and, for a tar index, append the
    /// tar). The UUID defaults to the first 16 bytes of `diff_id`, so the
    /// same layer always gives the same bytes.
    pub fn finish(
        mut self,
        uuid: Option<[u8; 16]>,
        diff_id: Option<Digest>,
    ) -> Result<(File, ConvertReport), ConvertError> {
        let start = Instant::now();
        if let Some(d) = diff_id {
            self.report.diff_id = Some(d);
        }
        let uuid = uuid.or_else(|| {
            let d = self.report.diff_id.as_ref()?;
            let mut u = [0u8; 16];
            u.copy_from_slice(&d.as_bytes()[..16]);
            Some(u)
        });
        if let Some(u) = uuid {
            self.writer.set_uuid(u);
        }
        let (mut out, summary) = self.writer.finish(&self.tree)?;
        if let Some(mut spool) = self.spool {
            spool.seek(SeekFrom::Start(0))?;
            out.seek(SeekFrom::Start(summary.image_bytes))?;
            let copied = io::copy(&mut spool, &mut out)?;
            // The device must span whole blocks, and at least one (an
            // empty layer still has a device): pad with zeros.
            let device = copied
                .next_multiple_of(512)
                .max(u64::from(self.device_blocks) * 512);
            out.set_len(summary.image_bytes + device)?;
        }
        self.report.summary = summary;
        self.report.finish = start.elapsed();
        Ok((out, self.report))
    }
}

/// Read an uncompressed tar stream completely into an image at `out` (an
/// empty file): file data is written as it streams past. In tar-index
/// mode the stream is also spooled to an unnamed file in `spool_dir`, to
/// be appended after the index.
pub fn stream_tar<R: Read>(
    input: R,
    out: File,
    spool_dir: &std::path::Path,
    opts: &ConvertOptions,
) -> Result<Streamed, ConvertError> {
    stream_chunks(ReadChunks::new(input), out, spool_dir, opts)
}

/// [`stream_tar`] over a source that hands out its buffers (such as a
/// [`crate::pipeline::PipeReader`]): file data goes from them to the image
/// with no copy in between.
pub fn stream_chunks<S: ChunkSource>(
    input: S,
    out: File,
    spool_dir: &std::path::Path,
    opts: &ConvertOptions,
) -> Result<Streamed, ConvertError> {
    let start = Instant::now();
    let spool = if opts.tar_index {
        Some(tempfile::tempfile_in(spool_dir)?)
    } else {
        None
    };
    let wopts = WriterOptions {
        blkszbits: if opts.tar_index {
            TAR_INDEX_BLKSZBITS
        } else {
            12
        },
        inline_data: opts.inline_data && !opts.tar_index,
        uuid: [0; 16],
        volume_name: Vec::new(),
        devices: if opts.tar_index {
            vec![Device {
                tag: Vec::new(),
                blocks: 0,
            }]
        } else {
            Vec::new()
        },
    };
    let mut writer = ImageWriter::new(out, wopts)?;
    let root = Meta {
        perm: 0o755,
        ..Meta::default()
    };
    let mut tree = Tree::new(root.clone(), root);
    tree.set_max_nodes(opts.max_inodes);
    let stream = Stream {
        src: input,
        cur: None,
        pos: 0,
        done: false,
        hashing: opts.compute_diff_id.then(Sha256::new),
        spool,
        bytes: 0,
    };
    let mut tar = TarReader::new(stream, opts.limits);
    let mut applier = Applier {
        tree,
        writer: &mut writer,
        tar_index: opts.tar_index,
        holes_left: opts.max_sparse_holes,
        max_holes: opts.max_sparse_holes,
        report: ConvertReport::default(),
    };
    while let Some(entry) = tar.next_entry()? {
        applier.report.entries += 1;
        applier.apply(&mut tar, &entry)?;
    }
    let consumed = tar.position();
    let Applier {
        tree, mut report, ..
    } = applier;
    let stream = tar.finish()?;
    report.diff_id = stream
        .hashing
        .map(|h| Digest::from_bytes(h.finalize().into()));
    report.tar_bytes = stream.bytes;
    let mut device_blocks = 0;
    if opts.tar_index {
        device_blocks =
            u32::try_from(consumed.div_ceil(512).max(1)).map_err(|_| WriteError::TooLarge)?;
        writer.set_device_blocks(0, device_blocks);
    }
    report.convert = start.elapsed();
    Ok(Streamed {
        writer,
        tree,
        spool: stream.spool,
        device_blocks,
        report,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The diffID covers the whole stream, end-of-archive blocks included.
    #[test]
    fn diff_id_is_the_digest_of_the_whole_stream() {
        for size in [1000usize, (3 << 20) + 12345] {
            let mut b = ::tar::Builder::new(Vec::new());
            let data: Vec<u8> = (0..size).map(|i| (i % 249) as u8).collect();
            let mut h = ::tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, "f", &data[..]).unwrap();
            let tar = b.into_inner().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let out = tempfile::tempfile_in(dir.path()).unwrap();
            let streamed =
                stream_tar(&tar[..], out, dir.path(), &ConvertOptions::default()).unwrap();
            assert_eq!(streamed.report().diff_id, Some(Digest::of(&tar)));
            assert_eq!(streamed.report().tar_bytes, tar.len() as u64);
            let (_, report) = streamed.finish(None, None).unwrap();
            assert_eq!(report.summary.file_bytes, size as u64);
        }
    }
}
