//! Validation of untrusted EROFS images (section 17 of
//! `shared/docs/erofs-format.md`, uncompressed profile).
//!
//! [`Image`] already refuses whatever it cannot interpret (superblock,
//! per-inode structure, xattr regions, directory blocks); [`check`] walks
//! every inode reachable from the root through it and adds the rules that
//! need the whole image or that are policy: reserved bytes, link counts,
//! the directory graph, and overlaps between metadata and data. It stops at
//! the first violation, naming the NID, the byte offset and the rule.
//!
//! Work and memory are bounded by the image: the walk uses an explicit
//! stack with a depth limit, the number of inodes is capped (by default at
//! one per 32-byte slot of the image), and the optional data read skips
//! holes and shared extents and has a byte budget.

use std::collections::{BTreeMap, HashSet};

use crate::format::{
    COMPAT_ACCEPTED, COMPAT_SB_CHKSUM, DEVICE_SLOT_SIZE, FT_BLKDEV, FT_CHRDEV, FT_DIR, FT_FIFO,
    FT_REG_FILE, FT_SOCK, FT_SYMLINK, INCOMPAT_DEVICE_TABLE, INODE_SLOT, SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
};
use crate::reader::{
    DataExtent, ExtentTarget, Image, Inode, Layout, ReadAt, ReadError, location, show,
};
use crate::tree;

/// What [`check`] does beyond the structural rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// Treat link-count mismatches as errors (our own images) rather than
    /// warnings (images from elsewhere).
    pub strict_nlink: bool,
    /// Read every data extent once, proving that all of it is readable
    /// (attached devices included), not just inside the declared bounds.
    pub read_data: bool,
    /// Deepest directory nesting accepted; the root is depth 0.
    pub max_depth: u32,
    /// Most distinct inodes accepted; `None` means image size / 32, the
    /// most that can exist without overlapping records.
    pub max_inodes: Option<u64>,
    /// Byte budget for `read_data`; `None` means four times the primary
    /// and extra devices' declared sizes plus 64 MiB. Identical extents are
    /// read once, so only pathological partial sharing exhausts it.
    pub max_data_read: Option<u64>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            strict_nlink: true,
            read_data: false,
            max_depth: 4096,
            max_inodes: None,
            max_data_read: None,
        }
    }
}

/// What a successful check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Distinct inodes reachable from the root.
    pub inodes: u64,
    pub directories: u64,
    pub regular_files: u64,
    pub symlinks: u64,
    pub char_devices: u64,
    pub block_devices: u64,
    pub fifos: u64,
    pub sockets: u64,
    /// Directory entries naming an already-counted non-directory.
    pub extra_links: u64,
    /// Sum of regular-file sizes, hard links counted once.
    pub file_bytes: u64,
    /// Deepest directory reached; the root is depth 0.
    pub max_depth: u32,
    /// Bytes read by the `read_data` option.
    pub data_bytes_read: u64,
    /// Policy findings that do not fail the check (no superblock checksum,
    /// link-count mismatches without `strict_nlink`). At most
    /// [`MAX_WARNINGS`] are kept.
    pub warnings: Vec<String>,
}

/// Cap on [`Report::warnings`], so a hostile image cannot grow the report
/// without bound.
pub const MAX_WARNINGS: usize = 100;

/// Why an image failed the check.
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    /// The reader refused the structure (or could not read it).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A rule checked by the validator itself.
    #[error("{}: {rule}", location(.nid, .offset))]
    Violation {
        nid: Option<u64>,
        offset: u64,
        rule: String,
    },
}

fn violation(nid: Option<u64>, offset: u64, rule: impl Into<String>) -> FsckError {
    FsckError::Violation {
        nid,
        offset,
        rule: rule.into(),
    }
}

/// Check `image` against every rule of section 17 that applies to
/// uncompressed images; see the module documentation.
pub fn check<R: ReadAt>(image: &Image<R>, opts: &CheckOptions) -> Result<Report, FsckError> {
    let mut checker = Checker {
        image,
        opts,
        report: Report::default(),
        nodes: BTreeMap::new(),
        regions: Vec::new(),
        chunked: Vec::new(),
        shared_seen: HashSet::new(),
    };
    checker.superblock()?;
    checker.walk()?;
    checker.link_counts()?;
    checker.overlaps()?;
    if opts.read_data {
        checker.read_all_data()?;
    }
    Ok(checker.report)
}

/// A reachable inode, as far as the graph rules need it.
struct Node {
    file_type: u8,
    nlink: u32,
    /// Directory entries naming it (`.` and `..` excluded).
    refs: u64,
    /// Byte offset of the record, for messages.
    offset: u64,
}

/// Who owns a byte range of the primary device.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Superblock,
    DeviceTable,
    Inode(u64),
    SharedXattr(u32),
    Data(u64),
}

impl Owner {
    fn nid(self) -> Option<u64> {
        match self {
            Owner::Inode(nid) | Owner::Data(nid) => Some(nid),
            _ => None,
        }
    }

    fn describe(self) -> String {
        match self {
            Owner::Superblock => "the boot area and superblock".into(),
            Owner::DeviceTable => "the device table".into(),
            Owner::Inode(nid) => format!("the inode record of nid {nid}"),
            Owner::SharedXattr(id) => format!("shared xattr id {id}"),
            Owner::Data(nid) => format!("the data blocks of nid {nid}"),
        }
    }
}

/// A byte range `[start, end)` of the primary device.
#[derive(Debug, Clone, Copy)]
struct Region {
    start: u64,
    end: u64,
    owner: Owner,
}

struct Checker<'a, R: ReadAt> {
    image: &'a Image<R>,
    opts: &'a CheckOptions,
    report: Report,
    /// Every reachable inode by NID; ordered so that later passes report
    /// the same violation on every run.
    nodes: BTreeMap<u64, Node>,
    /// Metadata and flat data, which must be pairwise disjoint.
    regions: Vec<Region>,
    /// Chunk-based inodes, whose extents are checked against `regions`
    /// once it is complete.
    chunked: Vec<u64>,
    shared_seen: HashSet<u32>,
}

impl<R: ReadAt> Checker<'_, R> {
    fn warn(&mut self, message: String) {
        if self.report.warnings.len() < MAX_WARNINGS {
            self.report.warnings.push(message);
        }
    }

    /// Superblock and device-table policy (section 17, "Superblock"); the
    /// reader has checked magic, block size, checksum, incompat bits,
    /// compression fields, the declared size and the table's bounds.
    fn superblock(&mut self) -> Result<(), FsckError> {
        let image = self.image;
        let sb = image.superblock();
        let v = |field: u64, rule: String| violation(None, SUPERBLOCK_OFFSET + field, rule);
        let unknown = sb.feature_compat & !COMPAT_ACCEPTED;
        if unknown != 0 {
            return Err(v(
                0x08,
                format!(
                    "feature_compat bits {unknown:#x} are not accepted by policy (accepted: \
                     {COMPAT_ACCEPTED:#x})"
                ),
            ));
        }
        if sb.feature_compat & COMPAT_SB_CHKSUM == 0 {
            self.warn("superblock has no checksum (SB_CHKSUM not set)".into());
        }
        if sb.reserved_nonzero {
            return Err(v(
                0x69,
                "reserved superblock bytes 0x69..0x80 are not zero".into(),
            ));
        }
        if sb.packed_nid != 0 {
            return Err(v(
                0x60,
                format!(
                    "packed_nid is {}; packed inodes are not supported",
                    sb.packed_nid
                ),
            ));
        }
        if sb.xattr_filter_reserved != 0 {
            return Err(v(0x68, "xattr_filter_reserved is not 0".into()));
        }
        if sb.xattr_prefix_count != 0 {
            return Err(v(
                0x5b,
                format!(
                    "xattr_prefix_count is {} but long xattr prefixes are not supported",
                    sb.xattr_prefix_count
                ),
            ));
        }
        let blocks = u64::from(sb.blocks);
        if u64::from(sb.meta_blkaddr) >= blocks {
            return Err(v(
                0x28,
                format!(
                    "meta_blkaddr {} is outside the primary device ({blocks} blocks)",
                    sb.meta_blkaddr
                ),
            ));
        }
        if u64::from(sb.xattr_blkaddr) >= blocks {
            return Err(v(
                0x2c,
                format!(
                    "xattr_blkaddr {} is outside the primary device ({blocks} blocks)",
                    sb.xattr_blkaddr
                ),
            ));
        }
        if sb.feature_incompat & INCOMPAT_DEVICE_TABLE == 0
            && (sb.extra_devices != 0 || sb.devt_slotoff != 0)
        {
            return Err(v(
                0x56,
                format!(
                    "extra_devices {} / devt_slotoff {} set without DEVICE_TABLE",
                    sb.extra_devices, sb.devt_slotoff
                ),
            ));
        }

        let bits = sb.blkszbits;
        let table = u64::from(sb.devt_slotoff) * DEVICE_SLOT_SIZE as u64;
        let mut ranges = Vec::new();
        for (k, slot) in image.devices().iter().enumerate() {
            let slot_offset = table + (k * DEVICE_SLOT_SIZE) as u64;
            let id = k + 1;
            if slot.blocks == 0 {
                return Err(violation(
                    None,
                    slot_offset + 64,
                    format!("device slot {id} declares 0 blocks"),
                ));
            }
            if slot.uniaddr != 0 {
                let start = u64::from(slot.uniaddr);
                if start < blocks {
                    return Err(violation(
                        None,
                        slot_offset + 68,
                        format!(
                            "device {id} unified address {start} overlaps the primary device \
                             ({blocks} blocks)"
                        ),
                    ));
                }
                ranges.push((start, start + u64::from(slot.blocks), id, slot_offset));
            }
        }
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            if let [(_, prev_end, prev_id, _), (start, _, id, offset)] = pair
                && start < prev_end
            {
                return Err(violation(
                    None,
                    offset + 68,
                    format!("device {id} unified address range overlaps device {prev_id}"),
                ));
            }
        }

        // The image is exactly the primary device, or (flattened) the
        // primary followed by every extra device at its unified address.
        let len_blocks = image.image_len() >> bits;
        let flat_end = ranges.iter().map(|r| r.1).max();
        let flat = !image.devices().is_empty()
            && ranges.len() == image.devices().len()
            && flat_end.is_some_and(|end| len_blocks >= end);
        if len_blocks != blocks && !flat {
            return Err(v(
                0x24,
                format!(
                    "blocks {blocks} does not match the image length {} ({len_blocks} blocks)",
                    image.image_len()
                ),
            ));
        }

        self.regions.push(Region {
            start: 0,
            end: SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE as u64,
            owner: Owner::Superblock,
        });
        if !image.devices().is_empty() {
            self.regions.push(Region {
                start: table,
                end: table + (image.devices().len() * DEVICE_SLOT_SIZE) as u64,
                owner: Owner::DeviceTable,
            });
        }
        Ok(())
    }

    /// Walk the directory tree from the root with an explicit stack,
    /// checking every inode once and every directory entry.
    fn walk(&mut self) -> Result<(), FsckError> {
        let image = self.image;
        let root_nid = image.root_nid();
        let root = image.inode(root_nid)?;
        if !root.is_dir() {
            return Err(violation(
                Some(root_nid),
                root.offset(),
                format!("root inode has mode {:#o}, not a directory", root.mode()),
            ));
        }
        self.visit(&root, 0)?;
        let mut dirs_seen = HashSet::from([root_nid]);
        let mut stack = vec![(root_nid, root_nid, 0u32)];
        while let Some((nid, parent, depth)) = stack.pop() {
            self.report.max_depth = self.report.max_depth.max(depth);
            let dir = image.inode(nid)?;
            let mut subdirs = 0u64;
            for entry in image.dir_entries(&dir)? {
                let entry = entry?;
                if entry.name == b"." {
                    // The reader checked that it points to the directory.
                    continue;
                }
                if entry.name == b".." {
                    if entry.nid != parent {
                        return Err(violation(
                            Some(nid),
                            entry.offset,
                            format!(
                                "'..' points to nid {} but the parent directory is nid {parent}",
                                entry.nid
                            ),
                        ));
                    }
                    continue;
                }
                let (file_type, seen_before) = match self.nodes.get_mut(&entry.nid) {
                    Some(node) => {
                        node.refs += 1;
                        (node.file_type, true)
                    }
                    None => {
                        let child = image.inode(entry.nid)?;
                        self.visit(&child, 1)?;
                        (child.file_type(), false)
                    }
                };
                if entry.file_type != file_type {
                    return Err(violation(
                        Some(nid),
                        entry.offset,
                        format!(
                            "dirent {:?} has file_type {} but its target nid {} has file type {}",
                            show(&entry.name),
                            entry.file_type,
                            entry.nid,
                            file_type
                        ),
                    ));
                }
                if file_type == FT_DIR {
                    if !dirs_seen.insert(entry.nid) {
                        return Err(violation(
                            Some(nid),
                            entry.offset,
                            format!(
                                "directory nid {} reached a second time through {:?} (a \
                                 directory loop or a hard-linked directory)",
                                entry.nid,
                                show(&entry.name)
                            ),
                        ));
                    }
                    if depth >= self.opts.max_depth {
                        return Err(violation(
                            Some(entry.nid),
                            entry.offset,
                            format!(
                                "directory nesting deeper than the limit of {}",
                                self.opts.max_depth
                            ),
                        ));
                    }
                    subdirs += 1;
                    stack.push((entry.nid, nid, depth + 1));
                } else if seen_before {
                    self.report.extra_links += 1;
                }
            }
            let expected = subdirs + 2;
            let nlink = u64::from(dir.nlink());
            if nlink != expected && nlink != 1 {
                self.nlink_mismatch(
                    nid,
                    dir.offset(),
                    format!(
                        "directory has i_nlink {nlink} but 2 + {subdirs} subdirectories = \
                         {expected} (or 1)"
                    ),
                )?;
            }
        }
        Ok(())
    }

    /// First sight of an inode: apply the per-inode rules and record its
    /// metadata and data ranges.
    fn visit(&mut self, inode: &Inode, refs: u64) -> Result<(), FsckError> {
        let nid = inode.nid();
        let offset = inode.offset();
        let limit = self
            .opts
            .max_inodes
            .unwrap_or(self.image.image_len() / INODE_SLOT);
        if self.nodes.len() as u64 >= limit {
            return Err(violation(
                Some(nid),
                offset,
                format!("more than {limit} inodes are reachable"),
            ));
        }
        self.check_inode(inode)?;
        let file_type = inode.file_type();
        match file_type {
            FT_DIR => self.report.directories += 1,
            FT_REG_FILE => {
                self.report.regular_files += 1;
                self.report.file_bytes = self.report.file_bytes.saturating_add(inode.size());
            }
            FT_SYMLINK => self.report.symlinks += 1,
            FT_CHRDEV => self.report.char_devices += 1,
            FT_BLKDEV => self.report.block_devices += 1,
            FT_FIFO => self.report.fifos += 1,
            FT_SOCK => self.report.sockets += 1,
            _ => {}
        }
        self.report.inodes += 1;
        self.nodes.insert(
            nid,
            Node {
                file_type,
                nlink: inode.nlink(),
                refs,
                offset,
            },
        );
        Ok(())
    }

    /// Per-inode rules beyond what the reader enforces.
    fn check_inode(&mut self, inode: &Inode) -> Result<(), FsckError> {
        let nid = inode.nid();
        let offset = inode.offset();
        let record = inode.record();
        let v = |at: u64, rule: String| violation(Some(nid), at, rule);
        if record.reserved_nonzero {
            return Err(v(
                offset,
                if record.extended {
                    "extended inode reserved bytes (offset 6 or 48..64) are not zero".into()
                } else {
                    "compact inode i_mtime or reserved bytes (offset 12..16 or 28..32) are not \
                     zero"
                        .into()
                },
            ));
        }
        if record.extended {
            if record.size >> 63 != 0 {
                return Err(v(
                    offset + 8,
                    format!("i_size {} is not below 2^63", record.size),
                ));
            }
            if record.mtime_nsec >= 1_000_000_000 {
                return Err(v(
                    offset + 40,
                    format!("i_mtime_nsec {} is not below 10^9", record.mtime_nsec),
                ));
            }
        }
        let file_type = inode.file_type();
        if matches!(file_type, FT_DIR | FT_SYMLINK)
            && matches!(inode.layout(), Layout::ChunkBased { .. })
        {
            return Err(v(
                offset,
                "directories and symlinks must be FLAT_PLAIN or FLAT_INLINE, not chunk-based"
                    .into(),
            ));
        }
        if file_type == FT_SYMLINK && self.image.symlink_target(inode)?.contains(&0) {
            return Err(v(offset, "symlink target contains a NUL byte".into()));
        }

        let xattr_offset = offset + record.record_size() as u64;
        let mut names: Vec<&[u8]> = Vec::with_capacity(inode.xattrs().len());
        for x in inode.xattrs() {
            if let Err(e) = tree::validate_xattr(&x.name, &x.value) {
                return Err(v(xattr_offset, format!("invalid {e}")));
            }
            names.push(&x.name);
            if let Some(shared) = x.shared
                && self.shared_seen.insert(shared.id)
            {
                self.regions.push(Region {
                    start: shared.offset,
                    end: shared.offset + shared.len,
                    owner: Owner::SharedXattr(shared.id),
                });
            }
        }
        names.sort_unstable();
        if let Some(dup) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(v(
                xattr_offset,
                format!("xattr {:?} appears twice", show(dup[0])),
            ));
        }

        self.regions.push(Region {
            start: offset,
            end: inode.meta_end(),
            owner: Owner::Inode(nid),
        });
        match inode.layout() {
            Layout::None => {}
            Layout::FlatPlain { .. } | Layout::FlatInline { .. } => {
                for ext in self.image.extents(inode) {
                    if let ExtentTarget::Blocks { offset, len, .. } = ext?.target {
                        self.regions.push(Region {
                            start: offset,
                            end: offset + len,
                            owner: Owner::Data(nid),
                        });
                    }
                }
            }
            Layout::ChunkBased { .. } => {
                // Resolving every chunk applies the device-id and bounds
                // rules now; overlaps are checked once all metadata is
                // known.
                for ext in self.image.extents(inode) {
                    ext?;
                }
                self.chunked.push(nid);
            }
        }
        Ok(())
    }

    fn nlink_mismatch(&mut self, nid: u64, offset: u64, rule: String) -> Result<(), FsckError> {
        if self.opts.strict_nlink {
            return Err(violation(Some(nid), offset, rule));
        }
        self.warn(format!("{}: {rule}", location(&Some(nid), &offset)));
        Ok(())
    }

    /// Non-directories: `i_nlink` must equal the number of entries naming
    /// them (directories were checked during the walk).
    fn link_counts(&mut self) -> Result<(), FsckError> {
        let mismatches: Vec<_> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.file_type != FT_DIR && u64::from(n.nlink) != n.refs)
            .map(|(&nid, n)| (nid, n.offset, n.nlink, n.refs))
            .collect();
        for (nid, offset, nlink, refs) in mismatches {
            self.nlink_mismatch(
                nid,
                offset,
                format!("i_nlink is {nlink} but {refs} directory entries name the inode"),
            )?;
        }
        Ok(())
    }

    /// Metadata records and flat data must be pairwise disjoint; chunk
    /// extents on the primary may overlap each other (deduplication) but
    /// nothing else.
    fn overlaps(&mut self) -> Result<(), FsckError> {
        self.regions.retain(|r| r.end > r.start);
        self.regions.sort_unstable_by_key(|r| (r.start, r.end));
        let mut furthest: Option<Region> = None;
        for &r in &self.regions {
            if let Some(prev) = furthest
                && r.start < prev.end
            {
                return Err(violation(
                    r.owner.nid().or(prev.owner.nid()),
                    r.start,
                    format!(
                        "{} [{:#x}, {:#x}) overlaps {} [{:#x}, {:#x})",
                        r.owner.describe(),
                        r.start,
                        r.end,
                        prev.owner.describe(),
                        prev.start,
                        prev.end
                    ),
                ));
            }
            if furthest.is_none_or(|p| r.end > p.end) {
                furthest = Some(r);
            }
        }
        // Disjoint and sorted by start, so also sorted by end.
        for &nid in &self.chunked {
            let inode = self.image.inode(nid)?;
            for ext in self.image.extents(&inode) {
                let DataExtent {
                    logical, target, ..
                } = ext?;
                let ExtentTarget::Blocks {
                    device: 0,
                    offset,
                    len,
                } = target
                else {
                    continue;
                };
                let i = self.regions.partition_point(|r| r.end <= offset);
                if let Some(r) = self.regions.get(i).filter(|r| r.start < offset + len) {
                    return Err(violation(
                        Some(nid),
                        offset,
                        format!(
                            "chunk at file offset {logical} [{offset:#x}, {:#x}) overlaps {} \
                             [{:#x}, {:#x})",
                            offset + len,
                            r.owner.describe(),
                            r.start,
                            r.end
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Read every distinct data extent of every reachable inode once.
    fn read_all_data(&mut self) -> Result<(), FsckError> {
        const PIECE: u64 = 1 << 20;
        let image = self.image;
        let budget = self.opts.max_data_read.unwrap_or_else(|| {
            let bits = image.superblock().blkszbits;
            let devices: u64 = image
                .devices()
                .iter()
                .map(|d| u64::from(d.blocks) << bits)
                .sum();
            image
                .primary_len()
                .saturating_add(devices)
                .saturating_mul(4)
                .saturating_add(64 << 20)
        });
        let mut done: HashSet<(u16, u64, u64)> = HashSet::new();
        // Page-aligned: the kernel copies the image into it (see
        // `crate::pagebuf`).
        let mut buf = crate::pagebuf::PageBuf::new(PIECE as usize);
        let nids: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| matches!(n.file_type, FT_REG_FILE | FT_DIR | FT_SYMLINK))
            .map(|(&nid, _)| nid)
            .collect();
        for nid in nids {
            let inode = image.inode(nid)?;
            for ext in image.extents(&inode) {
                let (device, offset, len) = match ext?.target {
                    ExtentTarget::Hole => continue,
                    ExtentTarget::Inline { offset, len } => (0, offset, len),
                    ExtentTarget::Blocks {
                        device,
                        offset,
                        len,
                    } => (device, offset, len),
                };
                if !done.insert((device, offset, len)) {
                    continue;
                }
                let total = self.report.data_bytes_read.saturating_add(len);
                if total > budget {
                    return Err(violation(
                        Some(nid),
                        offset,
                        format!(
                            "reading the data would exceed the budget of {budget} bytes \
                             (pathologically shared extents?)"
                        ),
                    ));
                }
                self.report.data_bytes_read = total;
                let mut pos = 0;
                while pos < len {
                    let n = (len - pos).min(PIECE);
                    image.read_device(nid, device, offset + pos, &mut buf[..n as usize])?;
                    pos += n;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::format::{FT_DIR, FT_REG_FILE, InodeRecord};
    use crate::reader::testimg::*;

    fn run(img: Vec<u8>, opts: &CheckOptions) -> Result<Report, FsckError> {
        let image = Image::new(img)?;
        check(&image, opts)
    }

    fn full() -> CheckOptions {
        CheckOptions {
            read_data: true,
            ..CheckOptions::default()
        }
    }

    /// Apply `poke` to `img`, fix the checksum, and return the error text.
    fn failure(mut img: Vec<u8>, poke: impl FnOnce(&mut Vec<u8>)) -> String {
        poke(&mut img);
        fix_checksum(&mut img);
        run(img, &full()).unwrap_err().to_string()
    }

    fn assert_fails(err: &str, expected: &str) {
        assert!(
            err.contains(expected),
            "expected {expected:?} in the error, got {err:?}"
        );
    }

    fn put_u64(img: &mut [u8], offset: u64, v: u64) {
        let o = offset as usize;
        img[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn appendix_a_passes() {
        let report = run(appendix_a_fixture(), &full()).unwrap();
        assert_eq!(report.inodes, 2);
        assert_eq!(report.directories, 1);
        assert_eq!(report.regular_files, 1);
        assert_eq!(report.file_bytes, 3);
        assert_eq!(report.data_bytes_read, 3 + 40);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    }

    #[test]
    fn rich_image_passes() {
        let report = run(rich(), &full()).unwrap();
        assert_eq!(
            report,
            Report {
                inodes: 8,
                directories: 2,
                regular_files: 3,
                symlinks: 1,
                char_devices: 1,
                block_devices: 0,
                fifos: 1,
                sockets: 0,
                extra_links: 1,
                file_bytes: 5 + 10000 + 5000,
                max_depth: 1,
                // root 95 + a 5 + c one shared block + d 68 + big 2 blocks + l 6
                data_bytes_read: 95 + 5 + 4096 + 68 + 8192 + 6,
                warnings: vec![],
            }
        );
    }

    #[test]
    fn multi_device_images_pass() {
        let (primary, device) = multi_device();
        let image = Image::new(primary.clone())
            .unwrap()
            .with_devices(vec![Box::new(device.clone())])
            .unwrap();
        let report = check(&image, &full()).unwrap();
        assert_eq!(report.data_bytes_read, 53 + 8192 + 4096);
        run([primary.clone(), device].concat(), &full()).unwrap();
        // Without the device, metadata still checks; reading data cannot.
        run(primary.clone(), &CheckOptions::default()).unwrap();
        let err = run(primary, &full()).unwrap_err();
        assert!(
            matches!(err, FsckError::Read(ReadError::DeviceNotAttached { .. })),
            "{err}"
        );
    }

    #[test]
    fn superblock_corruptions() {
        let mut img = appendix_a();
        img[0x400] ^= 0xff;
        assert_fails(&run(img, &full()).unwrap_err().to_string(), "bad magic");

        let mut img = appendix_a();
        img[0x4f4] ^= 1;
        assert_fails(
            &run(img, &full()).unwrap_err().to_string(),
            "superblock checksum",
        );

        let err = failure(appendix_a(), |img| img[0x451] = 0x01);
        assert_fails(&err, "unsupported feature_incompat bits 0x100");
        let err = failure(appendix_a(), |img| img[0x408] = 0x23);
        assert_fails(&err, "feature_compat bits 0x20 are not accepted");
        let err = failure(appendix_a(), |img| img[0x470] = 1);
        assert_fails(&err, "reserved superblock bytes");
        let err = failure(appendix_a(), |img| img[0x40c] = 13);
        assert_fails(&err, "blkszbits 13 is outside 9..=12");
        let err = failure(appendix_a(), |img| img[0x424] = 2);
        assert_fails(&err, "superblock declares 2 blocks");
        let err = failure([appendix_a(), vec![0; 4096]].concat(), |_| {});
        assert_fails(&err, "blocks 1 does not match the image length 8192");
        let err = failure(appendix_a(), |img| img[0x40e] = 38);
        assert_fails(&err, "nid 38");
    }

    #[test]
    fn missing_checksum_is_a_warning() {
        let mut img = appendix_a();
        img[0x408] = 0x02;
        let report = run(img, &full()).unwrap();
        assert_eq!(report.warnings.len(), 1);
        assert_fails(&report.warnings[0], "no checksum");
    }

    #[test]
    fn inode_corruptions() {
        let err = failure(appendix_a(), |img| img[0x4e0] |= 0x10);
        assert_fails(
            &err,
            "nid 39 at offset 0x4e0: i_format 0x0014 has reserved bits 4..15 set",
        );
        let err = failure(appendix_a(), |img| img[0x4e0] = 0x02);
        assert_fails(&err, "data layout 1 is compressed");
        let err = failure(appendix_a(), |img| img[0x4e0] = 0x0c);
        assert_fails(&err, "data layout 6 is invalid");
        let err = failure(appendix_a(), |img| img[0x4e5] = 0xf1);
        assert_fails(&err, "invalid file type");
        let err = failure(appendix_a(), |img| img[0x4e2] = 1);
        assert_fails(&err, "i_xattr_icount 1");
        let err = failure(appendix_a(), |img| img[0x4ec] = 1);
        assert_fails(&err, "compact inode i_mtime or reserved bytes");
        let err = failure(appendix_a(), |img| img[0x4e8] = 0);
        assert_fails(&err, "FLAT_INLINE with i_size 0");
        let err = failure(appendix_a(), |img| {
            img[0x4e2] = 3;
            img[0x50e] = 0x40;
        });
        assert_fails(
            &err,
            "nid 39 at offset 0x50c: xattr entry at region offset 12 runs past the end of the \
             20-byte xattr region",
        );
        let err = failure(appendix_a(), |img| img[0x4e2] = 3);
        assert_fails(&err, "e_name_index 0 is not a valid xattr namespace");
        let err = failure(rich(), |img| img[RICH_BIG as usize + 16] = 100);
        assert_fails(
            &err,
            "nid 54 at offset 0x6d0: FLAT_PLAIN data blocks [100, 102) lie outside the primary device (4 blocks)",
        );
        let err = failure(rich(), |img| img[RICH_L_TAIL as usize + 3] = 0);
        assert_fails(
            &err,
            "nid 55 at offset 0x6e0: symlink target contains a NUL byte",
        );
        // A special file with a size.
        let err = failure(rich(), |img| img[1664 + 8] = 1);
        assert_fails(&err, "must have layout 0 and i_size 0");
        // Unknown xattr namespace.
        let err = failure(rich(), |img| img[1408 + 32 + 16 + 1] = 5);
        assert_fails(&err, "e_name_index 5 is not a valid xattr namespace");
        let err = failure(rich(), |img| img[1408 + 32 + 16 + 1] = 0x81);
        assert_fails(&err, "long xattr prefix");
        // Shared xattr id outside the device.
        let err = failure(rich(), |img| img[1408 + 32 + 12 + 3] = 0x10);
        assert_fails(&err, "lies outside the primary device");
    }

    #[test]
    fn inline_tail_crossing_a_block() {
        let entries: &[(&[u8], u64, u8)] = &[
            (b".", 36, FT_DIR),
            (b"..", 36, FT_DIR),
            (b"a", 126, FT_REG_FILE),
        ];
        let err = run(small(entries, 126, &[b'x'; 40]), &full())
            .unwrap_err()
            .to_string();
        assert_fails(
            &err,
            "nid 126 at offset 0xfe0: inline tail of 40 bytes at 0xfe0 crosses a block boundary",
        );
        // The same file one slot earlier fits.
        let entries: &[(&[u8], u64, u8)] = &[
            (b".", 36, FT_DIR),
            (b"..", 36, FT_DIR),
            (b"a", 125, FT_REG_FILE),
        ];
        run(small(entries, 125, &[b'x'; 40]), &full()).unwrap();
    }

    #[test]
    fn chunk_corruptions() {
        let entry1 = RICH_C_TABLE as usize + 8;
        let err = failure(rich(), |img| img[entry1 + 2] = 1);
        assert_fails(
            &err,
            "nid 46 at offset 0x5e8: chunk 1 device id 1 exceeds extra_devices 0",
        );
        let err = failure(rich(), |img| img[entry1 + 4] = 4);
        assert_fails(
            &err,
            "chunk 1 blocks [4, 5) lie outside the primary device (4 blocks)",
        );
        let err = failure(rich(), |img| img[entry1] = 1);
        assert_fails(&err, "startblk_hi");
        let err = failure(rich(), |img| img[1472 + 16] = 0x60);
        assert_fails(&err, "chunk format 0x60 has reserved bits 6..15 set");
        let err = failure(rich(), |img| img[1472 + 11] = 0x10);
        assert_fails(&err, "chunk entry array");
        // A chunk over the metadata block, and one over another file's
        // FLAT_PLAIN data.
        let err = failure(rich(), |img| img[entry1 + 4] = 0);
        assert_fails(
            &err,
            "chunk at file offset 4096 [0x0, 0x1000) overlaps the boot area",
        );
        let err = failure(rich(), |img| img[entry1 + 4] = 2);
        assert_fails(&err, "overlaps the data blocks of nid 54");
    }

    #[test]
    fn directory_corruptions() {
        let err = failure(appendix_a(), |img| img[0x4a8] = 37);
        assert_fails(
            &err,
            "nid 36 at offset 0x4a8: directory block 0 nameoff[0]=37 is not a multiple of 12",
        );
        let err = failure(appendix_a(), |img| img[0x4a8] = 48);
        assert_fails(&err, "nameoff[0]=48 is outside 12..40");
        let err = failure(appendix_a(), |img| img[0x4b4] = 0x24);
        assert_fails(&err, "nameoff[1]=36 is not greater than nameoff[0]=36");
        let err = failure(appendix_a(), |img| img[0x4c0] = 0x30);
        assert_fails(&err, "nameoff[2] is past the end of the 40-byte block");
        let err = failure(appendix_a(), |img| img[0x4c7] = b'-');
        assert_fails(&err, "names must be strictly increasing");
        let err = failure(appendix_a(), |img| img[0x4c7] = b'/');
        assert_fails(&err, "contains '/'");
        let err = failure(appendix_a(), |img| img[0x4c2] = 2);
        assert_fails(
            &err,
            "dirent \"a\" has file_type 2 but its target nid 39 has file type 1",
        );
        let err = failure(appendix_a(), |img| img[0x4c2] = 9);
        assert_fails(&err, "file_type 9 is outside 1..=7");
        let err = failure(appendix_a(), |img| img[0x4c3] = 1);
        assert_fails(&err, "reserved byte");
        let err = failure(appendix_a(), |img| img[0x4a0] = 39);
        assert_fails(&err, "'.' points to nid 39");
        let err = failure(appendix_a(), |img| img[0x4ac + 10] = 1);
        assert_fails(&err, "\"..\" has file_type 1");
        // Bytes after the last name (the root's size covers them).
        let err = failure(appendix_a(), |img| {
            img[0x488] = 42;
            img[0x4c9] = b'x';
        });
        assert_fails(&err, "non-zero bytes after the last name");

        let dup: &[(&[u8], u64, u8)] = &[
            (b".", 36, FT_DIR),
            (b"..", 36, FT_DIR),
            (b"a", 60, FT_REG_FILE),
            (b"a", 60, FT_REG_FILE),
        ];
        assert_fails(
            &run(small(dup, 60, b"x"), &full()).unwrap_err().to_string(),
            "duplicate name \"a\"",
        );
        let no_dot: &[(&[u8], u64, u8)] = &[(b"..", 36, FT_DIR), (b"a", 60, FT_REG_FILE)];
        assert_fails(
            &run(small(no_dot, 60, b"x"), &full())
                .unwrap_err()
                .to_string(),
            "nid 36 at offset 0x480: directory has no '.' entry",
        );
        let no_dotdot: &[(&[u8], u64, u8)] = &[(b".", 36, FT_DIR), (b"a", 60, FT_REG_FILE)];
        assert_fails(
            &run(small(no_dotdot, 60, b"x"), &full())
                .unwrap_err()
                .to_string(),
            "directory has no '..' entry",
        );
    }

    #[test]
    fn graph_corruptions() {
        let dotdot = RICH_D_DIRENTS + 12;
        let err = failure(rich(), |img| put_u64(img, dotdot, 44));
        assert_fails(
            &err,
            "nid 48 at offset 0x62c: '..' points to nid 44 but the parent directory is nid 40",
        );
        let h = RICH_D_DIRENTS + 36;
        let err = failure(rich(), |img| {
            put_u64(img, h, 40);
            img[h as usize + 10] = FT_DIR;
        });
        assert_fails(&err, "directory nid 40 reached a second time through \"h\"");
        // A subdirectory naming its parent's other subdirectory... here
        // the root itself under another name.
        let err = failure(rich(), |img| {
            put_u64(img, h, 48);
            img[h as usize + 10] = FT_DIR;
        });
        assert_fails(&err, "directory nid 48 reached a second time");
        let err = run(
            rich(),
            &CheckOptions {
                max_depth: 0,
                ..full()
            },
        )
        .unwrap_err()
        .to_string();
        assert_fails(&err, "deeper than the limit of 0");
        let err = run(
            rich(),
            &CheckOptions {
                max_inodes: Some(5),
                ..full()
            },
        )
        .unwrap_err()
        .to_string();
        assert_fails(&err, "more than 5 inodes");
        // The root must be a directory.
        let err = failure(appendix_a(), |img| img[0x40e] = 39);
        assert_fails(&err, "root inode has mode 0o100644, not a directory");
    }

    #[test]
    fn link_counts() {
        // /a has two names but claims one.
        let mut img = rich();
        img[1408 + 6] = 1;
        fix_checksum(&mut img);
        let err = run(img.clone(), &full()).unwrap_err().to_string();
        assert_fails(
            &err,
            "nid 44 at offset 0x580: i_nlink is 1 but 2 directory entries name the inode",
        );
        let lenient = CheckOptions {
            strict_nlink: false,
            ..full()
        };
        let report = run(img, &lenient).unwrap();
        assert_eq!(report.warnings.len(), 1);
        assert_fails(&report.warnings[0], "i_nlink is 1 but 2");
        // Directory: 2 + subdirectories, or 1.
        let err = failure(rich(), |img| img[1280 + 6] = 2);
        assert_fails(
            &err,
            "directory has i_nlink 2 but 2 + 1 subdirectories = 3 (or 1)",
        );
        let report = run(
            {
                let mut img = rich();
                img[1280 + 6] = 1;
                fix_checksum(&mut img);
                img
            },
            &full(),
        )
        .unwrap();
        assert!(report.warnings.is_empty());
    }

    /// A root holding `a` (nid 60) and `b` (nid 61), both regular files
    /// written in that order, so `b`'s record may land on `a`'s.
    fn two_files(a: &InodeRecord, a_tail: &[u8], b_nid: u64, b: &InodeRecord) -> Vec<u8> {
        let mut builder = Builder::new(12);
        builder.sb.root_nid = 36;
        let d = dir(&[
            (b".", 36, FT_DIR),
            (b"..", 36, FT_DIR),
            (b"a", 60, FT_REG_FILE),
            (b"b", b_nid, FT_REG_FILE),
        ]);
        builder.inode(
            36,
            &rec(0o40755, 2, d.len() as u64, u32::MAX, 2, 1),
            &[],
            &d,
        );
        builder.inode(60, a, &[], a_tail);
        builder.inode(b_nid, b, &[], &[]);
        builder.block(1, &[1; 8192]);
        builder.finish()
    }

    #[test]
    fn overlaps() {
        let a = rec(0o100644, 2, 40, u32::MAX, 1, 2);
        let b = rec(0o100644, 0, 0, 0, 1, 3);
        run(two_files(&a, &[b'x'; 40], 63, &b), &full()).unwrap();
        let err = run(two_files(&a, &[b'x'; 40], 61, &b), &full())
            .unwrap_err()
            .to_string();
        assert_fails(
            &err,
            "nid 61 at offset 0x7a0: the inode record of nid 61 [0x7a0, 0x7c0) overlaps the inode \
             record of nid 60 [0x780, 0x7c8)",
        );
        // Two FLAT_PLAIN files sharing a block.
        let a = rec(0o100644, 0, 8192, 1, 1, 2);
        let b = rec(0o100644, 0, 10, 2, 1, 3);
        let err = run(two_files(&a, &[], 61, &b), &full())
            .unwrap_err()
            .to_string();
        assert_fails(
            &err,
            "the data blocks of nid 61 [0x2000, 0x3000) overlaps the data blocks of nid 60 \
             [0x1000, 0x3000)",
        );
        // FLAT_PLAIN data over the metadata block.
        let err = failure(rich(), |img| img[RICH_BIG as usize + 16] = 0);
        assert_fails(
            &err,
            "the data blocks of nid 54 [0x0, 0x2000) overlaps the boot area",
        );
    }

    /// Flip random bytes of valid images with a fixed seed: the reader
    /// and fsck may accept or refuse, but must neither panic nor hang.
    #[test]
    fn random_corruption_never_panics() {
        let (primary, device) = multi_device();
        let images = [appendix_a(), rich(), [primary, device].concat()];
        let mut state = 0x5eed_1234_abcd_ef01u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..2000 {
            let mut img = images[(next() % 3) as usize].clone();
            for _ in 0..1 + next() % 4 {
                let len = img.len() as u64;
                let pos = if next() % 4 == 0 {
                    next() % len
                } else {
                    1024 + next() % 1024.min(len - 1024)
                };
                img[pos as usize] ^= (next() % 255 + 1) as u8;
            }
            if next() % 4 != 0 {
                fix_checksum(&mut img);
            }
            let Ok(image) = Image::new(img) else {
                refused += 1;
                continue;
            };
            match check(&image, &full()) {
                Ok(_) => ok += 1,
                Err(_) => refused += 1,
            }
            // Exercise the public API on whatever passed the superblock.
            for path in [&b"a"[..], b"d/l", b"d/big", b"c", b"f"] {
                if let Ok(Some(nid)) = image.lookup(path)
                    && let Ok(inode) = image.inode(nid)
                {
                    let _ = image.read_all(&inode, 1 << 20);
                    let _ = image.symlink_target(&inode);
                    let _ = image.read_dir(&inode);
                }
            }
        }
        assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    }
}
