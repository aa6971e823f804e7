//! Snapshot metadata: containerd's `core/snapshots/storage` on redb.
//!
//! One record per snapshot key, plus a parent → children index and a
//! counter for ids. Every operation is one redb transaction, and write
//! transactions commit with [`Durability::Immediate`]: when a method
//! returns `Ok`, the change survives a crash or power loss (redb's
//! copy-on-write commit is atomic, so a crash never leaves half of one).
//!
//! Semantics follow containerd's bolt storage, which the built-in
//! snapshotters use and which containerd's callers (unpacker, GC, CRI)
//! branch on by error code:
//!
//! | call | error | when |
//! |---|---|---|
//! | [`Store::create`] | InvalidArgument | kind is Committed, empty key, parent not committed |
//! | | NotFound | parent missing (checked before the key, as containerd does) |
//! | | AlreadyExists | key exists |
//! | [`Store::commit`] | AlreadyExists | name exists (checked first, as containerd does) |
//! | | NotFound | key missing, or rebase parent missing |
//! | | FailedPrecondition | key is not Active (a View or a Committed) |
//! | | InvalidArgument | empty name; rebase onto a different parent or a non-committed one |
//! | [`Store::update`] | NotFound / InvalidArgument | name missing / field path other than labels |
//! | [`Store::remove`] | NotFound / FailedPrecondition | missing / has children |
//!
//! Two deliberate differences from containerd's storage package:
//! - [`Store::get`] returns any kind. containerd's `GetSnapshot` refuses a
//!   Committed one with FailedPrecondition; the daemon checks the kind
//!   itself where that matters (`Mounts`).
//! - Keys are opaque; containerd's metadata layer already namespaces them
//!   (`<ns>/<seq>/<key>`), so nothing here parses them.
//!
//! Ids come from a persistent counter: once committed, an id is never
//! handed out again, even after a removal or a restart. That is what makes
//! directory cleanup safe: the directory of a removed snapshot, still
//! waiting to be deleted, can never be mistaken for a later snapshot's.
//!
//! # Ordering against the file system
//!
//! The database and the directories cannot change in one atomic step, so
//! every multi-step operation is ordered such that a crash in between
//! leaves, at worst, a directory that no record points to. Such orphans
//! are found by comparing `snapshots/` with [`Store::ids`] at start-up
//! (before serving) and removed. The opposite state, a record whose
//! directory is gone, would break that snapshot and everything above it;
//! callers avoid it with this order:
//!
//! - Create: build the directory under a temporary name, then call
//!   [`Store::create_with`] and rename it to `snapshots/<id>` in the
//!   `before_commit` hook. A crash before the commit leaves an orphan
//!   directory. Its id was never committed and will be handed out again,
//!   so the sweep must run before the daemon serves requests. If the hook
//!   fails, nothing is recorded. If the commit itself fails after the hook,
//!   the caller still holds the id it was given and moves the directory
//!   back out. (Renaming after [`Store::create`] returns also works, but a
//!   crash in between leaves a record without a directory, which the
//!   daemon must then tolerate when the key is removed.)
//! - Remove: [`Store::remove_with`] commits the removal first; only after it
//!   returns does the caller move `snapshots/<id>` to the trash. A crash in
//!   between leaves an orphan directory, which the start-up sweep removes.
//!   Steps that must happen while the record still exists and that are
//!   harmless if the removal then fails (clearing `FS_IMMUTABLE_FL`,
//!   unmounting) go in the `before_commit` hook, which runs after every
//!   check has passed and can veto the removal by returning an error. Do
//!   not rename or delete the directory in the hook: if the commit then
//!   fails or the process dies, the record would outlive its directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, Durability, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable,
    ReadableTable, TableDefinition, WriteTransaction,
};

/// Version of the table layout and record encoding below. Bump it on any
/// incompatible change and teach [`Store::open`] to migrate; a file with a
/// version this build does not know is refused rather than misread.
pub const SCHEMA_VERSION: u64 = 1;

/// `schema_version` and `next_id`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Snapshot key → encoded [`Record`].
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// Parent key → child keys: whether a snapshot has children is one lookup.
const CHILDREN: MultimapTableDefinition<&str, &str> = MultimapTableDefinition::new("children");

const SCHEMA_KEY: &str = "schema_version";
const NEXT_ID_KEY: &str = "next_id";

/// containerd's `snapshots.Kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    /// containerd's numeric values (`KindView = 1` ...), so the stored byte
    /// means the same as in containerd's own database.
    const fn to_byte(self) -> u8 {
        match self {
            Kind::View => 1,
            Kind::Active => 2,
            Kind::Committed => 3,
        }
    }

    const fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::View),
            2 => Some(Kind::Active),
            3 => Some(Kind::Committed),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        })
    }
}

/// containerd's `snapshots.Info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub parent: Option<String>,
    pub kind: Kind,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// What the daemon needs to find a snapshot's directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: u64,
    pub kind: Kind,
    /// Immediate parent first, down to the bottom layer.
    pub parent_ids: Vec<u64>,
}

/// containerd's `snapshots.Usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// Store errors. The first four are containerd's errdefs classes and carry
/// a message for people; the rest are internal errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The file was written with a layout this build does not read.
    #[error(
        "{}: metadata schema version {found} is not supported (this build reads version {SCHEMA_VERSION}); \
         it was written by a different version of the snapshotter",
        path.display()
    )]
    UnsupportedSchema { path: PathBuf, found: u64 },
    /// A record or the metadata does not decode: the file was damaged or
    /// written by something else.
    #[error("metadata store is corrupt: {0}")]
    Corrupt(String),
    #[error("metadata store: {context}")]
    Db {
        context: String,
        #[source]
        source: redb::Error,
    },
}

/// Attaches what the store was doing to a redb error.
trait Ctx<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Db {
            context: context.to_owned(),
            source: e.into(),
        })
    }
}

/// The snapshot metadata store. `Send + Sync`: share it by reference or
/// `Arc`. Readers never block; write transactions run one at a time and
/// each ends with an fsync, so async callers use `spawn_blocking`.
pub struct Store {
    db: Database,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Open the store at `path`, creating it if the file does not exist or
    /// is empty. A file of another schema version, or a redb file that is
    /// not ours, is refused.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Db {
            context: format!("opening {}", path.display()),
            source: e.into(),
        })?;
        let store = Store { db };
        store.write(|txn| {
            // Before open_table below creates them: a file without any
            // table is new; one with tables but no version is not ours.
            let fresh = txn.list_tables().ctx("listing tables")?.next().is_none()
                && txn
                    .list_multimap_tables()
                    .ctx("listing tables")?
                    .next()
                    .is_none();
            let mut meta = txn.open_table(META).ctx("opening the meta table")?;
            let version = meta
                .get(SCHEMA_KEY)
                .ctx("reading the schema version")?
                .map(|g| g.value());
            match version {
                Some(SCHEMA_VERSION) => {}
                Some(found) => {
                    return Err(StoreError::UnsupportedSchema {
                        path: path.to_owned(),
                        found,
                    });
                }
                None if fresh => {
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION)
                        .ctx("writing the schema version")?;
                    // containerd's bolt sequence starts at 1 as well.
                    meta.insert(NEXT_ID_KEY, 1).ctx("writing the id counter")?;
                }
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "{}: has tables but no schema version; not a snapshot store",
                        path.display()
                    )));
                }
            }
            if meta
                .get(NEXT_ID_KEY)
                .ctx("reading the id counter")?
                .is_none()
            {
                return Err(StoreError::Corrupt("the id counter is missing".into()));
            }
            // Created here so that read transactions can always open them.
            txn.open_table(SNAPSHOTS)
                .ctx("opening the snapshots table")?;
            txn.open_multimap_table(CHILDREN)
                .ctx("opening the children table")?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Run `f` in a write transaction; commit (durably) if it returns `Ok`,
    /// roll back otherwise.
    fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut txn = self.db.begin_write().ctx("beginning a write transaction")?;
        // The default, but the crash-safety argument in the module docs
        // depends on it, so it is not left to a default.
        txn.set_durability(Durability::Immediate)
            .ctx("setting durability")?;
        match f(&txn) {
            Ok(v) => {
                txn.commit().ctx("committing")?;
                Ok(v)
            }
            Err(e) => {
                // Nothing was written; an abort error would only hide `e`.
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    fn read_snapshots(
        &self,
    ) -> Result<redb::ReadOnlyTable<&'static str, &'static [u8]>, StoreError> {
        let txn = self.db.begin_read().ctx("beginning a read transaction")?;
        txn.open_table(SNAPSHOTS).ctx("opening the snapshots table")
    }

    /// New Active or View snapshot `key` on top of committed `parent`
    /// (`None` or `Some("")`: no parent). Labels with empty values are
    /// dropped, as containerd does. Returns the new snapshot with a fresh id.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Snapshot, StoreError> {
        self.create_with(kind, key, parent, labels, |_| Ok::<(), StoreError>(()))
    }

    /// [`Store::create`], running `before_commit(&snapshot)` after all
    /// checks have passed and before the record commits; an error from it
    /// cancels the creation. This is where the caller renames its
    /// temporary directory to `snapshots/<id>` (see the module docs).
    pub fn create_with<E: From<StoreError>>(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
        before_commit: impl FnOnce(&Snapshot) -> Result<(), E>,
    ) -> Result<Snapshot, E> {
        if kind == Kind::Committed {
            return Err(StoreError::InvalidArgument(format!(
                "snapshot type {kind} invalid; only snapshots of type active or view can be created"
            ))
            .into());
        }
        if key.is_empty() {
            return Err(
                StoreError::InvalidArgument("snapshot key must not be empty".into()).into(),
            );
        }
        let parent = parent.filter(|p| !p.is_empty());
        self.write(|txn| {
            let snap = create_in(txn, kind, key, parent, labels)?;
            before_commit(&snap)?;
            Ok(snap)
        })
    }

    /// Snapshot `key` (any kind) with its ancestry, and its info.
    pub fn get(&self, key: &str) -> Result<(Snapshot, Info), StoreError> {
        let snaps = self.read_snapshots()?;
        let rec = load(&snaps, key)?.ok_or_else(|| not_found(key))?;
        let parent_ids = parent_ids_of(&snaps, key, rec.parent.as_deref())?;
        let snap = Snapshot {
            id: rec.id,
            kind: rec.kind,
            parent_ids,
        };
        Ok((snap, rec.into_info(key)))
    }

    /// Info of `key`.
    pub fn info(&self, key: &str) -> Result<Info, StoreError> {
        let snaps = self.read_snapshots()?;
        let rec = load(&snaps, key)?.ok_or_else(|| not_found(key))?;
        Ok(rec.into_info(key))
    }

    /// Update the labels of `info.name`, containerd's `UpdateInfo`. Only
    /// labels are mutable; `info`'s kind, parent and times are ignored.
    /// - no field paths, or `labels`: replace all labels with `info.labels`;
    /// - `labels.X`: set X to `info.labels[X]`, or delete it if absent;
    /// - anything else: InvalidArgument, and nothing changes.
    ///
    /// Empty values delete, as in containerd. Bumps `updated`.
    pub fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, StoreError> {
        let name = info.name.as_str();
        self.write(|txn| {
            let mut snaps = txn
                .open_table(SNAPSHOTS)
                .ctx("opening the snapshots table")?;
            let mut rec = load(&snaps, name)?.ok_or_else(|| not_found(name))?;
            if fieldpaths.is_empty() {
                rec.labels = info.labels.clone();
            }
            for path in fieldpaths {
                if let Some(label) = path.strip_prefix("labels.") {
                    match info.labels.get(label) {
                        Some(v) => rec.labels.insert(label.to_owned(), v.clone()),
                        None => rec.labels.remove(label),
                    };
                } else if path == "labels" {
                    rec.labels = info.labels.clone();
                } else {
                    return Err(StoreError::InvalidArgument(format!(
                        "cannot update {path:?} field on snapshot {name:?}"
                    )));
                }
            }
            rec.labels = without_empty(std::mem::take(&mut rec.labels));
            rec.updated = SystemTime::now();
            snaps
                .insert(name, rec.encode().as_slice())
                .ctx("writing a snapshot")?;
            Ok(rec.into_info(name))
        })
    }

    /// Commit active snapshot `key` as `name`, containerd's `CommitActive`.
    /// The id stays; `key` stops existing. `created`/`updated` become now.
    ///
    /// `labels` replace the active snapshot's labels, also when empty:
    /// containerd's storage does the same ("Replace labels, do not
    /// inherit"), and its metadata layer passes the commit's labels here.
    ///
    /// `parent` is containerd 2.2's rebase (`CommitSnapshotRequest.parent`):
    /// an active snapshot without a parent gets it (it must be committed);
    /// the same parent it already has is accepted; a different one is
    /// InvalidArgument.
    pub fn commit(
        &self,
        key: &str,
        name: &str,
        usage: Usage,
        labels: BTreeMap<String, String>,
        parent: Option<&str>,
    ) -> Result<u64, StoreError> {
        if name.is_empty() {
            return Err(StoreError::InvalidArgument(
                "committed snapshot name must not be empty".into(),
            ));
        }
        let parent = parent.filter(|p| !p.is_empty());
        self.write(|txn| {
            let mut snaps = txn
                .open_table(SNAPSHOTS)
                .ctx("opening the snapshots table")?;
            let mut children = txn
                .open_multimap_table(CHILDREN)
                .ctx("opening the children table")?;
            if snaps.get(name).ctx("reading a snapshot")?.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "snapshot {name:?} already exists"
                )));
            }
            let mut rec = load(&snaps, key)?.ok_or_else(|| not_found(key))?;
            if rec.kind != Kind::Active {
                return Err(StoreError::FailedPrecondition(format!(
                    "snapshot {key:?} is {}, not active",
                    rec.kind
                )));
            }
            match (parent, rec.parent.as_deref()) {
                (None, _) => {}
                (Some(p), Some(current)) if p == current => {}
                (Some(p), Some(current)) => {
                    return Err(StoreError::InvalidArgument(format!(
                        "snapshot {key:?} has parent {current:?}; cannot rebase onto {p:?}"
                    )));
                }
                (Some(p), None) => {
                    let prec = load(&snaps, p)?.ok_or_else(|| {
                        StoreError::NotFound(format!("parent snapshot {p:?} does not exist"))
                    })?;
                    if prec.kind != Kind::Committed {
                        return Err(StoreError::InvalidArgument(format!(
                            "parent {p:?} is not a committed snapshot"
                        )));
                    }
                    rec.parent = Some(p.to_owned());
                }
            }
            // The parent's child link follows the rename (after a rebase
            // there is no old link; removing it is then a no-op).
            if let Some(p) = rec.parent.as_deref() {
                children.remove(p, key).ctx("unlinking a child")?;
                children.insert(p, name).ctx("linking a child")?;
            }
            // An active snapshot cannot be a parent (create requires a
            // committed one), so this finds nothing; if it ever did, the
            // children would have to move with their parent's name.
            let kids = children
                .remove_all(key)
                .ctx("unlinking children")?
                .map(|g| g.map(|g| g.value().to_owned()))
                .collect::<Result<Vec<String>, _>>()
                .ctx("reading children")?;
            for kid in &kids {
                let mut krec = load(&snaps, kid)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("child {kid:?} of {key:?} has no record"))
                })?;
                krec.parent = Some(name.to_owned());
                snaps
                    .insert(kid.as_str(), krec.encode().as_slice())
                    .ctx("writing a snapshot")?;
                children.insert(name, kid.as_str()).ctx("linking a child")?;
            }
            snaps.remove(key).ctx("removing a snapshot")?;
            let now = SystemTime::now();
            rec.kind = Kind::Committed;
            rec.created = now;
            rec.updated = now;
            rec.labels = without_empty(labels);
            rec.usage = usage;
            snaps
                .insert(name, rec.encode().as_slice())
                .ctx("writing a snapshot")?;
            Ok(rec.id)
        })
    }

    /// Remove `key`: NotFound if missing, FailedPrecondition if it has
    /// children. Durable on return. Returns its id and kind.
    pub fn remove(&self, key: &str) -> Result<(u64, Kind), StoreError> {
        self.remove_with(key, |_, _| Ok::<(), StoreError>(()))
    }

    /// [`Store::remove`], running `before_commit(id, kind)` after all
    /// checks have passed and before the removal commits; an error from it
    /// cancels the removal. See the module docs for what belongs in it
    /// (and what does not: moving the directory comes after this returns).
    pub fn remove_with<E: From<StoreError>>(
        &self,
        key: &str,
        before_commit: impl FnOnce(u64, Kind) -> Result<(), E>,
    ) -> Result<(u64, Kind), E> {
        self.write(|txn| {
            let (id, kind) = remove_in(txn, key)?;
            before_commit(id, kind)?;
            Ok((id, kind))
        })
    }

    /// Call `f` on every snapshot in key order (bytewise, like bolt) until
    /// it returns `false`. `f` sees one consistent state of the store.
    pub fn walk(&self, f: &mut dyn FnMut(&Info) -> bool) -> Result<(), StoreError> {
        let snaps = self.read_snapshots()?;
        for entry in snaps.iter().ctx("listing snapshots")? {
            let (k, v) = entry.ctx("listing snapshots")?;
            let key = k.value();
            let info = Record::decode(key, v.value())?.into_info(key);
            if !f(&info) {
                break;
            }
        }
        Ok(())
    }

    /// Stored usage of `key`: what [`Store::commit`] recorded for a
    /// committed snapshot, zero for active and view ones (the caller
    /// measures those).
    pub fn usage(&self, key: &str) -> Result<Usage, StoreError> {
        let snaps = self.read_snapshots()?;
        let rec = load(&snaps, key)?.ok_or_else(|| not_found(key))?;
        Ok(rec.usage)
    }

    /// Every id in use, with its key: the orphan sweep deletes directories
    /// whose id is not here.
    pub fn ids(&self) -> Result<BTreeMap<u64, String>, StoreError> {
        let snaps = self.read_snapshots()?;
        let mut ids = BTreeMap::new();
        for entry in snaps.iter().ctx("listing snapshots")? {
            let (k, v) = entry.ctx("listing snapshots")?;
            let key = k.value();
            ids.insert(Record::decode(key, v.value())?.id, key.to_owned());
        }
        Ok(ids)
    }
}

/// The checks and writes of [`Store::create_with`], in `txn`.
fn create_in(
    txn: &WriteTransaction,
    kind: Kind,
    key: &str,
    parent: Option<&str>,
    labels: BTreeMap<String, String>,
) -> Result<Snapshot, StoreError> {
    let mut snaps = txn
        .open_table(SNAPSHOTS)
        .ctx("opening the snapshots table")?;
    let mut parent_ids = Vec::new();
    if let Some(p) = parent {
        let prec = load(&snaps, p)?
            .ok_or_else(|| StoreError::NotFound(format!("parent snapshot {p:?} does not exist")))?;
        if prec.kind != Kind::Committed {
            return Err(StoreError::InvalidArgument(format!(
                "parent {p:?} is not a committed snapshot"
            )));
        }
        parent_ids.push(prec.id);
        parent_ids.extend(parent_ids_of(&snaps, p, prec.parent.as_deref())?);
    }
    if snaps.get(key).ctx("reading a snapshot")?.is_some() {
        return Err(StoreError::AlreadyExists(format!(
            "snapshot {key:?} already exists"
        )));
    }
    let id = next_id(txn)?;
    let now = SystemTime::now();
    let rec = Record {
        id,
        kind,
        parent: parent.map(str::to_owned),
        labels: without_empty(labels),
        created: now,
        updated: now,
        usage: Usage::default(),
    };
    snaps
        .insert(key, rec.encode().as_slice())
        .ctx("writing a snapshot")?;
    if let Some(p) = parent {
        txn.open_multimap_table(CHILDREN)
            .ctx("opening the children table")?
            .insert(p, key)
            .ctx("linking a child")?;
    }
    Ok(Snapshot {
        id,
        kind,
        parent_ids,
    })
}

/// The checks and writes of [`Store::remove_with`], in `txn`.
fn remove_in(txn: &WriteTransaction, key: &str) -> Result<(u64, Kind), StoreError> {
    let mut snaps = txn
        .open_table(SNAPSHOTS)
        .ctx("opening the snapshots table")?;
    let mut children = txn
        .open_multimap_table(CHILDREN)
        .ctx("opening the children table")?;
    let rec = load(&snaps, key)?.ok_or_else(|| not_found(key))?;
    let first_child = children
        .get(key)
        .ctx("reading children")?
        .next()
        .transpose()
        .ctx("reading children")?
        .map(|g| g.value().to_owned());
    if let Some(child) = first_child {
        return Err(StoreError::FailedPrecondition(format!(
            "cannot remove snapshot {key:?}: it has children (e.g. {child:?})"
        )));
    }
    if let Some(p) = rec.parent.as_deref() {
        children.remove(p, key).ctx("unlinking a child")?;
    }
    snaps.remove(key).ctx("removing a snapshot")?;
    Ok((rec.id, rec.kind))
}

fn not_found(key: &str) -> StoreError {
    StoreError::NotFound(format!("snapshot {key:?} does not exist"))
}

/// containerd never stores a label with an empty value (`boltutil.WriteLabels`).
fn without_empty(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.retain(|_, v| !v.is_empty());
    labels
}

/// Take the next id and advance the counter, in the caller's transaction:
/// if it rolls back, the id is handed out again. No record refers to it
/// then; a directory a `create_with` hook renamed to it is an orphan that
/// the caller moves away (or the start-up sweep does, after a crash).
fn next_id(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META).ctx("opening the meta table")?;
    let id = meta
        .get(NEXT_ID_KEY)
        .ctx("reading the id counter")?
        .map(|g| g.value())
        .ok_or_else(|| StoreError::Corrupt("the id counter is missing".into()))?;
    let next = id
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt("the id counter is exhausted".into()))?;
    meta.insert(NEXT_ID_KEY, next)
        .ctx("writing the id counter")?;
    Ok(id)
}

fn load<T>(snaps: &T, key: &str) -> Result<Option<Record>, StoreError>
where
    T: ReadableTable<&'static str, &'static [u8]>,
{
    match snaps.get(key).ctx("reading a snapshot")? {
        Some(g) => Record::decode(key, g.value()).map(Some),
        None => Ok(None),
    }
}

/// Ids of `parent` and its ancestors, nearest first.
fn parent_ids_of<T>(snaps: &T, key: &str, parent: Option<&str>) -> Result<Vec<u64>, StoreError>
where
    T: ReadableTable<&'static str, &'static [u8]>,
{
    let mut ids = Vec::new();
    let mut next = parent.map(str::to_owned);
    // Parents exist before their children, so the chain cannot loop; a
    // damaged file could, and must not hang the daemon.
    let limit = match next {
        Some(_) => snaps.len().ctx("counting snapshots")?,
        None => 0,
    };
    while let Some(p) = next {
        let rec = load(snaps, &p)?.ok_or_else(|| {
            StoreError::Corrupt(format!("ancestor {p:?} of {key:?} has no record"))
        })?;
        ids.push(rec.id);
        if ids.len() as u64 > limit {
            return Err(StoreError::Corrupt(format!(
                "the parent chain of {key:?} loops"
            )));
        }
        next = rec.parent;
    }
    Ok(ids)
}

/// One snapshot as stored (schema 1). The key is the table key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    id: u64,
    kind: Kind,
    parent: Option<String>,
    labels: BTreeMap<String, String>,
    created: SystemTime,
    updated: SystemTime,
    usage: Usage,
}

impl Record {
    fn into_info(self, name: &str) -> Info {
        Info {
            name: name.to_owned(),
            parent: self.parent,
            kind: self.kind,
            labels: self.labels,
            created: self.created,
            updated: self.updated,
        }
    }

    /// Little-endian, length-prefixed fields in a fixed order:
    /// id u64, kind u8, has_parent u8 [parent str], created, updated
    /// (i64 seconds + u32 nanoseconds since the epoch), usage (i64 size,
    /// i64 inodes), label count u64, then (key str, value str) pairs.
    /// A str is a u64 byte length and UTF-8 bytes. Hand-written rather than
    /// serde so that the format is exactly what this comment says and only
    /// changes with [`SCHEMA_VERSION`].
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&self.id.to_le_bytes());
        b.push(self.kind.to_byte());
        match &self.parent {
            Some(p) => {
                b.push(1);
                put_str(&mut b, p);
            }
            None => b.push(0),
        }
        put_time(&mut b, self.created);
        put_time(&mut b, self.updated);
        b.extend_from_slice(&self.usage.size.to_le_bytes());
        b.extend_from_slice(&self.usage.inodes.to_le_bytes());
        b.extend_from_slice(&(self.labels.len() as u64).to_le_bytes());
        for (k, v) in &self.labels {
            put_str(&mut b, k);
            put_str(&mut b, v);
        }
        b
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Record, StoreError> {
        let mut r = Reader { rest: bytes, key };
        let id = r.u64()?;
        let kind_byte = r.u8()?;
        let kind = Kind::from_byte(kind_byte).ok_or_else(|| r.bad(format!("kind {kind_byte}")))?;
        let parent = match r.u8()? {
            0 => None,
            1 => Some(r.string()?),
            b => return Err(r.bad(format!("parent flag {b}"))),
        };
        let created = r.time()?;
        let updated = r.time()?;
        let usage = Usage {
            size: r.i64()?,
            inodes: r.i64()?,
        };
        let n = r.u64()?;
        let mut labels = BTreeMap::new();
        for _ in 0..n {
            let k = r.string()?;
            let v = r.string()?;
            labels.insert(k, v);
        }
        if !r.rest.is_empty() {
            return Err(r.bad(format!("{} trailing bytes", r.rest.len())));
        }
        Ok(Record {
            id,
            kind,
            parent,
            labels,
            created,
            updated,
            usage,
        })
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// Seconds are floored and nanoseconds count forward, so times before
/// the epoch encode too (they never occur, but must not corrupt).
fn put_time(b: &mut Vec<u8>, t: SystemTime) {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    };
    b.extend_from_slice(&secs.to_le_bytes());
    b.extend_from_slice(&nanos.to_le_bytes());
}

struct Reader<'a> {
    rest: &'a [u8],
    key: &'a str,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: String) -> StoreError {
        StoreError::Corrupt(format!("record of {:?}: {what}", self.key))
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| self.bad("truncated".into()))?;
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        self.take().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, StoreError> {
        self.take().map(i64::from_le_bytes)
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let len = self.u64()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.rest.len())
            .ok_or_else(|| self.bad("truncated".into()))?;
        let (s, rest) = self.rest.split_at(len);
        self.rest = rest;
        String::from_utf8(s.to_vec()).map_err(|_| self.bad("string is not UTF-8".into()))
    }

    fn time(&mut self) -> Result<SystemTime, StoreError> {
        let secs = self.i64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(self.bad(format!("{nanos} nanoseconds")));
        }
        let base = if secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
        } else {
            UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
        };
        base.and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
            .ok_or_else(|| self.bad(format!("time {secs}s out of range")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("metadata.db")).unwrap();
        (dir, store)
    }

    /// A committed snapshot `name` on `parent`, through an active `name-a`.
    fn committed(s: &Store, name: &str, parent: Option<&str>) -> u64 {
        let key = format!("{name}-a");
        let snap = s
            .create(Kind::Active, &key, parent, BTreeMap::new())
            .unwrap();
        let id = s
            .commit(&key, name, Usage::default(), BTreeMap::new(), None)
            .unwrap();
        assert_eq!(id, snap.id);
        id
    }

    fn not_found<T: fmt::Debug>(r: Result<T, StoreError>) {
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    }
    fn already_exists<T: fmt::Debug>(r: Result<T, StoreError>) {
        assert!(matches!(r, Err(StoreError::AlreadyExists(_))), "{r:?}");
    }
    fn failed_precondition<T: fmt::Debug>(r: Result<T, StoreError>) {
        assert!(matches!(r, Err(StoreError::FailedPrecondition(_))), "{r:?}");
    }
    fn invalid_argument<T: fmt::Debug>(r: Result<T, StoreError>) {
        assert!(matches!(r, Err(StoreError::InvalidArgument(_))), "{r:?}");
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
    }

    #[test]
    fn create_and_get() {
        let (_d, s) = fresh();
        let before = SystemTime::now();
        let base = committed(&s, "base", None);
        let snap = s
            .create(
                Kind::Active,
                "default/1/c",
                Some("base"),
                labels(&[("a", "1"), ("empty", "")]),
            )
            .unwrap();
        assert_eq!(snap.kind, Kind::Active);
        assert_eq!(snap.parent_ids, vec![base]);
        assert!(snap.id > base);

        let (got, info) = s.get("default/1/c").unwrap();
        assert_eq!(got, snap);
        assert_eq!(info.name, "default/1/c");
        assert_eq!(info.parent.as_deref(), Some("base"));
        assert_eq!(info.kind, Kind::Active);
        // containerd never stores empty label values.
        assert_eq!(info.labels, labels(&[("a", "1")]));
        assert!(info.created >= before);
        assert_eq!(info.created, info.updated);
        assert_eq!(s.info("default/1/c").unwrap(), info);

        let view = s
            .create(Kind::View, "v", Some("base"), BTreeMap::new())
            .unwrap();
        assert_eq!(view.kind, Kind::View);
        assert_eq!(view.parent_ids, vec![base]);

        // get works for committed ones too (the daemon checks the kind).
        let (b, binfo) = s.get("base").unwrap();
        assert_eq!(
            (b.id, b.kind, b.parent_ids.len()),
            (base, Kind::Committed, 0)
        );
        assert_eq!(binfo.parent, None);
    }

    #[test]
    fn create_errors() {
        let (_d, s) = fresh();
        committed(&s, "base", None);
        s.create(Kind::Active, "act", None, BTreeMap::new())
            .unwrap();
        s.create(Kind::View, "view", Some("base"), BTreeMap::new())
            .unwrap();

        already_exists(s.create(Kind::Active, "act", None, BTreeMap::new()));
        already_exists(s.create(Kind::View, "base", None, BTreeMap::new()));
        not_found(s.create(Kind::Active, "x", Some("nope"), BTreeMap::new()));
        invalid_argument(s.create(Kind::Active, "x", Some("act"), BTreeMap::new()));
        invalid_argument(s.create(Kind::Active, "x", Some("view"), BTreeMap::new()));
        invalid_argument(s.create(Kind::Committed, "x", None, BTreeMap::new()));
        invalid_argument(s.create(Kind::Active, "", None, BTreeMap::new()));
        // As in containerd, the parent is checked before the key.
        not_found(s.create(Kind::Active, "act", Some("nope"), BTreeMap::new()));
        // No failed call left anything behind.
        not_found(s.info("x"));
        assert_eq!(s.ids().unwrap().len(), 3);
    }

    #[test]
    fn empty_parent_means_none() {
        let (_d, s) = fresh();
        let snap = s
            .create(Kind::Active, "a", Some(""), BTreeMap::new())
            .unwrap();
        assert!(snap.parent_ids.is_empty());
        assert_eq!(s.info("a").unwrap().parent, None);
    }

    #[test]
    fn get_info_usage_not_found() {
        let (_d, s) = fresh();
        not_found(s.get("missing"));
        not_found(s.info("missing"));
        not_found(s.usage("missing"));
        not_found(s.remove("missing"));
    }

    #[test]
    fn ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        let mut seen = Vec::new();
        {
            let s = Store::open(&path).unwrap();
            let a = s.create(Kind::Active, "a", None, BTreeMap::new()).unwrap();
            seen.push(a.id);
            assert_eq!(s.remove("a").unwrap(), (a.id, Kind::Active));
            // The same key again gets a new id.
            let a2 = s.create(Kind::Active, "a", None, BTreeMap::new()).unwrap();
            seen.push(a2.id);
            s.remove("a").unwrap();
            // A failed create rolls back; it never hands out a used id.
            not_found(s.create(Kind::Active, "b", Some("zz"), BTreeMap::new()));
        }
        // ... nor after a restart, when the highest id has been removed.
        let s = Store::open(&path).unwrap();
        let b = s.create(Kind::Active, "b", None, BTreeMap::new()).unwrap();
        seen.push(b.id);
        let mut sorted = seen.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len());
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen[0], 1, "ids start at 1 like containerd's");
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        let (base_info, act_info, act_snap);
        {
            let s = Store::open(&path).unwrap();
            let key = "default/1/extract";
            s.create(Kind::Active, key, None, labels(&[("l", "v")]))
                .unwrap();
            s.commit(
                key,
                "default/2/sha256:aa",
                Usage {
                    size: 4096,
                    inodes: 1,
                },
                labels(&[("containerd.io/snapshot.ref", "sha256:aa")]),
                None,
            )
            .unwrap();
            act_snap = s
                .create(
                    Kind::Active,
                    "default/3/c",
                    Some("default/2/sha256:aa"),
                    BTreeMap::new(),
                )
                .unwrap();
            base_info = s.info("default/2/sha256:aa").unwrap();
            act_info = s.info("default/3/c").unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.info("default/2/sha256:aa").unwrap(), base_info);
        let (snap, info) = s.get("default/3/c").unwrap();
        assert_eq!((snap, info), (act_snap.clone(), act_info));
        assert_eq!(
            s.usage("default/2/sha256:aa").unwrap(),
            Usage {
                size: 4096,
                inodes: 1
            }
        );
        // The children index survived too.
        failed_precondition(s.remove("default/2/sha256:aa"));
        // And the counter: the next id follows the last one handed out.
        let next = s.create(Kind::View, "v", None, BTreeMap::new()).unwrap();
        assert_eq!(next.id, act_snap.id + 1);
    }

    #[test]
    fn unknown_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        drop(Store::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, SCHEMA_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&path).unwrap_err();
        match &err {
            StoreError::UnsupportedSchema { found, .. } => assert_eq!(*found, SCHEMA_VERSION + 1),
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("schema version 2 is not supported"), "{msg}");
        // Refusing did not rewrite the version.
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::UnsupportedSchema { .. })
        ));
    }

    #[test]
    fn foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // A redb file of someone else: tables, no version.
        let path = dir.path().join("other.db");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let def: TableDefinition<&str, &str> = TableDefinition::new("things");
            txn.open_table(def).unwrap().insert("a", "b").unwrap();
            txn.commit().unwrap();
        }
        assert!(matches!(Store::open(&path), Err(StoreError::Corrupt(_))));
        // Not a redb file at all.
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
        assert!(matches!(Store::open(&junk), Err(StoreError::Db { .. })));
    }

    #[test]
    fn update_fieldpaths() {
        let (_d, s) = fresh();
        s.create(
            Kind::Active,
            "k",
            None,
            labels(&[("a", "1"), ("b", "2"), ("c", "3")]),
        )
        .unwrap();
        let orig = s.info("k").unwrap();
        let mut info = orig.clone();

        // No field paths: replace all labels.
        info.labels = labels(&[("x", "9")]);
        let got = s.update(info.clone(), &[]).unwrap();
        assert_eq!(got.labels, labels(&[("x", "9")]));
        assert_eq!(got.created, orig.created);
        assert!(got.updated >= orig.updated);
        assert_eq!(s.info("k").unwrap(), got);

        // "labels": replace all, empty values dropped.
        info.labels = labels(&[("a", "1"), ("b", "2"), ("e", "")]);
        let got = s.update(info.clone(), &["labels".into()]).unwrap();
        assert_eq!(got.labels, labels(&[("a", "1"), ("b", "2")]));

        // "labels.X": set, or delete when absent or empty in info.
        info.labels = labels(&[("a", "10"), ("b", ""), ("z", "26")]);
        let got = s
            .update(
                info.clone(),
                &["labels.a".into(), "labels.b".into(), "labels.q".into()],
            )
            .unwrap();
        assert_eq!(got.labels, labels(&[("a", "10")]));
        info.labels = labels(&[("z", "26")]);
        let got = s
            .update(info.clone(), &["labels.z".into(), "labels.a".into()])
            .unwrap();
        assert_eq!(got.labels, labels(&[("z", "26")]));

        // Kind and parent in the request are ignored; only labels change.
        let mut sneaky = got.clone();
        sneaky.kind = Kind::Committed;
        sneaky.parent = Some("elsewhere".into());
        let got = s.update(sneaky, &["labels".into()]).unwrap();
        assert_eq!((got.kind, got.parent.as_deref()), (Kind::Active, None));

        // Other fields: InvalidArgument, and the whole update rolls back.
        let before = s.info("k").unwrap();
        info.labels = labels(&[("new", "1")]);
        invalid_argument(s.update(info.clone(), &["labels.new".into(), "parent".into()]));
        invalid_argument(s.update(info.clone(), &["name".into()]));
        assert_eq!(s.info("k").unwrap(), before);

        // Unknown name: NotFound.
        info.name = "missing".into();
        not_found(s.update(info, &[]));
    }

    #[test]
    fn commit_happy_path() {
        let (_d, s) = fresh();
        let base = committed(&s, "base", None);
        let act = s
            .create(Kind::Active, "act", Some("base"), labels(&[("old", "1")]))
            .unwrap();
        let usage = Usage {
            size: 12345,
            inodes: 1,
        };
        let id = s
            .commit("act", "top", usage, labels(&[("new", "2")]), None)
            .unwrap();
        assert_eq!(id, act.id, "commit keeps the id");
        not_found(s.info("act"));
        let (snap, info) = s.get("top").unwrap();
        assert_eq!(snap.kind, Kind::Committed);
        assert_eq!(snap.parent_ids, vec![base]);
        assert_eq!(info.parent.as_deref(), Some("base"));
        // Labels are replaced, not inherited.
        assert_eq!(info.labels, labels(&[("new", "2")]));
        assert_eq!(s.usage("top").unwrap(), usage);
        // The parent link follows the new name.
        failed_precondition(s.remove("base"));
        s.remove("top").unwrap();
        s.remove("base").unwrap();
    }

    #[test]
    fn commit_with_no_labels_clears_them() {
        let (_d, s) = fresh();
        s.create(Kind::Active, "act", None, labels(&[("l", "1")]))
            .unwrap();
        s.commit("act", "c", Usage::default(), BTreeMap::new(), None)
            .unwrap();
        assert!(s.info("c").unwrap().labels.is_empty());
    }

    #[test]
    fn commit_errors() {
        let (_d, s) = fresh();
        committed(&s, "base", None);
        s.create(Kind::Active, "act", None, BTreeMap::new())
            .unwrap();
        s.create(Kind::View, "view", Some("base"), BTreeMap::new())
            .unwrap();
        let u = Usage::default();
        let none = BTreeMap::new;
        already_exists(s.commit("act", "base", u, none(), None));
        already_exists(s.commit("act", "view", u, none(), None));
        already_exists(s.commit("act", "act", u, none(), None));
        // containerd checks the name first.
        already_exists(s.commit("missing", "base", u, none(), None));
        not_found(s.commit("missing", "n", u, none(), None));
        failed_precondition(s.commit("view", "n", u, none(), None));
        failed_precondition(s.commit("base", "n", u, none(), None));
        invalid_argument(s.commit("act", "", u, none(), None));
        // Nothing changed.
        assert_eq!(s.info("act").unwrap().kind, Kind::Active);
        assert_eq!(s.info("view").unwrap().kind, Kind::View);
        not_found(s.info("n"));
    }

    #[test]
    fn commit_rebase() {
        let (_d, s) = fresh();
        let p1 = committed(&s, "p1", None);
        let p2 = committed(&s, "p2", Some("p1"));
        s.create(Kind::Active, "pending", None, BTreeMap::new())
            .unwrap();
        let u = Usage::default();

        // Rebase onto a missing or uncommitted parent fails and changes nothing.
        not_found(s.commit("pending", "c", u, BTreeMap::new(), Some("nope")));
        invalid_argument(s.commit("pending", "c", u, BTreeMap::new(), Some("pending")));
        assert_eq!(s.info("pending").unwrap().parent, None);

        // A parentless active snapshot takes the parent.
        s.commit("pending", "c", u, BTreeMap::new(), Some("p2"))
            .unwrap();
        let (snap, info) = s.get("c").unwrap();
        assert_eq!(info.parent.as_deref(), Some("p2"));
        assert_eq!(snap.parent_ids, vec![p2, p1]);
        failed_precondition(s.remove("p2"));

        // The same parent is accepted; a different one is not.
        s.create(Kind::Active, "a2", Some("p2"), BTreeMap::new())
            .unwrap();
        invalid_argument(s.commit("a2", "c2", u, BTreeMap::new(), Some("p1")));
        assert_eq!(s.info("a2").unwrap().kind, Kind::Active);
        s.commit("a2", "c2", u, BTreeMap::new(), Some("p2"))
            .unwrap();
        // Some("") is no rebase.
        s.create(Kind::Active, "a3", Some("p1"), BTreeMap::new())
            .unwrap();
        s.commit("a3", "c3", u, BTreeMap::new(), Some("")).unwrap();
        assert_eq!(s.info("c3").unwrap().parent.as_deref(), Some("p1"));
    }

    #[test]
    fn remove_rules() {
        let (_d, s) = fresh();
        let base = committed(&s, "base", None);
        let a = s
            .create(Kind::Active, "a", Some("base"), BTreeMap::new())
            .unwrap();
        let v = s
            .create(Kind::View, "v", Some("base"), BTreeMap::new())
            .unwrap();

        failed_precondition(s.remove("base"));
        assert_eq!(s.remove("a").unwrap(), (a.id, Kind::Active));
        failed_precondition(s.remove("base"));
        assert_eq!(s.remove("v").unwrap(), (v.id, Kind::View));
        assert_eq!(s.remove("base").unwrap(), (base, Kind::Committed));
        not_found(s.remove("base"));
        assert!(s.ids().unwrap().is_empty());
    }

    #[test]
    fn remove_with_hook_can_veto() {
        let (_d, s) = fresh();
        let a = s.create(Kind::Active, "a", None, BTreeMap::new()).unwrap();
        let r: Result<_, StoreError> = s.remove_with("a", |id, kind| {
            assert_eq!((id, kind), (a.id, Kind::Active));
            Err(StoreError::FailedPrecondition("busy".into()))
        });
        failed_precondition(r);
        assert_eq!(s.info("a").unwrap().kind, Kind::Active);

        // The hook does not run when a check fails.
        let r = s.remove_with("missing", |_, _| -> Result<(), StoreError> {
            panic!("hook ran for a missing key")
        });
        not_found(r);

        let mut ran = false;
        let got = s
            .remove_with("a", |_, _| {
                ran = true;
                Ok::<(), StoreError>(())
            })
            .unwrap();
        assert!(ran);
        assert_eq!(got, (a.id, Kind::Active));
        not_found(s.info("a"));
    }

    #[test]
    fn create_with_hook_sees_the_id_and_can_veto() {
        let (_d, s) = fresh();
        let r: Result<Snapshot, StoreError> =
            s.create_with(Kind::Active, "a", None, BTreeMap::new(), |_| {
                Err(StoreError::InvalidArgument("rename failed".into()))
            });
        invalid_argument(r);
        not_found(s.info("a"));

        let mut seen = None;
        let snap = s
            .create_with(Kind::Active, "a", None, BTreeMap::new(), |snap| {
                seen = Some(snap.id);
                Ok::<(), StoreError>(())
            })
            .unwrap();
        assert_eq!(seen, Some(snap.id));
        assert_eq!(s.get("a").unwrap().0, snap);
    }

    #[test]
    fn long_chain_parent_ids_in_order() {
        let (_d, s) = fresh();
        let mut ids = Vec::new();
        let mut parent: Option<String> = None;
        for i in 0..130 {
            let name = format!("default/{i}/sha256:{i:064x}");
            ids.push(committed(&s, &name, parent.as_deref()));
            parent = Some(name);
        }
        let (snap, _) = s.get(parent.as_deref().unwrap()).unwrap();
        assert_eq!(snap.id, ids[129]);
        let expected: Vec<u64> = ids[..129].iter().rev().copied().collect();
        assert_eq!(snap.parent_ids, expected);
        let top = s
            .create(Kind::Active, "top", parent.as_deref(), BTreeMap::new())
            .unwrap();
        assert_eq!(top.parent_ids.len(), 130);
        assert_eq!(top.parent_ids[0], ids[129]);
    }

    #[test]
    fn walk_is_ordered_and_stops() {
        let (_d, s) = fresh();
        for k in ["m", "b", "z", "a/1", "a", "B"] {
            s.create(Kind::Active, k, None, BTreeMap::new()).unwrap();
        }
        let mut names = Vec::new();
        s.walk(&mut |info| {
            names.push(info.name.clone());
            true
        })
        .unwrap();
        // Bytewise, as bolt iterates: upper case before lower case.
        assert_eq!(names, ["B", "a", "a/1", "b", "m", "z"]);

        let mut n = 0;
        s.walk(&mut |_| {
            n += 1;
            n < 2
        })
        .unwrap();
        assert_eq!(n, 2);

        let (_d2, empty) = fresh();
        empty.walk(&mut |_| panic!("no snapshots")).unwrap();
    }

    #[test]
    fn usage_by_kind() {
        let (_d, s) = fresh();
        s.create(Kind::Active, "a", None, BTreeMap::new()).unwrap();
        assert_eq!(s.usage("a").unwrap(), Usage::default());
        let u = Usage {
            size: 1 << 40,
            inodes: 7,
        };
        s.commit("a", "c", u, BTreeMap::new(), None).unwrap();
        assert_eq!(s.usage("c").unwrap(), u);
        s.create(Kind::View, "v", Some("c"), BTreeMap::new())
            .unwrap();
        assert_eq!(s.usage("v").unwrap(), Usage::default());
    }

    #[test]
    fn ids_map_every_key() {
        let (_d, s) = fresh();
        let c = committed(&s, "c", None);
        let a = s
            .create(Kind::Active, "a", Some("c"), BTreeMap::new())
            .unwrap();
        let v = s.create(Kind::View, "v", None, BTreeMap::new()).unwrap();
        let want: BTreeMap<u64, String> = [(c, "c"), (a.id, "a"), (v.id, "v")]
            .into_iter()
            .map(|(i, k)| (i, k.to_owned()))
            .collect();
        assert_eq!(s.ids().unwrap(), want);
    }

    #[test]
    fn concurrent_creates_get_distinct_ids() {
        let (_d, s) = fresh();
        let s = Arc::new(s);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    (0..10)
                        .map(|i| {
                            s.create(Kind::Active, &format!("{t}/{i}"), None, BTreeMap::new())
                                .unwrap()
                                .id
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=40).collect::<Vec<_>>());
    }

    #[test]
    fn record_round_trip_and_corruption() {
        let rec = Record {
            id: 42,
            kind: Kind::Committed,
            parent: Some("default/1/sha256:ab".into()),
            labels: labels(&[("k", "v"), ("ünï", "cödé")]),
            created: UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            // Before the epoch, with a fraction: floored seconds.
            updated: UNIX_EPOCH - Duration::new(5, 250),
            usage: Usage {
                size: -1,
                inodes: i64::MAX,
            },
        };
        let bytes = rec.encode();
        assert_eq!(Record::decode("k", &bytes).unwrap(), rec);
        let plain = Record {
            parent: None,
            labels: BTreeMap::new(),
            updated: UNIX_EPOCH,
            ..rec.clone()
        };
        assert_eq!(Record::decode("k", &plain.encode()).unwrap(), plain);

        // Every truncation and any trailing byte is reported, never a panic.
        for n in 0..bytes.len() {
            assert!(matches!(
                Record::decode("k", &bytes[..n]),
                Err(StoreError::Corrupt(_))
            ));
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            Record::decode("k", &long),
            Err(StoreError::Corrupt(_))
        ));
        let mut bad_kind = bytes.clone();
        bad_kind[8] = 9;
        assert!(matches!(
            Record::decode("k", &bad_kind),
            Err(StoreError::Corrupt(_))
        ));
    }
}
