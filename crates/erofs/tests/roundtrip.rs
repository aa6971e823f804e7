//! Property test: random trees → [`ImageWriter`] → bounded [`Image`]
//! reader must give back exactly the tree, and [`check`] (strict link
//! counts, every data byte read) must accept the image.
//!
//! The generated trees cover every inode kind the writer emits (directories
//! nested a few levels, regular files, symlinks, FIFOs, sockets, character
//! and block devices including the 0:0 overlayfs whiteout, hard links),
//! names from a byte alphabet with non-UTF-8 bytes and lengths up to 255,
//! every permission bit, ids up to 2^32-1 (forcing extended inodes),
//! mtimes including negative ones and nanoseconds, binary xattr values in
//! `user.`/`trusted.`/`security.`, and file sizes around the block
//! boundaries of both 4 KiB and 512-byte blocks.
//!
//! What is compared for every reachable path: name, mode, uid/gid, mtime
//! (compact inodes take the superblock epoch, which the writer only uses
//! for inodes whose mtime equals it, so the read mtime must be the source
//! mtime exactly), size, content, symlink target, rdev, xattrs (plus the
//! `trusted.overlay.origin=""` the writer adds to directories holding a
//! whiteout), `.`/`..`, hard-link identity (one NID per tree node and one
//! tree node per NID) and nlink.
//!
//! `PROPTEST_CASES` overrides the default of 64 cases per test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;

use erofs::format;
use erofs::fsck::{CheckOptions, check};
use erofs::reader::Image;
use erofs::tree::{Content, Meta, Node, NodeId, OVERLAY_ORIGIN, ROOT, Tree};
use erofs::writer::{ImageWriter, WriterOptions};
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------
// Generated input
// ---------------------------------------------------------------------------

/// How a file's bytes are derived from its seed: the writer leaves all-zero
/// blocks as holes, so zero runs are worth generating on purpose.
#[derive(Debug, Clone, Copy)]
enum Fill {
    Random,
    Zeros,
    /// Zeros except the last byte.
    ZerosThenByte,
    /// Alternating zero and random 512-byte runs.
    Striped,
}

#[derive(Debug, Clone)]
enum GenKind {
    Dir(Vec<(Vec<u8>, GenNode)>),
    File { size: usize, seed: u64, fill: Fill },
    Symlink(Vec<u8>),
    Fifo,
    Socket,
    Char(u32, u32),
    Block(u32, u32),
}

/// Full xattr names to values, as [`Node::xattrs`] holds them.
type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
struct GenNode {
    meta: Meta,
    xattrs: Xattrs,
    kind: GenKind,
}

/// A hard link: in the `dir`-th directory (creation order) add `name` for
/// the `target`-th non-directory; skipped when the name is taken.
#[derive(Debug, Clone)]
struct GenLink {
    dir: Index,
    target: Index,
    name: Vec<u8>,
}

#[derive(Debug, Clone)]
struct GenTree {
    root: GenNode,
    links: Vec<GenLink>,
}

/// Name bytes: ASCII, punctuation that sorts around `.`, and bytes that are
/// not UTF-8 on their own. `/` and NUL cannot appear in names.
const NAME_ALPHABET: &[u8] = &[
    b'a', b'b', b'z', b'A', b'0', b'.', b'-', b'_', b' ', b'\n', b'\\', 0x01, 0x7f, 0x80, 0xc3,
    0xa9, 0xfe, 0xff,
];

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    let short = prop::collection::vec(prop::sample::select(NAME_ALPHABET), 1..=6);
    let long = prop::collection::vec(prop::sample::select(NAME_ALPHABET), 200..=255);
    prop_oneof![8 => short, 1 => long].prop_map(|mut n| {
        if n == b"." || n == b".." {
            n.push(b'x');
        }
        n
    })
}

fn id_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..=3,
        1 => 65534u32..=65536,
        1 => (u32::MAX - 1)..=u32::MAX,
        1 => any::<u32>(),
    ]
}

fn meta_strategy() -> impl Strategy<Value = Meta> {
    // A small pool of times, so that several inodes share one and the
    // writer's epoch choice (hence compact inodes) is exercised.
    let mtime = prop_oneof![
        6 => Just(1_700_000_000i64),
        2 => Just(0i64),
        1 => Just(-1i64),
        1 => Just(-2_208_988_800i64),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => Just(i64::from(u32::MAX) + 1),
        1 => any::<i64>(),
    ];
    let nsec = prop_oneof![
        6 => Just(0u32),
        1 => Just(999_999_999u32),
        1 => 0u32..1_000_000_000,
    ];
    let perm = prop_oneof![
        2 => prop::sample::select(&[0o755u16, 0o644, 0o700, 0o777][..]),
        1 => 0u16..=0o7777,
    ];
    (perm, id_strategy(), id_strategy(), mtime, nsec).prop_map(
        |(perm, uid, gid, mtime, mtime_nsec)| Meta {
            perm,
            uid,
            gid,
            mtime,
            mtime_nsec,
        },
    )
}

fn xattrs_strategy() -> impl Strategy<Value = Xattrs> {
    const PREFIXES: &[&[u8]] = &[b"user.", b"trusted.", b"security."];
    let prefix = prop::sample::select(PREFIXES);
    let suffix = prop_oneof![
        8 => prop::collection::vec(prop::sample::select(NAME_ALPHABET), 1..=12),
        1 => prop::collection::vec(prop::sample::select(NAME_ALPHABET), 255..=255),
    ];
    let name = prop_oneof![
        12 => (prefix, suffix).prop_map(|(p, s)| [p, &s[..]].concat()),
        1 => Just(OVERLAY_ORIGIN.to_vec()),
        1 => Just(b"trusted.overlay.opaque".to_vec()),
    ];
    let value = prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..=16),
        1 => prop::collection::vec(any::<u8>(), 200..=700),
    ];
    prop_oneof![
        3 => Just(BTreeMap::new()),
        2 => prop::collection::btree_map(name, value, 1..=4),
    ]
}

/// Sizes clustered around the block boundaries of 512-byte and 4 KiB
/// blocks, up to 3 × 4096 + 1.
fn size_strategy() -> impl Strategy<Value = usize> {
    let boundary = prop::sample::select(
        &[
            0usize, 1, 511, 512, 513, 1023, 1024, 1025, 4064, 4095, 4096, 4097, 8191, 8192, 8193,
            12287, 12288, 12289,
        ][..],
    );
    // Around 64 KiB the writer stops staging a file's data with its
    // neighbours' and writes it on its own.
    prop_oneof![
        3 => boundary,
        2 => 0usize..=64,
        2 => 0usize..=3 * 4096 + 1,
        1 => 60_000usize..=70_000,
    ]
}

fn fill_strategy() -> impl Strategy<Value = Fill> {
    prop_oneof![
        6 => Just(Fill::Random),
        1 => Just(Fill::Zeros),
        1 => Just(Fill::ZerosThenByte),
        1 => Just(Fill::Striped),
    ]
}

fn symlink_strategy() -> impl Strategy<Value = Vec<u8>> {
    // Any byte but NUL; lengths around the 512-byte block multiples and the
    // 4095 maximum, so targets go inline, to a block, or spill.
    let len = prop_oneof![
        4 => 1usize..=40,
        1 => prop::sample::select(&[255usize, 511, 512, 513, 1024, 2048, 3584, 4000, 4064, 4095][..]),
    ];
    (len, any::<u8>()).prop_map(|(len, start)| {
        (0..len)
            .map(|i| match start.wrapping_add(i as u8) {
                0 => b'/',
                b => b,
            })
            .collect()
    })
}

fn leaf_strategy() -> impl Strategy<Value = GenKind> {
    prop_oneof![
        8 => (size_strategy(), any::<u64>(), fill_strategy())
            .prop_map(|(size, seed, fill)| GenKind::File { size, seed, fill }),
        3 => symlink_strategy().prop_map(GenKind::Symlink),
        1 => Just(GenKind::Fifo),
        1 => Just(GenKind::Socket),
        1 => Just(GenKind::Char(0, 0)),
        1 => (0u32..=format::DEV_MAJOR_MAX, 0u32..=format::DEV_MINOR_MAX)
            .prop_map(|(a, b)| GenKind::Char(a, b)),
        1 => (0u32..=format::DEV_MAJOR_MAX, 0u32..=format::DEV_MINOR_MAX)
            .prop_map(|(a, b)| GenKind::Block(a, b)),
        1 => Just(GenKind::Dir(Vec::new())),
    ]
}

fn node_strategy() -> impl Strategy<Value = GenNode> {
    let kind = leaf_strategy().prop_recursive(4, 48, 8, |inner| {
        let child = (meta_strategy(), xattrs_strategy(), inner)
            .prop_map(|(meta, xattrs, kind)| GenNode { meta, xattrs, kind });
        prop::collection::vec((name_strategy(), child), 0..=8).prop_map(GenKind::Dir)
    });
    (meta_strategy(), xattrs_strategy(), kind).prop_map(|(meta, xattrs, kind)| GenNode {
        meta,
        xattrs,
        kind,
    })
}

fn tree_strategy() -> impl Strategy<Value = GenTree> {
    let root = (
        meta_strategy(),
        xattrs_strategy(),
        prop::collection::vec((name_strategy(), node_strategy()), 0..=10),
    )
        .prop_map(|(meta, xattrs, children)| GenNode {
            meta,
            xattrs,
            kind: GenKind::Dir(children),
        });
    let link = (any::<Index>(), any::<Index>(), name_strategy())
        .prop_map(|(dir, target, name)| GenLink { dir, target, name });
    (root, prop::collection::vec(link, 0..=4)).prop_map(|(root, links)| GenTree { root, links })
}

/// A small deterministic generator (SplitMix64) for file contents.
fn content(size: usize, seed: u64, fill: Fill) -> Vec<u8> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u8
    };
    let mut v: Vec<u8> = match fill {
        Fill::Random => (0..size).map(|_| next()).collect(),
        Fill::Zeros | Fill::ZerosThenByte => vec![0; size],
        Fill::Striped => (0..size)
            .map(|i| if (i / 512) % 2 == 0 { 0 } else { next() | 1 })
            .collect(),
    };
    if let (Fill::ZerosThenByte, Some(last)) = (fill, v.last_mut()) {
        *last = 0x5a;
    }
    v
}

// ---------------------------------------------------------------------------
// Building the tree and the image
// ---------------------------------------------------------------------------

struct Built {
    tree: Tree,
    /// Bytes of every regular file, by tree node.
    contents: HashMap<NodeId, Vec<u8>>,
    image: Vec<u8>,
}

struct Builder<'a> {
    tree: Tree,
    writer: ImageWriter<&'a mut Cursor<Vec<u8>>>,
    contents: HashMap<NodeId, Vec<u8>>,
    /// Directories and non-directories in creation order, by path.
    dirs: Vec<Vec<Vec<u8>>>,
    others: Vec<Vec<Vec<u8>>>,
}

impl Builder<'_> {
    fn add(&mut self, path: &mut Vec<Vec<u8>>, g: &GenNode) {
        let content = match &g.kind {
            GenKind::Dir(_) => Content::Dir(BTreeMap::new()),
            GenKind::File { size, seed, fill } => {
                let bytes = content(*size, *seed, *fill);
                let data = self
                    .writer
                    .add_file_data(bytes.len() as u64, &mut &bytes[..])
                    .unwrap();
                let mut node = Node::new(g.meta.clone(), Content::File(data));
                node.xattrs = g.xattrs.clone();
                let id = self.tree.insert(path, node).unwrap();
                self.contents.insert(id, bytes);
                self.others.push(path.clone());
                return;
            }
            GenKind::Symlink(t) => Content::Symlink(t.clone()),
            GenKind::Fifo => Content::Fifo,
            GenKind::Socket => Content::Socket,
            GenKind::Char(major, minor) => Content::CharDevice {
                major: *major,
                minor: *minor,
            },
            GenKind::Block(major, minor) => Content::BlockDevice {
                major: *major,
                minor: *minor,
            },
        };
        let mut node = Node::new(g.meta.clone(), content);
        node.xattrs = g.xattrs.clone();
        self.tree.insert(path, node).unwrap();
        match &g.kind {
            GenKind::Dir(children) => {
                self.dirs.push(path.clone());
                let mut seen = std::collections::BTreeSet::new();
                for (name, child) in children {
                    if !seen.insert(name.clone()) {
                        continue;
                    }
                    path.push(name.clone());
                    self.add(path, child);
                    path.pop();
                }
            }
            _ => self.others.push(path.clone()),
        }
    }
}

fn build(g: &GenTree, opts: WriterOptions) -> Built {
    let mut out = Cursor::new(Vec::new());
    let (tree, contents) = {
        let writer = ImageWriter::new(&mut out, opts).unwrap();
        let implicit = Meta {
            perm: 0o755,
            ..Meta::default()
        };
        let mut b = Builder {
            tree: Tree::new(g.root.meta.clone(), implicit),
            writer,
            contents: HashMap::new(),
            dirs: Vec::new(),
            others: Vec::new(),
        };
        b.tree.node_mut(ROOT).xattrs = g.root.xattrs.clone();
        // The root is a directory hard links may go to, too.
        b.dirs.push(Vec::new());
        if let GenKind::Dir(children) = &g.root.kind {
            let mut seen = std::collections::BTreeSet::new();
            let mut path = Vec::new();
            for (name, child) in children {
                if seen.insert(name.clone()) {
                    path.push(name.clone());
                    b.add(&mut path, child);
                    path.pop();
                }
            }
        }
        if !b.others.is_empty() {
            for l in &g.links {
                let dir = l.dir.get(&b.dirs).clone();
                let target = l.target.get(&b.others).clone();
                let dir_id = b.tree.lookup(&dir).unwrap();
                let taken = match &b.tree.node(dir_id).content {
                    Content::Dir(c) => c.contains_key(&l.name),
                    _ => true,
                };
                if taken {
                    continue;
                }
                let mut path = dir;
                path.push(l.name.clone());
                b.tree.hard_link(&path, &target).unwrap();
            }
        }
        let Builder {
            tree,
            writer,
            contents,
            ..
        } = b;
        writer.finish(&tree).unwrap();
        (tree, contents)
    };
    Built {
        tree,
        contents,
        image: out.into_inner(),
    }
}

// ---------------------------------------------------------------------------
// Reading it back
// ---------------------------------------------------------------------------

fn show(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

fn file_type(c: &Content) -> u8 {
    match c {
        Content::Dir(_) => format::FT_DIR,
        Content::File(_) => format::FT_REG_FILE,
        Content::Symlink(_) => format::FT_SYMLINK,
        Content::CharDevice { .. } => format::FT_CHRDEV,
        Content::BlockDevice { .. } => format::FT_BLKDEV,
        Content::Fifo => format::FT_FIFO,
        Content::Socket => format::FT_SOCK,
    }
}

/// Link counts as the format defines them: 2 + subdirectories for a
/// directory, the number of names for anything else.
fn expected_nlink(tree: &Tree) -> HashMap<NodeId, u32> {
    let mut nlink: HashMap<NodeId, u32> = HashMap::new();
    let mut stack = vec![ROOT];
    let mut seen = std::collections::HashSet::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        if let Content::Dir(children) = &tree.node(id).content {
            *nlink.entry(id).or_default() += 2;
            for &c in children.values() {
                if tree.node(c).content.is_dir() {
                    *nlink.entry(id).or_default() += 1;
                } else {
                    *nlink.entry(c).or_default() += 1;
                }
                stack.push(c);
            }
        }
    }
    nlink
}

/// Compare everything reachable in the image with the tree; the first
/// difference is returned as a message naming the path.
fn verify(b: &Built, blkszbits: u8) -> Result<(), String> {
    let image = Image::new(b.image.clone()).map_err(|e| format!("Image::new: {e}"))?;
    if image.block_size() != 1 << blkszbits {
        return Err(format!("block size {}", image.block_size()));
    }
    let report = check(
        &image,
        &CheckOptions {
            strict_nlink: true,
            read_data: true,
            ..CheckOptions::default()
        },
    )
    .map_err(|e| format!("fsck: {e}"))?;

    let tree = &b.tree;
    let nlinks = expected_nlink(tree);
    let mut nid_of: HashMap<NodeId, u64> = HashMap::new();
    let mut node_of: HashMap<u64, NodeId> = HashMap::new();
    // (tree node, nid, parent nid, path)
    let mut stack: Vec<(NodeId, u64, u64, Vec<u8>)> =
        vec![(ROOT, image.root_nid(), image.root_nid(), b"/".to_vec())];
    while let Some((id, nid, parent_nid, path)) = stack.pop() {
        let p = show(&path);
        match (nid_of.get(&id), node_of.get(&nid)) {
            (None, None) => {
                nid_of.insert(id, nid);
                node_of.insert(nid, id);
            }
            (Some(&n), Some(&i)) if n == nid && i == id => continue,
            (a, c) => {
                return Err(format!(
                    "{p}: hard-link identity broken: tree node {id} has nid {a:?}, nid {nid} \
                     belongs to tree node {c:?}"
                ));
            }
        }
        let node = tree.node(id);
        let inode = image.inode(nid).map_err(|e| format!("{p}: inode: {e}"))?;
        let want_mode = node.mode();
        if inode.mode() != want_mode {
            return Err(format!(
                "{p}: mode {:o}, expected {want_mode:o}",
                inode.mode()
            ));
        }
        if (inode.uid(), inode.gid()) != (node.meta.uid, node.meta.gid) {
            return Err(format!(
                "{p}: uid/gid {}/{}, expected {}/{}",
                inode.uid(),
                inode.gid(),
                node.meta.uid,
                node.meta.gid
            ));
        }
        let want_mtime = (node.meta.mtime, node.meta.mtime_nsec);
        if inode.mtime() != want_mtime {
            return Err(format!(
                "{p}: mtime {:?}, expected {want_mtime:?} (extended: {})",
                inode.mtime(),
                inode.record().extended
            ));
        }
        let want_nlink = nlinks.get(&id).copied().unwrap_or(0);
        if inode.nlink() != want_nlink {
            return Err(format!(
                "{p}: nlink {}, expected {want_nlink}",
                inode.nlink()
            ));
        }
        let mut want_x = node.xattrs.clone();
        if let Content::Dir(children) = &node.content
            && children
                .values()
                .any(|&c| tree.node(c).content.is_whiteout())
        {
            want_x.entry(OVERLAY_ORIGIN.to_vec()).or_default();
        }
        let mut got_x = BTreeMap::new();
        for x in inode.xattrs() {
            if got_x.insert(x.name.clone(), x.value.clone()).is_some() {
                return Err(format!("{p}: xattr {} appears twice", show(&x.name)));
            }
        }
        if got_x != want_x {
            return Err(format!("{p}: xattrs {got_x:?}, expected {want_x:?}"));
        }
        match &node.content {
            Content::Dir(children) => {
                let entries = image
                    .read_dir(&inode)
                    .map_err(|e| format!("{p}: read_dir: {e}"))?;
                let got: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
                let mut want: Vec<&[u8]> = vec![b".", b".."];
                want.extend(children.keys().map(Vec::as_slice));
                want.sort();
                if got != want {
                    return Err(format!(
                        "{p}: entries {:?}, expected {:?}",
                        got.iter().map(|n| show(n)).collect::<Vec<_>>(),
                        want.iter().map(|n| show(n)).collect::<Vec<_>>()
                    ));
                }
                for e in &entries {
                    match e.name.as_slice() {
                        b"." if e.nid != nid => {
                            return Err(format!("{p}: '.' is nid {}, not {nid}", e.nid));
                        }
                        b".." if e.nid != parent_nid => {
                            return Err(format!("{p}: '..' is nid {}, not {parent_nid}", e.nid));
                        }
                        b"." | b".." => {}
                        name => {
                            let child = children[name];
                            let want_ft = file_type(&tree.node(child).content);
                            if e.file_type != want_ft {
                                return Err(format!(
                                    "{p}/{}: dirent file type {}, expected {want_ft}",
                                    show(name),
                                    e.file_type
                                ));
                            }
                            let mut cp = path.clone();
                            if cp != b"/" {
                                cp.push(b'/');
                            }
                            cp.extend_from_slice(name);
                            stack.push((child, e.nid, nid, cp));
                        }
                    }
                }
            }
            Content::File(data) => {
                let want = &b.contents[&id];
                if inode.size() != want.len() as u64 || data.size() != want.len() as u64 {
                    return Err(format!(
                        "{p}: size {}, expected {}",
                        inode.size(),
                        want.len()
                    ));
                }
                let got = image
                    .read_all(&inode, 1 << 20)
                    .map_err(|e| format!("{p}: read_all: {e}"))?;
                if &got != want {
                    let at = got.iter().zip(want.iter()).position(|(a, b)| a != b);
                    return Err(format!(
                        "{p}: content differs (first difference at {at:?}, layout {:?})",
                        inode.layout()
                    ));
                }
            }
            Content::Symlink(target) => {
                let got = image
                    .symlink_target(&inode)
                    .map_err(|e| format!("{p}: symlink_target: {e}"))?;
                if &got != target {
                    return Err(format!(
                        "{p}: symlink target {}, expected {}",
                        show(&got),
                        show(target)
                    ));
                }
            }
            Content::CharDevice { major, minor } | Content::BlockDevice { major, minor } => {
                if inode.rdev() != Some((*major, *minor)) || inode.size() != 0 {
                    return Err(format!(
                        "{p}: rdev {:?} size {}, expected {major}:{minor} size 0",
                        inode.rdev(),
                        inode.size()
                    ));
                }
            }
            Content::Fifo | Content::Socket => {
                if inode.size() != 0 {
                    return Err(format!("{p}: size {}", inode.size()));
                }
            }
        }
    }
    if report.inodes != nid_of.len() as u64 {
        return Err(format!(
            "fsck counted {} inodes, the tree has {} reachable",
            report.inodes,
            nid_of.len()
        ));
    }
    Ok(())
}

fn roundtrip(g: &GenTree, blkszbits: u8, inline_data: bool) -> Result<(), TestCaseError> {
    let opts = WriterOptions {
        blkszbits,
        inline_data,
        uuid: [7; 16],
        volume_name: b"roundtrip".to_vec(),
        devices: Vec::new(),
    };
    let built = build(g, opts);
    if let Err(e) = verify(&built, blkszbits) {
        return Err(TestCaseError::fail(e));
    }
    Ok(())
}

fn config() -> ProptestConfig {
    // `ProptestConfig::default()` reads PROPTEST_CASES; only lower the
    // built-in default of 256.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn roundtrip_4k_plain(g in tree_strategy()) {
        roundtrip(&g, 12, false)?;
    }

    #[test]
    fn roundtrip_4k_inline(g in tree_strategy()) {
        roundtrip(&g, 12, true)?;
    }

    #[test]
    fn roundtrip_512_plain(g in tree_strategy()) {
        roundtrip(&g, 9, false)?;
    }

    #[test]
    fn roundtrip_512_inline(g in tree_strategy()) {
        roundtrip(&g, 9, true)?;
    }
}

/// Each xattr is valid on its own (value ≤ 65535 bytes), but together they
/// need an inline region larger than `i_xattr_icount` (u16) can describe.
/// The tree or the writer must refuse them, or the image must hold them
/// faithfully; a truncated count (found by this test: the writer once
/// stored `icount as u16`) is a corrupt image.
#[test]
fn xattr_region_beyond_icount() {
    for blkszbits in [9u8, 12] {
        let meta = Meta {
            perm: 0o644,
            ..Meta::default()
        };
        // 4 × (4 + 2 + 65535 → 65544) + 12 = 262188 bytes > 12 + 4 × 65534.
        let big: Xattrs = (0..4u8)
            .map(|k| ([&b"user.x"[..], &[b'a' + k]].concat(), vec![k + 1; 65535]))
            .collect();
        // As one node's xattrs, and merged into a directory named twice
        // (each half is within bounds on its own).
        let halves: Vec<Xattrs> = vec![
            big.iter()
                .take(2)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            big.iter()
                .skip(2)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ];
        let cases: Vec<(Content, Vec<Xattrs>)> = vec![
            (Content::Fifo, vec![big.clone()]),
            (Content::Dir(BTreeMap::new()), vec![big.clone()]),
            (Content::Dir(BTreeMap::new()), halves),
        ];
        for (content, xattr_sets) in cases {
            let mut tree = Tree::new(meta.clone(), meta.clone());
            let mut refused = false;
            for xattrs in xattr_sets {
                let mut node = Node::new(meta.clone(), content.clone());
                node.xattrs = xattrs;
                refused |= tree.insert(&[b"f".to_vec()], node).is_err();
            }
            if refused {
                continue; // refusing is correct
            }
            let mut out = Cursor::new(Vec::new());
            let w = ImageWriter::new(
                &mut out,
                WriterOptions {
                    blkszbits,
                    ..WriterOptions::default()
                },
            )
            .unwrap();
            if w.finish(&tree).is_err() {
                continue; // so is refusing here
            }
            let built = Built {
                tree,
                contents: HashMap::new(),
                image: out.into_inner(),
            };
            if let Err(e) = verify(&built, blkszbits) {
                panic!("blkszbits {blkszbits}: {e}");
            }
        }
    }
}

/// Link counts above 65535 need extended inodes: a file with 65536 names
/// and a directory with 65534 subdirectories (nlink 65536).
#[test]
fn nlink_beyond_u16() {
    let meta = Meta {
        perm: 0o755,
        ..Meta::default()
    };
    let mut tree = Tree::new(meta.clone(), meta.clone());
    let mut out = Cursor::new(Vec::new());
    let mut w = ImageWriter::new(&mut out, WriterOptions::default()).unwrap();
    let data = w.add_file_data(5, &mut &b"hello"[..]).unwrap();
    let f = tree
        .insert(
            &[b"f".to_vec()],
            Node::new(meta.clone(), Content::File(data)),
        )
        .unwrap();
    for k in 0..65535u32 {
        tree.hard_link(
            &[b"links".to_vec(), format!("{k:05}").into_bytes()],
            &[b"f".to_vec()],
        )
        .unwrap();
    }
    for k in 0..65534u32 {
        tree.insert(
            &[b"dirs".to_vec(), format!("{k:05}").into_bytes()],
            Node::new(meta.clone(), Content::Dir(BTreeMap::new())),
        )
        .unwrap();
    }
    w.finish(&tree).unwrap();
    let built = Built {
        tree,
        contents: HashMap::from([(f, b"hello".to_vec())]),
        image: out.into_inner(),
    };
    if let Err(e) = verify(&built, 12) {
        panic!("{e}");
    }
}

/// Names (sorted by a 3-digit prefix, so that their order is the order
/// given) whose directory entries fill the blocks of a directory with
/// exactly `fills[k]` bytes each; `.` and `..` take the first 27 bytes.
fn dirent_names(fills: &[u64]) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    for (k, &fill) in fills.iter().enumerate() {
        let mut left = if k == 0 { fill - 27 } else { fill };
        while left > 0 {
            // Entries are 12 bytes plus a name of 3..=255 bytes; never
            // leave a remainder too small for one more entry.
            let mut len = (left - 12).min(255);
            if left - 12 - len > 0 && left - 12 - len < 15 {
                len -= 15;
            }
            let mut name = format!("{:03}", names.len()).into_bytes();
            name.resize(len as usize, b'x');
            left -= 12 + len;
            names.push(name);
        }
    }
    names
}

/// Directories whose size is one byte short of, exactly, or one byte past
/// one and two blocks, in both block sizes and with either inode form (an
/// unusual uid makes the inode extended): the tail goes inline, exactly
/// fills the inode's block, or moves to a block of its own.
#[test]
fn dir_sizes_at_block_boundaries() {
    for blkszbits in [9u8, 12] {
        let bs = 1u64 << blkszbits;
        let mut fills: Vec<Vec<u64>> = vec![
            vec![bs - 1],
            vec![bs],
            vec![bs, 1 + 27],
            vec![bs, bs - 1],
            vec![bs, bs],
            vec![bs, bs, 40],
        ];
        // Tails that exactly fill the rest of the inode's block.
        for head in [32u64, 64] {
            fills.push(vec![bs, bs - head]);
            fills.push(vec![bs, bs - head + 1]);
        }
        for (k, f) in fills.iter().enumerate() {
            for uid in [0u32, 70_000] {
                let meta = Meta {
                    perm: 0o755,
                    uid,
                    ..Meta::default()
                };
                let mut tree = Tree::new(meta.clone(), meta.clone());
                for name in dirent_names(f) {
                    tree.insert(
                        &[b"d".to_vec(), name],
                        Node::new(meta.clone(), Content::Fifo),
                    )
                    .unwrap();
                }
                let mut out = Cursor::new(Vec::new());
                let w = ImageWriter::new(
                    &mut out,
                    WriterOptions {
                        blkszbits,
                        ..WriterOptions::default()
                    },
                )
                .unwrap();
                w.finish(&tree).unwrap();
                let built = Built {
                    tree,
                    contents: HashMap::new(),
                    image: out.into_inner(),
                };
                if let Err(e) = verify(&built, blkszbits) {
                    panic!("blkszbits {blkszbits}, fills {f:?} (case {k}), uid {uid}: {e}");
                }
                // The names really produce the intended directory size.
                let image = Image::new(built.image).unwrap();
                let d = image.lookup(b"d").unwrap().unwrap();
                let want = (f.len() as u64 - 1) * bs + f[f.len() - 1];
                assert_eq!(image.inode(d).unwrap().size(), want, "fills {f:?}");
            }
        }
    }
}
