//! Where everything lives under the snapshotter's root directory.
//!
//! ```text
//! <root>/metadata.db              the store
//! <root>/snapshots/<id>/          one per snapshot (containerd's erofs layout)
//!     .erofslayer                 marker for our differ (active snapshots)
//!     fs/                         overlay upperdir, or the whole tree without parent
//!     work/                       overlay workdir
//!     layer.erofs                 the layer (committed; or written by our differ)
//!     layer.lost                  a crash may have torn layer.erofs: rebuild it
//!                                 (while it is not yet fsynced, the directory
//!                                 carries the `user.erofs-snapshotter.pending`
//!                                 xattr; see `durability`)
//!     rwlayer.img, rw/{upper,work} size-limited upper (default_size): an ext4
//!                                 image mounted at rw/, dropped at commit
//! <root>/snapshots/new-<rand>/    being created; renamed to <id> in the transaction
//! <root>/mounts/<id>/             self-mount mode: layer.erofs of committed <id>, read-only
//! <root>/trash/<id>-<rand>/       removed snapshots, deleted in the background
//! ```
//!
//! Lower mounts share one parent directory so that overlay `lowerdir`
//! strings stay short (containerd shortens them relative to their common
//! parent when they exceed a page).

use std::path::{Path, PathBuf};

/// Name of the marker file telling our differ that a mount belongs to us.
pub const MARKER: &str = ".erofslayer";
/// The layer image of a snapshot.
pub const BLOB: &str = "layer.erofs";
/// Prefix of directories being created.
pub const NEW_PREFIX: &str = "new-";
/// Prefix of temporary files inside a snapshot directory (an image being
/// written by Commit or Apply, a fsmeta being merged); the start-up scan
/// deletes them.
pub const TEMP_PREFIX: &str = ".layer-";

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db(&self) -> PathBuf {
        self.root.join("metadata.db")
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn snapshot(&self, id: u64) -> PathBuf {
        self.snapshots().join(id.to_string())
    }

    pub fn fs(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("fs")
    }

    pub fn work(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("work")
    }

    pub fn blob(&self, id: u64) -> PathBuf {
        self.snapshot(id).join(BLOB)
    }

    /// The ext4 image holding the writable layer of a size-limited
    /// (`default_size`) active snapshot.
    pub fn rwlayer(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("rwlayer.img")
    }

    /// VM mode: the metadata image merging the chain that ends with layer
    /// `id` (see [`erofs::merge`]), kept in the top layer's directory so it
    /// goes away with it.
    pub fn fsmeta(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("fsmeta.erofs")
    }

    /// VM mode: the VMDK descriptor presenting fsmeta and the layers as
    /// one disk.
    pub fn vmdk(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("merged.vmdk")
    }

    /// VM mode: the layer paths of the disk, oldest first.
    pub fn manifest(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("layers.manifest")
    }

    /// VM mode: written instead of fsmeta when the chain cannot be merged
    /// (it says why), so that the chain is mounted layer by layer every
    /// time rather than changing shape later.
    pub fn fsmeta_refused(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("fsmeta.refused")
    }

    /// With the mount manager, the image is created by containerd on
    /// first use; this file records the size the snapshot was promised.
    pub fn quota(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("rwlayer.size")
    }

    /// Where that image is mounted.
    pub fn rw(&self, id: u64) -> PathBuf {
        self.snapshot(id).join("rw")
    }

    /// The directory that receives a snapshot's changes: inside the ext4
    /// image when it has one, `fs/` otherwise.
    pub fn upper(&self, id: u64, block: bool) -> PathBuf {
        if block {
            self.rw(id).join("upper")
        } else {
            self.fs(id)
        }
    }

    /// Overlay's work directory, on the same filesystem as the upper.
    pub fn workdir(&self, id: u64, block: bool) -> PathBuf {
        if block {
            self.rw(id).join("work")
        } else {
            self.work(id)
        }
    }

    pub fn marker(&self, id: u64) -> PathBuf {
        self.snapshot(id).join(MARKER)
    }

    pub fn mounts(&self) -> PathBuf {
        self.root.join("mounts")
    }

    /// Where committed snapshot `id`'s image is mounted in self-mount mode.
    pub fn lower(&self, id: u64) -> PathBuf {
        self.mounts().join(id.to_string())
    }

    pub fn trash(&self) -> PathBuf {
        self.root.join("trash")
    }

    /// Create the top-level directories (idempotent).
    pub fn create(&self) -> std::io::Result<()> {
        for d in [self.snapshots(), self.mounts(), self.trash()] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }

    /// The snapshot id a directory name under `snapshots/` or `mounts/`
    /// stands for, if it is one.
    pub fn parse_id(name: &std::ffi::OsStr) -> Option<u64> {
        let s = name.to_str()?;
        // Only canonical decimal: "007" is not ours.
        s.parse::<u64>().ok().filter(|id| id.to_string() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_canonical_decimal() {
        assert_eq!(Layout::parse_id("12".as_ref()), Some(12));
        assert_eq!(Layout::parse_id("012".as_ref()), None);
        assert_eq!(Layout::parse_id("new-abc".as_ref()), None);
        assert_eq!(Layout::parse_id("-1".as_ref()), None);
    }

    #[test]
    fn paths() {
        let l = Layout::new("/r");
        assert_eq!(l.blob(3), Path::new("/r/snapshots/3/layer.erofs"));
        assert_eq!(l.lower(3), Path::new("/r/mounts/3"));
    }
}
