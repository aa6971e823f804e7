//! The in-memory metadata tree the writer lays out.
//!
//! Layer input (tar members, directory walks, merged layers) is applied to a
//! [`Tree`] in order; the tree enforces the structural rules (names,
//! parents, hard links, xattr namespaces) so that the writer never sees an
//! input it cannot represent. File contents are not held here: each regular
//! file carries a [`FileData`] that says where its bytes already are.

use std::collections::BTreeMap;

use crate::format;

/// Index of a node in the tree's arena.
pub type NodeId = usize;

/// The root directory's id.
pub const ROOT: NodeId = 0;

/// Ownership, permissions and time of an inode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
}

/// Where a regular file's bytes live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// `size` bytes in consecutive blocks of this image from `blkaddr`
    /// (FLAT_PLAIN). An empty file is `Plain { size: 0, blkaddr: 0 }`.
    Plain { size: u64, blkaddr: u32 },
    /// `size / block_size` full blocks from `blkaddr` and the remaining
    /// bytes kept here to be stored inline after the inode (FLAT_INLINE).
    Inline {
        size: u64,
        blkaddr: u32,
        tail: Vec<u8>,
    },
    /// Chunk-based: chunks of `block_size << chunkbits` bytes, each a run of
    /// blocks on a device (0 = this image) or a hole.
    Chunked {
        size: u64,
        chunkbits: u8,
        chunks: Vec<ChunkAddr>,
    },
}

impl FileData {
    pub fn size(&self) -> u64 {
        match self {
            FileData::Plain { size, .. }
            | FileData::Inline { size, .. }
            | FileData::Chunked { size, .. } => *size,
        }
    }

    pub const EMPTY: FileData = FileData::Plain {
        size: 0,
        blkaddr: 0,
    };
}

/// One chunk of a chunk-based file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkAddr {
    /// 0 for the primary device, N for device-table slot N.
    pub device: u16,
    /// First block of the chunk on that device, or [`format::NULL_ADDR`]
    /// for a hole.
    pub blkaddr: u32,
}

/// What kind of object a node is, with its kind-specific content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Children by name; names are sorted bytes, `.` and `..` are implicit.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    File(FileData),
    Symlink(Vec<u8>),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

impl Content {
    /// The `S_IF*` bits for this kind.
    pub fn type_bits(&self) -> u16 {
        match self {
            Content::Dir(_) => format::S_IFDIR,
            Content::File(_) => format::S_IFREG,
            Content::Symlink(_) => format::S_IFLNK,
            Content::CharDevice { .. } => format::S_IFCHR,
            Content::BlockDevice { .. } => format::S_IFBLK,
            Content::Fifo => format::S_IFIFO,
            Content::Socket => format::S_IFSOCK,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Content::Dir(_))
    }

    /// An overlayfs whiteout: a character device 0:0.
    pub fn is_whiteout(&self) -> bool {
        matches!(self, Content::CharDevice { major: 0, minor: 0 })
    }
}

/// One inode of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub meta: Meta,
    /// Full xattr names (`user.x`, `trusted.overlay.opaque`, …) to raw
    /// values; a map so the order on disk is canonical.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub content: Content,
}

impl Node {
    pub fn new(meta: Meta, content: Content) -> Self {
        Node {
            meta,
            xattrs: BTreeMap::new(),
            content,
        }
    }

    pub fn mode(&self) -> u16 {
        self.content.type_bits() | (self.meta.perm & 0o7777)
    }
}

/// Reasons an entry cannot be added to the tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("invalid name component {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("{path}: a parent component is not a directory")]
    ParentNotDirectory { path: String },
    #[error("{path}: hard link target {target} does not exist in this layer")]
    LinkTargetMissing { path: String, target: String },
    #[error("{path}: hard link target {target} is a directory")]
    LinkTargetIsDirectory { path: String, target: String },
    #[error("{path}: the layer root can only be replaced by a directory")]
    RootNotDirectory { path: String },
    #[error("xattr {name}: {why}")]
    InvalidXattr { name: String, why: &'static str },
    #[error("symlink {path}: target length {len} is outside 1..=4095 or contains NUL")]
    InvalidSymlink { path: String, len: usize },
    #[error("device {path}: {major}:{minor} does not fit the 12-bit major / 20-bit minor encoding")]
    InvalidDevice {
        path: String,
        major: u32,
        minor: u32,
    },
    #[error("{path}: {size} bytes of xattrs exceed the {max}-byte inline region", max = format::XATTR_REGION_MAX)]
    XattrsTooLarge { path: String, size: usize },
    #[error("too many inodes: the limit is {limit}")]
    TooManyNodes { limit: usize },
}

/// Render a path for error messages (lossy for non-UTF-8 bytes).
pub fn display_path(components: &[Vec<u8>]) -> String {
    if components.is_empty() {
        return "/".to_string();
    }
    let mut s = String::new();
    for c in components {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(c));
    }
    s
}

/// Check one name component against the format's rules (section 7.2).
pub fn validate_name(name: &[u8]) -> Result<(), TreeError> {
    let why = if name.is_empty() {
        "empty"
    } else if name == b"." || name == b".." {
        "reserved name"
    } else if name.len() > format::NAME_MAX {
        "longer than 255 bytes"
    } else if name.contains(&b'/') {
        "contains '/'"
    } else if name.contains(&0) {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(TreeError::InvalidName {
        name: String::from_utf8_lossy(name).into_owned(),
        why,
    })
}

/// Check that an xattr can be stored (section 9).
pub fn validate_xattr(name: &[u8], value: &[u8]) -> Result<(), TreeError> {
    let why = match format::xattr_split(name) {
        None => Some("namespace cannot be stored in EROFS"),
        Some((_, suffix)) if suffix.len() > 255 => Some("name longer than 255 bytes after prefix"),
        Some((index, suffix)) if suffix.is_empty() && index != 2 && index != 3 => {
            Some("empty name after prefix")
        }
        Some(_) if value.len() > usize::from(u16::MAX) => Some("value longer than 65535 bytes"),
        Some(_) => None,
    };
    match why {
        Some(why) => Err(TreeError::InvalidXattr {
            name: String::from_utf8_lossy(name).into_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// The metadata tree of one image.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: Vec<Node>,
    /// Metadata given to directories created because a deeper entry needed
    /// them.
    implicit_dir: Meta,
    max_nodes: usize,
}

/// Name of the overlayfs xattr that makes a directory opaque.
pub const OVERLAY_OPAQUE: &[u8] = b"trusted.overlay.opaque";
/// Name of the overlayfs xattr that makes overlayfs filter whiteouts in a
/// directory present in only one layer (section 10.1).
pub const OVERLAY_ORIGIN: &[u8] = b"trusted.overlay.origin";

impl Tree {
    /// A tree holding only the root directory with `root` metadata.
    /// `implicit_dir` is used for parents that the input never names.
    pub fn new(root: Meta, implicit_dir: Meta) -> Self {
        Tree {
            nodes: vec![Node::new(root, Content::Dir(BTreeMap::new()))],
            implicit_dir,
            max_nodes: usize::MAX,
        }
    }

    /// Refuse to grow beyond `limit` nodes (a bound on memory for hostile
    /// input).
    pub fn set_max_nodes(&mut self, limit: usize) {
        self.max_nodes = limit;
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id]
    }

    /// Number of nodes ever created, reachable or not.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn alloc(&mut self, node: Node) -> Result<NodeId, TreeError> {
        if self.nodes.len() >= self.max_nodes {
            return Err(TreeError::TooManyNodes {
                limit: self.max_nodes,
            });
        }
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn children(&self, dir: NodeId) -> Option<&BTreeMap<Vec<u8>, NodeId>> {
        match &self.nodes[dir].content {
            Content::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// Find the node at `path` without creating anything.
    pub fn lookup(&self, path: &[Vec<u8>]) -> Option<NodeId> {
        let mut cur = ROOT;
        for c in path {
            cur = *self.children(cur)?.get(c)?;
        }
        Some(cur)
    }

    /// Walk to the parent directory of `path`, creating missing directories
    /// with the implicit metadata.
    fn ensure_parent(&mut self, path: &[Vec<u8>]) -> Result<NodeId, TreeError> {
        let mut cur = ROOT;
        let Some((_, parents)) = path.split_last() else {
            return Ok(ROOT);
        };
        for c in parents {
            validate_name(c)?;
            let next = match self.children(cur) {
                Some(ch) => ch.get(c).copied(),
                None => {
                    return Err(TreeError::ParentNotDirectory {
                        path: display_path(path),
                    });
                }
            };
            cur = match next {
                Some(id) if self.nodes[id].content.is_dir() => id,
                Some(_) => {
                    return Err(TreeError::ParentNotDirectory {
                        path: display_path(path),
                    });
                }
                None => {
                    let id = self.alloc(Node::new(
                        self.implicit_dir.clone(),
                        Content::Dir(BTreeMap::new()),
                    ))?;
                    self.link_child(cur, c.clone(), id);
                    id
                }
            };
        }
        Ok(cur)
    }

    fn link_child(&mut self, dir: NodeId, name: Vec<u8>, id: NodeId) {
        if let Content::Dir(ch) = &mut self.nodes[dir].content {
            ch.insert(name, id);
        }
    }

    fn validate_node(path: &[Vec<u8>], node: &Node) -> Result<(), TreeError> {
        let mut region = format::XATTR_HEADER_SIZE;
        for (k, v) in &node.xattrs {
            validate_xattr(k, v)?;
            let suffix = format::xattr_split(k).map_or(0, |(_, s)| s.len());
            region += format::xattr_entry_size(suffix, v.len());
        }
        // Leave room for the origin marker the writer may add.
        let origin = format::xattr_entry_size(b"overlay.origin".len(), 0);
        if region + origin > format::XATTR_REGION_MAX {
            return Err(TreeError::XattrsTooLarge {
                path: display_path(path),
                size: region,
            });
        }
        match &node.content {
            Content::Symlink(t)
                if t.is_empty() || t.len() as u64 > format::SYMLINK_MAX || t.contains(&0) =>
            {
                return Err(TreeError::InvalidSymlink {
                    path: display_path(path),
                    len: t.len(),
                });
            }
            Content::CharDevice { major, minor } | Content::BlockDevice { major, minor }
                if *major > format::DEV_MAJOR_MAX || *minor > format::DEV_MINOR_MAX =>
            {
                return Err(TreeError::InvalidDevice {
                    path: display_path(path),
                    major: *major,
                    minor: *minor,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Add `node` at `path`, as `tar -x` would: missing parents are
    /// created, an existing non-directory (or a directory replaced by a
    /// non-directory) is replaced, and a directory over a directory keeps
    /// its children but takes the new metadata and xattrs. An empty path
    /// addresses the root, which only a directory may replace. Xattrs of
    /// a directory named twice merge, the later value winning, as with
    /// `tar -x` (which never removes xattrs): an opaque marker seen before
    /// the directory's own member must survive it.
    pub fn insert(&mut self, path: &[Vec<u8>], node: Node) -> Result<NodeId, TreeError> {
        Self::validate_node(path, &node)?;
        let Some(name) = path.last() else {
            if !node.content.is_dir() {
                return Err(TreeError::RootNotDirectory {
                    path: display_path(path),
                });
            }
            let root = &mut self.nodes[ROOT];
            root.meta = node.meta;
            root.xattrs.extend(node.xattrs);
            return Ok(ROOT);
        };
        validate_name(name)?;
        let parent = self.ensure_parent(path)?;
        let existing = self.children(parent).and_then(|c| c.get(name).copied());
        if let Some(id) = existing
            && node.content.is_dir()
            && self.nodes[id].content.is_dir()
        {
            let old = &mut self.nodes[id];
            old.meta = node.meta;
            old.xattrs.extend(node.xattrs);
            return Ok(id);
        }
        let id = self.alloc(node)?;
        self.link_child(parent, name.clone(), id);
        Ok(id)
    }

    /// Make `path` another name for the inode at `target` (a tar hard
    /// link). The target must already exist in this tree and must not be a
    /// directory.
    pub fn hard_link(&mut self, path: &[Vec<u8>], target: &[Vec<u8>]) -> Result<(), TreeError> {
        let err_path = || display_path(path);
        let Some(id) = self.lookup(target) else {
            return Err(TreeError::LinkTargetMissing {
                path: err_path(),
                target: display_path(target),
            });
        };
        if self.nodes[id].content.is_dir() {
            return Err(TreeError::LinkTargetIsDirectory {
                path: err_path(),
                target: display_path(target),
            });
        }
        let Some(name) = path.last() else {
            return Err(TreeError::RootNotDirectory { path: err_path() });
        };
        validate_name(name)?;
        let parent = self.ensure_parent(path)?;
        self.link_child(parent, name.clone(), id);
        Ok(())
    }

    /// Record an OCI whiteout of `path` (from `.wh.NAME`): a 0:0 character
    /// device, unless this layer already has a real entry there, which wins
    /// because a whiteout only hides lower layers (section 10.4).
    pub fn whiteout(&mut self, path: &[Vec<u8>], meta: Meta) -> Result<(), TreeError> {
        if let Some(id) = self.lookup(path)
            && !self.nodes[id].content.is_whiteout()
        {
            return Ok(());
        }
        let meta = Meta { perm: 0, ..meta };
        self.insert(
            path,
            Node::new(meta, Content::CharDevice { major: 0, minor: 0 }),
        )?;
        Ok(())
    }

    /// Mark the directory at `path` opaque (from `.wh..wh..opq`), creating
    /// it if the layer has not named it yet.
    pub fn set_opaque(&mut self, path: &[Vec<u8>]) -> Result<(), TreeError> {
        let id = match self.lookup(path) {
            Some(id) if self.nodes[id].content.is_dir() => id,
            Some(_) => {
                return Err(TreeError::ParentNotDirectory {
                    path: display_path(path),
                });
            }
            None => self.insert(
                path,
                Node::new(self.implicit_dir.clone(), Content::Dir(BTreeMap::new())),
            )?,
        };
        self.nodes[id]
            .xattrs
            .insert(OVERLAY_OPAQUE.to_vec(), b"y".to_vec());
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Vec<u8>> {
        s.split('/')
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().to_vec())
            .collect()
    }

    fn file() -> Node {
        Node::new(Meta::default(), Content::File(FileData::EMPTY))
    }

    fn dir(perm: u16) -> Node {
        Node::new(
            Meta {
                perm,
                ..Meta::default()
            },
            Content::Dir(BTreeMap::new()),
        )
    }

    fn tree() -> Tree {
        Tree::new(
            Meta {
                perm: 0o755,
                ..Meta::default()
            },
            Meta {
                perm: 0o755,
                ..Meta::default()
            },
        )
    }

    #[test]
    fn implicit_parents_and_dir_merge() {
        let mut t = tree();
        t.insert(&p("a/b/c"), file()).unwrap();
        let a = t.lookup(&p("a")).unwrap();
        assert_eq!(t.node(a).meta.perm, 0o755);
        t.insert(&p("a"), dir(0o700)).unwrap();
        assert_eq!(t.lookup(&p("a")), Some(a));
        assert_eq!(t.node(a).meta.perm, 0o700);
        assert!(t.lookup(&p("a/b/c")).is_some());
    }

    #[test]
    fn directory_xattrs_merge() {
        let mut t = tree();
        t.set_opaque(&p("d")).unwrap();
        let mut d = dir(0o750);
        d.xattrs.insert(b"user.a".to_vec(), b"1".to_vec());
        t.insert(&p("d"), d).unwrap();
        let id = t.lookup(&p("d")).unwrap();
        assert_eq!(t.node(id).meta.perm, 0o750);
        assert!(t.node(id).xattrs.contains_key(OVERLAY_OPAQUE));
        assert_eq!(t.node(id).xattrs.get(&b"user.a"[..]), Some(&b"1".to_vec()));
    }

    #[test]
    fn replace_file_by_dir_and_back() {
        let mut t = tree();
        t.insert(&p("x"), file()).unwrap();
        t.insert(&p("x"), dir(0o755)).unwrap();
        t.insert(&p("x/y"), file()).unwrap();
        t.insert(&p("x"), file()).unwrap();
        assert!(!t.node(t.lookup(&p("x")).unwrap()).content.is_dir());
        assert!(t.lookup(&p("x/y")).is_none());
    }

    #[test]
    fn parent_not_directory() {
        let mut t = tree();
        t.insert(&p("f"), file()).unwrap();
        assert!(matches!(
            t.insert(&p("f/g"), file()),
            Err(TreeError::ParentNotDirectory { .. })
        ));
    }

    #[test]
    fn hard_links() {
        let mut t = tree();
        t.insert(&p("d/f"), file()).unwrap();
        t.hard_link(&p("e/g"), &p("d/f")).unwrap();
        assert_eq!(t.lookup(&p("d/f")), t.lookup(&p("e/g")));
        assert!(matches!(
            t.hard_link(&p("h"), &p("nope")),
            Err(TreeError::LinkTargetMissing { .. })
        ));
        assert!(matches!(
            t.hard_link(&p("h"), &p("d")),
            Err(TreeError::LinkTargetIsDirectory { .. })
        ));
    }

    #[test]
    fn whiteout_does_not_hide_same_layer_entry() {
        let mut t = tree();
        t.insert(&p("d/x"), file()).unwrap();
        t.whiteout(&p("d/x"), Meta::default()).unwrap();
        assert!(!t.node(t.lookup(&p("d/x")).unwrap()).content.is_whiteout());
        t.whiteout(&p("d/y"), Meta::default()).unwrap();
        assert!(t.node(t.lookup(&p("d/y")).unwrap()).content.is_whiteout());
        t.insert(&p("d/y"), file()).unwrap();
        assert!(!t.node(t.lookup(&p("d/y")).unwrap()).content.is_whiteout());
    }

    #[test]
    fn opaque_root_and_subdir() {
        let mut t = tree();
        t.set_opaque(&[]).unwrap();
        t.set_opaque(&p("a/b")).unwrap();
        assert_eq!(
            t.node(ROOT).xattrs.get(OVERLAY_OPAQUE).map(Vec::as_slice),
            Some(&b"y"[..])
        );
        let b = t.lookup(&p("a/b")).unwrap();
        assert!(t.node(b).xattrs.contains_key(OVERLAY_OPAQUE));
    }

    #[test]
    fn names_and_xattrs_validated() {
        let mut t = tree();
        assert!(t.insert(&[b"..".to_vec()], file()).is_err());
        assert!(t.insert(&[vec![b'a'; 256]], file()).is_err());
        assert!(t.insert(&[vec![b'a'; 255]], file()).is_ok());
        let mut n = file();
        n.xattrs.insert(b"system.foo".to_vec(), vec![]);
        assert!(matches!(
            t.insert(&p("q"), n),
            Err(TreeError::InvalidXattr { .. })
        ));
        assert!(matches!(
            t.insert(
                &p("r"),
                Node::new(Meta::default(), Content::Symlink(vec![]))
            ),
            Err(TreeError::InvalidSymlink { .. })
        ));
    }

    #[test]
    fn xattr_region_bounded() {
        let mut t = tree();
        let mut n = file();
        for k in 0..4u8 {
            n.xattrs
                .insert(vec![b'u', b's', b'e', b'r', b'.', b'a' + k], vec![0; 65535]);
        }
        assert!(matches!(
            t.insert(&p("f"), n),
            Err(TreeError::XattrsTooLarge { .. })
        ));
        let mut n = file();
        for k in 0..3u8 {
            n.xattrs
                .insert(vec![b'u', b's', b'e', b'r', b'.', b'a' + k], vec![0; 65535]);
        }
        assert!(t.insert(&p("g"), n).is_ok());
    }

    #[test]
    fn root_replaced_by_dir_only() {
        let mut t = tree();
        t.insert(&[], dir(0o700)).unwrap();
        assert_eq!(t.node(ROOT).meta.perm, 0o700);
        assert!(t.insert(&[], file()).is_err());
    }

    #[test]
    fn node_limit() {
        let mut t = tree();
        t.set_max_nodes(2);
        t.insert(&p("a"), file()).unwrap();
        assert!(matches!(
            t.insert(&p("b"), file()),
            Err(TreeError::TooManyNodes { limit: 2 })
        ));
    }
}
