//! Streaming image writer.
//!
//! File contents are copied into the image as they arrive, block-aligned,
//! starting right after the superblock block; only metadata is held in
//! memory (the [`Tree`]). [`ImageWriter::finish`] then lays out all inodes
//! after the data (`meta_blkaddr` = first metadata block), places directory
//! blocks after them and writes the superblock last. Reading the input once
//! and never seeking back into the data keeps memory flat and lets a layer
//! be converted while it is still being downloaded and inflated.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};

use crate::format::{self, DeviceSlot, Dirent, InodeRecord, Superblock};
use crate::pagebuf::PageBuf;
use crate::tree::{ChunkAddr, Content, FileData, NodeId, OVERLAY_ORIGIN, ROOT, Tree};

/// An extra device (tar or layer blob) referenced by chunk-based inodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Opaque identifier, at most 64 bytes (e.g. the layer digest).
    pub tag: Vec<u8>,
    /// Size of the device in blocks of this image's block size.
    pub blocks: u32,
}

/// Image-wide choices.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// log2 of the block size: 12 for images, 9 for tar indexes.
    pub blkszbits: u8,
    /// Store the tail of regular files inline after the inode. Off by
    /// default because merged (fsmeta) images can only point at whole
    /// blocks of a layer.
    pub inline_data: bool,
    pub uuid: [u8; 16],
    pub volume_name: Vec<u8>,
    /// Device table, slot 1 first. Non-empty only for tar indexes and
    /// merged metadata.
    pub devices: Vec<Device>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            blkszbits: 12,
            inline_data: false,
            uuid: [0; 16],
            volume_name: Vec::new(),
            devices: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing image")]
    Io(#[from] io::Error),
    #[error("reading file data")]
    Input(#[source] io::Error),
    #[error("input ended after {got} of {expected} bytes of file data")]
    ShortData { expected: u64, got: u64 },
    #[error("unsupported block size 2^{0} (only 2^9..=2^12)")]
    BlockSize(u8),
    #[error("image would exceed 2^32 blocks")]
    TooLarge,
    #[error("xattrs of one inode take {0} bytes, more than the inline region holds")]
    XattrsTooLarge(usize),
    #[error("the root inode lands beyond NID 65535")]
    RootNid,
    #[error("device tag longer than 64 bytes")]
    DeviceTag,
    #[error("too many devices ({0}); at most 65535")]
    TooManyDevices(usize),
}

/// Counts describing a finished image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub inodes: u64,
    pub directories: u64,
    pub regular_files: u64,
    pub symlinks: u64,
    pub special_files: u64,
    pub file_bytes: u64,
    pub metadata_bytes: u64,
    pub image_bytes: u64,
    pub block_size: u64,
}

/// Copy granularity for file data.
const COPY_CHUNK: usize = 1 << 20;

/// Writes one image. `F` is the output file; it must start empty.
/// Where an image is written: a seekable sink whose length can be set, so
/// all-zero blocks can be left as holes.
pub trait Output: Write + Seek {
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

impl Output for std::fs::File {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }
}

impl<T: Output + ?Sized> Output for &mut T {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
}

impl Output for io::Cursor<Vec<u8>> {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.get_mut().resize(len as usize, 0);
        Ok(())
    }
}

pub struct ImageWriter<F: Output> {
    out: F,
    opts: WriterOptions,
    bs: u64,
    /// Next free data block.
    next_blk: u64,
    /// Where `out`'s file position is, to avoid redundant seeks.
    pos: u64,
    /// Bytes of file content accepted, for the summary.
    file_bytes: u64,
    /// Copy buffer for [`ImageWriter::add_file_data`], page-aligned so
    /// the kernel fills it fast (see [`crate::pagebuf`]).
    buf: PageBuf,
    /// Short runs of data that follow one another in the image, gathered
    /// into one `write` (see [`ImageWriter::write_run`]).
    stage: PageBuf,
    /// Image offset of `stage[0]`, and the bytes staged.
    stage_off: u64,
    stage_len: usize,
}

/// Runs shorter than this are staged; longer ones are written as they
/// come.
const STAGE_RUN: usize = 64 << 10;
/// Size of the stage.
const STAGE: usize = 1 << 20;

fn blocks_for(len: u64, bs: u64) -> u64 {
    len.div_ceil(bs)
}

fn blk_u32(blk: u64) -> Result<u32, WriteError> {
    u32::try_from(blk).map_err(|_| WriteError::TooLarge)
}

impl<F: Output> ImageWriter<F> {
    pub fn new(out: F, opts: WriterOptions) -> Result<Self, WriteError> {
        if !(9..=12).contains(&opts.blkszbits) {
            return Err(WriteError::BlockSize(opts.blkszbits));
        }
        if opts.devices.len() > usize::from(u16::MAX) {
            return Err(WriteError::TooManyDevices(opts.devices.len()));
        }
        if opts.devices.iter().any(|d| d.tag.len() > 64) {
            return Err(WriteError::DeviceTag);
        }
        let bs = 1u64 << opts.blkszbits;
        let header_end = Self::header_len(&opts);
        Ok(ImageWriter {
            out,
            bs,
            next_blk: blocks_for(header_end, bs),
            pos: 0,
            file_bytes: 0,
            buf: PageBuf::default(),
            stage: PageBuf::default(),
            stage_off: 0,
            stage_len: 0,
            opts,
        })
    }

    /// Bytes before the first data or metadata block: the unused 1024
    /// bytes, the superblock and the device table right after it.
    fn header_len(opts: &WriterOptions) -> u64 {
        format::SUPERBLOCK_OFFSET
            + format::SUPERBLOCK_SIZE as u64
            + (format::DEVICE_SLOT_SIZE * opts.devices.len()) as u64
    }

    /// Set the volume UUID; callers that derive it from the content's
    /// digest only know it at the end.
    pub fn set_uuid(&mut self, uuid: [u8; 16]) {
        self.opts.uuid = uuid;
    }

    /// Set the size of device `index` (0 = slot 1) once it is known, e.g.
    /// the length of the tar a tar index points into.
    pub fn set_device_blocks(&mut self, index: usize, blocks: u32) {
        if let Some(d) = self.opts.devices.get_mut(index) {
            d.blocks = blocks;
        }
    }

    fn seek_to(&mut self, off: u64) -> io::Result<()> {
        if self.pos != off {
            self.out.seek(SeekFrom::Start(off))?;
            self.pos = off;
        }
        Ok(())
    }

    /// Write `data` at byte `off`, leaving all-zero blocks as holes in the
    /// output file (the image bytes are the same; a layer full of zeros
    /// costs no disk space). Blocks are those of the image, counted from
    /// the start of the file, so a file's data can arrive in pieces that
    /// start anywhere.
    fn write_blocks_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        let bs = self.bs;
        // End (in `data`) of the image block holding `data[i]`.
        let block_end = |i: usize| {
            let into = (off + i as u64) % bs;
            usize::try_from(bs - into).map_or(data.len(), |rest| (i + rest).min(data.len()))
        };
        let mut start = 0;
        while start < data.len() {
            let end = block_end(start);
            if !data[start..end].iter().all(|&b| b == 0) {
                // Coalesce the run of non-zero blocks into one write.
                let mut run_end = end;
                while run_end < data.len() {
                    let next = block_end(run_end);
                    if data[run_end..next].iter().all(|&b| b == 0) {
                        break;
                    }
                    run_end = next;
                }
                self.write_run(off + start as u64, &data[start..run_end])?;
                start = run_end;
            } else {
                start = end;
            }
        }
        Ok(())
    }

    /// Write one run of data at image offset `off`. A layer's small files
    /// (most of a rootfs: a few KiB each) land block after block, so
    /// short runs that continue the staged ones, across at most the zeros
    /// that pad a block, are copied into the stage and go out together:
    /// one `write` and one pass through the kernel's per-call work instead
    /// of one per file. The padding is written as zeros, which is what
    /// the page cache would have filled in.
    fn write_run(&mut self, off: u64, run: &[u8]) -> io::Result<()> {
        let stage_end = self.stage_off + self.stage_len as u64;
        let gap = off.checked_sub(stage_end).filter(|&g| g < self.bs);
        let fits = |gap: u64| self.stage_len + gap as usize + run.len() <= STAGE;
        match gap {
            Some(gap) if self.stage_len > 0 && run.len() < STAGE_RUN && fits(gap) => {
                let at = self.stage_len + gap as usize;
                self.stage[self.stage_len..at].fill(0);
                self.stage[at..at + run.len()].copy_from_slice(run);
                self.stage_len = at + run.len();
            }
            _ => {
                self.flush_stage()?;
                if run.len() < STAGE_RUN {
                    if self.stage.len() < STAGE {
                        self.stage = PageBuf::new(STAGE);
                    }
                    self.stage[..run.len()].copy_from_slice(run);
                    self.stage_off = off;
                    self.stage_len = run.len();
                } else {
                    self.seek_to(off)?;
                    self.out.write_all(run)?;
                    self.pos += run.len() as u64;
                }
            }
        }
        Ok(())
    }

    fn flush_stage(&mut self) -> io::Result<()> {
        if self.stage_len > 0 {
            self.seek_to(self.stage_off)?;
            self.out.write_all(&self.stage[..self.stage_len])?;
            self.pos += self.stage_len as u64;
            self.stage_len = 0;
        }
        Ok(())
    }

    /// Blocks for the body of a `size`-byte file: (tail length, body
    /// length, first block, block count).
    fn reserve(&self, size: u64) -> Result<(u64, u64, u64, u64), WriteError> {
        let tail_len = if self.opts.inline_data {
            size % self.bs
        } else {
            0
        };
        let body = size - tail_len;
        let start_blk = self.next_blk;
        let nblocks = blocks_for(body, self.bs);
        blk_u32(start_blk.checked_add(nblocks).ok_or(WriteError::TooLarge)?)?;
        Ok((tail_len, body, start_blk, nblocks))
    }

    /// Copy exactly `size` bytes of one regular file from `r` into the
    /// image and return where they went. The tail is kept for inlining
    /// when inline data is enabled.
    pub fn add_file_data(&mut self, size: u64, r: &mut dyn Read) -> Result<FileData, WriteError> {
        if size == 0 {
            return Ok(FileData::EMPTY);
        }
        let (tail_len, body, start_blk, nblocks) = self.reserve(size)?;
        if self.buf.len() < COPY_CHUNK {
            self.buf = PageBuf::new(COPY_CHUNK);
        }
        let mut buf = std::mem::take(&mut self.buf);
        let mut done = 0u64;
        let result = (|| {
            while done < body {
                let want = (body - done).min(COPY_CHUNK as u64) as usize;
                let n = read_full(r, &mut buf[..want]).map_err(WriteError::Input)?;
                if n < want {
                    return Err(WriteError::ShortData {
                        expected: size,
                        got: done + n as u64,
                    });
                }
                self.write_blocks_at(start_blk * self.bs + done, &buf[..want])?;
                done += want as u64;
            }
            Ok(())
        })();
        self.buf = buf;
        result?;
        self.file_done(size, tail_len, start_blk, nblocks, r)
    }

    /// [`ImageWriter::add_file_data`] for a source that lends its own
    /// buffer: the bytes go from there to the output with no copy in
    /// between.
    pub fn add_file_data_buf(
        &mut self,
        size: u64,
        r: &mut dyn BufRead,
    ) -> Result<FileData, WriteError> {
        if size == 0 {
            return Ok(FileData::EMPTY);
        }
        let (tail_len, body, start_blk, nblocks) = self.reserve(size)?;
        let mut done = 0u64;
        while done < body {
            let piece = match r.fill_buf() {
                Ok(p) => p,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WriteError::Input(e)),
            };
            if piece.is_empty() {
                return Err(WriteError::ShortData {
                    expected: size,
                    got: done,
                });
            }
            let n = usize::try_from(body - done).map_or(piece.len(), |left| left.min(piece.len()));
            let off = start_blk * self.bs + done;
            self.write_blocks_at(off, &piece[..n])?;
            r.consume(n);
            done += n as u64;
        }
        self.file_done(size, tail_len, start_blk, nblocks, r)
    }

    /// Account for a file whose body is written and read its inline tail.
    fn file_done(
        &mut self,
        size: u64,
        tail_len: u64,
        start_blk: u64,
        nblocks: u64,
        r: &mut dyn Read,
    ) -> Result<FileData, WriteError> {
        self.next_blk = start_blk + nblocks;
        self.file_bytes += size;
        let blkaddr = blk_u32(start_blk)?;
        if tail_len == 0 {
            return Ok(FileData::Plain { size, blkaddr });
        }
        let mut tail = vec![0; tail_len as usize];
        let n = read_full(r, &mut tail).map_err(WriteError::Input)?;
        if n < tail.len() {
            return Err(WriteError::ShortData {
                expected: size,
                got: size - tail_len + n as u64,
            });
        }
        Ok(FileData::Inline {
            size,
            blkaddr: if nblocks == 0 {
                format::NULL_ADDR
            } else {
                blkaddr
            },
            tail,
        })
    }

    /// Lay out and write all metadata for `tree`, then the superblock.
    /// Returns the output and a summary.
    pub fn finish(mut self, tree: &Tree) -> Result<(F, Summary), WriteError> {
        let plan = Layout::plan(tree, self.bs, self.next_blk)?;
        let mut summary = plan.summary.clone();
        summary.file_bytes = self.file_bytes;

        // Metadata area.
        let meta_off = plan.meta_blk * self.bs;
        self.write_blocks_at(meta_off, &plan.meta)?;

        // Header: superblock and device table, checksum last.
        let total_blocks = plan.end_blk;
        let mut incompat = 0;
        if plan.any_chunked {
            incompat |= format::INCOMPAT_CHUNKED_FILE;
        }
        if !self.opts.devices.is_empty() {
            incompat |= format::INCOMPAT_DEVICE_TABLE;
        }
        let mut volume_name = [0u8; 16];
        let n = self.opts.volume_name.len().min(15);
        volume_name[..n].copy_from_slice(&self.opts.volume_name[..n]);
        let sb = Superblock {
            feature_compat: format::COMPAT_SB_CHKSUM | format::COMPAT_MTIME,
            blkszbits: self.opts.blkszbits,
            root_nid: plan.root_nid,
            inos: plan.summary.inodes,
            epoch: plan.epoch.0,
            fixed_nsec: plan.epoch.1,
            blocks: blk_u32(total_blocks)?,
            meta_blkaddr: blk_u32(plan.meta_blk)?,
            xattr_blkaddr: 0,
            uuid: self.opts.uuid,
            volume_name,
            feature_incompat: incompat,
            extra_devices: self.opts.devices.len() as u16,
            devt_slotoff: if self.opts.devices.is_empty() {
                0
            } else {
                ((format::SUPERBLOCK_OFFSET + format::SUPERBLOCK_SIZE as u64)
                    / format::DEVICE_SLOT_SIZE as u64) as u16
            },
            ..Default::default()
        };
        let header_blocks = blocks_for(Self::header_len(&self.opts), self.bs);
        let mut header = vec![0u8; (header_blocks * self.bs) as usize];
        let sb_off = format::SUPERBLOCK_OFFSET as usize;
        header[sb_off..sb_off + format::SUPERBLOCK_SIZE].copy_from_slice(&sb.encode());
        let mut uniaddr = total_blocks;
        let mut slot_off = sb_off + format::SUPERBLOCK_SIZE;
        for d in &self.opts.devices {
            let mut tag = [0u8; 64];
            tag[..d.tag.len()].copy_from_slice(&d.tag);
            let slot = DeviceSlot {
                tag,
                blocks: d.blocks,
                uniaddr: blk_u32(uniaddr)?,
            };
            header[slot_off..slot_off + format::DEVICE_SLOT_SIZE].copy_from_slice(&slot.encode());
            slot_off += format::DEVICE_SLOT_SIZE;
            uniaddr += u64::from(d.blocks);
        }
        blk_u32(uniaddr)?;
        let crc_len = format::checksum_len(self.bs) as usize;
        let crc = format::erofs_crc32c(&header[sb_off..sb_off + crc_len]);
        header[sb_off + 4..sb_off + 8].copy_from_slice(&crc.to_le_bytes());
        self.flush_stage()?;
        self.seek_to(0)?;
        self.out.write_all(&header)?;
        self.pos = header.len() as u64;

        // Trailing all-zero blocks were skipped: fix the length.
        let end = total_blocks * self.bs;
        self.out.set_len(end)?;
        self.out.flush()?;
        summary.image_bytes = end;
        Ok((self.out, summary))
    }
}

/// Read until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// How the bytes of an inode beyond its record and xattrs are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Nothing (special files, plain files already written, empty files).
    None,
    /// Directory blocks; the last partial block inline or not.
    Dir { inline: bool },
    /// Symlink target inline or in a block of its own.
    Symlink { inline: bool },
    /// A regular file's tail inline after the inode.
    FileTail,
    /// A file smaller than a block whose tail did not fit inline: one
    /// FLAT_PLAIN block.
    FileTailBlock,
    /// A file whose full blocks are already written and whose tail did not
    /// fit inline: chunk-based, full-block chunks then one tail chunk.
    FileSpill { chunkbits: u8 },
    /// Chunk indexes given by the caller (tar index, merged metadata).
    Chunks,
}

/// Per-inode layout decisions.
struct Placed {
    node: NodeId,
    /// Offset of the inode record from the start of the metadata area.
    offset: u64,
    extended: bool,
    layout: u16,
    body: Body,
    xattrs: Vec<u8>,
    nlink: u32,
    size: u64,
    /// `i_u` as known at placement; block addresses of directory, symlink
    /// and spilled blocks are filled in after the metadata is sized.
    u: u32,
}

/// Everything `finish` needs to write.
struct Layout {
    meta_blk: u64,
    /// The metadata area followed by the blocks allocated after it.
    meta: Vec<u8>,
    end_blk: u64,
    root_nid: u16,
    epoch: (i64, u32),
    any_chunked: bool,
    summary: Summary,
}

/// Encode the inline xattr region of a node (section 9.1); empty when the
/// node has no xattrs. `add_origin` adds `trusted.overlay.origin = ""`,
/// which directories holding whiteouts need (section 10.4).
fn encode_xattrs(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>, add_origin: bool) -> Vec<u8> {
    let mut entries: Vec<(&[u8], &[u8])> = xattrs
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    if add_origin && !xattrs.contains_key(OVERLAY_ORIGIN) {
        entries.push((OVERLAY_ORIGIN, b""));
        entries.sort();
    }
    if entries.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0u8; format::XATTR_HEADER_SIZE];
    for (name, value) in entries {
        // The tree admits only representable names (tree::validate_xattr).
        let Some((index, suffix)) = format::xattr_split(name) else {
            continue;
        };
        out.push(suffix.len() as u8);
        out.push(index);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(suffix);
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    if out.len() == format::XATTR_HEADER_SIZE {
        // Every name was unrepresentable: a header-only region (icount 1)
        // is refused by the kernel, so store none.
        out.clear();
    }
    out
}

/// Directory entries of one directory in on-disk order, and how they pack
/// into blocks (section 7).
struct DirPlan {
    /// (name, target node), `.` and `..` included, sorted by bytes.
    entries: Vec<(Vec<u8>, NodeId)>,
    /// Index of the first entry of each block.
    block_starts: Vec<usize>,
    size: u64,
}

fn plan_dir(tree: &Tree, id: NodeId, parent: NodeId, bs: u64) -> DirPlan {
    let mut entries: Vec<(Vec<u8>, NodeId)> = Vec::new();
    if let Content::Dir(children) = &tree.node(id).content {
        entries.reserve(children.len() + 2);
        entries.push((b".".to_vec(), id));
        entries.push((b"..".to_vec(), parent));
        entries.extend(children.iter().map(|(k, v)| (k.clone(), *v)));
        entries.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let mut block_starts = vec![0];
    let mut used = 0u64;
    let mut size = 0u64;
    for (i, (name, _)) in entries.iter().enumerate() {
        let need = (format::DIRENT_SIZE + name.len()) as u64;
        if used + need > bs {
            block_starts.push(i);
            size += bs;
            used = 0;
        }
        used += need;
    }
    DirPlan {
        entries,
        block_starts,
        size: size + used,
    }
}

/// Serialize directory blocks once every NID is known.
fn encode_dir(plan: &DirPlan, tree: &Tree, nids: &[u64], bs: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(plan.size as usize);
    for (b, &start) in plan.block_starts.iter().enumerate() {
        let end = plan
            .block_starts
            .get(b + 1)
            .copied()
            .unwrap_or(plan.entries.len());
        let block_begin = out.len();
        let chunk = &plan.entries[start..end];
        let mut nameoff = (chunk.len() * format::DIRENT_SIZE) as u16;
        for (name, target) in chunk {
            let node = tree.node(*target);
            Dirent {
                nid: nids[*target],
                nameoff,
                file_type: format::file_type_of_mode(node.mode()).unwrap_or(0),
                reserved: 0,
            }
            .encode(&mut out);
            nameoff += name.len() as u16;
        }
        for (name, _) in chunk {
            out.extend_from_slice(name);
        }
        if end < plan.entries.len() {
            out.resize(block_begin + bs as usize, 0);
        }
    }
    out
}

/// 8-byte chunk indexes (section 6.3).
fn encode_chunks(chunks: &[ChunkAddr], out: &mut Vec<u8>) {
    for c in chunks {
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&c.device.to_le_bytes());
        out.extend_from_slice(&c.blkaddr.to_le_bytes());
    }
}

/// Append `bytes` as whole blocks to the area after the metadata and
/// return the first block's address.
fn alloc_blocks(
    area: &mut Vec<u8>,
    next_blk: &mut u64,
    bs: u64,
    bytes: &[u8],
) -> Result<u32, WriteError> {
    let blk = blk_u32(*next_blk)?;
    area.extend_from_slice(bytes);
    area.resize(area.len().next_multiple_of(bs as usize), 0);
    *next_blk += blocks_for(bytes.len() as u64, bs);
    blk_u32(*next_blk)?;
    Ok(blk)
}

impl Layout {
    fn plan(tree: &Tree, bs: u64, data_end_blk: u64) -> Result<Layout, WriteError> {
        // 1. Reachable inodes in breadth-first order (root first, so its
        //    NID is small), link counts (section 5.7) and parents.
        let n = tree.node_count();
        let mut order: Vec<NodeId> = vec![ROOT];
        let mut seen = vec![false; n];
        let mut parent = vec![ROOT; n];
        let mut nlink = vec![0u32; n];
        let mut has_whiteout = vec![false; n];
        seen[ROOT] = true;
        let mut i = 0;
        while let Some(&id) = order.get(i) {
            i += 1;
            if let Content::Dir(children) = &tree.node(id).content {
                nlink[id] = nlink[id].saturating_add(2);
                for &child in children.values() {
                    let c = tree.node(child);
                    has_whiteout[id] |= c.content.is_whiteout();
                    if c.content.is_dir() {
                        nlink[id] = nlink[id].saturating_add(1);
                    } else {
                        nlink[child] = nlink[child].saturating_add(1);
                    }
                    if !seen[child] {
                        seen[child] = true;
                        parent[child] = id;
                        order.push(child);
                    }
                }
            }
        }

        // 2. Epoch: the most common timestamp, so that most inodes can be
        //    compact (section 5.5); ties go to the earliest.
        let mut counts: HashMap<(i64, u32), u64> = HashMap::new();
        for &id in &order {
            let m = &tree.node(id).meta;
            *counts.entry((m.mtime, m.mtime_nsec)).or_default() += 1;
        }
        let epoch = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(k, _)| *k)
            .unwrap_or((0, 0));

        // 3. Decide each inode's form and layout and give it a NID. Slot 0
        //    stays empty so that no inode gets NID 0, which the kernel
        //    would report as inode number 0.
        let mut summary = Summary {
            block_size: bs,
            inodes: order.len() as u64,
            ..Default::default()
        };
        let mut cursor = format::INODE_SLOT;
        let mut nids = vec![0u64; n];
        let mut placed: Vec<Placed> = Vec::with_capacity(order.len());
        let mut dir_plans: HashMap<NodeId, DirPlan> = HashMap::new();
        let mut any_chunked = false;
        for &id in &order {
            let node = tree.node(id);
            let m = &node.meta;
            let xattrs = encode_xattrs(&node.xattrs, has_whiteout[id]);
            if xattrs.len() > format::XATTR_REGION_MAX {
                return Err(WriteError::XattrsTooLarge(xattrs.len()));
            }
            let (mut layout, mut body, mut inline_len, u, size) = match &node.content {
                Content::Dir(_) => {
                    summary.directories += 1;
                    let dp = plan_dir(tree, id, parent[id], bs);
                    let size = dp.size;
                    dir_plans.insert(id, dp);
                    let tail = size % bs;
                    let layout = if tail > 0 {
                        format::LAYOUT_FLAT_INLINE
                    } else {
                        format::LAYOUT_FLAT_PLAIN
                    };
                    (layout, Body::Dir { inline: tail > 0 }, tail, 0, size)
                }
                Content::Symlink(target) => {
                    summary.symlinks += 1;
                    let size = target.len() as u64;
                    if !size.is_multiple_of(bs) {
                        let l = format::LAYOUT_FLAT_INLINE;
                        (
                            l,
                            Body::Symlink { inline: true },
                            size,
                            format::NULL_ADDR,
                            size,
                        )
                    } else {
                        let l = format::LAYOUT_FLAT_PLAIN;
                        (l, Body::Symlink { inline: false }, 0, 0, size)
                    }
                }
                Content::File(data) => {
                    summary.regular_files += 1;
                    match data {
                        FileData::Plain { size, blkaddr } => {
                            (format::LAYOUT_FLAT_PLAIN, Body::None, 0, *blkaddr, *size)
                        }
                        FileData::Inline {
                            size,
                            blkaddr,
                            tail,
                        } => (
                            format::LAYOUT_FLAT_INLINE,
                            Body::FileTail,
                            tail.len() as u64,
                            *blkaddr,
                            *size,
                        ),
                        FileData::Chunked {
                            size,
                            chunkbits,
                            chunks,
                        } => (
                            format::LAYOUT_CHUNK_BASED,
                            Body::Chunks,
                            (chunks.len() * format::CHUNK_INDEX_SIZE) as u64,
                            u32::from(*chunkbits) | u32::from(format::CHUNK_FORMAT_INDEXES),
                            *size,
                        ),
                    }
                }
                Content::CharDevice { major, minor } | Content::BlockDevice { major, minor } => {
                    summary.special_files += 1;
                    let rdev = format::encode_dev(*major, *minor);
                    (format::LAYOUT_FLAT_PLAIN, Body::None, 0, rdev, 0)
                }
                Content::Fifo | Content::Socket => {
                    summary.special_files += 1;
                    (format::LAYOUT_FLAT_PLAIN, Body::None, 0, 0, 0)
                }
            };
            let mut u = u;
            let extended = size > u64::from(u32::MAX)
                || m.uid > u32::from(u16::MAX)
                || m.gid > u32::from(u16::MAX)
                || nlink[id] > u32::from(u16::MAX)
                || (m.mtime, m.mtime_nsec) != epoch;
            let isize = if extended {
                format::EXTENDED_INODE_SIZE
            } else {
                format::COMPACT_INODE_SIZE
            } as u64;
            let head = isize + xattrs.len() as u64;
            if layout == format::LAYOUT_FLAT_INLINE && head + inline_len > bs {
                // Inode and tail do not share even a fresh block: the tail
                // goes to a data block instead (section 6.2).
                inline_len = 0;
                (layout, body) = match body {
                    Body::Dir { .. } => (format::LAYOUT_FLAT_PLAIN, Body::Dir { inline: false }),
                    Body::Symlink { .. } => {
                        (format::LAYOUT_FLAT_PLAIN, Body::Symlink { inline: false })
                    }
                    _ if size < bs => (format::LAYOUT_FLAT_PLAIN, Body::FileTailBlock),
                    _ => {
                        // Chunks as large as the full-block run allows,
                        // then one chunk for the tail block.
                        let full = size / bs;
                        let chunkbits = full.trailing_zeros().min(31) as u8;
                        let chunks = (full >> chunkbits) + 1;
                        inline_len = chunks * format::CHUNK_INDEX_SIZE as u64;
                        u = u32::from(chunkbits) | u32::from(format::CHUNK_FORMAT_INDEXES);
                        (format::LAYOUT_CHUNK_BASED, Body::FileSpill { chunkbits })
                    }
                };
            }
            let pad = if layout == format::LAYOUT_CHUNK_BASED {
                any_chunked = true;
                head.next_multiple_of(format::CHUNK_INDEX_SIZE as u64) - head
            } else {
                0
            };
            let need = head + pad + inline_len;
            cursor = cursor.next_multiple_of(format::INODE_SLOT);
            if cursor % bs + need > bs {
                cursor = cursor.next_multiple_of(bs);
            }
            nids[id] = cursor / format::INODE_SLOT;
            placed.push(Placed {
                node: id,
                offset: cursor,
                extended,
                layout,
                body,
                xattrs,
                nlink: nlink[id],
                size,
                u,
            });
            cursor += need;
        }
        let root_nid = u16::try_from(nids[ROOT]).map_err(|_| WriteError::RootNid)?;

        // 4. Encode. Blocks that only now get addresses (directory blocks,
        //    long symlinks, spilled tails) follow the metadata area.
        let meta_len = cursor.next_multiple_of(bs);
        let mut meta = vec![0u8; meta_len as usize];
        let mut after: Vec<u8> = Vec::new();
        let mut next_blk = data_end_blk + meta_len / bs;
        let mut region: Vec<u8> = Vec::with_capacity(256);
        for (seq, p) in placed.iter_mut().enumerate() {
            let node = tree.node(p.node);
            region.clear();
            let mut inline: Vec<u8> = Vec::new();
            match (p.body, &node.content) {
                (Body::Dir { inline: keep_tail }, Content::Dir(_)) => {
                    let Some(dp) = dir_plans.get(&p.node) else {
                        continue;
                    };
                    let bytes = encode_dir(dp, tree, &nids, bs);
                    let split = if keep_tail {
                        (p.size / bs * bs) as usize
                    } else {
                        bytes.len()
                    };
                    let (blocks, tail) = bytes.split_at(split);
                    inline.extend_from_slice(tail);
                    p.u = if blocks.is_empty() {
                        format::NULL_ADDR
                    } else {
                        alloc_blocks(&mut after, &mut next_blk, bs, blocks)?
                    };
                }
                (Body::Symlink { inline: true }, Content::Symlink(t)) => {
                    inline.extend_from_slice(t);
                }
                (Body::Symlink { inline: false }, Content::Symlink(t)) => {
                    p.u = alloc_blocks(&mut after, &mut next_blk, bs, t)?;
                }
                (Body::FileTail, Content::File(FileData::Inline { tail, .. })) => {
                    inline.extend_from_slice(tail);
                }
                (Body::FileTailBlock, Content::File(FileData::Inline { tail, .. })) => {
                    p.u = alloc_blocks(&mut after, &mut next_blk, bs, tail)?;
                }
                (
                    Body::FileSpill { chunkbits },
                    Content::File(FileData::Inline { tail, blkaddr, .. }),
                ) => {
                    let tail_blk = alloc_blocks(&mut after, &mut next_blk, bs, tail)?;
                    let full = p.size / bs;
                    let per = 1u64 << chunkbits;
                    let mut chunks: Vec<ChunkAddr> = (0..full / per)
                        .map(|c| {
                            blk_u32(u64::from(*blkaddr) + c * per)
                                .map(|blkaddr| ChunkAddr { device: 0, blkaddr })
                        })
                        .collect::<Result<_, _>>()?;
                    chunks.push(ChunkAddr {
                        device: 0,
                        blkaddr: tail_blk,
                    });
                    encode_chunks(&chunks, &mut inline);
                }
                (Body::Chunks, Content::File(FileData::Chunked { chunks, .. })) => {
                    encode_chunks(chunks, &mut inline);
                }
                _ => {}
            }
            InodeRecord {
                extended: p.extended,
                layout: p.layout,
                format: 0,
                xattr_icount: if p.xattrs.is_empty() {
                    0
                } else {
                    ((p.xattrs.len() - format::XATTR_HEADER_SIZE) / 4 + 1) as u16
                },
                mode: node.mode(),
                nlink: p.nlink,
                size: p.size,
                u: p.u,
                // Any unique non-zero serial will do (section 5.7).
                ino: (seq + 1) as u32,
                uid: node.meta.uid,
                gid: node.meta.gid,
                mtime: node.meta.mtime,
                mtime_nsec: node.meta.mtime_nsec,
                reserved_nonzero: false,
            }
            .encode(&mut region);
            region.extend_from_slice(&p.xattrs);
            if p.layout == format::LAYOUT_CHUNK_BASED {
                region.resize(region.len().next_multiple_of(format::CHUNK_INDEX_SIZE), 0);
            }
            region.extend_from_slice(&inline);
            let off = p.offset as usize;
            meta[off..off + region.len()].copy_from_slice(&region);
        }
        summary.metadata_bytes = meta.len() as u64 + after.len() as u64;
        meta.extend_from_slice(&after);
        Ok(Layout {
            meta_blk: data_end_blk,
            meta,
            end_blk: next_blk,
            root_nid,
            epoch,
            any_chunked,
            summary,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tree::{Meta, Node};

    fn p(s: &str) -> Vec<Vec<u8>> {
        s.split('/').map(|c| c.as_bytes().to_vec()).collect()
    }

    /// Appendix A of the format reference: `mkfs.erofs -T0 -Uclear
    /// --all-root` of a directory holding `a` = "hi\n" is one 4 KiB block.
    /// Our layout differs (data first, metadata after), so compare the
    /// decoded fields that must agree rather than bytes.
    #[test]
    fn minimal_image_shape() {
        let meta = Meta {
            perm: 0o755,
            ..Meta::default()
        };
        let mut tree = Tree::new(meta.clone(), meta);
        let mut w = ImageWriter::new(
            io::Cursor::new(Vec::new()),
            WriterOptions {
                inline_data: true,
                ..Default::default()
            },
        )
        .unwrap();
        let data = w.add_file_data(3, &mut &b"hi\n"[..]).unwrap();
        let file = Node::new(
            Meta {
                perm: 0o644,
                ..Meta::default()
            },
            Content::File(data),
        );
        tree.insert(&p("a"), file).unwrap();
        let (out, summary) = w.finish(&tree).unwrap();
        let img = out.into_inner();
        // Block 0 (superblock) then one metadata block.
        assert_eq!(img.len(), 8192);
        assert_eq!(summary.inodes, 2);
        let sb: &[u8; 128] = img[1024..1152].try_into().unwrap();
        let sb = Superblock::decode(sb).unwrap();
        assert_eq!(sb.meta_blkaddr, 1);
        assert_eq!(sb.root_nid, 1);
        assert_eq!(sb.blocks, 2);
        let crc_input = {
            let mut b = img[1024..4096].to_vec();
            b[4..8].fill(0);
            b
        };
        assert_eq!(sb.checksum, format::erofs_crc32c(&crc_input));
        // Root inode at 4096 + 32: compact, FLAT_INLINE, 040755, nlink 2,
        // size 40, then "." ".." "a" dirents.
        let root = &img[4096 + 32..];
        assert_eq!(&root[0..8], &[4, 0, 0, 0, 0xed, 0x41, 2, 0]);
        assert_eq!(&root[8..12], &40u32.to_le_bytes());
        assert_eq!(&root[32 + 36..32 + 40], b"...a");
        // File inode right after, with its inline tail.
        let file = &img[4096 + 128..];
        assert_eq!(&file[0..12], &[4, 0, 0, 0, 0xa4, 0x81, 1, 0, 3, 0, 0, 0]);
        assert_eq!(&file[32..35], b"hi\n");
    }

    /// A reader lending its bytes in pieces of fixed, block-unaligned size.
    struct Pieces<'a> {
        data: &'a [u8],
        piece: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.piece).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    impl BufRead for Pieces<'_> {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            Ok(&self.data[..self.piece.min(self.data.len())])
        }
        fn consume(&mut self, n: usize) {
            self.data = &self.data[n..];
        }
    }

    #[test]
    fn borrowed_pieces_give_the_same_image() {
        // Zero blocks between data, a zero tail, pieces straddling blocks.
        let mut data = vec![7u8; 3 * 4096 + 100];
        data[4096..2 * 4096].fill(0);
        data[3 * 4096..].fill(0);
        data[5000] = 1;
        for inline_data in [false, true] {
            let image = |buf: bool| {
                let opts = WriterOptions {
                    inline_data,
                    ..Default::default()
                };
                let mut w = ImageWriter::new(io::Cursor::new(Vec::new()), opts).unwrap();
                let mut r = Pieces {
                    data: &data,
                    piece: 1500,
                };
                let size = data.len() as u64;
                let d = if buf {
                    w.add_file_data_buf(size, &mut r).unwrap()
                } else {
                    w.add_file_data(size, &mut r).unwrap()
                };
                // Short runs wait in the stage until flushed.
                w.flush_stage().unwrap();
                (d, w.out.into_inner())
            };
            assert_eq!(image(true), image(false));
        }
    }

    /// Files staged together, a run too long to stage between them, a
    /// stage that overflows, zero blocks left as holes, metadata staged
    /// after data: every file reads back as written.
    #[test]
    fn staged_writes_read_back() {
        let meta = Meta {
            perm: 0o755,
            ..Meta::default()
        };
        let mut tree = Tree::new(meta.clone(), meta.clone());
        let mut w =
            ImageWriter::new(io::Cursor::new(Vec::new()), WriterOptions::default()).unwrap();
        let mut sizes: Vec<usize> = vec![1, 4095, 4096, 4097, 3 * 4096 + 1];
        sizes.push(STAGE_RUN);
        sizes.push(STAGE_RUN - 1);
        sizes.extend(std::iter::repeat_n(3000, STAGE / 4096 + 10));
        sizes.push(2 * STAGE + 5);
        sizes.extend([10, 20]);
        let mut files = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let mut data: Vec<u8> = (0..size).map(|j| (i * 31 + j % 251) as u8 | 1).collect();
            // A hole in every file of more than two blocks.
            if size > 2 * 4096 {
                data[4096..2 * 4096].fill(0);
            }
            let d = w.add_file_data(size as u64, &mut &data[..]).unwrap();
            let name = format!("f{i}");
            tree.insert(&p(&name), Node::new(meta.clone(), Content::File(d)))
                .unwrap();
            files.push((name, data));
        }
        let (out, _) = w.finish(&tree).unwrap();
        let image = crate::reader::Image::new(out.into_inner()).unwrap();
        for (name, data) in files {
            let nid = image.lookup(name.as_bytes()).unwrap().unwrap();
            let inode = image.inode(nid).unwrap();
            assert_eq!(image.read_all(&inode, u64::MAX).unwrap(), data, "{name}");
        }
    }

    #[test]
    fn short_input_is_an_error() {
        for buf in [false, true] {
            let mut w =
                ImageWriter::new(io::Cursor::new(Vec::new()), WriterOptions::default()).unwrap();
            let err = if buf {
                w.add_file_data_buf(10, &mut &b"abc"[..]).unwrap_err()
            } else {
                w.add_file_data(10, &mut &b"abc"[..]).unwrap_err()
            };
            assert!(
                matches!(
                    err,
                    WriteError::ShortData {
                        expected: 10,
                        got: 3
                    }
                ),
                "buf={buf}"
            );
        }
    }

    #[test]
    fn xattr_region_sizes() {
        let mut x = BTreeMap::new();
        x.insert(b"user.a".to_vec(), b"1".to_vec());
        let enc = encode_xattrs(&x, true);
        // header 12 + "user.a"=1 (4+1+1 -> 8) + origin (4+14+0 -> 20)
        assert_eq!(enc.len(), 12 + 8 + 20);
        assert!(encode_xattrs(&BTreeMap::new(), false).is_empty());
    }
}
