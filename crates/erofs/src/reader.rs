//! A bounded reader for EROFS images (sections 2–9 of
//! `shared/docs/erofs-format.md`).
//!
//! The images read here come from registries, so every one of them is
//! treated as hostile: each offset is computed with checked arithmetic and
//! compared with the device it addresses before anything is read, every
//! allocation sized from on-disk values is bounded first (by the image size
//! or by an explicit limit), and no loop runs longer than the structure it
//! walks. A corrupt image therefore yields a [`ReadError`] naming the NID,
//! the byte offset and the rule violated, never a panic, a huge allocation
//! or a hang.
//!
//! The reader refuses whatever it could only interpret by guessing:
//! compressed layouts, unknown `i_format` or chunk-format bits, 48-bit
//! fields, malformed xattr regions and directory blocks, and long xattr
//! prefixes (incompat `XATTR_PREFIXES`; our writers never emit them and
//! mkfs only does with `--xattr-prefix`, so supporting them is not worth the
//! extra attack surface). Rules that do not change how bytes are interpreted
//! (reserved bytes, link counts, overlaps, the directory graph, …) are
//! checked by [`crate::fsck`].

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::{
    self, BLOCK_MAP_ENTRY_SIZE, CHUNK_FORMAT_BLKBITS_MASK, CHUNK_FORMAT_INDEXES, CHUNK_INDEX_SIZE,
    COMPACT_INODE_SIZE, COMPAT_SB_CHKSUM, DEVICE_SLOT_SIZE, DIRENT_SIZE, DeviceSlot, Dirent,
    EXTENDED_INODE_SIZE, FT_BLKDEV, FT_CHRDEV, FT_DIR, FT_REG_FILE, FT_SYMLINK,
    INCOMPAT_DEVICE_TABLE, INCOMPAT_SUPPORTED, INODE_SLOT, InodeRecord, LAYOUT_CHUNK_BASED,
    LAYOUT_FLAT_INLINE, LAYOUT_FLAT_PLAIN, MAGIC, NAME_MAX, NULL_ADDR, SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE, SYMLINK_MAX, Superblock, XATTR_ENTRY_HEADER_SIZE, XATTR_HEADER_SIZE,
};

/// Largest directory `i_size` the reader accepts. The format has no limit,
/// and directory blocks are parsed into memory, so without a cap a hostile
/// image could make [`Image::read_dir`] allocate without bound; 128 MiB
/// holds millions of entries, far beyond any real layer.
pub const MAX_DIR_SIZE: u64 = 128 << 20;

/// Positioned reads from an image or an extra device.
///
/// There is no cursor, so one reader can serve lookups from several
/// threads, and the same trait covers files (production) and byte buffers
/// (tests and fuzzing).
pub trait ReadAt {
    /// Fill `buf` from `offset`, failing if the source ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Current length in bytes. [`Image`] reads it once, at construction.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    /// The file's length, or 0 if `fstat` fails (the image is then refused
    /// as too short; [`Image::open`] reports the `fstat` error itself).
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?));
        match src {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the buffer",
            )),
        }
    }

    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }

    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }

    fn len(&self) -> u64 {
        (**self).len()
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }

    fn len(&self) -> u64 {
        (**self).len()
    }
}

/// A reader for one extra device (a layer tar, a blob, a layer image).
pub type DeviceReader = Box<dyn ReadAt + Send + Sync>;

/// "nid N at offset 0x…" or "offset 0x…", the prefix of every corruption
/// message.
pub(crate) fn location(nid: &Option<u64>, offset: &u64) -> String {
    match nid {
        Some(nid) => format!("nid {nid} at offset {offset:#x}"),
        None => format!("offset {offset:#x}"),
    }
}

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("I/O error reading {len} bytes at offset {offset:#x} of device {device}: {source}")]
    Io {
        device: u16,
        offset: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
    /// The image breaks a rule of the format or of our profile. `offset` is
    /// a byte offset on the primary device unless the rule names another
    /// device.
    #[error("{}: {rule}", location(.nid, .offset))]
    Corrupt {
        nid: Option<u64>,
        offset: u64,
        rule: String,
    },
    #[error(
        "nid {nid}: data on extra device {device} is needed but no reader is attached for it \
         (see Image::with_devices)"
    )]
    DeviceNotAttached { nid: u64, device: u16 },
    #[error("{given} device readers attached but the image declares {expected} extra devices")]
    DeviceCount { given: usize, expected: usize },
    #[error(
        "extra device {device} is {len} bytes, shorter than the {declared} bytes its device slot \
         declares"
    )]
    DeviceTooShort {
        device: u16,
        len: u64,
        declared: u64,
    },
    #[error("nid {nid} is not a {expected}")]
    WrongType { nid: u64, expected: &'static str },
    #[error("nid {nid}: size {size} exceeds the read limit of {limit} bytes")]
    TooLarge { nid: u64, size: u64, limit: u64 },
}

fn corrupt(nid: Option<u64>, offset: u64, rule: impl Into<String>) -> ReadError {
    ReadError::Corrupt {
        nid,
        offset,
        rule: rule.into(),
    }
}

fn read_from<T: ReadAt + ?Sized>(
    r: &T,
    device: u16,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), ReadError> {
    r.read_exact_at(buf, offset)
        .map_err(|source| ReadError::Io {
            device,
            offset,
            len: buf.len(),
            source,
        })
}

fn le_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Render a name for a message, escaping non-printable and non-ASCII bytes.
pub(crate) fn show(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

fn align4(x: u64) -> u64 {
    (x + 3) & !3
}

/// An extended attribute with its full name (`user.foo`,
/// `trusted.overlay.opaque`, `system.posix_acl_access`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    /// Set when the entry lives in the shared xattr area.
    pub shared: Option<SharedXattr>,
}

/// Where a shared xattr entry lives, so that the validator can check it
/// against the other metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedXattr {
    pub id: u32,
    /// Byte offset of the entry on the primary device.
    pub offset: u64,
    /// Entry length including its padding to 4 bytes.
    pub len: u64,
}

/// How an inode's data is stored (section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Device, FIFO or socket: no data; `i_u` holds the device number or 0.
    None,
    FlatPlain {
        startblk: u32,
    },
    FlatInline {
        startblk: u32,
        /// Byte offset of the inline tail on the primary device.
        tail_offset: u64,
    },
    ChunkBased {
        chunkbits: u8,
        /// 8 for chunk indexes, 4 for the block map.
        entry_size: u64,
        /// Byte offset of the entry array on the primary device.
        table_offset: u64,
        count: u64,
    },
}

/// A decoded inode. Values of this type only come from [`Image::inode`],
/// so every location they hold has been bounds-checked against the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    nid: u64,
    offset: u64,
    record: InodeRecord,
    file_type: u8,
    mtime: i64,
    mtime_nsec: u32,
    xattr_filter: u32,
    xattrs: Vec<Xattr>,
    layout: Layout,
    meta_end: u64,
}

impl Inode {
    pub fn nid(&self) -> u64 {
        self.nid
    }

    /// Byte offset of the inode record on the primary device.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The raw record, for fields without an accessor and for validation.
    pub fn record(&self) -> &InodeRecord {
        &self.record
    }

    /// Directory-entry type (`FT_*`) of the mode, always valid.
    pub fn file_type(&self) -> u8 {
        self.file_type
    }

    pub fn is_dir(&self) -> bool {
        self.file_type == FT_DIR
    }

    pub fn mode(&self) -> u16 {
        self.record.mode
    }

    pub fn size(&self) -> u64 {
        self.record.size
    }

    pub fn nlink(&self) -> u32 {
        self.record.nlink
    }

    pub fn uid(&self) -> u32 {
        self.record.uid
    }

    pub fn gid(&self) -> u32 {
        self.record.gid
    }

    /// Seconds and nanoseconds; compact inodes take the superblock's
    /// `epoch` and `fixed_nsec` (section 5.5).
    pub fn mtime(&self) -> (i64, u32) {
        (self.mtime, self.mtime_nsec)
    }

    /// `(major, minor)` of a character or block device.
    pub fn rdev(&self) -> Option<(u32, u32)> {
        matches!(self.file_type, FT_CHRDEV | FT_BLKDEV).then(|| format::decode_dev(self.record.u))
    }

    /// Inline entries first, then shared ones: the kernel's listxattr order.
    pub fn xattrs(&self) -> &[Xattr] {
        &self.xattrs
    }

    /// `h_name_filter` of the xattr header (0 without xattrs).
    pub fn xattr_filter(&self) -> u32 {
        self.xattr_filter
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// End of the inode's metadata record on the primary device: inode,
    /// inline xattrs and the inline tail or chunk entry array.
    pub fn meta_end(&self) -> u64 {
        self.meta_end
    }
}

/// One directory entry, including `.` and `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub nid: u64,
    pub file_type: u8,
    /// Byte offset of the 12-byte record on the device holding the
    /// directory block (the primary device for flat layouts).
    pub offset: u64,
}

/// Where a run of an inode's bytes is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentTarget {
    /// A chunk-based hole: reads as zeros.
    Hole,
    /// Whole blocks: `len` bytes (a block multiple, possibly more than the
    /// file uses) from byte `offset` of `device` (0 = primary).
    Blocks { device: u16, offset: u64, len: u64 },
    /// An inline tail inside the inode's metadata record.
    Inline { offset: u64, len: u64 },
}

/// A run of an inode's data: file bytes `[logical, logical + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataExtent {
    pub logical: u64,
    pub len: u64,
    pub target: ExtentTarget,
}

/// An EROFS image whose superblock (and device table) passed validation.
pub struct Image<R: ReadAt> {
    reader: R,
    image_len: u64,
    sb: Superblock,
    blkszbits: u8,
    block_size: u64,
    primary_blocks: u64,
    primary_len: u64,
    devices: Vec<DeviceSlot>,
    attached: Vec<DeviceReader>,
}

impl Image<File> {
    /// Open an image file and validate its superblock.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ReadError> {
        let path = path.as_ref();
        let open_err = |source| ReadError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        // `ReadAt::len` cannot report errors; surface an fstat failure here
        // instead of as a misleading "image too short".
        file.metadata().map_err(open_err)?;
        Image::new(file)
    }
}

impl<R: ReadAt> Image<R> {
    /// Validate the superblock: length, magic, block size, checksum (when
    /// SB_CHKSUM is set), feature bits, compression fields, the declared
    /// primary size and the device table. Everything later is read lazily.
    pub fn new(reader: R) -> Result<Self, ReadError> {
        let image_len = reader.len();
        let sb_err = |field: u64, rule: String| corrupt(None, SUPERBLOCK_OFFSET + field, rule);
        let sb_end = SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE as u64;
        if image_len < sb_end {
            return Err(sb_err(
                0,
                format!(
                    "image is {image_len} bytes, too short for a superblock at byte 1024 \
                     (needs {sb_end})"
                ),
            ));
        }
        let mut raw = [0u8; SUPERBLOCK_SIZE];
        read_from(&reader, 0, &mut raw, SUPERBLOCK_OFFSET)?;
        let Some(sb) = Superblock::decode(&raw) else {
            let magic = format::le::u32_at(&raw, 0);
            return Err(sb_err(
                0,
                format!("bad magic {magic:#010x} (expected {MAGIC:#010x})"),
            ));
        };
        if !(9..=12).contains(&sb.blkszbits) {
            return Err(sb_err(
                0x0c,
                format!("blkszbits {} is outside 9..=12", sb.blkszbits),
            ));
        }
        let blkszbits = sb.blkszbits;
        let block_size = 1u64 << blkszbits;
        if sb.feature_compat & COMPAT_SB_CHKSUM != 0 {
            let len = format::checksum_len(block_size);
            let end = SUPERBLOCK_OFFSET + len;
            if end > image_len {
                return Err(sb_err(
                    4,
                    format!(
                        "checksummed range [{SUPERBLOCK_OFFSET:#x}, {end:#x}) runs past the end \
                         of the {image_len}-byte image"
                    ),
                ));
            }
            // At most 3072 bytes (block size ≤ 4096).
            let mut buf = vec![0u8; len as usize];
            read_from(&reader, 0, &mut buf, SUPERBLOCK_OFFSET)?;
            if let Some(field) = buf.get_mut(4..8) {
                field.fill(0);
            }
            let crc = format::erofs_crc32c(&buf);
            if crc != sb.checksum {
                return Err(sb_err(
                    4,
                    format!(
                        "superblock checksum {:#010x} does not match the computed {crc:#010x}",
                        sb.checksum
                    ),
                ));
            }
        }
        let unsupported = sb.feature_incompat & !INCOMPAT_SUPPORTED;
        if unsupported != 0 {
            return Err(sb_err(
                0x50,
                format!(
                    "unsupported feature_incompat bits {unsupported:#x} (supported: \
                     {INCOMPAT_SUPPORTED:#x})"
                ),
            ));
        }
        if sb.u1 != 0 {
            return Err(sb_err(
                0x54,
                format!("u1 is {:#x}; it must be 0 in an uncompressed image", sb.u1),
            ));
        }
        if sb.sb_extslots != 0 {
            return Err(sb_err(
                0x0d,
                format!(
                    "sb_extslots is {}; only METABOX images (unsupported) have extension slots",
                    sb.sb_extslots
                ),
            ));
        }
        if sb.dirblkbits != 0 {
            return Err(sb_err(
                0x5a,
                format!("dirblkbits is {}; it must be 0", sb.dirblkbits),
            ));
        }
        let primary_blocks = u64::from(sb.blocks);
        let primary_len = primary_blocks << blkszbits;
        if primary_len > image_len {
            return Err(sb_err(
                0x24,
                format!(
                    "superblock declares {primary_blocks} blocks ({primary_len} bytes) but the \
                     image is only {image_len} bytes"
                ),
            ));
        }
        if primary_len < SUPERBLOCK_OFFSET + format::checksum_len(block_size) {
            return Err(sb_err(
                0x24,
                format!(
                    "the superblock's block lies outside the primary device of {primary_blocks} \
                     blocks"
                ),
            ));
        }
        let mut image = Image {
            reader,
            image_len,
            sb,
            blkszbits,
            block_size,
            primary_blocks,
            primary_len,
            devices: Vec::new(),
            attached: Vec::new(),
        };
        image.devices = image.read_device_table()?;
        Ok(image)
    }

    /// Read the device table (section 4) when DEVICE_TABLE is set. Without
    /// the flag the table fields are ignored here and flagged by fsck.
    fn read_device_table(&self) -> Result<Vec<DeviceSlot>, ReadError> {
        let sb = &self.sb;
        if sb.feature_incompat & INCOMPAT_DEVICE_TABLE == 0 || sb.extra_devices == 0 {
            return Ok(Vec::new());
        }
        let slot = DEVICE_SLOT_SIZE as u64;
        let start = u64::from(sb.devt_slotoff) * slot;
        let end = start + u64::from(sb.extra_devices) * slot;
        let err = |rule: String| corrupt(None, SUPERBLOCK_OFFSET + 0x58, rule);
        if end > self.primary_len {
            return Err(err(format!(
                "device table [{start:#x}, {end:#x}) lies outside the primary device"
            )));
        }
        let sb_end = SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE as u64;
        if start < sb_end && end > SUPERBLOCK_OFFSET {
            return Err(err(format!(
                "device table [{start:#x}, {end:#x}) overlaps the superblock"
            )));
        }
        // Bounded by the primary device, checked above (at most 8 MiB).
        let mut buf = vec![0u8; (end - start) as usize];
        self.read_primary(&mut buf, start)?;
        let mut slots = Vec::with_capacity(usize::from(sb.extra_devices));
        for (k, raw) in buf.chunks_exact(DEVICE_SLOT_SIZE).enumerate() {
            let (dev, reserved) = DeviceSlot::decode(raw);
            if reserved {
                return Err(corrupt(
                    None,
                    start + k as u64 * slot + 72,
                    format!(
                        "device slot {} has non-zero reserved bytes 72..128 (48-bit fields are \
                         not supported)",
                        k + 1
                    ),
                ));
            }
            slots.push(dev);
        }
        Ok(slots)
    }

    /// Attach readers for the extra devices, one per device-table slot in
    /// order. Without them, chunks on extra devices are read from the
    /// primary at the device's unified address when the primary is long
    /// enough (a flattened `cat image device…`), as the kernel does when
    /// mounted without `device=`; otherwise reading them fails with
    /// [`ReadError::DeviceNotAttached`].
    pub fn with_devices(mut self, readers: Vec<DeviceReader>) -> Result<Self, ReadError> {
        if readers.len() != self.devices.len() {
            return Err(ReadError::DeviceCount {
                given: readers.len(),
                expected: self.devices.len(),
            });
        }
        for (k, (r, slot)) in readers.iter().zip(&self.devices).enumerate() {
            let declared = u64::from(slot.blocks) << self.blkszbits;
            if r.len() < declared {
                return Err(ReadError::DeviceTooShort {
                    device: k as u16 + 1,
                    len: r.len(),
                    declared,
                });
            }
        }
        self.attached = readers;
        Ok(self)
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    pub fn root_nid(&self) -> u64 {
        u64::from(self.sb.root_nid)
    }

    /// The device-table slots; slot `k` describes device id `k + 1`.
    pub fn devices(&self) -> &[DeviceSlot] {
        &self.devices
    }

    /// Length of the primary reader, read once at construction.
    pub fn image_len(&self) -> u64 {
        self.image_len
    }

    /// Size of the primary device as the superblock declares it (`blocks`
    /// × block size), never more than [`Self::image_len`]. All metadata and
    /// primary-device data must lie below it.
    pub fn primary_len(&self) -> u64 {
        self.primary_len
    }

    fn read_primary(&self, buf: &mut [u8], offset: u64) -> Result<(), ReadError> {
        read_from(&self.reader, 0, buf, offset)
    }

    /// Read `buf.len()` bytes at `offset` of `device` (0 = primary), for
    /// the data of inode `nid` (named in errors).
    pub(crate) fn read_device(
        &self,
        nid: u64,
        device: u16,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ReadError> {
        if device == 0 {
            return self.read_primary(buf, offset);
        }
        let index = usize::from(device) - 1;
        if let Some(r) = self.attached.get(index) {
            return read_from(r.as_ref(), device, buf, offset);
        }
        if let Some(slot) = self.devices.get(index)
            && slot.uniaddr != 0
            && let Some(flat) = (u64::from(slot.uniaddr) << self.blkszbits).checked_add(offset)
            && flat.saturating_add(buf.len() as u64) <= self.image_len
        {
            return self.read_primary(buf, flat);
        }
        Err(ReadError::DeviceNotAttached { nid, device })
    }

    /// Decode and validate the inode `nid`: record inside the primary
    /// device, known `i_format` bits and layout, valid file type, the
    /// inline and shared xattrs, and the bounds of its data layout.
    pub fn inode(&self, nid: u64) -> Result<Inode, ReadError> {
        let err = |offset: u64, rule: String| corrupt(Some(nid), offset, rule);
        if nid >> 63 != 0 {
            return Err(err(
                0,
                "nid has bit 63 set (metabox inodes are not supported)".into(),
            ));
        }
        let base = u64::from(self.sb.meta_blkaddr) << self.blkszbits;
        let Some(offset) = nid
            .checked_mul(INODE_SLOT)
            .and_then(|o| o.checked_add(base))
        else {
            return Err(err(0, "inode offset overflows 64 bits".into()));
        };
        if offset.saturating_add(COMPACT_INODE_SIZE as u64) > self.primary_len {
            return Err(err(
                offset,
                format!(
                    "inode record lies outside the primary device ({} bytes)",
                    self.primary_len
                ),
            ));
        }
        let avail = (self.primary_len - offset).min(EXTENDED_INODE_SIZE as u64) as usize;
        let mut raw = [0u8; EXTENDED_INODE_SIZE];
        let raw = raw.get_mut(..avail).unwrap_or_default();
        self.read_primary(raw, offset)?;
        let Some(record) = InodeRecord::decode(raw) else {
            return Err(err(
                offset,
                "extended inode record runs past the end of the primary device".into(),
            ));
        };
        if record.format & !0x0f != 0 {
            return Err(err(
                offset,
                format!(
                    "i_format {:#06x} has reserved bits 4..15 set",
                    record.format
                ),
            ));
        }
        match record.layout {
            LAYOUT_FLAT_PLAIN | LAYOUT_FLAT_INLINE | LAYOUT_CHUNK_BASED => {}
            1 | 3 => {
                return Err(err(
                    offset,
                    format!(
                        "data layout {} is compressed, which is not supported",
                        record.layout
                    ),
                ));
            }
            other => {
                return Err(err(offset, format!("data layout {other} is invalid")));
            }
        }
        let Some(file_type) = format::file_type_of_mode(record.mode) else {
            return Err(err(
                offset + 4,
                format!("i_mode {:#o} has an invalid file type", record.mode),
            ));
        };

        let xattr_offset = offset + record.record_size() as u64;
        let (xattr_filter, xattrs, xattr_end) = if record.xattr_icount == 0 {
            (0, Vec::new(), xattr_offset)
        } else {
            if record.xattr_icount == 1 {
                return Err(err(
                    offset + 2,
                    "i_xattr_icount 1 (a header without entries) is refused by the kernel".into(),
                ));
            }
            let xsize = record.xattr_size() as u64;
            let end = xattr_offset + xsize;
            if end > self.primary_len {
                return Err(err(
                    xattr_offset,
                    format!(
                        "xattr region [{xattr_offset:#x}, {end:#x}) lies outside the primary \
                         device"
                    ),
                ));
            }
            let (filter, xattrs) = self.read_xattrs(nid, xattr_offset, xsize)?;
            (filter, xattrs, end)
        };

        let (mtime, mtime_nsec) = if record.extended {
            (record.mtime, record.mtime_nsec)
        } else {
            (self.sb.epoch, self.sb.fixed_nsec)
        };
        let (layout, meta_end) = self.data_layout(nid, offset, &record, file_type, xattr_end)?;
        Ok(Inode {
            nid,
            offset,
            record,
            file_type,
            mtime,
            mtime_nsec,
            xattr_filter,
            xattrs,
            layout,
            meta_end,
        })
    }

    /// Decode and bound the data layout of an inode whose record ends (with
    /// xattrs) at `tail_start`.
    fn data_layout(
        &self,
        nid: u64,
        offset: u64,
        record: &InodeRecord,
        file_type: u8,
        tail_start: u64,
    ) -> Result<(Layout, u64), ReadError> {
        let err = |offset: u64, rule: String| corrupt(Some(nid), offset, rule);
        let size = record.size;
        let bs = self.block_size;
        if !matches!(file_type, FT_REG_FILE | FT_DIR | FT_SYMLINK) {
            if record.layout != LAYOUT_FLAT_PLAIN || size != 0 {
                return Err(err(
                    offset,
                    format!(
                        "a device, FIFO or socket must have layout 0 and i_size 0, not layout {} \
                         and i_size {size}",
                        record.layout
                    ),
                ));
            }
            return Ok((Layout::None, tail_start));
        }
        match record.layout {
            LAYOUT_FLAT_PLAIN => {
                self.check_flat_blocks(nid, offset, record.u, size.div_ceil(bs), "FLAT_PLAIN")?;
                Ok((Layout::FlatPlain { startblk: record.u }, tail_start))
            }
            LAYOUT_FLAT_INLINE => {
                let tail_len = size % bs;
                if tail_len == 0 {
                    return Err(err(
                        offset,
                        format!(
                            "FLAT_INLINE with i_size {size}, a multiple of the block size, would \
                             map a whole block to the tail area"
                        ),
                    ));
                }
                self.check_flat_blocks(nid, offset, record.u, size / bs, "FLAT_INLINE")?;
                if tail_start % bs + tail_len > bs {
                    return Err(err(
                        tail_start,
                        format!(
                            "inline tail of {tail_len} bytes at {tail_start:#x} crosses a block \
                             boundary"
                        ),
                    ));
                }
                let tail_end = tail_start + tail_len;
                if tail_end > self.primary_len {
                    return Err(err(
                        tail_start,
                        "inline tail lies outside the primary device".into(),
                    ));
                }
                Ok((
                    Layout::FlatInline {
                        startblk: record.u,
                        tail_offset: tail_start,
                    },
                    tail_end,
                ))
            }
            LAYOUT_CHUNK_BASED => {
                if record.u >> 16 != 0 {
                    return Err(err(
                        offset + 0x10,
                        format!(
                            "chunk-based i_u {:#x} has non-zero reserved high 16 bits",
                            record.u
                        ),
                    ));
                }
                let chunk_format = record.u as u16;
                if chunk_format & !(CHUNK_FORMAT_BLKBITS_MASK | CHUNK_FORMAT_INDEXES) != 0 {
                    return Err(err(
                        offset + 0x10,
                        format!("chunk format {chunk_format:#x} has reserved bits 6..15 set"),
                    ));
                }
                // chunkbits ≤ 31 and blkszbits ≤ 12, so the shift stays
                // below 64 (the "blkszbits + chunkbits ≤ 63" rule).
                let chunkbits = (chunk_format & CHUNK_FORMAT_BLKBITS_MASK) as u8;
                let entry_size = if chunk_format & CHUNK_FORMAT_INDEXES != 0 {
                    CHUNK_INDEX_SIZE
                } else {
                    BLOCK_MAP_ENTRY_SIZE
                } as u64;
                let count = size.div_ceil(1u64 << (self.blkszbits + chunkbits));
                let table_offset = format::align_up(tail_start, entry_size);
                let table_end =
                    table_offset.and_then(|t| t.checked_add(count.checked_mul(entry_size)?));
                match (table_offset, table_end) {
                    (Some(table_offset), Some(end)) if end <= self.primary_len => Ok((
                        Layout::ChunkBased {
                            chunkbits,
                            entry_size,
                            table_offset,
                            count,
                        },
                        end,
                    )),
                    _ => Err(err(
                        tail_start,
                        format!(
                            "chunk entry array of {count} {entry_size}-byte entries runs past \
                             the end of the primary device"
                        ),
                    )),
                }
            }
            other => Err(err(offset, format!("data layout {other} is invalid"))),
        }
    }

    /// Check that `nblocks` blocks from `startblk` lie on the primary device.
    fn check_flat_blocks(
        &self,
        nid: u64,
        offset: u64,
        startblk: u32,
        nblocks: u64,
        layout: &str,
    ) -> Result<(), ReadError> {
        let start = u64::from(startblk);
        if nblocks > 0 && start + nblocks > self.primary_blocks {
            return Err(corrupt(
                Some(nid),
                offset + 0x10,
                format!(
                    "{layout} data blocks [{start}, {}) lie outside the primary device ({} blocks)",
                    start + nblocks,
                    self.primary_blocks
                ),
            ));
        }
        Ok(())
    }

    /// Parse an inline xattr region (section 9.1): header, shared ids,
    /// then entries that must fill the region exactly. Returns the name
    /// filter and the xattrs, inline first.
    fn read_xattrs(
        &self,
        nid: u64,
        region_offset: u64,
        xsize: u64,
    ) -> Result<(u32, Vec<Xattr>), ReadError> {
        let err = |offset: u64, rule: String| corrupt(Some(nid), offset, rule);
        // xsize ≤ 12 + 4 · 65534 bytes, and inside the primary device.
        let len = xsize as usize;
        let mut region = vec![0u8; len];
        self.read_primary(&mut region, region_offset)?;
        let filter = le_u32(&region, 0).unwrap_or(0);
        let shared_count = usize::from(region.get(4).copied().unwrap_or(0));
        if region
            .get(5..XATTR_HEADER_SIZE)
            .is_some_and(|r| r.iter().any(|&b| b != 0))
        {
            return Err(err(
                region_offset + 5,
                "xattr header reserved bytes 5..12 are not zero".into(),
            ));
        }
        let shared_end = XATTR_HEADER_SIZE + 4 * shared_count;
        if shared_end > len {
            return Err(err(
                region_offset + 4,
                format!(
                    "h_shared_count {shared_count} needs {shared_end} bytes but the xattr region \
                     is {len} bytes"
                ),
            ));
        }
        let mut xattrs = Vec::new();
        let mut pos = shared_end;
        while pos < len {
            let entry_offset = region_offset + pos as u64;
            let overrun = || {
                err(
                    entry_offset,
                    format!(
                        "xattr entry at region offset {pos} runs past the end of the {len}-byte \
                         xattr region"
                    ),
                )
            };
            let header: [u8; XATTR_ENTRY_HEADER_SIZE] = region
                .get(pos..pos + XATTR_ENTRY_HEADER_SIZE)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(overrun)?;
            let (name_len, index) = (usize::from(header[0]), header[1]);
            let value_len = usize::from(format::le::u16_at(&header, 2));
            let body_start = pos + XATTR_ENTRY_HEADER_SIZE;
            let body_end = body_start + name_len + value_len;
            let next = align4(body_end as u64) as usize;
            if next > len {
                return Err(overrun());
            }
            let (suffix, value) = region
                .get(body_start..body_end)
                .and_then(|b| b.split_at_checked(name_len))
                .ok_or_else(overrun)?;
            let name = full_xattr_name(index, suffix).map_err(|r| err(entry_offset + 1, r))?;
            xattrs.push(Xattr {
                name,
                value: value.to_vec(),
                shared: None,
            });
            pos = next;
        }
        for i in 0..shared_count {
            let ref_offset = XATTR_HEADER_SIZE + 4 * i;
            let id = le_u32(&region, ref_offset).unwrap_or(0);
            xattrs.push(self.shared_xattr(nid, region_offset + ref_offset as u64, id)?);
        }
        Ok((filter, xattrs))
    }

    /// Read shared xattr `id`, referenced from byte `ref_offset` of inode
    /// `nid` (section 9.4). The shared area has no recorded size, so the
    /// only bound is the primary device.
    fn shared_xattr(&self, nid: u64, ref_offset: u64, id: u32) -> Result<Xattr, ReadError> {
        let base = u64::from(self.sb.xattr_blkaddr) << self.blkszbits;
        let offset = base + 4 * u64::from(id);
        let outside = || {
            corrupt(
                Some(nid),
                ref_offset,
                format!("shared xattr id {id} at {offset:#x} lies outside the primary device"),
            )
        };
        let header_end = offset + XATTR_ENTRY_HEADER_SIZE as u64;
        if header_end > self.primary_len {
            return Err(outside());
        }
        let mut header = [0u8; XATTR_ENTRY_HEADER_SIZE];
        self.read_primary(&mut header, offset)?;
        let name_len = usize::from(header[0]);
        let body_len = name_len + usize::from(format::le::u16_at(&header, 2));
        let end = header_end + body_len as u64;
        if end > self.primary_len {
            return Err(outside());
        }
        let mut body = vec![0u8; body_len];
        self.read_primary(&mut body, header_end)?;
        let (suffix, value) = body.split_at_checked(name_len).ok_or_else(outside)?;
        let name = full_xattr_name(header[1], suffix)
            .map_err(|r| corrupt(Some(nid), offset + 1, format!("shared xattr id {id}: {r}")))?;
        Ok(Xattr {
            name,
            value: value.to_vec(),
            shared: Some(SharedXattr {
                id,
                offset,
                len: align4(end - offset),
            }),
        })
    }

    /// The extent holding byte `pos` (< size) of the inode's data.
    pub fn extent_at(&self, inode: &Inode, pos: u64) -> Result<DataExtent, ReadError> {
        let nid = inode.nid;
        let size = inode.size();
        let bits = self.blkszbits;
        let bs = self.block_size;
        if pos >= size {
            return Err(corrupt(
                Some(nid),
                inode.offset,
                format!("data offset {pos} is past i_size {size}"),
            ));
        }
        match inode.layout {
            Layout::None => Err(corrupt(
                Some(nid),
                inode.offset,
                "inode has no data".to_string(),
            )),
            Layout::FlatPlain { startblk } => Ok(DataExtent {
                logical: 0,
                len: size,
                target: ExtentTarget::Blocks {
                    device: 0,
                    offset: u64::from(startblk) << bits,
                    len: size.div_ceil(bs) << bits,
                },
            }),
            Layout::FlatInline {
                startblk,
                tail_offset,
            } => {
                let full = size - size % bs;
                Ok(if pos < full {
                    DataExtent {
                        logical: 0,
                        len: full,
                        target: ExtentTarget::Blocks {
                            device: 0,
                            offset: u64::from(startblk) << bits,
                            len: full,
                        },
                    }
                } else {
                    DataExtent {
                        logical: full,
                        len: size - full,
                        target: ExtentTarget::Inline {
                            offset: tail_offset,
                            len: size - full,
                        },
                    }
                })
            }
            Layout::ChunkBased {
                chunkbits,
                entry_size,
                table_offset,
                ..
            } => {
                let shift = bits + chunkbits;
                let index = pos >> shift;
                let logical = index << shift;
                let len = (1u64 << shift).min(size - logical);
                // index < count, and the whole array was bounded in inode().
                let entry_offset = table_offset + index * entry_size;
                let mut raw = [0u8; CHUNK_INDEX_SIZE];
                let raw = raw.get_mut(..entry_size as usize).unwrap_or_default();
                self.read_primary(raw, entry_offset)?;
                let (device, blkaddr) = if entry_size == CHUNK_INDEX_SIZE as u64 {
                    let hi = le_u16(raw, 0).unwrap_or(0);
                    if hi != 0 {
                        return Err(corrupt(
                            Some(nid),
                            entry_offset,
                            format!(
                                "chunk {index} startblk_hi is {hi:#x}; 48-bit addresses are not \
                                 supported"
                            ),
                        ));
                    }
                    (le_u16(raw, 2).unwrap_or(0), le_u32(raw, 4).unwrap_or(0))
                } else {
                    (0, le_u32(raw, 0).unwrap_or(0))
                };
                let target = if blkaddr == NULL_ADDR {
                    ExtentTarget::Hole
                } else {
                    self.resolve_chunk(nid, entry_offset, index, device, blkaddr, len)?
                };
                Ok(DataExtent {
                    logical,
                    len,
                    target,
                })
            }
        }
    }

    /// Resolve chunk `index` (`len` bytes at `blkaddr` of `device_id`, 0
    /// meaning the unified address space) to a device and byte range
    /// (section 4.1), checking that every block lies on that device.
    fn resolve_chunk(
        &self,
        nid: u64,
        entry_offset: u64,
        index: u64,
        device_id: u16,
        blkaddr: u32,
        len: u64,
    ) -> Result<ExtentTarget, ReadError> {
        let err = |rule: String| corrupt(Some(nid), entry_offset, rule);
        let blk = u64::from(blkaddr);
        let (device, local, device_blocks) = if device_id == 0 {
            let mapped = self.devices.iter().enumerate().find(|(_, s)| {
                let start = u64::from(s.uniaddr);
                s.uniaddr != 0 && blk >= start && blk < start + u64::from(s.blocks)
            });
            match mapped {
                Some((k, s)) => (k + 1, blk - u64::from(s.uniaddr), u64::from(s.blocks)),
                None => (0, blk, self.primary_blocks),
            }
        } else {
            match self.devices.get(usize::from(device_id) - 1) {
                Some(s) => (usize::from(device_id), blk, u64::from(s.blocks)),
                None => {
                    return Err(err(format!(
                        "chunk {index} device id {device_id} exceeds extra_devices {}",
                        self.devices.len()
                    )));
                }
            }
        };
        let nblocks = len.div_ceil(self.block_size);
        let end = local + nblocks;
        if end > device_blocks {
            let name = if device == 0 {
                "the primary device".to_string()
            } else {
                format!("device {device}")
            };
            return Err(err(format!(
                "chunk {index} blocks [{local}, {end}) lie outside {name} ({device_blocks} blocks)"
            )));
        }
        Ok(ExtentTarget::Blocks {
            device: device as u16,
            offset: local << self.blkszbits,
            len: nblocks << self.blkszbits,
        })
    }

    /// Iterate over the inode's data extents in file order (one per chunk
    /// for chunk-based inodes), without reading data.
    pub fn extents<'a>(&'a self, inode: &'a Inode) -> Extents<'a, R> {
        Extents {
            image: self,
            inode,
            pos: 0,
            failed: false,
        }
    }

    fn read_target(
        &self,
        nid: u64,
        target: ExtentTarget,
        skip: u64,
        dst: &mut [u8],
    ) -> Result<(), ReadError> {
        match target {
            ExtentTarget::Hole => {
                dst.fill(0);
                Ok(())
            }
            ExtentTarget::Inline { offset, .. } => self.read_primary(dst, offset + skip),
            ExtentTarget::Blocks { device, offset, .. } => {
                self.read_device(nid, device, offset + skip, dst)
            }
        }
    }

    /// Read file bytes from `offset` into `buf`; returns how many were read
    /// (fewer than `buf.len()` only at the end of the file). Holes read as
    /// zeros.
    pub fn read_data(
        &self,
        inode: &Inode,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, ReadError> {
        let size = inode.size();
        if offset >= size {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(size - offset);
        let end = offset + want;
        let mut pos = offset;
        while pos < end {
            let ext = self.extent_at(inode, pos)?;
            let stop = end.min(ext.logical + ext.len);
            let dst = buf.get_mut((pos - offset) as usize..(stop - offset) as usize);
            let Some(dst) = dst.filter(|_| stop > pos) else {
                return Err(corrupt(
                    Some(inode.nid),
                    inode.offset,
                    format!("no data extent covers file offset {pos}"),
                ));
            };
            self.read_target(inode.nid, ext.target, pos - ext.logical, dst)?;
            pos = stop;
        }
        Ok(want as usize)
    }

    /// Read a whole file, refusing files larger than `limit` bytes (sizes
    /// of chunk-based files are not bounded by the image).
    pub fn read_all(&self, inode: &Inode, limit: u64) -> Result<Vec<u8>, ReadError> {
        let size = inode.size();
        let too_large = || ReadError::TooLarge {
            nid: inode.nid,
            size,
            limit,
        };
        if size > limit {
            return Err(too_large());
        }
        let mut buf = vec![0u8; usize::try_from(size).map_err(|_| too_large())?];
        self.read_data(inode, 0, &mut buf)?;
        Ok(buf)
    }

    /// The target of a symlink (1..=4095 bytes; NUL bytes are left to
    /// fsck to judge).
    pub fn symlink_target(&self, inode: &Inode) -> Result<Vec<u8>, ReadError> {
        if inode.file_type != FT_SYMLINK {
            return Err(ReadError::WrongType {
                nid: inode.nid,
                expected: "symlink",
            });
        }
        let size = inode.size();
        if size == 0 || size > SYMLINK_MAX {
            return Err(corrupt(
                Some(inode.nid),
                inode.offset + 8,
                format!("symlink i_size {size} is outside 1..={SYMLINK_MAX}"),
            ));
        }
        self.read_all(inode, SYMLINK_MAX)
    }

    /// Stream a directory's entries block by block, validating each block
    /// (section 7) and the order of names across blocks. The iterator ends
    /// after the first error.
    pub fn dir_entries<'a>(&'a self, dir: &'a Inode) -> Result<DirEntries<'a, R>, ReadError> {
        if !dir.is_dir() {
            return Err(ReadError::WrongType {
                nid: dir.nid,
                expected: "directory",
            });
        }
        let size = dir.size();
        if size == 0 || size > MAX_DIR_SIZE {
            return Err(corrupt(
                Some(dir.nid),
                dir.offset + 8,
                format!("directory i_size {size} is outside 1..={MAX_DIR_SIZE}"),
            ));
        }
        Ok(DirEntries {
            image: self,
            dir,
            block: 0,
            nblocks: size.div_ceil(self.block_size),
            pending: Vec::new().into_iter(),
            last_name: None,
            seen_dot: false,
            seen_dotdot: false,
            done: false,
        })
    }

    /// All entries of a directory, `.` and `..` included, in on-disk
    /// (sorted) order.
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<DirEntry>, ReadError> {
        self.dir_entries(dir)?.collect()
    }

    /// Resolve a `/`-separated path from the root without following
    /// symlinks. Empty components are skipped; `.` and `..` are looked up
    /// as the on-disk entries they are. `Ok(None)` when a component is
    /// missing or a non-final component is not a directory.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<u64>, ReadError> {
        let mut nid = self.root_nid();
        for component in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let dir = self.inode(nid)?;
            if !dir.is_dir() {
                return Ok(None);
            }
            let mut found = None;
            for entry in self.dir_entries(&dir)? {
                let entry = entry?;
                match entry.name.as_slice().cmp(component) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        found = Some(entry.nid);
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
            match found {
                Some(next) => nid = next,
                None => return Ok(None),
            }
        }
        Ok(Some(nid))
    }
}

/// Split an inode's data into extents; see [`Image::extents`].
pub struct Extents<'a, R: ReadAt> {
    image: &'a Image<R>,
    inode: &'a Inode,
    pos: u64,
    failed: bool,
}

impl<R: ReadAt> Iterator for Extents<'_, R> {
    type Item = Result<DataExtent, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.inode.size() {
            return None;
        }
        let ext = self.image.extent_at(self.inode, self.pos);
        match &ext {
            // Extents start at or before `pos` and end after it, so this
            // always advances.
            Ok(e) => self.pos = e.logical + e.len,
            Err(_) => self.failed = true,
        }
        Some(ext)
    }
}

/// Streaming directory reader; see [`Image::dir_entries`].
pub struct DirEntries<'a, R: ReadAt> {
    image: &'a Image<R>,
    dir: &'a Inode,
    block: u64,
    nblocks: u64,
    pending: std::vec::IntoIter<DirEntry>,
    last_name: Option<Vec<u8>>,
    seen_dot: bool,
    seen_dotdot: bool,
    done: bool,
}

impl<R: ReadAt> Iterator for DirEntries<'_, R> {
    type Item = Result<DirEntry, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.pending.next() {
                return Some(Ok(entry));
            }
            if self.done {
                return None;
            }
            let result = if self.block < self.nblocks {
                self.load_block()
            } else {
                self.done = true;
                self.finish()
            };
            if let Err(e) = result {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}

impl<R: ReadAt> DirEntries<'_, R> {
    fn err(&self, offset: u64, rule: String) -> ReadError {
        corrupt(Some(self.dir.nid), offset, rule)
    }

    /// After the last block: `.` and `..` must both have been seen.
    fn finish(&self) -> Result<(), ReadError> {
        if !self.seen_dot {
            return Err(self.err(self.dir.offset, "directory has no '.' entry".into()));
        }
        if !self.seen_dotdot {
            return Err(self.err(self.dir.offset, "directory has no '..' entry".into()));
        }
        Ok(())
    }

    /// Read and parse the next directory block (section 7.2).
    fn load_block(&mut self) -> Result<(), ReadError> {
        let k = self.block;
        self.block += 1;
        let image = self.image;
        let bs = image.block_size;
        let start = k * bs;
        let usable = bs.min(self.dir.size() - start) as usize;
        let ext = image.extent_at(self.dir, start)?;
        let skip = start - ext.logical;
        let base = match ext.target {
            ExtentTarget::Hole => {
                return Err(self.err(self.dir.offset, format!("directory block {k} is a hole")));
            }
            ExtentTarget::Blocks { offset, .. } | ExtentTarget::Inline { offset, .. } => {
                offset + skip
            }
        };
        // Directory extents are block-aligned and the tail is exactly the
        // last partial block, so one extent holds the whole block.
        let mut block = vec![0u8; usable];
        image.read_target(self.dir.nid, ext.target, skip, &mut block)?;
        let entries = self.parse_block(k, &block, base)?;
        self.pending = entries.into_iter();
        Ok(())
    }

    fn parse_block(&mut self, k: u64, block: &[u8], base: u64) -> Result<Vec<DirEntry>, ReadError> {
        let usable = block.len();
        let Some(nameoff0) = le_u16(block, 8) else {
            return Err(self.err(
                base,
                format!("directory block {k} is {usable} bytes, too short for one entry"),
            ));
        };
        let nameoff0 = usize::from(nameoff0);
        if nameoff0 % DIRENT_SIZE != 0 {
            return Err(self.err(
                base + 8,
                format!("directory block {k} nameoff[0]={nameoff0} is not a multiple of 12"),
            ));
        }
        if nameoff0 < DIRENT_SIZE || nameoff0 >= usable {
            return Err(self.err(
                base + 8,
                format!("directory block {k} nameoff[0]={nameoff0} is outside 12..{usable}"),
            ));
        }
        let n = nameoff0 / DIRENT_SIZE;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let rec_offset = base + (i * DIRENT_SIZE) as u64;
            let raw = block.get(i * DIRENT_SIZE..(i + 1) * DIRENT_SIZE);
            let Some(raw) = raw else {
                return Err(self.err(
                    rec_offset,
                    format!("directory block {k} entry {i} is truncated"),
                ));
            };
            let d = Dirent::decode(raw);
            let start = usize::from(d.nameoff);
            let end = if i + 1 < n {
                let next = le_u16(block, (i + 1) * DIRENT_SIZE + 8).map(usize::from);
                let next_offset = rec_offset + (DIRENT_SIZE + 8) as u64;
                match next {
                    Some(next) if next > start && next <= usable => next,
                    Some(next) if next <= start => {
                        return Err(self.err(
                            next_offset,
                            format!(
                                "directory block {k} nameoff[{}]={next} is not greater than \
                                 nameoff[{i}]={start}",
                                i + 1
                            ),
                        ));
                    }
                    _ => {
                        return Err(self.err(
                            next_offset,
                            format!(
                                "directory block {k} nameoff[{}] is past the end of the \
                                 {usable}-byte block",
                                i + 1
                            ),
                        ));
                    }
                }
            } else {
                let rest = block.get(start..).unwrap_or_default();
                start + rest.iter().position(|&b| b == 0).unwrap_or(rest.len())
            };
            let name = block.get(start..end).unwrap_or_default();
            let bad_name = if name.is_empty() {
                Some("is empty".to_string())
            } else if name.len() > NAME_MAX {
                Some(format!("is {} bytes, longer than {NAME_MAX}", name.len()))
            } else if name.contains(&b'/') {
                Some("contains '/'".to_string())
            } else if name.contains(&0) {
                Some("contains NUL".to_string())
            } else {
                None
            };
            if let Some(why) = bad_name {
                return Err(self.err(
                    rec_offset,
                    format!("directory block {k} entry {i} name {:?} {why}", show(name)),
                ));
            }
            if i + 1 == n && block.get(end..).unwrap_or_default().iter().any(|&b| b != 0) {
                return Err(self.err(
                    base + end as u64,
                    format!("directory block {k} has non-zero bytes after the last name"),
                ));
            }
            let shown = show(name);
            if d.reserved != 0 {
                return Err(self.err(
                    rec_offset + 11,
                    format!("dirent {shown:?} reserved byte is {:#x}, not 0", d.reserved),
                ));
            }
            if !(1..=7).contains(&d.file_type) {
                return Err(self.err(
                    rec_offset + 10,
                    format!(
                        "dirent {shown:?} file_type {} is outside 1..=7",
                        d.file_type
                    ),
                ));
            }
            if d.nid >> 63 != 0 {
                return Err(self.err(
                    rec_offset,
                    format!("dirent {shown:?} nid {:#x} has bit 63 set", d.nid),
                ));
            }
            if let Some(prev) = &self.last_name {
                match prev.as_slice().cmp(name) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        return Err(self.err(rec_offset, format!("duplicate name {shown:?}")));
                    }
                    std::cmp::Ordering::Greater => {
                        return Err(self.err(
                            rec_offset,
                            format!(
                                "name {shown:?} sorts before the previous name {:?}; names must \
                                 be strictly increasing",
                                show(prev)
                            ),
                        ));
                    }
                }
            }
            if name == b"." || name == b".." {
                if d.file_type != FT_DIR {
                    return Err(self.err(
                        rec_offset + 10,
                        format!("{shown:?} has file_type {}, not 2 (directory)", d.file_type),
                    ));
                }
                if name == b"." {
                    if d.nid != self.dir.nid {
                        return Err(self.err(
                            rec_offset,
                            format!(
                                "'.' points to nid {} instead of the directory itself",
                                d.nid
                            ),
                        ));
                    }
                    self.seen_dot = true;
                } else {
                    self.seen_dotdot = true;
                }
            }
            self.last_name = Some(name.to_vec());
            out.push(DirEntry {
                name: name.to_vec(),
                nid: d.nid,
                file_type: d.file_type,
                offset: rec_offset,
            });
        }
        Ok(out)
    }
}

/// Build the full name of an xattr entry from its namespace index and
/// stored suffix, or say why the index cannot be interpreted.
fn full_xattr_name(index: u8, suffix: &[u8]) -> Result<Vec<u8>, String> {
    if index & 0x80 != 0 {
        return Err(format!(
            "e_name_index {index:#x} refers to a long xattr prefix (XATTR_PREFIXES), which is not \
             supported"
        ));
    }
    match format::xattr_prefix(index) {
        Some(prefix) => Ok([prefix, suffix].concat()),
        None => Err(format!(
            "e_name_index {index} is not a valid xattr namespace"
        )),
    }
}

/// Hand-built images for the reader and fsck tests, encoded with the
/// `format` encoders so that the tests exercise the same definitions.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod testimg {
    use crate::format::*;

    /// Lays out inodes at fixed NIDs (`meta_blkaddr` 0) and data at fixed
    /// blocks, then writes the superblock and its checksum.
    pub(crate) struct Builder {
        pub bits: u8,
        pub img: Vec<u8>,
        pub sb: Superblock,
    }

    impl Builder {
        pub fn new(bits: u8) -> Self {
            Builder {
                bits,
                img: vec![0; (1usize << bits).max(1536)],
                sb: Superblock {
                    feature_compat: COMPAT_SB_CHKSUM | COMPAT_MTIME,
                    blkszbits: bits,
                    ..Default::default()
                },
            }
        }

        pub fn put(&mut self, offset: u64, bytes: &[u8]) {
            let offset = offset as usize;
            if self.img.len() < offset + bytes.len() {
                self.img.resize(offset + bytes.len(), 0);
            }
            self.img[offset..offset + bytes.len()].copy_from_slice(bytes);
        }

        pub fn inode(&mut self, nid: u64, rec: &InodeRecord, xattrs: &[u8], tail: &[u8]) {
            let mut v = Vec::new();
            rec.encode(&mut v);
            v.extend_from_slice(xattrs);
            v.extend_from_slice(tail);
            self.put(nid * INODE_SLOT, &v);
        }

        pub fn block(&mut self, blk: u64, data: &[u8]) {
            self.put(blk << self.bits, data);
        }

        pub fn finish(mut self) -> Vec<u8> {
            let bs = 1usize << self.bits;
            let len = self.img.len().div_ceil(bs) * bs;
            self.img.resize(len, 0);
            self.sb.blocks = (len / bs) as u32;
            self.img[1024..1152].copy_from_slice(&self.sb.encode());
            fix_checksum(&mut self.img);
            self.img
        }
    }

    /// Recompute the superblock checksum after a test pokes bytes, so that
    /// the poke (not the checksum) is what gets reported. Does nothing when
    /// the block size byte or the image no longer allows it.
    pub(crate) fn fix_checksum(img: &mut [u8]) {
        if img.len() < 1152 || img[1032] & COMPAT_SB_CHKSUM as u8 == 0 {
            return;
        }
        let bits = img[1036];
        if !(9..=12).contains(&bits) {
            return;
        }
        let len = checksum_len(1 << bits) as usize;
        if img.len() < 1024 + len {
            return;
        }
        img[1028..1032].fill(0);
        let crc = erofs_crc32c(&img[1024..1024 + len]);
        img[1028..1032].copy_from_slice(&crc.to_le_bytes());
    }

    /// A compact inode record.
    pub(crate) fn rec(
        mode: u16,
        layout: u16,
        size: u64,
        u: u32,
        nlink: u32,
        ino: u32,
    ) -> InodeRecord {
        InodeRecord {
            extended: false,
            layout,
            format: layout << 1,
            xattr_icount: 0,
            mode,
            nlink,
            size,
            u,
            ino,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            reserved_nonzero: false,
        }
    }

    /// One directory block: dirents, then the names back to back.
    pub(crate) fn dir(entries: &[(&[u8], u64, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut nameoff = entries.len() * DIRENT_SIZE;
        for &(name, nid, file_type) in entries {
            Dirent {
                nid,
                nameoff: nameoff as u16,
                file_type,
                reserved: 0,
            }
            .encode(&mut out);
            nameoff += name.len();
        }
        for (name, _, _) in entries {
            out.extend_from_slice(name);
        }
        out
    }

    /// An inline xattr region and its `i_xattr_icount`.
    pub(crate) fn xattr_region(shared: &[u32], entries: &[(u8, &[u8], &[u8])]) -> (u16, Vec<u8>) {
        let mut out = vec![0u8; XATTR_HEADER_SIZE];
        out[4] = shared.len() as u8;
        for id in shared {
            out.extend_from_slice(&id.to_le_bytes());
        }
        for (index, suffix, value) in entries {
            out.extend_from_slice(&xattr_entry(*index, suffix, value));
        }
        ((out.len() as u16 - 12) / 4 + 1, out)
    }

    pub(crate) fn xattr_entry(index: u8, suffix: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = vec![suffix.len() as u8, index];
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(suffix);
        out.extend_from_slice(value);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    /// The byte-exact image of Appendix A of the format reference
    /// (`mkfs.erofs -T0 -Uclear --all-root` of a directory holding `a`
    /// with "hi\n"), as a hex dump of its non-zero rows.
    pub(crate) const APPENDIX_A: &[(usize, &str)] = &[
        (0x400, "e2e1 f5e0 079a 6a73 0300 0000 0c00 2400"),
        (0x410, "0200 0000 0000 0000 0000 0000 0000 0000"),
        (0x420, "0000 0000 0100 0000 0000 0000 0000 0000"),
        (0x480, "0400 0000 ed41 0200 2800 0000 0000 0000"),
        (0x490, "ffff ffff 0100 0000 0000 0000 0000 0000"),
        (0x4a0, "2400 0000 0000 0000 2400 0200"),
        (0x4ac, "2400 0000 0000 0000 2500 0200"),
        (0x4b8, "2700 0000 0000 0000 2700 0100"),
        (0x4c4, "2e 2e2e 61"),
        (0x4e0, "0400 0000 a481 0100 0300 0000 0000 0000"),
        (0x4f0, "ffff ffff 0200 0000 0000 0000 0000 0000"),
        (0x500, "6869 0a"),
    ];

    pub(crate) fn appendix_a_fixture() -> Vec<u8> {
        let mut img = vec![0u8; 4096];
        for &(offset, row) in APPENDIX_A {
            let hex: String = row.split_whitespace().collect();
            for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
                let byte = u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap();
                img[offset + i] = byte;
            }
        }
        img
    }

    /// A root directory (nid 36) with `entries` and one regular file at
    /// `file_nid` holding `content` inline: Appendix A when called with
    /// its names, NID 39 and "hi\n".
    pub(crate) fn small(entries: &[(&[u8], u64, u8)], file_nid: u64, content: &[u8]) -> Vec<u8> {
        let mut b = Builder::new(12);
        b.sb.root_nid = 36;
        b.sb.inos = 2;
        let d = dir(entries);
        b.inode(
            36,
            &rec(0o40755, 2, d.len() as u64, u32::MAX, 2, 1),
            &[],
            &d,
        );
        b.inode(
            file_nid,
            &rec(0o100644, 2, content.len() as u64, u32::MAX, 1, 2),
            &[],
            content,
        );
        b.finish()
    }

    pub(crate) fn appendix_a() -> Vec<u8> {
        small(
            &[
                (b".", 36, FT_DIR),
                (b"..", 36, FT_DIR),
                (b"a", 39, FT_REG_FILE),
            ],
            39,
            b"hi\n",
        )
    }

    /// Contents of the rich image's files.
    pub(crate) fn big_content() -> Vec<u8> {
        (0..5000u32).map(|i| (i % 251) as u8).collect()
    }

    pub(crate) fn chunk_block() -> Vec<u8> {
        (0..4096u32).map(|i| (i * 7 % 256) as u8).collect()
    }

    pub(crate) fn c_content() -> Vec<u8> {
        let mut v = vec![0u8; 4096];
        v.extend_from_slice(&chunk_block());
        v.extend_from_slice(&chunk_block()[..1808]);
        v
    }

    // Byte offsets inside the rich image, for mutation tests.
    pub(crate) const RICH_D_DIRENTS: u64 = 1536 + 32;
    pub(crate) const RICH_C_TABLE: u64 = 1504;
    pub(crate) const RICH_BIG: u64 = 1728;
    pub(crate) const RICH_L_TAIL: u64 = 1760 + 32;

    /// Every object kind, 4 KiB blocks:
    ///
    /// ```text
    /// nid 40 /      dir, inline          nid 48 /d      dir, inline
    /// nid 44 /a     file "hello", inline; user.x (binary) inline, user.shared shared
    /// nid 44 /d/h   hard link to /a      nid 54 /d/big  5000 bytes FLAT_PLAIN, blocks 1-2
    /// nid 46 /c     10000 bytes chunk-based: hole, block 3, block 3 again (dedup)
    /// nid 52 /fifo  nid 53 /w (whiteout 0:0)   nid 55 /d/l symlink "target"
    /// ```
    pub(crate) fn rich() -> Vec<u8> {
        let mut b = Builder::new(12);
        b.sb.root_nid = 40;
        b.sb.inos = 8;
        b.put(1152, &xattr_entry(1, b"shared", b"v"));
        let root = dir(&[
            (b".", 40, FT_DIR),
            (b"..", 40, FT_DIR),
            (b"a", 44, FT_REG_FILE),
            (b"c", 46, FT_REG_FILE),
            (b"d", 48, FT_DIR),
            (b"fifo", 52, FT_FIFO),
            (b"w", 53, FT_CHRDEV),
        ]);
        b.inode(
            40,
            &rec(0o40755, 2, root.len() as u64, u32::MAX, 3, 1),
            &[],
            &root,
        );
        let (icount, xattrs) = xattr_region(&[288], &[(1, b"x", &[0x00, 0xff])]);
        let mut a = rec(0o100644, 2, 5, u32::MAX, 2, 2);
        a.xattr_icount = icount;
        b.inode(44, &a, &xattrs, b"hello");
        let mut table = Vec::new();
        for blk in [NULL_ADDR, 3, 3] {
            table.extend_from_slice(&[0, 0, 0, 0]);
            table.extend_from_slice(&blk.to_le_bytes());
        }
        b.inode(46, &rec(0o100644, 4, 10000, 0x20, 1, 3), &[], &table);
        let d = dir(&[
            (b".", 48, FT_DIR),
            (b"..", 40, FT_DIR),
            (b"big", 54, FT_REG_FILE),
            (b"h", 44, FT_REG_FILE),
            (b"l", 55, FT_SYMLINK),
        ]);
        b.inode(
            48,
            &rec(0o40755, 2, d.len() as u64, u32::MAX, 2, 4),
            &[],
            &d,
        );
        b.inode(52, &rec(0o10644, 0, 0, 0, 1, 5), &[], &[]);
        b.inode(53, &rec(0o20000, 0, 0, 0, 1, 6), &[], &[]);
        b.inode(54, &rec(0o100644, 0, 5000, 1, 1, 7), &[], &[]);
        b.inode(55, &rec(0o120777, 2, 6, u32::MAX, 1, 8), &[], b"target");
        b.block(1, &big_content());
        b.block(3, &chunk_block());
        b.finish()
    }

    /// A primary image with one extra device of two blocks (`A`s then
    /// `B`s) at unified address 1: `/f` is 4106 bytes in one 8 KiB chunk
    /// on device 1, `/g` is one block through the 4-byte block map at
    /// unified block 2 (device 1 block 1). Returns (primary, device).
    pub(crate) fn multi_device() -> (Vec<u8>, Vec<u8>) {
        let mut b = Builder::new(12);
        b.sb.root_nid = 40;
        b.sb.inos = 3;
        b.sb.feature_incompat = INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE;
        b.sb.extra_devices = 1;
        b.sb.devt_slotoff = 9;
        let slot = DeviceSlot {
            tag: [0; 64],
            blocks: 2,
            uniaddr: 1,
        };
        b.put(1152, &slot.encode());
        let root = dir(&[
            (b".", 40, FT_DIR),
            (b"..", 40, FT_DIR),
            (b"f", 43, FT_REG_FILE),
            (b"g", 45, FT_REG_FILE),
        ]);
        b.inode(
            40,
            &rec(0o40755, 2, root.len() as u64, u32::MAX, 2, 1),
            &[],
            &root,
        );
        b.inode(
            43,
            &rec(0o100644, 4, 4106, 0x21, 1, 2),
            &[],
            &[0, 0, 1, 0, 0, 0, 0, 0],
        );
        b.inode(
            45,
            &rec(0o100644, 4, 4096, 0, 1, 3),
            &[],
            &2u32.to_le_bytes(),
        );
        let mut device = vec![b'A'; 4096];
        device.extend_from_slice(&[b'B'; 4096]);
        (b.finish(), device)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::testimg::*;
    use super::*;

    fn names(image: &Image<Vec<u8>>, nid: u64) -> Vec<Vec<u8>> {
        let inode = image.inode(nid).unwrap();
        image
            .read_dir(&inode)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    fn content(image: &Image<Vec<u8>>, path: &[u8]) -> Vec<u8> {
        let nid = image.lookup(path).unwrap().unwrap();
        let inode = image.inode(nid).unwrap();
        image.read_all(&inode, 1 << 20).unwrap()
    }

    #[test]
    fn appendix_a_is_byte_exact() {
        let built = appendix_a();
        assert_eq!(built, appendix_a_fixture());
        assert_eq!(&built[0x404..0x408], &0x736a_9a07u32.to_le_bytes());
    }

    #[test]
    fn reads_appendix_a() {
        let image = Image::new(appendix_a_fixture()).unwrap();
        assert_eq!(image.block_size(), 4096);
        assert_eq!(image.root_nid(), 36);
        let root = image.inode(36).unwrap();
        assert_eq!(root.mode(), 0o40755);
        assert_eq!(root.nlink(), 2);
        assert_eq!(root.size(), 40);
        assert_eq!(root.meta_end(), 0x4c8);
        let entries = image.read_dir(&root).unwrap();
        let listed: Vec<_> = entries
            .iter()
            .map(|e| (e.name.as_slice(), e.nid, e.file_type))
            .collect();
        assert_eq!(
            listed,
            [(&b"."[..], 36, 2), (&b".."[..], 36, 2), (&b"a"[..], 39, 1)]
        );
        assert_eq!(entries[2].offset, 0x4b8);
        assert_eq!(image.lookup(b"/a").unwrap(), Some(39));
        assert_eq!(image.lookup(b"b").unwrap(), None);
        assert_eq!(image.lookup(b"a/x").unwrap(), None);
        assert_eq!(image.lookup(b"").unwrap(), Some(36));
        let file = image.inode(39).unwrap();
        assert_eq!(file.mode(), 0o100644);
        assert_eq!(file.mtime(), (0, 0));
        assert_eq!(
            file.layout(),
            Layout::FlatInline {
                startblk: u32::MAX,
                tail_offset: 0x500
            }
        );
        assert_eq!(image.read_all(&file, 3).unwrap(), b"hi\n");
        assert!(matches!(
            image.read_all(&file, 2),
            Err(ReadError::TooLarge { size: 3, .. })
        ));
        let mut buf = [0u8; 8];
        assert_eq!(image.read_data(&file, 1, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"i\n");
        assert!(matches!(
            image.read_dir(&file),
            Err(ReadError::WrongType { nid: 39, .. })
        ));
    }

    #[test]
    fn reads_rich_image() {
        let image = Image::new(rich()).unwrap();
        assert_eq!(
            names(&image, 40),
            [&b"."[..], b"..", b"a", b"c", b"d", b"fifo", b"w"]
        );
        assert_eq!(names(&image, 48), [&b"."[..], b"..", b"big", b"h", b"l"]);
        assert_eq!(image.lookup(b"d/h").unwrap(), image.lookup(b"a").unwrap());
        assert_eq!(image.lookup(b"d/../d/./big").unwrap(), Some(54));
        assert_eq!(content(&image, b"a"), b"hello");
        assert_eq!(content(&image, b"d/big"), big_content());
        assert_eq!(content(&image, b"c"), c_content());

        let a = image.inode(44).unwrap();
        let xattrs: Vec<_> = a
            .xattrs()
            .iter()
            .map(|x| (x.name.as_slice(), x.value.as_slice()))
            .collect();
        assert_eq!(
            xattrs,
            [(&b"user.x"[..], &[0u8, 0xff][..]), (b"user.shared", b"v")]
        );
        assert_eq!(
            a.xattrs()[1].shared,
            Some(SharedXattr {
                id: 288,
                offset: 1152,
                len: 12
            })
        );

        let l = image.inode(55).unwrap();
        assert_eq!(image.symlink_target(&l).unwrap(), b"target");
        assert!(image.symlink_target(&a).is_err());
        let w = image.inode(53).unwrap();
        assert_eq!(w.rdev(), Some((0, 0)));
        assert_eq!(w.layout(), Layout::None);
        assert_eq!(image.inode(52).unwrap().rdev(), None);

        // A read crossing the hole, a shared block and the partial chunk.
        let c = image.inode(46).unwrap();
        let mut buf = vec![0u8; 6000];
        assert_eq!(image.read_data(&c, 4000, &mut buf).unwrap(), 6000);
        assert_eq!(buf, c_content()[4000..10000]);
        let extents: Vec<_> = image.extents(&c).map(Result::unwrap).collect();
        assert_eq!(extents.len(), 3);
        assert_eq!(extents[0].target, ExtentTarget::Hole);
        assert_eq!(
            extents[2],
            DataExtent {
                logical: 8192,
                len: 1808,
                target: ExtentTarget::Blocks {
                    device: 0,
                    offset: 3 * 4096,
                    len: 4096
                }
            }
        );
    }

    #[test]
    fn extra_devices_attached_flat_or_missing() {
        let (primary, device) = multi_device();
        let expected_f = [vec![b'A'; 4096], vec![b'B'; 10]].concat();

        let image = Image::new(primary.clone()).unwrap();
        assert_eq!(image.devices().len(), 1);
        let f = image.inode(43).unwrap();
        assert!(matches!(
            image.read_all(&f, 1 << 20),
            Err(ReadError::DeviceNotAttached { nid: 43, device: 1 })
        ));

        let attached = Image::new(primary.clone())
            .unwrap()
            .with_devices(vec![Box::new(device.clone())])
            .unwrap();
        assert_eq!(content(&attached, b"f"), expected_f);
        assert_eq!(content(&attached, b"g"), vec![b'B'; 4096]);

        let flat = Image::new([primary.clone(), device.clone()].concat()).unwrap();
        assert_eq!(content(&flat, b"f"), expected_f);
        assert_eq!(content(&flat, b"g"), vec![b'B'; 4096]);

        assert!(matches!(
            Image::new(primary.clone()).unwrap().with_devices(vec![]),
            Err(ReadError::DeviceCount {
                given: 0,
                expected: 1
            })
        ));
        assert!(matches!(
            Image::new(primary)
                .unwrap()
                .with_devices(vec![Box::new(vec![0u8; 4096])]),
            Err(ReadError::DeviceTooShort { device: 1, .. })
        ));
    }

    #[test]
    fn opens_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.erofs");
        std::fs::write(&path, appendix_a_fixture()).unwrap();
        let image = Image::open(&path).unwrap();
        let file = image.inode(image.lookup(b"a").unwrap().unwrap()).unwrap();
        assert_eq!(image.read_all(&file, 16).unwrap(), b"hi\n");
        let missing = Image::open(dir.path().join("missing")).err().unwrap();
        assert!(missing.to_string().contains("cannot open"), "{missing}");
    }

    #[test]
    fn error_messages_name_nid_offset_and_rule() {
        let mut img = appendix_a();
        img[0x4a8] = 7;
        fix_checksum(&mut img);
        let image = Image::new(img).unwrap();
        let root = image.inode(36).unwrap();
        let err = image.read_dir(&root).unwrap_err().to_string();
        assert_eq!(
            err,
            "nid 36 at offset 0x4a8: directory block 0 nameoff[0]=7 is not a multiple of 12"
        );

        let err = Image::new(vec![0u8; 100]).err().unwrap().to_string();
        assert!(err.contains("too short for a superblock"), "{err}");
    }

    #[test]
    fn unusual_but_valid_structures() {
        // Names sorting before "." and a 255-byte name; an extended inode
        // with a negative mtime; 512-byte blocks.
        let long = vec![b'z'; 255];
        let mut b = Builder::new(9);
        b.sb.root_nid = 48;
        let d = dir(&[
            (b"!a", 60, FT_REG_FILE),
            (b".", 48, FT_DIR),
            (b"..", 48, FT_DIR),
            (&long, 60, FT_REG_FILE),
        ]);
        assert!(d.len() < 512);
        b.inode(48, &rec(0o40700, 0, d.len() as u64, 4, 2, 1), &[], &[]);
        b.block(4, &d);
        let mut f = rec(0o100600, 0, 0, 0, 2, 2);
        f.extended = true;
        f.mtime = -100;
        f.mtime_nsec = 5;
        f.uid = 100_000;
        b.inode(60, &f, &[], &[]);
        let image = Image::new(b.finish()).unwrap();
        assert_eq!(image.block_size(), 512);
        assert_eq!(
            names(&image, 48),
            [b"!a".to_vec(), b".".to_vec(), b"..".to_vec(), long.clone()]
        );
        let f = image.inode(60).unwrap();
        assert_eq!(f.mtime(), (-100, 5));
        assert_eq!(f.uid(), 100_000);
        assert_eq!(image.lookup(&long).unwrap(), Some(60));
    }
}
