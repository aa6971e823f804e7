//! Merged metadata (fsmeta, section 12 of `shared/docs/erofs-format.md`):
//! one metadata-only image that shows a chain of layer images as overlayfs
//! would stack them, with every regular file's data left in the layer it
//! came from.
//!
//! Each layer becomes one extra device (oldest = device 1), and each
//! regular file a chunk-based inode whose chunk indexes name that device.
//! The device table's unified addresses place device *k* right after the
//! fsmeta and the devices before it, so the image works both with
//! `device=` mount options (oldest first) and as the first part of one
//! flat disk `fsmeta ‖ layer 1 ‖ … ‖ layer n` (a VM's VMDK, see
//! [`crate::vmdk`]).
//!
//! The merge follows overlayfs lookup rules rather than a re-implementation
//! of tar extraction, because the result must equal what a container sees
//! through overlayfs over the same layers:
//! * the topmost layer holding a name decides what it is; a whiteout (0:0
//!   character device) there hides it;
//! * a directory merges with same-named directories below it until one of
//!   them is opaque (`trusted.overlay.opaque = "y"`, included) or a lower
//!   layer holds a non-directory there (a whiteout or a file: the
//!   directory was deleted and recreated above it; excluded);
//! * the root of every layer is always merged: overlayfs ignores an
//!   opaque marker on a lower layer's root;
//! * metadata and xattrs of a merged directory come from its topmost copy;
//! * hard links stay links within the layer that holds them, and link
//!   counts are those of the merged tree.
//!
//! The result is a plain filesystem, not an overlay layer: whiteouts are
//! left out and every `trusted.overlay.*` xattr is dropped, since overlayfs
//! consumes those itself and never shows them to a container.
//!
//! Only layers whose files can be referenced block for block can be
//! merged: 4 KiB blocks, no device table of their own (tar indexes point
//! into a tar) and no inline file tails. Anything else is an
//! [`MergeError::Incompatible`], on which callers fall back to stacking
//! the layers one mount each.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::format::{self, FT_BLKDEV, FT_CHRDEV, FT_DIR, FT_FIFO, FT_REG_FILE, FT_SYMLINK};
use crate::reader::{ExtentTarget, Image, Inode, ReadAt, ReadError};
use crate::tree::{ChunkAddr, Content, FileData, Meta, Node, ROOT, Tree, TreeError, display_path};
use crate::writer::{Device, ImageWriter, Output, Summary, WriteError, WriterOptions};

/// The block size layers must have: file data is referenced in whole
/// blocks of the merged image's block size, and tar indexes (512-byte
/// blocks) would need their tar, not their image, as the device.
pub const BLKSZBITS: u8 = 12;

/// Most layers one image can reference: device ids are 16 bits and 0 is
/// the merged image itself.
pub const MAX_LAYERS: usize = u16::MAX as usize;

/// Prefix of the overlayfs-private xattrs left out of the merged tree.
const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";

/// Why a layer cannot be referenced from merged metadata.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Incompatibility {
    #[error("block size 2^{blkszbits} (merging needs 2^12; 2^9 is a tar index)")]
    BlockSize { blkszbits: u8 },
    #[error("it has a device table of its own ({devices} extra devices, e.g. a tar index)")]
    DeviceTable { devices: usize },
    #[error("its length {len} is not a multiple of 4096")]
    UnalignedLength { len: u64 },
    #[error("its length {len} exceeds 2^32 blocks")]
    TooLarge { len: u64 },
    #[error("{path}: file data is stored inline (the layer was built with inline data)")]
    InlineData { path: String },
}

/// Why a merge failed.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("no layers to merge")]
    NoLayers,
    #[error("{count} layers; at most {MAX_LAYERS} fit the device table")]
    TooManyLayers { count: usize },
    /// The layer cannot be merged at all; the chain must be mounted layer
    /// by layer instead.
    #[error("layer {layer} (0 = oldest) cannot be merged: {reason}")]
    Incompatible {
        layer: usize,
        reason: Incompatibility,
    },
    #[error("layer {layer} (0 = oldest)")]
    Read {
        layer: usize,
        #[source]
        source: ReadError,
    },
    #[error("layer {layer} (0 = oldest): directory nid {nid} is reached twice")]
    DirectoryCycle { layer: usize, nid: u64 },
    #[error("layer {layer} (0 = oldest): {path}")]
    Tree {
        layer: usize,
        path: String,
        #[source]
        source: TreeError,
    },
    #[error("writing the merged image")]
    Write(#[from] WriteError),
}

/// What [`build`] produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeSummary {
    pub image: Summary,
    pub layers: usize,
    /// Layer entries the merged tree leaves out (subtrees not counted):
    /// whiteouts and what they, opaque directories and replacements hide.
    pub hidden: u64,
    /// Time spent reading layers and building the merged tree.
    pub read_time: Duration,
    /// Time spent laying out and writing the image.
    pub write_time: Duration,
}

/// Merge `layers` (oldest first) into a metadata-only image written to
/// `out` (which must start empty). Deterministic: the same layer bytes give
/// the same image bytes; the UUID is derived from the layers' UUIDs and
/// lengths.
pub fn build<R: ReadAt, W: Output>(layers: &[R], out: W) -> Result<(W, MergeSummary), MergeError> {
    if layers.is_empty() {
        return Err(MergeError::NoLayers);
    }
    if layers.len() > MAX_LAYERS {
        return Err(MergeError::TooManyLayers {
            count: layers.len(),
        });
    }
    let started = Instant::now();
    let mut images = Vec::with_capacity(layers.len());
    let mut devices = Vec::with_capacity(layers.len());
    for (layer, r) in layers.iter().enumerate() {
        let (img, dev) = open_layer(layer, r)?;
        images.push(img);
        devices.push(dev);
    }
    let mut merger = Merger {
        layers: &images,
        tree: Tree::new(Meta::default(), Meta::default()),
        links: HashMap::new(),
        visited: HashSet::new(),
        hidden: 0,
    };
    merger.run()?;
    let read_time = started.elapsed();

    let started = Instant::now();
    let uuid = derive_uuid(&images);
    let writer = ImageWriter::new(
        out,
        WriterOptions {
            blkszbits: BLKSZBITS,
            inline_data: false,
            uuid,
            volume_name: Vec::new(),
            devices,
        },
    )?;
    let (out, image) = writer.finish(&merger.tree)?;
    Ok((
        out,
        MergeSummary {
            image,
            layers: layers.len(),
            hidden: merger.hidden,
            read_time,
            write_time: started.elapsed(),
        },
    ))
}

/// Open one layer and check it can be referenced block for block.
fn open_layer<R: ReadAt>(layer: usize, r: R) -> Result<(Image<R>, Device), MergeError> {
    let incompatible = |reason| MergeError::Incompatible { layer, reason };
    let img = Image::new(r).map_err(|source| MergeError::Read { layer, source })?;
    let blkszbits = img.superblock().blkszbits;
    if blkszbits != BLKSZBITS {
        return Err(incompatible(Incompatibility::BlockSize { blkszbits }));
    }
    if !img.devices().is_empty() {
        return Err(incompatible(Incompatibility::DeviceTable {
            devices: img.devices().len(),
        }));
    }
    // The whole file is the device, not just the superblock's block
    // count: the flat disk concatenates files, so every later device's
    // unified address depends on the exact length of this one.
    let len = img.image_len();
    if !len.is_multiple_of(1 << BLKSZBITS) {
        return Err(incompatible(Incompatibility::UnalignedLength { len }));
    }
    let blocks = u32::try_from(len >> BLKSZBITS)
        .map_err(|_| incompatible(Incompatibility::TooLarge { len }))?;
    let tag = hex_lower(&img.superblock().uuid);
    Ok((img, Device { tag, blocks }))
}

/// The layer UUID as 32 lowercase hex digits: the tag mkfs.erofs writes
/// for rebuild sources, so tools that show tags show the same thing.
fn hex_lower(bytes: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
        .collect()
}

/// Four CRC-32C words over every layer's UUID and length, each word with
/// its own seed. Not a cryptographic identity: it only has to be stable
/// for the same chain and differ between chains, like a layer's UUID.
fn derive_uuid<R: ReadAt>(images: &[Image<R>]) -> [u8; 16] {
    let mut uuid = [0u8; 16];
    for (k, word) in uuid.chunks_exact_mut(4).enumerate() {
        let mut crc = crc32c::crc32c(&(k as u32).to_le_bytes());
        for img in images {
            crc = crc32c::crc32c_append(crc, &img.superblock().uuid);
            crc = crc32c::crc32c_append(crc, &img.image_len().to_le_bytes());
        }
        word.copy_from_slice(&crc.to_le_bytes());
    }
    uuid
}

/// One layer's copy of an entry: (layer index, NID, dirent file type).
#[derive(Debug, Clone, Copy)]
struct Source {
    layer: usize,
    nid: u64,
    file_type: u8,
}

struct Merger<'a, R: ReadAt> {
    layers: &'a [Image<R>],
    tree: Tree,
    /// First merged path of each multiply-linked layer inode.
    links: HashMap<(usize, u64), Vec<Vec<u8>>>,
    /// Directories already expanded, so a corrupt layer whose directories
    /// form a cycle cannot make the merge run forever.
    visited: HashSet<(usize, u64)>,
    hidden: u64,
}

impl<R: ReadAt> Merger<'_, R> {
    fn inode(&self, layer: usize, nid: u64) -> Result<Inode, MergeError> {
        self.layers[layer]
            .inode(nid)
            .map_err(|source| MergeError::Read { layer, source })
    }

    /// Breadth-first over merged directories, each with the stack of layer
    /// directories (topmost first) that contribute to it.
    fn run(&mut self) -> Result<(), MergeError> {
        let top = self.layers.len() - 1;
        let root = self.inode(top, self.layers[top].root_nid())?;
        let node = self.node(top, &root, &[])?;
        let root_node = self.tree.node_mut(ROOT);
        root_node.meta = node.meta;
        root_node.xattrs = node.xattrs;
        let stack: Vec<Source> = (0..self.layers.len())
            .rev()
            .map(|layer| Source {
                layer,
                nid: self.layers[layer].root_nid(),
                file_type: FT_DIR,
            })
            .collect();
        let mut queue: VecDeque<(Vec<Vec<u8>>, Vec<Source>)> = VecDeque::new();
        queue.push_back((Vec::new(), stack));
        while let Some((path, stack)) = queue.pop_front() {
            for (name, copies) in self.children(&stack)? {
                let mut child = path.clone();
                child.push(name);
                if let Some(sub) = self.place(&child, &copies)? {
                    queue.push_back((child, sub));
                }
            }
        }
        Ok(())
    }

    /// Every name in the merged directory with its copies, topmost layer
    /// first.
    fn children(&mut self, stack: &[Source]) -> Result<BTreeMap<Vec<u8>, Vec<Source>>, MergeError> {
        let mut names: BTreeMap<Vec<u8>, Vec<Source>> = BTreeMap::new();
        for s in stack {
            if !self.visited.insert((s.layer, s.nid)) {
                return Err(MergeError::DirectoryCycle {
                    layer: s.layer,
                    nid: s.nid,
                });
            }
            let img = &self.layers[s.layer];
            let read = |source| MergeError::Read {
                layer: s.layer,
                source,
            };
            let dir = img.inode(s.nid).map_err(read)?;
            for e in img.dir_entries(&dir).map_err(read)? {
                let e = e.map_err(read)?;
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                names.entry(e.name).or_default().push(Source {
                    layer: s.layer,
                    nid: e.nid,
                    file_type: e.file_type,
                });
            }
        }
        Ok(names)
    }

    /// Add the merged entry for `path` from its copies (topmost first).
    /// Returns the directory stack to expand when the entry is a
    /// directory.
    fn place(
        &mut self,
        path: &[Vec<u8>],
        copies: &[Source],
    ) -> Result<Option<Vec<Source>>, MergeError> {
        let Some((top, lower)) = copies.split_first() else {
            return Ok(None);
        };
        let inode = self.inode(top.layer, top.nid)?;
        if is_whiteout(&inode) {
            self.hidden += copies.len() as u64;
            return Ok(None);
        }
        if !inode.is_dir() {
            self.hidden += lower.len() as u64;
            self.add(path, top.layer, &inode)?;
            return Ok(None);
        }
        let mut stack = vec![*top];
        if !is_opaque(&inode) {
            for (k, s) in lower.iter().enumerate() {
                if s.file_type != FT_DIR {
                    // Deleted (whiteout) or replaced by a non-directory
                    // in this layer, then recreated above: nothing from
                    // here down belongs to the directory.
                    self.hidden += (lower.len() - k) as u64;
                    break;
                }
                stack.push(*s);
                if is_opaque(&self.inode(s.layer, s.nid)?) {
                    self.hidden += (lower.len() - k - 1) as u64;
                    break;
                }
            }
        } else {
            self.hidden += lower.len() as u64;
        }
        self.add(path, top.layer, &inode)?;
        Ok(Some(stack))
    }

    /// Insert one entry, as a hard link when its layer inode is already in
    /// the tree under another name.
    fn add(&mut self, path: &[Vec<u8>], layer: usize, inode: &Inode) -> Result<(), MergeError> {
        let tree_err = |source| MergeError::Tree {
            layer,
            path: display_path(path),
            source,
        };
        let linked = !inode.is_dir() && inode.nlink() > 1;
        if linked && let Some(first) = self.links.get(&(layer, inode.nid())) {
            return self.tree.hard_link(path, first).map_err(tree_err);
        }
        let node = self.node(layer, inode, path)?;
        self.tree.insert(path, node).map_err(tree_err)?;
        if linked {
            self.links.insert((layer, inode.nid()), path.to_vec());
        }
        Ok(())
    }

    /// The tree node for a layer inode: metadata, xattrs without the
    /// overlay-private ones, and content (directories empty; their
    /// children are placed as the merge reaches them).
    fn node(&self, layer: usize, inode: &Inode, path: &[Vec<u8>]) -> Result<Node, MergeError> {
        let img = &self.layers[layer];
        let read = |source| MergeError::Read { layer, source };
        let (mtime, mtime_nsec) = inode.mtime();
        let meta = Meta {
            perm: inode.mode() & 0o7777,
            uid: inode.uid(),
            gid: inode.gid(),
            mtime,
            mtime_nsec,
        };
        let content = match inode.file_type() {
            FT_DIR => Content::Dir(BTreeMap::new()),
            FT_REG_FILE => Content::File(file_data(img, inode, layer, path)?),
            FT_SYMLINK => Content::Symlink(img.symlink_target(inode).map_err(read)?),
            FT_CHRDEV | FT_BLKDEV => {
                let (major, minor) = inode.rdev().unwrap_or_default();
                if inode.file_type() == FT_CHRDEV {
                    Content::CharDevice { major, minor }
                } else {
                    Content::BlockDevice { major, minor }
                }
            }
            FT_FIFO => Content::Fifo,
            // FT_SOCK: the reader derives the type from the mode and
            // refuses modes of no known type.
            _ => Content::Socket,
        };
        let mut node = Node::new(meta, content);
        node.xattrs = inode
            .xattrs()
            .iter()
            .filter(|x| !x.name.starts_with(OVERLAY_PREFIX))
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect();
        Ok(node)
    }
}

fn is_whiteout(inode: &Inode) -> bool {
    inode.file_type() == FT_CHRDEV && inode.rdev() == Some((0, 0))
}

/// Opaque as overlayfs reads it: the value `y` (`x` only marks a
/// directory holding xattr whiteouts).
fn is_opaque(inode: &Inode) -> bool {
    inode
        .xattrs()
        .iter()
        .any(|x| x.name == crate::tree::OVERLAY_OPAQUE && x.value == b"y")
}

/// Smallest `b` with `2^b >= n`.
fn ceil_log2(n: u64) -> u32 {
    if n <= 1 {
        0
    } else {
        64 - (n - 1).leading_zeros()
    }
}

/// Chunk indexes pointing at the file's blocks in layer `layer` (device
/// `layer + 1`). A chunk-based source keeps its chunk size (holes stay
/// holes); a flat one becomes one chunk when it fits the format's largest
/// chunk, consecutive chunks otherwise.
fn file_data<R: ReadAt>(
    img: &Image<R>,
    inode: &Inode,
    layer: usize,
    path: &[Vec<u8>],
) -> Result<FileData, MergeError> {
    let size = inode.size();
    if size == 0 {
        return Ok(FileData::EMPTY);
    }
    let read = |source| MergeError::Read { layer, source };
    let bs = img.block_size();
    let chunkbits = match inode.layout() {
        crate::reader::Layout::ChunkBased { chunkbits, .. } => chunkbits,
        _ => ceil_log2(size.div_ceil(bs)).min(31) as u8,
    };
    let chunk = bs << chunkbits;
    // open_layer bounds the layer count by MAX_LAYERS (u16::MAX).
    let device = (layer + 1) as u16;
    let mut chunks = Vec::new();
    for ext in img.extents(inode) {
        let ext = ext.map_err(read)?;
        let start = match ext.target {
            ExtentTarget::Hole => None,
            ExtentTarget::Blocks { offset, .. } => Some(offset / bs),
            ExtentTarget::Inline { .. } => {
                return Err(MergeError::Incompatible {
                    layer,
                    reason: Incompatibility::InlineData {
                        path: display_path(path),
                    },
                });
            }
        };
        let mut pos = ext.logical;
        while pos < ext.logical + ext.len {
            chunks.push(match start {
                None => ChunkAddr {
                    device: 0,
                    blkaddr: format::NULL_ADDR,
                },
                Some(start) => ChunkAddr {
                    device,
                    // Inside the layer, whose block count fits 32 bits.
                    blkaddr: (start + (pos - ext.logical) / bs) as u32,
                },
            });
            pos += chunk;
        }
    }
    Ok(FileData::Chunked {
        size,
        chunkbits,
        chunks,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::reader::DeviceReader;

    fn p(s: &str) -> Vec<Vec<u8>> {
        s.split('/')
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().to_vec())
            .collect()
    }

    fn meta(perm: u16) -> Meta {
        Meta {
            perm,
            mtime: 1_700_000_000,
            ..Meta::default()
        }
    }

    /// A layer image built in memory with our writer.
    struct Layer {
        w: ImageWriter<Cursor<Vec<u8>>>,
        t: Tree,
    }

    impl Layer {
        fn with(opts: WriterOptions) -> Layer {
            Layer {
                w: ImageWriter::new(Cursor::new(Vec::new()), opts).unwrap(),
                t: Tree::new(meta(0o755), meta(0o755)),
            }
        }

        fn new(seed: u8) -> Layer {
            Layer::with(WriterOptions {
                uuid: [seed; 16],
                ..WriterOptions::default()
            })
        }

        fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
            let fd = self
                .w
                .add_file_data(data.len() as u64, &mut &data[..])
                .unwrap();
            let node = Node::new(meta(0o644), Content::File(fd));
            self.t.insert(&p(path), node).unwrap();
            self
        }

        fn dir(&mut self, path: &str, perm: u16) -> &mut Self {
            let node = Node::new(meta(perm), Content::Dir(BTreeMap::new()));
            self.t.insert(&p(path), node).unwrap();
            self
        }

        fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
            let node = Node::new(meta(0o777), Content::Symlink(target.as_bytes().to_vec()));
            self.t.insert(&p(path), node).unwrap();
            self
        }

        fn whiteout(&mut self, path: &str) -> &mut Self {
            self.t.whiteout(&p(path), meta(0)).unwrap();
            self
        }

        fn opaque(&mut self, path: &str) -> &mut Self {
            self.t.set_opaque(&p(path)).unwrap();
            self
        }

        fn link(&mut self, path: &str, target: &str) -> &mut Self {
            self.t.hard_link(&p(path), &p(target)).unwrap();
            self
        }

        fn xattr(&mut self, path: &str, name: &str, value: &str) -> &mut Self {
            let id = self.t.lookup(&p(path)).unwrap();
            self.t
                .node_mut(id)
                .xattrs
                .insert(name.as_bytes().to_vec(), value.as_bytes().to_vec());
            self
        }

        fn finish(&mut self) -> Vec<u8> {
            let w = std::mem::replace(
                &mut self.w,
                ImageWriter::new(Cursor::new(Vec::new()), WriterOptions::default()).unwrap(),
            );
            w.finish(&self.t).unwrap().0.into_inner()
        }
    }

    fn merge(layers: &[Vec<u8>]) -> Vec<u8> {
        build(layers, Cursor::new(Vec::new()))
            .unwrap()
            .0
            .into_inner()
    }

    fn open(fsmeta: Vec<u8>, layers: &[Vec<u8>]) -> Image<Vec<u8>> {
        let devices: Vec<DeviceReader> = layers
            .iter()
            .map(|l| Box::new(l.clone()) as DeviceReader)
            .collect();
        Image::new(fsmeta).unwrap().with_devices(devices).unwrap()
    }

    /// Every entry as "path: description", a compact tree to compare.
    fn listing(img: &Image<Vec<u8>>) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), img.root_nid())];
        while let Some((path, nid)) = stack.pop() {
            let inode = img.inode(nid).unwrap();
            let mut xattrs: Vec<String> = inode
                .xattrs()
                .iter()
                .map(|x| {
                    format!(
                        " {}={}",
                        String::from_utf8_lossy(&x.name),
                        String::from_utf8_lossy(&x.value)
                    )
                })
                .collect();
            xattrs.sort();
            let what = match inode.file_type() {
                FT_DIR => {
                    for e in img.read_dir(&inode).unwrap() {
                        if e.name != b"." && e.name != b".." {
                            let name = String::from_utf8(e.name).unwrap();
                            stack.push((format!("{path}/{name}"), e.nid));
                        }
                    }
                    format!("dir {:o}", inode.mode() & 0o7777)
                }
                FT_REG_FILE => {
                    let data = img.read_all(&inode, 1 << 20).unwrap();
                    format!(
                        "file {:?} nlink {}",
                        String::from_utf8_lossy(&data),
                        inode.nlink()
                    )
                }
                FT_SYMLINK => format!(
                    "symlink {}",
                    String::from_utf8(img.symlink_target(&inode).unwrap()).unwrap()
                ),
                t => format!("type {t} rdev {:?}", inode.rdev()),
            };
            let line = format!("{}: {what}{}", path_or_root(&path), xattrs.concat());
            out.push((path, line));
        }
        out.sort();
        out.into_iter().map(|(_, line)| line).collect()
    }

    fn path_or_root(p: &str) -> &str {
        if p.is_empty() { "/" } else { p }
    }

    fn merged_listing(layers: &[Vec<u8>]) -> Vec<String> {
        listing(&open(merge(layers), layers))
    }

    #[test]
    fn whiteouts_hide_and_are_not_shown() {
        let l1 = Layer::new(1)
            .file("a/gone", b"gone")
            .file("a/stay", b"stay")
            .file("c", b"c")
            .finish();
        let l2 = Layer::new(2)
            .dir("a", 0o750)
            .whiteout("a/gone")
            .whiteout("c")
            .whiteout("never")
            .finish();
        assert_eq!(
            merged_listing(&[l1, l2]),
            [
                "/: dir 755",
                "/a: dir 750",
                "/a/stay: file \"stay\" nlink 1"
            ]
        );
    }

    #[test]
    fn opaque_directory_hides_lower_content_and_loses_the_marker() {
        let l1 = Layer::new(1)
            .file("b/old", b"old")
            .file("b/sub/deep", b"deep")
            .finish();
        let l2 = Layer::new(2).opaque("b").file("b/new", b"new").finish();
        assert_eq!(
            merged_listing(&[l1, l2]),
            ["/: dir 755", "/b: dir 755", "/b/new: file \"new\" nlink 1"]
        );
    }

    #[test]
    fn middle_layer_opaque_stops_at_that_layer() {
        // erofs-utils < 1.9.3 got this wrong (vm-mode.md §0.1).
        let l1 = Layer::new(1).file("dir/old", b"old").finish();
        let l2 = Layer::new(2).opaque("dir").file("dir/mid", b"mid").finish();
        let l3 = Layer::new(3).file("dir/new", b"new").finish();
        assert_eq!(
            merged_listing(&[l1, l2, l3]),
            [
                "/: dir 755",
                "/dir: dir 755",
                "/dir/mid: file \"mid\" nlink 1",
                "/dir/new: file \"new\" nlink 1",
            ]
        );
    }

    #[test]
    fn directory_deleted_and_recreated() {
        let l1 = Layer::new(1).file("rd/x", b"x").finish();
        let l2 = Layer::new(2).whiteout("rd").finish();
        let l3 = Layer::new(3).file("rd/y", b"y").finish();
        assert_eq!(
            merged_listing(&[l1, l2, l3]),
            ["/: dir 755", "/rd: dir 755", "/rd/y: file \"y\" nlink 1"]
        );
    }

    #[test]
    fn files_and_directories_replace_each_other() {
        let l1 = Layer::new(1)
            .file("x/a", b"a")
            .file("f", b"f")
            .file("d/sub/g", b"g")
            .symlink("s", "one")
            .symlink("s2", "two")
            .finish();
        let l2 = Layer::new(2)
            .file("x", b"now a file")
            .file("f/g", b"f is a dir")
            .file("d", b"d is a file")
            .symlink("s", "uno")
            .file("s2/in", b"s2 is a dir")
            .finish();
        // x: dir, then file, then dir again: nothing of the first dir.
        let l3 = Layer::new(3).file("x/b", b"b").finish();
        assert_eq!(
            merged_listing(&[l1, l2, l3]),
            [
                "/: dir 755",
                "/d: file \"d is a file\" nlink 1",
                "/f: dir 755",
                "/f/g: file \"f is a dir\" nlink 1",
                "/s: symlink uno",
                "/s2: dir 755",
                "/s2/in: file \"s2 is a dir\" nlink 1",
                "/x: dir 755",
                "/x/b: file \"b\" nlink 1",
            ]
        );
    }

    #[test]
    fn hard_links_stay_links_with_merged_counts() {
        let l1 = Layer::new(1)
            .file("h1", b"h")
            .link("h2", "h1")
            .file("p", b"p")
            .link("q", "p")
            .link("r", "p")
            .finish();
        let l2 = Layer::new(2).whiteout("h2").file("r", b"new r").finish();
        let layers = [l1, l2];
        let img = open(merge(&layers), &layers);
        assert_eq!(
            listing(&img),
            [
                "/: dir 755",
                "/h1: file \"h\" nlink 1",
                "/p: file \"p\" nlink 2",
                "/q: file \"p\" nlink 2",
                "/r: file \"new r\" nlink 1",
            ]
        );
        assert_eq!(img.lookup(b"p").unwrap(), img.lookup(b"q").unwrap());
    }

    #[test]
    fn xattrs_and_metadata_come_from_the_topmost_copy() {
        let l1 = Layer::new(1)
            .dir("d", 0o700)
            .xattr("d", "user.old", "1")
            .file("d/f", b"f")
            .xattr("d/f", "user.f", "v")
            .xattr("d/f", "security.capability", "cap")
            .finish();
        let l2 = Layer::new(2)
            .dir("d", 0o711)
            .xattr("d", "user.new", "2")
            .xattr("d", "trusted.overlay.origin", "")
            .whiteout("d/gone")
            .finish();
        assert_eq!(
            merged_listing(&[l1, l2]),
            [
                "/: dir 755",
                "/d: dir 711 user.new=2",
                "/d/f: file \"f\" nlink 1 security.capability=cap user.f=v",
            ]
        );
    }

    #[test]
    fn a_lower_root_opaque_marker_is_ignored_like_overlayfs() {
        let l1 = Layer::new(1).file("a", b"a").finish();
        let l2 = Layer::new(2).opaque("").file("b", b"b").finish();
        assert_eq!(
            merged_listing(&[l1, l2]),
            [
                "/: dir 755",
                "/a: file \"a\" nlink 1",
                "/b: file \"b\" nlink 1",
            ]
        );
    }

    #[test]
    fn chunks_point_into_the_layer_and_holes_stay_holes() {
        let mut l = Layer::new(1);
        let block: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8 + 1).collect();
        let FileData::Plain { blkaddr, .. } = l.w.add_file_data(4096, &mut &block[..]).unwrap()
        else {
            panic!("plain data expected");
        };
        let sparse = FileData::Chunked {
            size: 3 * 4096 + 10,
            chunkbits: 0,
            chunks: vec![
                ChunkAddr {
                    device: 0,
                    blkaddr: format::NULL_ADDR,
                },
                ChunkAddr { device: 0, blkaddr },
                ChunkAddr {
                    device: 0,
                    blkaddr: format::NULL_ADDR,
                },
                ChunkAddr { device: 0, blkaddr },
            ],
        };
        l.t.insert(&p("sparse"), Node::new(meta(0o644), Content::File(sparse)))
            .unwrap();
        l.file("big", &vec![7u8; 5 * 4096 + 1]);
        let layers = [Layer::new(9).file("below", b"x").finish(), l.finish()];
        let img = open(merge(&layers), &layers);
        let sparse = img.inode(img.lookup(b"sparse").unwrap().unwrap()).unwrap();
        let ext: Vec<_> = img.extents(&sparse).map(Result::unwrap).collect();
        assert_eq!(ext.len(), 4);
        assert_eq!(ext[0].target, ExtentTarget::Hole);
        assert_eq!(ext[2].target, ExtentTarget::Hole);
        assert!(matches!(
            ext[1].target,
            ExtentTarget::Blocks { device: 2, .. }
        ));
        let data = img.read_all(&sparse, 1 << 20).unwrap();
        let mut want = vec![0u8; 4096];
        want.extend_from_slice(&block);
        want.extend_from_slice(&[0u8; 4096]);
        want.extend_from_slice(&block[..10]);
        assert_eq!(data, want);
        // A flat file of 6 blocks: one chunk of 8 blocks (chunkbits 3).
        let big = img.inode(img.lookup(b"big").unwrap().unwrap()).unwrap();
        assert!(matches!(
            big.layout(),
            crate::reader::Layout::ChunkBased {
                chunkbits: 3,
                count: 1,
                ..
            }
        ));
        assert_eq!(
            img.read_all(&big, 1 << 20).unwrap(),
            vec![7u8; 5 * 4096 + 1]
        );
    }

    #[test]
    fn device_table_describes_the_flat_disk() {
        let layers = [
            Layer::new(1).file("a", &[1u8; 10_000]).finish(),
            Layer::new(2).file("b", &[2u8; 5000]).finish(),
        ];
        let fsmeta = merge(&layers);
        assert_eq!(fsmeta, merge(&layers), "merging is deterministic");
        let img = Image::new(fsmeta.clone()).unwrap();
        let primary = fsmeta.len() as u64 / 4096;
        let slots = img.devices();
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[0].blocks as usize, layers[0].len() / 4096);
        assert_eq!(u64::from(slots[0].uniaddr), primary);
        assert_eq!(
            u64::from(slots[1].uniaddr),
            primary + u64::from(slots[0].blocks)
        );
        assert_eq!(&slots[0].tag[..32], b"01010101010101010101010101010101");
        // Read through the concatenation, as a VM would see its disk.
        let mut flat = fsmeta;
        flat.extend_from_slice(&layers[0]);
        flat.extend_from_slice(&layers[1]);
        let flat = Image::new(flat).unwrap();
        let b = flat.inode(flat.lookup(b"b").unwrap().unwrap()).unwrap();
        assert_eq!(flat.read_all(&b, 1 << 20).unwrap(), vec![2u8; 5000]);
        let report = crate::fsck::check(
            &open(merge(&layers), &layers),
            &crate::fsck::CheckOptions {
                read_data: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(report.regular_files, 2);
    }

    #[test]
    fn incompatible_layers_are_named() {
        let good = Layer::new(1).file("a", b"a").finish();
        let tar_index = Layer::with(WriterOptions {
            blkszbits: 9,
            ..WriterOptions::default()
        })
        .file("a", b"a")
        .finish();
        let inline = Layer::with(WriterOptions {
            inline_data: true,
            ..WriterOptions::default()
        })
        .file("dir/a", b"tail")
        .finish();
        let with_devices = Layer::with(WriterOptions {
            devices: vec![Device {
                tag: Vec::new(),
                blocks: 1,
            }],
            ..WriterOptions::default()
        })
        .finish();
        let mut unaligned = good.clone();
        unaligned.push(0);
        let cases = [
            (tar_index, Incompatibility::BlockSize { blkszbits: 9 }),
            (
                inline,
                Incompatibility::InlineData {
                    path: "/dir/a".into(),
                },
            ),
            (with_devices, Incompatibility::DeviceTable { devices: 1 }),
            (
                unaligned.clone(),
                Incompatibility::UnalignedLength {
                    len: unaligned.len() as u64,
                },
            ),
        ];
        for (bad, want) in cases {
            match build(&[good.clone(), bad], Cursor::new(Vec::new())) {
                Err(MergeError::Incompatible { layer: 1, reason }) => assert_eq!(reason, want),
                other => panic!("expected {want:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn layer_count_limits() {
        assert!(matches!(
            build::<Vec<u8>, _>(&[], Cursor::new(Vec::new())),
            Err(MergeError::NoLayers)
        ));
        let many = vec![Vec::<u8>::new(); MAX_LAYERS + 1];
        assert!(matches!(
            build(&many, Cursor::new(Vec::new())),
            Err(MergeError::TooManyLayers { .. })
        ));
        // Hundreds of layers, each adding a file and deleting the previous
        // layer's.
        let layers: Vec<Vec<u8>> = (0..300u32)
            .map(|i| {
                let mut l = Layer::new(i as u8);
                l.file(&format!("f{i}"), format!("{i}").as_bytes());
                if i > 0 {
                    l.whiteout(&format!("f{}", i - 1));
                }
                l.finish()
            })
            .collect();
        assert_eq!(
            merged_listing(&layers),
            ["/: dir 755", "/f299: file \"299\" nlink 1"]
        );
    }
}
