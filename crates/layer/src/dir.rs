//! A directory tree (an overlay upper, or a rootfs to convert) as image
//! input.
//!
//! Every step is relative to an open directory descriptor and no lookup
//! follows a symlink, so a tree that changes under us, or holds links
//! pointing outside it, can never make us read a file outside the root.
//! Overlay whiteouts (0:0 character devices) and opaque markers
//! (`trusted.overlay.opaque`) are ordinary entries here and carry over
//! as they are.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use erofs::tree::{Content, Meta, Node, Tree, TreeError};
use erofs::writer::{ImageWriter, Output, WriteError};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// What went wrong while reading a directory tree.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Tree { path: PathBuf, source: TreeError },
    #[error("{path}: {source}")]
    Write { path: PathBuf, source: WriteError },
    #[error("{path}: unsupported file type")]
    FileType { path: PathBuf },
    #[error("{path}: directory nesting deeper than {limit}")]
    TooDeep { path: PathBuf, limit: usize },
    #[error("{path}: replaced while being read")]
    Changed { path: PathBuf },
}

/// Bound on directory depth, so a hostile tree cannot exhaust memory with
/// pending descriptors.
pub(crate) const MAX_DEPTH: usize = 4096;

/// Counts reported after a walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirStats {
    pub entries: u64,
    /// Xattrs dropped: namespace EROFS cannot store, or not kept by
    /// [`DirOptions::keep_xattr`].
    pub dropped_xattrs: u64,
}

/// Choices for a directory walk.
#[derive(Debug, Clone, Copy)]
pub struct DirOptions {
    /// Which xattrs (by full name) to carry into the image; the others
    /// are dropped and counted.
    pub keep_xattr: fn(&[u8]) -> bool,
}

impl Default for DirOptions {
    fn default() -> Self {
        DirOptions {
            keep_xattr: |_| true,
        }
    }
}

struct Walker<'w, F: Output> {
    opts: DirOptions,
    tree: Tree,
    writer: &'w mut ImageWriter<F>,
    /// (dev, ino) of multiply-linked non-directories already added.
    links: HashMap<(u64, u64), Vec<Vec<u8>>>,
    stats: DirStats,
}

pub(crate) fn io_err(path: &Path) -> impl Fn(rustix::io::Errno) -> DirError + '_ {
    move |e| DirError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

fn meta_of(st: &rustix::fs::Stat) -> Meta {
    Meta {
        perm: (st.st_mode & 0o7777) as u16,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
    }
}

/// How to reach one file's xattrs: through its descriptor, or, for the
/// `O_PATH` descriptors of symlinks and special files (which refuse xattr
/// calls), through `/proc/self/fd/N`: following that magic link reaches
/// the very inode we opened, even a symlink.
enum XattrSource<'a> {
    Fd(BorrowedFd<'a>),
    Proc(&'a Path),
}

impl XattrSource<'_> {
    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            XattrSource::Proc(p) => rustix::fs::listxattr(*p, buf),
        }
    }

    fn get(&self, name: &OsStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
            XattrSource::Proc(p) => rustix::fs::getxattr(*p, name, buf),
        }
    }

    /// Errors that mean "this file has no xattrs we can read".
    fn none(&self, e: rustix::io::Errno) -> bool {
        use rustix::io::Errno;
        match self {
            XattrSource::Fd(_) => e == Errno::NOTSUP,
            XattrSource::Proc(_) => matches!(e, Errno::NOTSUP | Errno::BADF | Errno::PERM),
        }
    }
}

/// One extended attribute: full name (`user.foo`) and raw value.
pub(crate) type Xattr = (Vec<u8>, Vec<u8>);

/// All xattrs of one opened file, in listing order. `fd` must come from
/// [`open_entry`] (or be a directory opened for reading), so that symlinks
/// and special files are read through their `O_PATH` descriptor.
pub(crate) fn read_xattrs(
    fd: &OwnedFd,
    ftype: FileType,
    path: &Path,
) -> Result<Vec<Xattr>, DirError> {
    let proc;
    let src = match ftype {
        FileType::Directory | FileType::RegularFile => XattrSource::Fd(fd.as_fd()),
        _ => {
            proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
            XattrSource::Proc(Path::new(&proc))
        }
    };
    let mut out = Vec::new();
    let mut names = vec![0u8; 4096];
    let len = loop {
        match src.list(&mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) if names.len() < (1 << 20) => {
                names.resize(names.len() * 4, 0)
            }
            Err(e) if src.none(e) => return Ok(out),
            Err(e) => return Err(io_err(path)(e)),
        }
    };
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 256];
        let n = loop {
            match src.get(OsStr::from_bytes(name), &mut value) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) if value.len() < (1 << 16) => {
                    value.resize(1 << 16, 0)
                }
                Err(e) => return Err(io_err(path)(e)),
            }
        };
        value.truncate(n);
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

/// The xattrs of one file that `keep` accepts and EROFS can store; the
/// others are counted as dropped.
fn image_xattrs(
    fd: &OwnedFd,
    ftype: FileType,
    path: &Path,
    keep: fn(&[u8]) -> bool,
    stats: &mut DirStats,
) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, DirError> {
    let mut out = BTreeMap::new();
    for (name, value) in read_xattrs(fd, ftype, path)? {
        if !keep(&name) || erofs::tree::validate_xattr(&name, &value).is_err() {
            stats.dropped_xattrs += 1;
            continue;
        }
        out.insert(name, value);
    }
    Ok(out)
}

/// Opens `root` itself (following symlinks: the caller chose that path).
pub(crate) fn open_root(root: &Path) -> Result<(OwnedFd, rustix::fs::Stat), DirError> {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err(root))?;
    let st = rustix::fs::fstat(&fd).map_err(io_err(root))?;
    Ok((fd, st))
}

/// The names in a directory, without `.` and `..`, sorted bytewise so
/// that nothing downstream (first name of a hard-linked inode, output
/// order) depends on readdir order.
pub(crate) fn list_names(dirfd: &OwnedFd, path: &Path) -> Result<Vec<Vec<u8>>, DirError> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut dir = rustix::fs::Dir::read_from(dirfd).map_err(io_err(path))?;
    while let Some(ent) = dir.read() {
        let ent = ent.map_err(io_err(path))?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// One directory entry, opened without following a link.
pub(crate) struct Opened {
    /// Status of the opened inode itself (not of whatever the name points
    /// at now).
    pub st: rustix::fs::Stat,
    pub ftype: FileType,
    /// Readable for directories and regular files, `O_PATH` otherwise.
    pub fd: OwnedFd,
}

/// Opens `name` in `dirfd` without following a symlink. Regular files and
/// directories are opened for reading, so that xattrs and data come from
/// the very inode we describe; other types get `O_PATH` descriptors.
///
/// The type is learnt from a `statat` first, and the opened inode must be
/// the one stat'ed: a name replaced in between (say a file by a FIFO,
/// which a non-blocking read would report as empty) is an error rather
/// than a silently wrong entry.
pub(crate) fn open_entry(dirfd: &OwnedFd, name: &OsStr, path: &Path) -> Result<Opened, DirError> {
    let before =
        rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io_err(path))?;
    let ftype = FileType::from_raw_mode(before.st_mode);
    let open_flags = match ftype {
        FileType::Directory => OFlags::RDONLY | OFlags::DIRECTORY,
        FileType::RegularFile => OFlags::RDONLY,
        _ => OFlags::PATH,
    } | OFlags::NOFOLLOW
        | OFlags::CLOEXEC
        | OFlags::NOCTTY
        | OFlags::NONBLOCK;
    let fd = rustix::fs::openat(dirfd, name, open_flags, Mode::empty()).map_err(io_err(path))?;
    let st = rustix::fs::fstat(&fd).map_err(io_err(path))?;
    if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino)
        || FileType::from_raw_mode(st.st_mode) != ftype
    {
        return Err(DirError::Changed {
            path: path.to_path_buf(),
        });
    }
    Ok(Opened { st, ftype, fd })
}

impl<F: Output> Walker<'_, F> {
    fn walk(&mut self, root: &Path) -> Result<(), DirError> {
        let (fd, st) = open_root(root)?;
        let mut node = Node::new(meta_of(&st), Content::Dir(BTreeMap::new()));
        node.xattrs = image_xattrs(
            &fd,
            FileType::Directory,
            root,
            self.opts.keep_xattr,
            &mut self.stats,
        )?;
        self.tree
            .insert(&[], node)
            .map_err(|source| DirError::Tree {
                path: root.to_path_buf(),
                source,
            })?;
        // Explicit stack of (directory fd, its path components).
        let mut stack: Vec<(OwnedFd, Vec<Vec<u8>>)> = vec![(fd, Vec::new())];
        while let Some((dirfd, comps)) = stack.pop() {
            let dir_path = join(root, &comps);
            for name in list_names(&dirfd, &dir_path)? {
                let mut child = comps.clone();
                child.push(name);
                if let Some(sub) = self.add_entry(&dirfd, root, &child)? {
                    if child.len() > MAX_DEPTH {
                        return Err(DirError::TooDeep {
                            path: join(root, &child),
                            limit: MAX_DEPTH,
                        });
                    }
                    stack.push((sub, child));
                }
            }
        }
        Ok(())
    }

    /// Add one entry; returns the opened directory when it is one.
    fn add_entry(
        &mut self,
        dirfd: &OwnedFd,
        root: &Path,
        comps: &[Vec<u8>],
    ) -> Result<Option<OwnedFd>, DirError> {
        let path = join(root, comps);
        let Some(name) = comps.last() else {
            return Ok(None);
        };
        let name = OsStr::from_bytes(name);
        self.stats.entries += 1;
        let Opened { st, ftype, fd } = open_entry(dirfd, name, &path)?;
        let meta = meta_of(&st);
        let tree_err = |source| DirError::Tree {
            path: path.clone(),
            source,
        };
        if ftype != FileType::Directory && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                self.tree.hard_link(comps, &first).map_err(tree_err)?;
                return Ok(None);
            }
            self.links.insert(key, comps.to_vec());
        }
        let xattrs = image_xattrs(&fd, ftype, &path, self.opts.keep_xattr, &mut self.stats)?;
        let (content, subdir) = match ftype {
            FileType::Directory => (Content::Dir(BTreeMap::new()), Some(fd)),
            FileType::RegularFile => {
                let mut file = File::from(fd);
                let data = self
                    .writer
                    .add_file_data(st.st_size as u64, &mut file)
                    .map_err(|source| DirError::Write {
                        path: path.clone(),
                        source,
                    })?;
                (Content::File(data), None)
            }
            FileType::Symlink => {
                let target =
                    rustix::fs::readlinkat(dirfd, name, Vec::new()).map_err(io_err(&path))?;
                (Content::Symlink(target.into_bytes()), None)
            }
            FileType::CharacterDevice | FileType::BlockDevice => {
                let major = rustix::fs::major(st.st_rdev);
                let minor = rustix::fs::minor(st.st_rdev);
                if ftype == FileType::CharacterDevice {
                    (Content::CharDevice { major, minor }, None)
                } else {
                    (Content::BlockDevice { major, minor }, None)
                }
            }
            FileType::Fifo => (Content::Fifo, None),
            FileType::Socket => (Content::Socket, None),
            FileType::Unknown => return Err(DirError::FileType { path }),
        };
        let mut node = Node::new(meta, content);
        node.xattrs = xattrs;
        self.tree.insert(comps, node).map_err(tree_err)?;
        Ok(subdir)
    }
}

pub(crate) fn join(root: &Path, comps: &[Vec<u8>]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in comps {
        p.push(OsStr::from_bytes(c));
    }
    p
}

/// Walk `root` into a tree, copying file contents into `writer` as they
/// are found. The root directory's own metadata becomes the image root's.
pub fn read_dir_tree<F: Output>(
    root: &Path,
    writer: &mut ImageWriter<F>,
) -> Result<(Tree, DirStats), DirError> {
    read_dir_tree_with(root, writer, &DirOptions::default())
}

/// [`read_dir_tree`] with options.
pub fn read_dir_tree_with<F: Output>(
    root: &Path,
    writer: &mut ImageWriter<F>,
    opts: &DirOptions,
) -> Result<(Tree, DirStats), DirError> {
    let default = Meta {
        perm: 0o755,
        ..Meta::default()
    };
    let mut walker = Walker {
        opts: *opts,
        tree: Tree::new(default.clone(), default),
        writer,
        links: HashMap::new(),
        stats: DirStats::default(),
    };
    walker.walk(root)?;
    Ok((walker.tree, walker.stats))
}
