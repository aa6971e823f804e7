//! The snapshot lifecycle, independent of gRPC: create, mount, commit
//! (converting an upper directory to EROFS), remove, and recovery after a
//! crash or restart.
//!
//! Ordering rules that keep the root consistent across crashes:
//! * create: the directory is built under `snapshots/new-*`, the record is
//!   committed, then the directory is renamed to its id. A crash leaves a
//!   `new-*` orphan, removed at the next start.
//! * commit: the image is written to a temporary file, fsynced, renamed
//!   to `layer.erofs` and the directory fsynced before the record turns
//!   committed. A crash leaves an active snapshot with a complete blob,
//!   which the next commit adopts.
//! * remove: the record goes first, then the directory moves to `trash/`.
//!   A crash in between leaves a directory without a record, which the
//!   start-up scan moves to the trash.
//! * the differ's images may reach the disk after Apply answers (see
//!   `durability`): Commit queues them for a background fsync; the
//!   start-up scan queues those of this boot again and sets aside those a
//!   crash may have torn, which nothing mounts until the differ has
//!   rebuilt them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{Mode, MountMode, VM_DEFAULT_SIZE};
use crate::durability::{self, OnSynced, Record, Syncer};
use crate::filters::{self, Fields};
use crate::layout::{Layout, NEW_PREFIX, TEMP_PREFIX};
use crate::mounts::{self, MountError, MountSpec};
use crate::store::{Info, Kind, Store, StoreError, Usage};

/// Settings with containerd's option names.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub root: PathBuf,
    /// Extra overlay options appended to every overlay mount.
    pub ovl_mount_options: Vec<String>,
    /// Set FS_IMMUTABLE_FL on committed layer images.
    pub set_immutable: bool,
    /// Enable fs-verity on committed layer images where the filesystem
    /// supports it (skipped with a warning where it does not).
    pub enable_fsverity: bool,
    /// Bytes of the ext4 image holding each active snapshot's changes (a
    /// quota); 0 for a plain directory.
    pub default_size: u64,
    /// Who mounts the layers: the daemon, or containerd's mount manager.
    pub mount_mode: crate::config::MountMode,
    /// Host (runc) or VM runtimes.
    pub mode: Mode,
    /// When deferred fsyncs of the differ's images run.
    pub sync_pacing: durability::Pacing,
}

/// Every way a snapshot operation can fail, classified for the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {path}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        // Boxed: the syscall error is large and rare; keeping it out of
        // line keeps every Result small.
        source: Box<sys::Error>,
    },
    #[error("converting {path} to EROFS")]
    Convert {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid filter")]
    Filter(#[from] filters::FilterError),
    #[error("{0}")]
    InvalidArgument(String),
}

/// The coarse classes containerd distinguishes (errdefs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Internal,
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Store(StoreError::NotFound(_)) => ErrorClass::NotFound,
            Error::Store(StoreError::AlreadyExists(_)) => ErrorClass::AlreadyExists,
            Error::Store(StoreError::FailedPrecondition(_)) | Error::Mount(_) => {
                ErrorClass::FailedPrecondition
            }
            Error::Store(StoreError::InvalidArgument(_))
            | Error::Filter(_)
            | Error::InvalidArgument(_) => ErrorClass::InvalidArgument,
            _ => ErrorClass::Internal,
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn sys_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(sys::Error) -> Error + 'a {
    move |source| Error::Sys {
        what,
        path: path.to_path_buf(),
        source: Box::new(source),
    }
}

/// Adapts [`Info`] to the filter language's field paths.
struct InfoFields<'a>(&'a Info);

impl Fields for InfoFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.0.name.clone()),
            // Always present, empty for a root snapshot, as containerd
            // reports it: `parent==""` selects the roots.
            [f] if f == "parent" => Some(self.0.parent.clone().unwrap_or_default()),
            [f] if f == "kind" => Some(
                match self.0.kind {
                    Kind::View => "view",
                    Kind::Active => "active",
                    Kind::Committed => "committed",
                }
                .to_string(),
            ),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
                self.0.labels.get(&rest.join(".")).cloned()
            }
            _ => None,
        }
    }
}

pub struct Snapshotter {
    layout: Layout,
    store: Store,
    cfg: Config,
    /// Serializes self-mount bookkeeping so that two requests never mount
    /// the same layer twice or unmount one another's lowers.
    lowers: Mutex<()>,
    /// Serializes fsmeta builds, so one chain is merged once.
    fsmeta: Mutex<()>,
    /// Committed layers a crash may have torn, with their records, until
    /// rebuilt.
    lost: Mutex<BTreeMap<u64, Option<Record>>>,
    /// fsyncs the images the differ left pending, after their Commit.
    syncer: Syncer,
    /// Told of each such fsync (the metrics).
    sync_observer: Arc<Mutex<Option<OnSynced>>>,
}

/// An upper directory to read, mounted for the purpose if it lives in a
/// VM container's ext4 image; unmounted on drop.
pub struct Upper {
    pub path: PathBuf,
    unmount: Option<PathBuf>,
}

impl Drop for Upper {
    fn drop(&mut self) {
        // Detached: a process forked while the export had a file open
        // can hold the mount for a moment, and it must not stay mounted.
        if let Some(rw) = self.unmount.take()
            && let Err(e) = sys::unmount(&rw, true)
        {
            eprintln!("warning: unmounting {}: {e}", rw.display());
        }
    }
}

/// Set by containerd on every extraction Prepare (and kept at Commit): the
/// chainID the snapshot will be committed as.
pub const TARGET_LABEL: &str = "containerd.io/snapshot.ref";

/// Only these overlay xattrs carry meaning into a layer; the others
/// (origin file handles, impure, redirect, …) describe the upper
/// filesystem they were written on and would confuse a later overlay.
fn keep_upper_xattr(name: &[u8]) -> bool {
    let private = name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.");
    !private || name == b"trusted.overlay.opaque" || name == b"user.overlay.opaque"
}

impl Snapshotter {
    /// Open (or create) the root, then reconcile it with the store: this
    /// is where leftovers of a crash or of a killed daemon are reclaimed.
    pub fn open(cfg: Config) -> Result<Snapshotter> {
        let layout = Layout::new(&cfg.root);
        layout.create().map_err(io_err("creating", layout.root()))?;
        let store = Store::open(&layout.db())?;
        let sync_observer: Arc<Mutex<Option<OnSynced>>> = Arc::new(Mutex::new(None));
        let observer = sync_observer.clone();
        let syncer = Syncer::start(
            Box::new(move |synced| {
                let mut fields = vec![
                    ("dir", synced.dir.display().to_string()),
                    ("sync_ms", crate::metrics::ms(synced.sync)),
                    ("lag_ms", crate::metrics::ms(synced.lag)),
                ];
                if let Some(e) = &synced.error {
                    fields.push(("error", e.clone()));
                }
                crate::metrics::log("layer durable", &fields);
                if let Some(f) = observer.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    f(synced);
                }
            }),
            cfg.sync_pacing,
        )
        .map_err(io_err("starting the layer sync thread for", layout.root()))?;
        let s = Snapshotter {
            layout,
            store,
            cfg,
            lowers: Mutex::new(()),
            fsmeta: Mutex::new(()),
            lost: Mutex::new(BTreeMap::new()),
            syncer,
            sync_observer,
        };
        s.recover(true)?;
        Ok(s)
    }

    pub fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<MountSpec>> {
        self.create(Kind::Active, key, parent, labels)
    }

    pub fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<MountSpec>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<MountSpec>> {
        self.syncer.touch();
        if kind == Kind::Active
            && let Some(target) = labels.get(TARGET_LABEL)
            && let Some(existing) = self.find_target(target, parent)?
        {
            // containerd then finds `existing` by the same label and
            // parent, and skips fetching and applying this layer.
            return Err(StoreError::AlreadyExists(format!(
                "target snapshot {target:?} already exists as {existing:?}"
            ))
            .into());
        }
        if let Some(p) = parent
            && !self
                .lost
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        {
            let (p, _) = self.store.get(p)?;
            let mut chain = vec![p.id];
            chain.extend(p.parent_ids);
            self.check_not_lost(&chain)?;
        }
        // VM mode gives containers an ext4 image for the VM to attach;
        // extraction snapshots keep the host shape, so that any differ can
        // write into them.
        let extract = kind == Kind::Active
            && (labels.contains_key(TARGET_LABEL)
                || key
                    .rsplit('/')
                    .next()
                    .is_some_and(|b| b.starts_with("extract-")));
        let vm_container = self.cfg.mode == Mode::Vm && kind == Kind::Active && !extract;
        let block = vm_container
            || (kind == Kind::Active && self.cfg.default_size > 0 && self.cfg.mode == Mode::Host);
        let tmp = tempfile::Builder::new()
            .prefix(NEW_PREFIX)
            .tempdir_in(self.layout.snapshots())
            .map_err(io_err("creating a directory in", &self.layout.snapshots()))?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", tmp.path()))?;
        make_dir(&tmp.path().join("fs"), 0o755)?;
        if kind == Kind::Active {
            let marker = tmp.path().join(crate::layout::MARKER);
            fs::write(&marker, b"").map_err(io_err("creating", &marker))?;
            if vm_container {
                let size = match self.cfg.default_size {
                    0 => VM_DEFAULT_SIZE,
                    n => n,
                };
                make_ext4(&tmp.path().join("rwlayer.img"), size)?;
            } else if block && self.cfg.mount_mode == MountMode::MountManager {
                // containerd formats the image when it first mounts it.
                let quota = tmp.path().join("rwlayer.size");
                fs::write(&quota, self.cfg.default_size.to_string())
                    .map_err(io_err("creating", &quota))?;
            } else if block {
                make_ext4(&tmp.path().join("rwlayer.img"), self.cfg.default_size)?;
            } else {
                make_dir(&tmp.path().join("work"), 0o711)?;
            }
        }
        let snap = self.store.create(kind, key, parent, labels)?;
        let dir = self.layout.snapshot(snap.id);
        if let Err(e) = fs::rename(tmp.path(), &dir) {
            let _ = self.store.remove(key);
            return Err(io_err("renaming into", &dir)(e));
        }
        // Renamed away: nothing left for the guard to delete.
        let _ = tmp.keep();
        let result = self
            .activate(snap.id, kind, &snap.parent_ids, block)
            .and_then(|()| {
                if kind == Kind::Active {
                    self.inherit_owner(snap.id, block, &snap.parent_ids);
                }
                self.mount_specs(snap.id, kind, &snap.parent_ids, block)
            });
        if result.is_err() {
            let _ = self.remove(key);
        }
        result
    }

    /// The directory of the active snapshot that `mounts` (as returned by
    /// Prepare, in any mount mode) write into, if it is one of ours: the
    /// differ writes `layer.erofs` there. `None` makes the differ answer
    /// NotImplemented so that containerd tries its next differ.
    pub fn apply_target(&self, mounts: &[MountSpec]) -> Result<Option<PathBuf>> {
        let snapshots = self.layout.snapshots();
        let ids = self.store.ids()?;
        // The writable part is last (an overlay's upperdir, a bind mount,
        // or in mount-manager block mode the ext4 image of mount 0).
        for m in mounts.iter().rev() {
            let uppers = m
                .options
                .iter()
                .filter_map(|o| o.strip_prefix("upperdir="))
                .map(PathBuf::from);
            for path in std::iter::once(m.source.clone()).chain(uppers) {
                let Some(id) = id_below(&snapshots, &path) else {
                    continue;
                };
                // Only active snapshots carry the marker; committed
                // parents show up here as lowers and are skipped.
                if ids.contains_key(&id) && self.layout.marker(id).exists() {
                    return Ok(Some(self.layout.snapshot(id)));
                }
            }
        }
        Ok(None)
    }

    /// VM mode: make sure the chain `parents` (top first) has its merged
    /// metadata image, VMDK descriptor and layers.manifest, built on first
    /// use and then kept, so the chain's mounts never change shape. False
    /// when the chain is a single layer or cannot be merged (tar-index or
    /// inline-data layers): it is then mounted layer by layer, always.
    fn ensure_fsmeta(&self, parents: &[u64]) -> Result<bool> {
        let &[top, _, ..] = parents else {
            return Ok(false);
        };
        let _guard = self.fsmeta.lock().unwrap_or_else(|p| p.into_inner());
        let fsmeta = self.layout.fsmeta(top);
        if fsmeta.exists() {
            return Ok(true);
        }
        let refused = self.layout.fsmeta_refused(top);
        if refused.exists() {
            return Ok(false);
        }
        let start = std::time::Instant::now();
        let dir = self.layout.snapshot(top);
        let blobs: Vec<PathBuf> = parents.iter().rev().map(|p| self.layout.blob(*p)).collect();
        let files = blobs
            .iter()
            .map(|b| fs::File::open(b).map_err(io_err("opening", b)))
            .collect::<Result<Vec<_>>>()?;
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&dir)
            .map_err(io_err("creating a temporary file in", &dir))?;
        let out = tmp.reopen().map_err(io_err("opening", tmp.path()))?;
        let merge_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Convert {
            path: dir.clone(),
            source: e,
        };
        let (file, summary) = match erofs::merge::build(&files, out) {
            Ok(built) => built,
            Err(
                e @ (erofs::merge::MergeError::Incompatible { .. }
                | erofs::merge::MergeError::TooManyLayers { .. }),
            ) => {
                let why = e.to_string();
                crate::metrics::log(
                    "fsmeta refused",
                    &[("top", top.to_string()), ("reason", why.clone())],
                );
                fs::write(&refused, format!("{why}\n")).map_err(io_err("writing", &refused))?;
                return Ok(false);
            }
            Err(e) => return Err(merge_err(Box::new(e))),
        };
        let layers = blobs
            .iter()
            .zip(&files)
            .map(|(b, f)| Ok((b.clone(), f.metadata().map_err(io_err("stat", b))?.len())))
            .collect::<Result<Vec<_>>>()?;
        let vmdk = erofs::vmdk::descriptor(&fsmeta, summary.image.image_bytes, &layers)
            .map_err(|e| merge_err(Box::new(e)))?;
        let manifest = erofs::vmdk::layers_manifest(&blobs).map_err(|e| merge_err(Box::new(e)))?;
        // Descriptor and manifest first: fsmeta's presence says all three
        // are complete.
        for (path, text) in [
            (self.layout.vmdk(top), vmdk),
            (self.layout.manifest(top), manifest),
        ] {
            durability::write_file_durably(&dir, &path, text.as_bytes())
                .map_err(io_err("writing", &path))?;
        }
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err("chmod", tmp.path()))?;
        file.sync_all().map_err(io_err("fsync", tmp.path()))?;
        tmp.persist(&fsmeta)
            .map_err(|e| io_err("renaming into", &fsmeta)(e.error))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", &dir))?;
        crate::metrics::log(
            "fsmeta",
            &[
                ("top", top.to_string()),
                ("layers", parents.len().to_string()),
                ("bytes", summary.image.image_bytes.to_string()),
                ("build_ms", crate::metrics::ms(start.elapsed())),
            ],
        );
        Ok(true)
    }

    /// For Compare: the upper directory of the active snapshot `right`
    /// mounts, when `left` shows exactly that snapshot's parents. The
    /// upper then *is* the difference, whiteouts included, and no tree
    /// walk over the lowers is needed. `None` lets the walking differ
    /// handle any other pair.
    pub fn compare_upper(&self, left: &[MountSpec], right: &[MountSpec]) -> Result<Option<Upper>> {
        let Some(dir) = self.apply_target(right)? else {
            return Ok(None);
        };
        let Some(id) = dir.file_name().and_then(Layout::parse_id) else {
            return Ok(None);
        };
        let ids = self.store.ids()?;
        let Some(key) = ids.get(&id) else {
            return Ok(None);
        };
        let (snap, _) = self.store.get(key)?;
        let shown: BTreeSet<u64> = left
            .iter()
            .flat_map(|m| {
                // Overlay lowers, or in VM mode fsmeta's devices.
                let lowers = m
                    .options
                    .iter()
                    .filter_map(|o| o.strip_prefix("lowerdir="))
                    .flat_map(|l| l.split(':'))
                    .chain(m.options.iter().filter_map(|o| o.strip_prefix("device=")))
                    .map(PathBuf::from);
                std::iter::once(m.source.clone())
                    .chain(lowers)
                    .collect::<Vec<_>>()
            })
            .filter_map(|p| self.layer_id(&p))
            .collect();
        let parents: BTreeSet<u64> = snap.parent_ids.iter().copied().collect();
        if shown != parents {
            return Ok(None);
        }
        let block = self.layout.rwlayer(id).exists();
        let mut guard = Upper {
            path: self.layout.upper(id, block),
            unmount: None,
        };
        if block {
            let rw = self.layout.rw(id);
            let was_mounted =
                rw.exists() && sys::is_mountpoint(&rw).map_err(sys_err("checking", &rw))?;
            if self.vm_shape(snap.kind, block) && !was_mounted {
                not_in_use(&self.layout.rwlayer(id))?;
            }
            self.ensure_rw(id)?;
            // A VM container's image is attached to the VM, not mounted
            // here: mount it only for the export (the VM must be stopped).
            if self.vm_shape(snap.kind, block) && !was_mounted {
                guard.unmount = Some(rw);
            }
        }
        Ok(Some(guard))
    }

    /// The committed layer a mount source or lowerdir entry refers to: a
    /// layer image, or its mount point.
    fn layer_id(&self, path: &Path) -> Option<u64> {
        id_below(&self.layout.snapshots(), path).or_else(|| id_below(&self.layout.mounts(), path))
    }

    /// A committed snapshot that already holds extraction target `target`
    /// on `parent`: a layer this daemon unpacked before, in any namespace.
    fn find_target(&self, target: &str, parent: Option<&str>) -> Result<Option<String>> {
        let mut found = None;
        self.store.walk(&mut |info| {
            if info.kind == Kind::Committed
                && info.labels.get(TARGET_LABEL).map(String::as_str) == Some(target)
                && info.parent.as_deref() == parent
            {
                found = Some(info.name.clone());
                return false;
            }
            true
        })?;
        Ok(found)
    }

    /// The upper's root takes the owner of the layer below, as containerd
    /// does, so a non-root image's root directory stays writable for it.
    /// Read from the layer image itself (its root inode), which is right
    /// in every mount mode and for layers our differ wrote.
    fn inherit_owner(&self, id: u64, block: bool, parents: &[u64]) {
        let Some(&top) = parents.first() else {
            return;
        };
        let owner = erofs::reader::Image::open(self.layout.blob(top))
            .ok()
            .and_then(|img| img.inode(img.root_nid()).ok())
            .map(|root| (root.uid(), root.gid()));
        if let Some((uid, gid)) = owner {
            let upper = self.layout.upper(id, block);
            let _ = std::os::unix::fs::chown(&upper, Some(uid), Some(gid));
        }
    }

    /// Mount a size-limited snapshot's ext4 image unless it already is
    /// (after a restart it still is; after a reboot it is not), with the
    /// overlay upper and work directories inside.
    fn ensure_rw(&self, id: u64) -> Result<()> {
        let rw = self.layout.rw(id);
        if rw.exists() && sys::is_mountpoint(&rw).map_err(sys_err("checking", &rw))? {
            return Ok(());
        }
        fs::create_dir_all(&rw).map_err(io_err("creating", &rw))?;
        let image = self.layout.rwlayer(id);
        sys::mount_ext4_image(&image, &rw).map_err(sys_err("mounting", &image))?;
        for (dir, mode) in [
            (self.layout.upper(id, true), 0o755),
            (self.layout.workdir(id, true), 0o711),
        ] {
            if !dir.exists() {
                make_dir(&dir, mode)?;
            }
        }
        Ok(())
    }

    /// Mounts of an existing active snapshot or view. Lowers (and a
    /// size-limited upper) are mounted again if they are missing, after a
    /// reboot say.
    pub fn mounts(&self, key: &str) -> Result<Vec<MountSpec>> {
        self.syncer.touch();
        let (snap, _) = self.store.get(key)?;
        let block = self.layout.rwlayer(snap.id).exists();
        self.check_not_lost(&snap.parent_ids)?;
        if snap.kind != Kind::Committed {
            self.activate(snap.id, snap.kind, &snap.parent_ids, block)?;
        }
        self.mount_specs(snap.id, snap.kind, &snap.parent_ids, block)
    }

    /// In self-mount mode, make sure what the returned mounts refer to is
    /// mounted: the lower layers, and a size-limited upper. With the
    /// mount manager, containerd mounts everything itself.
    fn activate(&self, id: u64, kind: Kind, parents: &[u64], block: bool) -> Result<()> {
        if self.cfg.mount_mode == MountMode::MountManager || self.vm_shape(kind, block) {
            return Ok(());
        }
        self.ensure_lowers(parents)?;
        if block && kind == Kind::Active {
            self.ensure_rw(id)?;
        }
        Ok(())
    }

    /// Whether a snapshot gets VM-mode mounts: views, and active
    /// snapshots with an ext4 writable layer (not extraction snapshots).
    fn vm_shape(&self, kind: Kind, block: bool) -> bool {
        self.cfg.mode == Mode::Vm && (kind == Kind::View || (kind == Kind::Active && block))
    }

    fn mount_specs(
        &self,
        id: u64,
        kind: Kind,
        parents: &[u64],
        block: bool,
    ) -> Result<Vec<MountSpec>> {
        if self.vm_shape(kind, block) {
            // The chain's extraction snapshots needed its layers mounted
            // on the host (for fallback differs); containers never do, so
            // once one is made they can go. Not at each extraction commit:
            // the next layer's extraction would mount them all again.
            self.release_lowers()?;
            let merged = self.ensure_fsmeta(parents)?;
            return Ok(mounts::vm_mounts(&self.layout, id, kind, parents, merged)?);
        }
        let ovl = &self.cfg.ovl_mount_options;
        Ok(match self.cfg.mount_mode {
            MountMode::SelfMount => mounts::mounts(&self.layout, id, kind, parents, block, ovl)?,
            MountMode::MountManager => {
                let own_blob = self.layout.blob(id).exists();
                let quota = fs::read_to_string(self.layout.quota(id))
                    .ok()
                    .and_then(|q| q.trim().parse::<u64>().ok());
                mounts::manager_mounts(&self.layout, id, kind, parents, own_blob, quota, ovl)?
            }
        })
    }

    /// Mount each committed layer in `ids` at its stable path unless it
    /// already is: one mount per layer, shared by every snapshot above it,
    /// found again after a restart.
    fn ensure_lowers(&self, ids: &[u64]) -> Result<()> {
        let _guard = self.lowers.lock().unwrap_or_else(|p| p.into_inner());
        for &id in ids {
            let target = self.layout.lower(id);
            if target.exists()
                && sys::is_mountpoint(&target).map_err(sys_err("checking", &target))?
            {
                continue;
            }
            fs::create_dir_all(&target).map_err(io_err("creating", &target))?;
            let blob = self.layout.blob(id);
            sys::mount_erofs(&blob, &target, &sys::ErofsOptions::default())
                .map_err(sys_err("mounting", &blob))?;
        }
        Ok(())
    }

    /// Unmount lowers that no active snapshot or view needs any more.
    fn release_lowers(&self) -> Result<()> {
        let _guard = self.lowers.lock().unwrap_or_else(|p| p.into_inner());
        let needed = self.needed_lowers()?;
        let dir = self.layout.mounts();
        let entries = fs::read_dir(&dir).map_err(io_err("listing", &dir))?;
        for entry in entries.flatten() {
            let Some(id) = Layout::parse_id(&entry.file_name()) else {
                continue;
            };
            if needed.contains(&id) {
                continue;
            }
            let target = entry.path();
            if sys::is_mountpoint(&target).map_err(sys_err("checking", &target))? {
                // Detach: a running container's overlay keeps the layer
                // alive on its own, so this never pulls a rootfs away.
                sys::unmount(&target, true).map_err(sys_err("unmounting", &target))?;
            }
            let _ = fs::remove_dir(&target);
        }
        Ok(())
    }

    fn needed_lowers(&self) -> Result<BTreeSet<u64>> {
        let mut keys = Vec::new();
        self.store.walk(&mut |info| {
            if info.kind != Kind::Committed {
                keys.push(info.name.clone());
            }
            true
        })?;
        let mut needed = BTreeSet::new();
        for key in keys {
            if let Ok((snap, _)) = self.store.get(&key) {
                let block = self.layout.rwlayer(snap.id).exists();
                if !self.vm_shape(snap.kind, block) {
                    needed.extend(snap.parent_ids);
                }
            }
        }
        Ok(needed)
    }

    /// Turn active snapshot `key` into committed `name`. The layer image
    /// is the one our differ left, or the upper directory converted here.
    /// `parent` rebases a parentless snapshot (parallel unpack): an EROFS
    /// layer does not depend on what lies below it, so only the record
    /// changes.
    pub fn commit(
        &self,
        key: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        parent: Option<&str>,
    ) -> Result<()> {
        self.syncer.touch();
        let (snap, _) = self.store.get(key)?;
        if snap.kind != Kind::Active {
            return Err(
                StoreError::FailedPrecondition(format!("{key} is not an active snapshot")).into(),
            );
        }
        let id = snap.id;
        let block = self.layout.rwlayer(id).exists();
        let blob = self.layout.blob(id);
        let converted = !blob.exists();
        if converted {
            if block {
                if self.vm_shape(snap.kind, block) {
                    not_in_use(&self.layout.rwlayer(id))?;
                }
                self.ensure_rw(id)?;
            }
            self.convert_upper(id, &self.layout.upper(id, block))?;
        }
        // An image converted here shows the upper as it is now. If the
        // commit fails after all, it must go: the next commit of `key` would
        // adopt it and lose what is written in between.
        let discard = || {
            if converted {
                if self.cfg.set_immutable {
                    let _ = sys::set_immutable(&blob, false);
                }
                let _ = fs::remove_file(&blob);
            }
        };
        if let Err(e) = self.seal(&blob) {
            discard();
            return Err(e);
        }
        let size = fs::metadata(&blob).map_err(io_err("stat", &blob))?.len();
        let usage = Usage {
            size: i64::try_from(size).unwrap_or(i64::MAX),
            inodes: 1,
        };
        if let Err(e) = self.store.commit(key, name, usage, labels, parent) {
            discard();
            return Err(e.into());
        }
        let dir = self.layout.snapshot(id);
        if !converted && durability::is_pending(&dir) {
            self.syncer.submit(dir);
        }
        // The upper's content now lives in the image; keep fs/ itself,
        // whose owner children inherit.
        let fs_dir = self.layout.fs(id);
        clear_dir(&fs_dir).map_err(io_err("clearing", &fs_dir))?;
        let work = self.layout.work(id);
        let _ = fs::remove_dir_all(&work);
        let _ = fs::remove_file(self.layout.marker(id));
        if block {
            let rw = self.layout.rw(id);
            if sys::is_mountpoint(&rw).unwrap_or(false) {
                sys::unmount(&rw, true).map_err(sys_err("unmounting", &rw))?;
            }
            let _ = fs::remove_dir(&rw);
            let _ = fs::remove_file(self.layout.rwlayer(id));
        }
        let _ = fs::remove_file(self.layout.quota(id));
        Ok(())
    }

    /// fs-verity and the immutable flag on a finished image, as
    /// configured.
    fn seal(&self, blob: &Path) -> Result<()> {
        if self.cfg.enable_fsverity {
            match sys::enable_verity(blob) {
                Ok(sys::VerityStatus::Unsupported) => {
                    eprintln!("warning: fs-verity unsupported for {}", blob.display());
                }
                Ok(_) => {}
                Err(e) => return Err(sys_err("enabling fs-verity on", blob)(e)),
            }
        }
        if self.cfg.set_immutable
            && let Err(e) = sys::set_immutable(blob, true)
        {
            eprintln!("warning: set_immutable {}: {e}", blob.display());
        }
        Ok(())
    }

    /// Refuse to mount a chain with a layer a crash may have torn.
    fn check_not_lost(&self, ids: &[u64]) -> Result<()> {
        let lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            let Some(record) = lost.get(id) else {
                continue;
            };
            let layer = record.as_ref().map_or_else(
                || format!("snapshot {id}"),
                |r| format!("layer {} (snapshot {id})", r.digest),
            );
            let msg = match record.as_ref().and_then(|r| r.failure.as_deref()) {
                Some(failure) => format!(
                    "{layer} may have been torn by a crash before it reached the disk and could not be rebuilt ({failure}); remove the image and pull it again"
                ),
                None if record.is_none() => format!(
                    "{layer} may have been torn by a crash before it reached the disk and its record is unreadable; remove the image and pull it again"
                ),
                None => format!(
                    "{layer} may have been torn by a crash before it reached the disk and is being rebuilt from its blob; retry shortly"
                ),
            };
            return Err(StoreError::FailedPrecondition(msg).into());
        }
        Ok(())
    }

    /// Have `f` told of every background fsync (after the log line).
    pub fn on_synced(&self, f: OnSynced) {
        *self.sync_observer.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// An operation (an Apply) that postpones background fsyncs for as
    /// long as the guard lives.
    pub fn busy(&self) -> durability::Busy {
        self.syncer.busy()
    }

    /// Wait until every image queued so far is on disk.
    pub fn wait_synced(&self) {
        self.syncer.wait();
    }

    /// At shutdown: finish the queue, so that a clean stop leaves no
    /// image pending.
    pub fn stop_syncing(&self) {
        self.syncer.stop();
    }

    /// Committed layers that wait for a rebuild: id, directory, record.
    pub fn lost_layers(&self) -> Vec<(u64, PathBuf, Option<Record>)> {
        let lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        lost.iter()
            .map(|(&id, r)| (id, self.layout.snapshot(id), r.clone()))
            .collect()
    }

    /// Make a lost layer's image replaceable (the immutable flag).
    pub fn begin_rebuild(&self, id: u64) -> Result<()> {
        let blob = self.layout.blob(id);
        if self.cfg.set_immutable && blob.exists() {
            sys::set_immutable(&blob, false).map_err(sys_err("clearing immutable on", &blob))?;
        }
        Ok(())
    }

    /// The differ rebuilt `id`'s image (fsynced): seal it and mount it
    /// again. Merged metadata built over the torn image goes too, rebuilt
    /// on the next use, in case this build differs from the one before
    /// the crash.
    pub fn rebuilt(&self, id: u64) -> Result<()> {
        let blob = self.layout.blob(id);
        self.seal(&blob)?;
        let mut tops = Vec::new();
        self.store.walk(&mut |info| {
            tops.push(info.name.clone());
            true
        })?;
        for key in tops {
            if let Ok((snap, _)) = self.store.get(&key)
                && (snap.id == id || snap.parent_ids.contains(&id))
            {
                for f in [
                    self.layout.fsmeta(snap.id),
                    self.layout.vmdk(snap.id),
                    self.layout.manifest(snap.id),
                    self.layout.fsmeta_refused(snap.id),
                ] {
                    let _ = fs::remove_file(f);
                }
            }
        }
        // A mount of the torn image would otherwise be reused; whoever
        // still has it open keeps it (detached).
        let lower = self.layout.lower(id);
        {
            let _guard = self.lowers.lock().unwrap_or_else(|p| p.into_inner());
            if sys::is_mountpoint(&lower).unwrap_or(false) {
                sys::unmount(&lower, true).map_err(sys_err("unmounting", &lower))?;
            }
        }
        let dir = self.layout.snapshot(id);
        let lost = dir.join(durability::LOST);
        fs::remove_file(&lost).map_err(io_err("removing", &lost))?;
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        Ok(())
    }

    /// A rebuild of `id` failed: keep it lost, with the reason, also for
    /// the next start.
    pub fn rebuild_failed(&self, id: u64, record: &Record, failure: &str) -> Result<()> {
        let record = Record {
            failure: Some(failure.to_string()),
            ..record.clone()
        };
        let dir = self.layout.snapshot(id);
        durability::write_lost(&dir, &record.to_text())
            .map_err(io_err("recording the failure in", &dir))?;
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Some(record));
        Ok(())
    }

    /// Start-up: what happened to the image of snapshot `id` (`key`)
    /// if the differ wrote it without an fsync.
    fn scan_durability(&self, id: u64, key: &str, dir: &Path) -> Result<()> {
        let state = durability::scan(dir).map_err(io_err("checking durability of", dir))?;
        if state == durability::State::Durable {
            return Ok(());
        }
        let committed = self
            .store
            .get(key)
            .is_ok_and(|(s, _)| s.kind == Kind::Committed);
        match state {
            // An active snapshot's image is queued by its Commit.
            durability::State::Pending if committed => self.syncer.submit(dir.to_path_buf()),
            durability::State::Lost(record) if committed => {
                eprintln!(
                    "warning: snapshot {key}: its layer image may have been torn by a crash; it will be rebuilt from its blob"
                );
                self.lost
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, record);
            }
            durability::State::Lost(_) => {
                // An unpack the crash interrupted: containerd does it
                // again, and no Commit may adopt a torn image.
                let blob = self.layout.blob(id);
                match fs::remove_file(&blob) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err("removing", &blob)(e));
                    }
                    _ => {}
                }
                let lost = dir.join(durability::LOST);
                fs::remove_file(&lost).map_err(io_err("removing", &lost))?;
            }
            durability::State::Pending | durability::State::Durable => {}
        }
        Ok(())
    }

    /// Convert an upper directory (whiteouts as 0:0 devices) to
    /// `layer.erofs`, durably.
    fn convert_upper(&self, id: u64, upper: &Path) -> Result<()> {
        let fs_dir = upper.to_path_buf();
        let dir = self.layout.snapshot(id);
        let conv_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Convert {
            path: fs_dir.clone(),
            source,
        };
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&dir)
            .map_err(io_err("creating a temporary file in", &dir))?;
        let file = tmp.reopen().map_err(io_err("opening", tmp.path()))?;
        let mut writer =
            erofs::writer::ImageWriter::new(file, erofs::writer::WriterOptions::default())
                .map_err(|e| conv_err(Box::new(e)))?;
        let opts = layer::dir::DirOptions {
            keep_xattr: keep_upper_xattr,
        };
        let (tree, _) = layer::dir::read_dir_tree_with(&fs_dir, &mut writer, &opts)
            .map_err(|e| conv_err(Box::new(e)))?;
        let (file, _) = writer.finish(&tree).map_err(|e| conv_err(Box::new(e)))?;
        // Readable like any layer (tempfile creates 0600); the directory
        // above keeps it private.
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err("chmod", tmp.path()))?;
        file.sync_all().map_err(io_err("fsync", tmp.path()))?;
        let blob = self.layout.blob(id);
        tmp.persist(&blob)
            .map_err(|e| io_err("renaming into", &blob)(e.error))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", &dir))?;
        Ok(())
    }

    /// Remove `key`. Fast: the directory moves to the trash and is deleted
    /// in the background.
    pub fn remove(&self, key: &str) -> Result<()> {
        self.syncer.touch();
        let (id, kind) = self.store.remove(key)?;
        let blob = self.layout.blob(id);
        if kind == Kind::Committed && self.cfg.set_immutable && blob.exists() {
            let _ = sys::set_immutable(&blob, false);
        }
        self.trash_dir(id)?;
        if kind == Kind::Committed {
            let lower = self.layout.lower(id);
            if lower.exists() && sys::is_mountpoint(&lower).unwrap_or(false) {
                sys::unmount(&lower, true).map_err(sys_err("unmounting", &lower))?;
            }
            let _ = fs::remove_dir(&lower);
        } else {
            self.release_lowers()?;
        }
        self.purge_trash_in_background();
        Ok(())
    }

    fn trash_dir(&self, id: u64) -> Result<()> {
        let dir = self.layout.snapshot(id);
        if !dir.exists() {
            return Ok(());
        }
        // Leftover mounts inside (a commit interrupted mid-way) would make
        // the deletion fail or cross into another filesystem.
        detach_mounts_under(&dir);
        let dest = self
            .layout
            .trash()
            .join(format!("{id}-{}", std::process::id()));
        let dest = unique(dest);
        fs::rename(&dir, &dest).map_err(io_err("moving to trash", &dir))
    }

    fn purge_trash_in_background(&self) {
        let trash = self.layout.trash();
        let _ = std::thread::Builder::new()
            .name("trash".into())
            .spawn(move || purge(&trash));
    }

    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(self.store.info(key)?)
    }

    pub fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        Ok(self.store.update(info, fieldpaths)?)
    }

    pub fn list(&self, filter_strings: &[String]) -> Result<Vec<Info>> {
        let filter = filters::parse(filter_strings)?;
        let mut out = Vec::new();
        self.store.walk(&mut |info| {
            if filter.matches(&InfoFields(info)) {
                out.push(info.clone());
            }
            true
        })?;
        Ok(out)
    }

    /// Committed: the image size recorded at commit. Active: what the
    /// upper really uses on disk.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let (snap, _) = self.store.get(key)?;
        if snap.kind == Kind::Committed {
            return Ok(self.store.usage(key)?);
        }
        let block = self.layout.rwlayer(snap.id).exists();
        let upper = self.layout.upper(snap.id, block);
        disk_usage(&upper).map_err(io_err("measuring", &upper))
    }

    /// Reclaim everything not backed by a record: orphan snapshot
    /// directories, stale lower mounts, the trash.
    pub fn cleanup(&self) -> Result<()> {
        self.recover(false)
    }

    /// Reconcile the root with the store. At start-up nothing else runs,
    /// so directories still being created (`new-*`) and temporary images
    /// of interrupted commits are leftovers of a crash and go too; from the
    /// Cleanup call they may belong to requests in flight and stay.
    fn recover(&self, startup: bool) -> Result<()> {
        let ids = self.store.ids()?;
        let dir = self.layout.snapshots();
        let entries = fs::read_dir(&dir).map_err(io_err("listing", &dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let path = entry.path();
            let id = Layout::parse_id(&name);
            let key = id.and_then(|id| ids.get(&id));
            let orphan = match id {
                Some(_) => key.is_none(),
                None => startup && name.to_string_lossy().starts_with(NEW_PREFIX),
            };
            if !orphan {
                if startup {
                    remove_commit_temps(&path);
                    if let (Some(id), Some(key)) = (id, key) {
                        self.scan_durability(id, key, &path)?;
                    }
                }
                continue;
            }
            detach_mounts_under(&path);
            let dest = unique(self.layout.trash().join(name));
            match fs::rename(&path, &dest) {
                Ok(()) => {}
                // A concurrent Remove moved it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("moving to trash", &path)(e)),
            }
        }
        self.release_lowers()?;
        purge(&self.layout.trash());
        Ok(())
    }
}

/// Delete temporary images that a commit killed mid-way left in a
/// snapshot directory.
fn remove_commit_temps(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Refuse to mount a VM container's writable layer while a VM has it
/// open: QEMU holds OFD locks on its disk images (`file.locking`), which
/// conflict with this whole-file write lock. The lock is only a probe
/// (closing any descriptor of the file drops a POSIX lock, and the loop
/// device opens it again): containerd does not start a container on a
/// snapshot that is being committed, so the window is the VM that is
/// still running, which this catches.
fn not_in_use(image: &Path) -> Result<()> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io_err("opening", image))?;
    match rustix::fs::fcntl_lock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => {
            Err(StoreError::FailedPrecondition(format!(
                "{} is locked by another process (is the container's VM still running?)",
                image.display()
            ))
            .into())
        }
        Err(e) => Err(io_err("locking", image)(e.into())),
    }
}

/// The id of `base/<id>/…` that `path` lies in, if it does.
fn id_below(base: &Path, path: &Path) -> Option<u64> {
    let first = path.strip_prefix(base).ok()?.components().next()?;
    Layout::parse_id(first.as_os_str())
}

fn make_dir(path: &Path, mode: u32) -> Result<()> {
    fs::create_dir(path).map_err(io_err("creating", path))?;
    // Explicit: the umask must not decide an upper's permissions.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

/// A sparse file of `size` bytes formatted ext4, with no blocks reserved
/// for root so that the whole size is the quota.
fn make_ext4(path: &Path, size: u64) -> Result<()> {
    let f = fs::File::create(path).map_err(io_err("creating", path))?;
    f.set_len(size).map_err(io_err("sizing", path))?;
    drop(f);
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-E", "nodiscard"])
        .arg(path)
        .output()
        .map_err(io_err("running mkfs.ext4 for", path))?;
    if !out.status.success() {
        return Err(Error::Io {
            what: "mkfs.ext4",
            path: path.to_path_buf(),
            source: io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(())
}

/// `path`, or `path` with a numeric suffix if it exists.
fn unique(path: PathBuf) -> PathBuf {
    let mut p = path.clone();
    let mut n = 0;
    while p.exists() {
        n += 1;
        p = PathBuf::from(format!("{}.{n}", path.display()));
    }
    p
}

/// Detach every mount below `dir`, deepest first (mountinfo lists parents
/// before their children). Best effort: what stays mounted makes the
/// caller's next step fail with a clear error.
fn detach_mounts_under(dir: &Path) {
    for m in sys::mounts_under(dir).unwrap_or_default().iter().rev() {
        let _ = sys::unmount(&m.mount_point, true);
    }
}

/// Delete everything in the trash; entries that fail stay for the next
/// attempt.
fn purge(trash: &Path) {
    if let Ok(entries) = fs::read_dir(trash) {
        for e in entries.flatten() {
            let p = e.path();
            let blob = p.join(crate::layout::BLOB);
            if blob.exists() {
                let _ = sys::set_immutable(&blob, false);
            }
            let _ = fs::remove_dir_all(&p);
        }
    }
}

/// Remove the contents of `dir`, keeping `dir`.
fn clear_dir(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Bytes allocated and inodes used under `root`, hard links counted once,
/// without following symlinks or crossing into other filesystems.
fn disk_usage(root: &Path) -> io::Result<Usage> {
    let dev = fs::symlink_metadata(root)?.dev();
    let mut seen = BTreeSet::new();
    let mut size = 0i64;
    let mut inodes = 0i64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p)?;
        if md.dev() != dev || !seen.insert(md.ino()) {
            continue;
        }
        inodes += 1;
        size += i64::try_from(md.blocks() * 512).unwrap_or(i64::MAX);
        if md.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(Usage { size, inodes })
}
