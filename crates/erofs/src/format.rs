//! On-disk constants and fixed-size records of the uncompressed EROFS profile
//! we write and accept (see `shared/docs/erofs-format.md`).
//!
//! Records are encoded by hand into little-endian byte arrays: the structures
//! are few and small, and explicit offsets keep each field next to the
//! section of the format reference it comes from.

/// Superblock magic (`EROFS_SUPER_MAGIC_V1`).
pub const MAGIC: u32 = 0xE0F5_E1E2;
/// The superblock always starts at this byte of the primary device.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Size of the base superblock without extension slots.
pub const SUPERBLOCK_SIZE: usize = 128;
/// Inodes are addressed in 32-byte slots.
pub const INODE_SLOT: u64 = 32;
pub const COMPACT_INODE_SIZE: usize = 32;
pub const EXTENDED_INODE_SIZE: usize = 64;
pub const DIRENT_SIZE: usize = 12;
pub const XATTR_HEADER_SIZE: usize = 12;
pub const XATTR_ENTRY_HEADER_SIZE: usize = 4;
pub const DEVICE_SLOT_SIZE: usize = 128;
/// Longest name the kernel accepts in a directory entry (`EROFS_NAME_LEN`).
pub const NAME_MAX: usize = 255;
/// Longest symlink target we write or accept (PATH_MAX - 1).
pub const SYMLINK_MAX: u64 = 4095;
/// Chunk-index value meaning "hole, reads as zeros".
pub const NULL_ADDR: u32 = u32::MAX;

/// `feature_compat` bits.
pub const COMPAT_SB_CHKSUM: u32 = 0x01;
pub const COMPAT_MTIME: u32 = 0x02;
pub const COMPAT_XATTR_FILTER: u32 = 0x04;
pub const COMPAT_PLAIN_XATTR_PFX: u32 = 0x10;
/// Compat bits our validator tolerates; anything else is refused by policy.
pub const COMPAT_ACCEPTED: u32 =
    COMPAT_SB_CHKSUM | COMPAT_MTIME | COMPAT_XATTR_FILTER | COMPAT_PLAIN_XATTR_PFX;

/// `feature_incompat` bits.
pub const INCOMPAT_CHUNKED_FILE: u32 = 0x04;
pub const INCOMPAT_DEVICE_TABLE: u32 = 0x08;
/// Incompat bits the reader understands (uncompressed images only).
pub const INCOMPAT_SUPPORTED: u32 = INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE;

/// Data layouts (i_format bits 1..3).
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
pub const LAYOUT_FLAT_INLINE: u16 = 2;
pub const LAYOUT_CHUNK_BASED: u16 = 4;

/// Chunk format bits in `i_u` of a chunk-based inode.
pub const CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x1F;
pub const CHUNK_FORMAT_INDEXES: u16 = 0x20;
/// Size of one 8-byte chunk index (`erofs_inode_chunk_index`).
pub const CHUNK_INDEX_SIZE: usize = 8;
/// Size of one 4-byte block-map entry.
pub const BLOCK_MAP_ENTRY_SIZE: usize = 4;

/// POSIX file type bits of `i_mode`.
pub const S_IFMT: u16 = 0o170000;
pub const S_IFSOCK: u16 = 0o140000;
pub const S_IFLNK: u16 = 0o120000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFBLK: u16 = 0o060000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFCHR: u16 = 0o020000;
pub const S_IFIFO: u16 = 0o010000;

/// Directory entry `file_type` values (`EROFS_FT_*`).
pub const FT_REG_FILE: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHRDEV: u8 = 3;
pub const FT_BLKDEV: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;

/// Map a mode's type bits to the directory entry type; `None` for an
/// invalid type.
pub fn file_type_of_mode(mode: u16) -> Option<u8> {
    Some(match mode & S_IFMT {
        S_IFREG => FT_REG_FILE,
        S_IFDIR => FT_DIR,
        S_IFCHR => FT_CHRDEV,
        S_IFBLK => FT_BLKDEV,
        S_IFIFO => FT_FIFO,
        S_IFSOCK => FT_SOCK,
        S_IFLNK => FT_SYMLINK,
        _ => return None,
    })
}

/// Xattr namespace indexes (section 9.3) with the prefix each one strips.
/// ACL entries store their whole name in the prefix and an empty suffix.
pub const XATTR_PREFIXES: &[(u8, &[u8])] = &[
    (1, b"user."),
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (4, b"trusted."),
    (6, b"security."),
];

/// Split a full xattr name into its namespace index and stored suffix.
/// Returns `None` for names the format cannot represent.
pub fn xattr_split(name: &[u8]) -> Option<(u8, &[u8])> {
    for &(index, prefix) in XATTR_PREFIXES {
        if index == 2 || index == 3 {
            if name == prefix {
                return Some((index, &[]));
            }
        } else if let Some(suffix) = name.strip_prefix(prefix) {
            return Some((index, suffix));
        }
    }
    None
}

/// On-disk size of one inline xattr entry (section 9.2), padding included.
pub fn xattr_entry_size(suffix_len: usize, value_len: usize) -> usize {
    (XATTR_ENTRY_HEADER_SIZE + suffix_len + value_len).next_multiple_of(4)
}

/// Largest inline xattr region: `i_xattr_icount` is 16 bits.
pub const XATTR_REGION_MAX: usize = XATTR_HEADER_SIZE + 4 * (u16::MAX as usize - 1);

/// The prefix of a namespace index, `None` for unknown indexes (including 5,
/// `lustre.`, which the kernel has no handler for).
pub fn xattr_prefix(index: u8) -> Option<&'static [u8]> {
    XATTR_PREFIXES
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, p)| *p)
}

/// Encode a device number the way the kernel's `new_encode_dev` does
/// (12-bit major, 20-bit minor).
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Inverse of [`encode_dev`].
pub fn decode_dev(rdev: u32) -> (u32, u32) {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    (major, minor)
}

/// Largest major and minor numbers the encoding can hold.
pub const DEV_MAJOR_MAX: u32 = 0xfff;
pub const DEV_MINOR_MAX: u32 = 0xfffff;

/// The superblock fields we write and read. Everything not named here is
/// zero in images we accept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Superblock {
    pub checksum: u32,
    pub feature_compat: u32,
    pub blkszbits: u8,
    pub sb_extslots: u8,
    pub root_nid: u16,
    pub inos: u64,
    pub epoch: i64,
    pub fixed_nsec: u32,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub xattr_blkaddr: u32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub feature_incompat: u32,
    pub u1: u16,
    pub extra_devices: u16,
    pub devt_slotoff: u16,
    pub dirblkbits: u8,
    pub xattr_prefix_count: u8,
    pub xattr_prefix_start: u32,
    pub packed_nid: u64,
    pub xattr_filter_reserved: u8,
    /// Bytes 0x69..0x80 that must be zero in our profile.
    pub reserved_nonzero: bool,
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

impl Superblock {
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.checksum.to_le_bytes());
        b[8..12].copy_from_slice(&self.feature_compat.to_le_bytes());
        b[12] = self.blkszbits;
        b[13] = self.sb_extslots;
        b[14..16].copy_from_slice(&self.root_nid.to_le_bytes());
        b[16..24].copy_from_slice(&self.inos.to_le_bytes());
        b[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        b[32..36].copy_from_slice(&self.fixed_nsec.to_le_bytes());
        b[36..40].copy_from_slice(&self.blocks.to_le_bytes());
        b[40..44].copy_from_slice(&self.meta_blkaddr.to_le_bytes());
        b[44..48].copy_from_slice(&self.xattr_blkaddr.to_le_bytes());
        b[48..64].copy_from_slice(&self.uuid);
        b[64..80].copy_from_slice(&self.volume_name);
        b[80..84].copy_from_slice(&self.feature_incompat.to_le_bytes());
        b[84..86].copy_from_slice(&self.u1.to_le_bytes());
        b[86..88].copy_from_slice(&self.extra_devices.to_le_bytes());
        b[88..90].copy_from_slice(&self.devt_slotoff.to_le_bytes());
        b[90] = self.dirblkbits;
        b[91] = self.xattr_prefix_count;
        b[92..96].copy_from_slice(&self.xattr_prefix_start.to_le_bytes());
        b[96..104].copy_from_slice(&self.packed_nid.to_le_bytes());
        b[104] = self.xattr_filter_reserved;
        b
    }

    /// Decode the 128-byte base superblock; `None` if the magic is wrong.
    pub fn decode(b: &[u8; SUPERBLOCK_SIZE]) -> Option<Self> {
        if le32(b, 0) != MAGIC {
            return None;
        }
        Some(Superblock {
            checksum: le32(b, 4),
            feature_compat: le32(b, 8),
            blkszbits: b[12],
            sb_extslots: b[13],
            root_nid: le16(b, 14),
            inos: le64(b, 16),
            epoch: le64(b, 24) as i64,
            fixed_nsec: le32(b, 32),
            blocks: le32(b, 36),
            meta_blkaddr: le32(b, 40),
            xattr_blkaddr: le32(b, 44),
            uuid: b[48..64].try_into().unwrap_or([0; 16]),
            volume_name: b[64..80].try_into().unwrap_or([0; 16]),
            feature_incompat: le32(b, 80),
            u1: le16(b, 84),
            extra_devices: le16(b, 86),
            devt_slotoff: le16(b, 88),
            dirblkbits: b[90],
            xattr_prefix_count: b[91],
            xattr_prefix_start: le32(b, 92),
            packed_nid: le64(b, 96),
            xattr_filter_reserved: b[104],
            reserved_nonzero: b[105..128].iter().any(|&x| x != 0),
        })
    }
}

/// The EROFS flavour of CRC-32C: standard polynomial and initial value but
/// no final inversion, i.e. the bitwise NOT of the usual CRC-32C.
pub fn erofs_crc32c(data: &[u8]) -> u32 {
    !crc32c::crc32c(data)
}

/// Byte range of the primary device that the superblock checksum covers,
/// given the block size.
pub fn checksum_len(block_size: u64) -> u64 {
    if block_size > SUPERBLOCK_OFFSET {
        block_size - SUPERBLOCK_OFFSET
    } else {
        block_size
    }
}

/// One decoded inode record (compact or extended), before any validation
/// beyond its own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeRecord {
    pub extended: bool,
    pub layout: u16,
    /// Raw `i_format`, kept so the validator can check the reserved bits.
    pub format: u16,
    pub xattr_icount: u16,
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    pub u: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    /// Only meaningful for extended inodes; compact inodes use the
    /// superblock's epoch.
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Reserved bytes (compact: i_mtime and 0x1C; extended: 0x06, 0x30..)
    /// that our profile requires to be zero.
    pub reserved_nonzero: bool,
}

impl InodeRecord {
    pub fn record_size(&self) -> usize {
        if self.extended {
            EXTENDED_INODE_SIZE
        } else {
            COMPACT_INODE_SIZE
        }
    }

    /// Size of the inline xattr region that follows the inode.
    pub fn xattr_size(&self) -> usize {
        if self.xattr_icount == 0 {
            0
        } else {
            XATTR_HEADER_SIZE + 4 * (usize::from(self.xattr_icount) - 1)
        }
    }

    /// Decode the first two bytes' form and then the full record. `buf`
    /// must hold at least 64 bytes or, for a compact inode, 32.
    pub fn decode(buf: &[u8]) -> Option<Self> {
        if buf.len() < COMPACT_INODE_SIZE {
            return None;
        }
        let format = le16(buf, 0);
        let extended = format & 1 == 1;
        let layout = (format >> 1) & 0x7;
        if extended {
            if buf.len() < EXTENDED_INODE_SIZE {
                return None;
            }
            Some(InodeRecord {
                extended,
                layout,
                format,
                xattr_icount: le16(buf, 2),
                mode: le16(buf, 4),
                size: le64(buf, 8),
                u: le32(buf, 16),
                ino: le32(buf, 20),
                uid: le32(buf, 24),
                gid: le32(buf, 28),
                mtime: le64(buf, 32) as i64,
                mtime_nsec: le32(buf, 40),
                nlink: le32(buf, 44),
                reserved_nonzero: le16(buf, 6) != 0 || buf[48..64].iter().any(|&x| x != 0),
            })
        } else {
            Some(InodeRecord {
                extended,
                layout,
                format,
                xattr_icount: le16(buf, 2),
                mode: le16(buf, 4),
                nlink: u32::from(le16(buf, 6)),
                size: u64::from(le32(buf, 8)),
                u: le32(buf, 16),
                ino: le32(buf, 20),
                uid: u32::from(le16(buf, 24)),
                gid: u32::from(le16(buf, 26)),
                mtime: 0,
                mtime_nsec: 0,
                reserved_nonzero: le32(buf, 12) != 0 || le32(buf, 28) != 0,
            })
        }
    }

    /// Encode; the caller has decided `extended` so that every field fits.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let format = (self.layout << 1) | u16::from(self.extended);
        out.extend_from_slice(&format.to_le_bytes());
        out.extend_from_slice(&self.xattr_icount.to_le_bytes());
        out.extend_from_slice(&self.mode.to_le_bytes());
        if self.extended {
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&self.size.to_le_bytes());
            out.extend_from_slice(&self.u.to_le_bytes());
            out.extend_from_slice(&self.ino.to_le_bytes());
            out.extend_from_slice(&self.uid.to_le_bytes());
            out.extend_from_slice(&self.gid.to_le_bytes());
            out.extend_from_slice(&self.mtime.to_le_bytes());
            out.extend_from_slice(&self.mtime_nsec.to_le_bytes());
            out.extend_from_slice(&self.nlink.to_le_bytes());
            out.extend_from_slice(&[0u8; 16]);
        } else {
            // Truncation is safe: the writer only picks the compact form
            // when nlink, size, uid and gid fit (section 5.6).
            out.extend_from_slice(&(self.nlink as u16).to_le_bytes());
            out.extend_from_slice(&(self.size as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&self.u.to_le_bytes());
            out.extend_from_slice(&self.ino.to_le_bytes());
            out.extend_from_slice(&(self.uid as u16).to_le_bytes());
            out.extend_from_slice(&(self.gid as u16).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
    }
}

/// A decoded 12-byte directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirent {
    pub nid: u64,
    pub nameoff: u16,
    pub file_type: u8,
    pub reserved: u8,
}

impl Dirent {
    pub fn decode(b: &[u8]) -> Self {
        Dirent {
            nid: le64(b, 0),
            nameoff: le16(b, 8),
            file_type: b[10],
            reserved: b[11],
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.nid.to_le_bytes());
        out.extend_from_slice(&self.nameoff.to_le_bytes());
        out.push(self.file_type);
        out.push(0);
    }
}

/// One device-table slot (section 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSlot {
    pub tag: [u8; 64],
    pub blocks: u32,
    pub uniaddr: u32,
}

impl DeviceSlot {
    pub fn encode(&self) -> [u8; DEVICE_SLOT_SIZE] {
        let mut b = [0u8; DEVICE_SLOT_SIZE];
        b[0..64].copy_from_slice(&self.tag);
        b[64..68].copy_from_slice(&self.blocks.to_le_bytes());
        b[68..72].copy_from_slice(&self.uniaddr.to_le_bytes());
        b
    }

    /// Decode; the second value is true when reserved bytes are non-zero.
    pub fn decode(b: &[u8]) -> (Self, bool) {
        let mut tag = [0u8; 64];
        tag.copy_from_slice(&b[0..64]);
        let reserved = b[72..DEVICE_SLOT_SIZE].iter().any(|&x| x != 0);
        (
            DeviceSlot {
                tag,
                blocks: le32(b, 64),
                uniaddr: le32(b, 68),
            },
            reserved,
        )
    }
}

/// Align `x` up to a multiple of `n` (a power of two); `None` on overflow.
pub fn align_up(x: u64, n: u64) -> Option<u64> {
    Some(x.checked_add(n - 1)? & !(n - 1))
}

/// Little-endian field readers shared with the reader module.
pub(crate) mod le {
    pub fn u16_at(b: &[u8], off: usize) -> u16 {
        super::le16(b, off)
    }
    pub fn u32_at(b: &[u8], off: usize) -> u32 {
        super::le32(b, off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_vector() {
        assert_eq!(erofs_crc32c(b"123456789"), 0x1CF9_6D7C);
    }

    #[test]
    fn dev_encoding_vectors() {
        assert_eq!(encode_dev(1, 3), 0x0000_0103);
        assert_eq!(encode_dev(300, 70000), 0x1111_2C70);
        assert_eq!(decode_dev(0x1111_2C70), (300, 70000));
        assert_eq!(decode_dev(encode_dev(4095, 1_048_575)), (4095, 1_048_575));
    }

    #[test]
    fn xattr_names() {
        assert_eq!(xattr_split(b"user.foo"), Some((1, &b"foo"[..])));
        assert_eq!(
            xattr_split(b"trusted.overlay.opaque"),
            Some((4, &b"overlay.opaque"[..]))
        );
        assert_eq!(xattr_split(b"system.posix_acl_access"), Some((2, &b""[..])));
        assert_eq!(xattr_split(b"system.posix_acl_accessX"), None);
        assert_eq!(xattr_split(b"system.foo"), None);
        assert_eq!(xattr_split(b"security.capability").map(|x| x.0), Some(6));
    }

    #[test]
    fn superblock_roundtrip() {
        let sb = Superblock {
            feature_compat: 3,
            blkszbits: 12,
            root_nid: 36,
            inos: 2,
            epoch: -5,
            blocks: 1,
            ..Default::default()
        };
        let enc = sb.encode();
        assert_eq!(Superblock::decode(&enc), Some(sb));
    }
}
