//! containerd's generic snapshotter suite (`core/snapshots/testsuite`: the
//! same 21 cases in containerd 2.1, 2.2 and HEAD, see
//! shared/docs/containerd.md section 4.1), case by case, against the
//! daemon. Each case starts its own `erofs-snapshotter serve` on a fresh
//! root, drives it over the socket with containerd-client's Snapshots
//! client, and has the kernel mount what it returns.
//!
//! Every case runs in both mount modes: `self_mount::CASE` (the default)
//! and `mount_manager::CASE` (`mount_mode = "mount-manager"`, the returned
//! mounts performed as containerd ≥ 2.2's mount manager does, see
//! `daemon::mount_all`). In mount-manager mode the daemon must mount
//! nothing: a watch on the mount table fails the case if anything ever
//! appeared under its root.
//!
//! Trees are compared with `common::snapshot` and `diff` on what the Go
//! suite's `fstest.CheckDirectoryEqual` compares against a flat directory:
//! type, mode, owner, size, content, link target, xattrs and hard links,
//! not times, and not the root directory's own metadata (the flat
//! directory is a plain temporary one; RootPermission checks the root).
//! Where a tree was seen through an active mount before Commit, the view
//! of the committed snapshot must also equal it exactly, mtimes and root
//! included: the EROFS conversion must give back the upper as it was.
//!
//! Checks beyond the Go suite are marked "Beyond the Go suite": error codes
//! (containerd's storage semantics), the layers' own whiteouts and opaque
//! directories, every view shape being read-only, and after every case
//! that removing all snapshots leaves no mount and no directory behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use daemon::*;
use proto::snapshots::{Info, Kind as SnapKind, MountsRequest, UpdateSnapshotRequest};
use proto::tonic::{Code, Status};
use proto::types::Mount;
use rustix::event::{PollFd, PollFlags};
use snapshotter::mounts::expand_template;

const GC_ROOT: &str = "containerd.io/gc.root";

/// The Go suite's `opt`: every Prepare, View and Commit carries a GC root
/// label.
const OPT: &[(&str, &str)] = &[(GC_ROOT, "testsuite")];

fn label_map(l: &[(&str, &str)]) -> HashMap<String, String> {
    l.iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

const COMMITTED: i32 = SnapKind::Committed as i32;
const ACTIVE: i32 = SnapKind::Active as i32;
const VIEW: i32 = SnapKind::View as i32;

// ---------------------------------------------------------------------------
// The fixture: one daemon, one root and one work directory per case.
// ---------------------------------------------------------------------------

struct Fx {
    c: Client,
    d: Daemon,
    mode: MountMode,
    /// Mount-manager mode: what the daemon mounted (it must not).
    watch: Option<MountWatch>,
    /// The Go suite's `work`: mount points and key names live here.
    work: PathBuf,
    tmp: tempfile::TempDir,
}

impl Fx {
    /// None (a loud skip) without root, EROFS or overlayfs; a failure on CI.
    async fn start(mode: MountMode) -> Option<Fx> {
        if !(require_root_and_fs(&["erofs", "overlay"]) && require(&["mount", "umount"])) {
            return None;
        }
        let tmp = tempdir();
        let work = tmp.path().join("work");
        fs::create_dir(&work).unwrap();
        let d = Daemon::start(tmp.path(), mode);
        let watch = (mode == MountMode::MountManager).then(|| MountWatch::start(&d.root));
        let c = d.client().await;
        Some(Fx {
            c,
            d,
            mode,
            watch,
            work,
            tmp,
        })
    }

    /// `filepath.Join(work, name)`: the Go suite uses such paths both as
    /// snapshot keys and as mount points.
    fn key(&self, name: &str) -> String {
        self.work.join(name).to_string_lossy().into_owned()
    }

    /// Remove every snapshot, children first, then check that nothing is
    /// left under the root.
    async fn finish(mut self) {
        self.remove_all().await;
        self.assert_clean().await;
    }

    async fn remove_all(&mut self) {
        for _ in 0..1000 {
            let all = list(&mut self.c, &[]).await.unwrap();
            if all.is_empty() {
                return;
            }
            let parents: HashSet<&str> = all.iter().map(|i| i.parent.as_str()).collect();
            for i in all.iter().filter(|i| !parents.contains(i.name.as_str())) {
                remove(&mut self.c, &i.name)
                    .await
                    .unwrap_or_else(|e| panic!("removing {}: {e}", i.name));
            }
        }
        panic!("snapshots keep coming back");
    }

    /// No mount below the root, no snapshot or lower-mount directory, and
    /// the trash (emptied in the background) empty soon. In mount-manager
    /// mode, also no mount below the root at any time the case ran.
    async fn assert_clean(&self) {
        if let Some(w) = &self.watch {
            let seen = w.seen();
            assert!(
                seen.is_empty(),
                "mount-manager mode, yet the daemon mounted {seen:?}"
            );
        }
        let root = &self.d.root;
        let left = mounts_below(root);
        assert!(left.is_empty(), "mounts left under the root: {left:?}");
        for sub in ["snapshots", "mounts"] {
            let names = dir_names(&root.join(sub));
            assert!(names.is_empty(), "{sub}/ is not empty: {names:?}");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let names = dir_names(&root.join("trash"));
            if names.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "trash/ not emptied after 30 s: {names:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Go suite's `checkSnapshots`: a chain with one layer per `ops`,
    /// each written through its active mount and committed, then checked
    /// through a view against a flat directory that got the same changes,
    /// and against the active mount as it was before Commit. Returns the
    /// committed names, bottom first.
    async fn check_chain(&mut self, prefix: &str, layers: &[Vec<Op>]) -> Vec<String> {
        let flat = self.work.join(format!("{prefix}flat"));
        fs::create_dir(&flat).unwrap();
        let mut names: Vec<String> = Vec::new();
        for (i, ops) in layers.iter().enumerate() {
            let name = format!("{prefix}layer-{}", i + 1);
            let key = format!("{name}-prepare");
            let parent = names.last().cloned().unwrap_or_default();
            let m = prepare(&mut self.c, &key, &parent, OPT).await.unwrap();
            let (done, active) = {
                let g = mount_all(&m, &self.work.join(&key));
                let done = apply(&g.0, ops);
                (done, snapshot(&g.0))
            };
            commit(&mut self.c, &key, &name, OPT).await.unwrap();
            assert_eq!(apply(&flat, &done).len(), done.len());

            let vkey = format!("{name}-view");
            let vm = view(&mut self.c, &vkey, &name, OPT).await.unwrap();
            {
                let g = mount_all(&vm, &self.work.join(&vkey));
                let seen = snapshot(&g.0);
                let what = format!("{name}, a view of {} layer(s)", i + 1);
                assert_same(
                    &what,
                    "flat directory",
                    &snapshot(&flat),
                    "view",
                    &seen,
                    &like_fstest(),
                );
                assert_same(
                    &what,
                    "active mount before commit",
                    &active,
                    "view",
                    &seen,
                    &exact(),
                );
            }
            remove(&mut self.c, &vkey).await.unwrap();
            names.push(name);
        }
        names
    }

    /// Beyond the Go suite: what committed snapshot `name` itself holds
    /// (its `layer.erofs`: the top lower of a view, as the daemon mounted it
    /// or, in mount-manager mode, mounted here), one line per entry: `path
    /// kind`, with whiteouts (0:0 character devices) as `whiteout` and
    /// `opaque` after opaque directories. `name` must have a parent.
    async fn layer_entries(&mut self, name: &str) -> Vec<String> {
        let vkey = format!("{name}-layer");
        let vm = view(&mut self.c, &vkey, name, OPT).await.unwrap();
        let top = self.lowers(&vm).remove(0);
        let tree = match self.mode {
            MountMode::SelfMount => snapshot(&top),
            MountMode::MountManager => {
                let image = vm.iter().find(|m| Path::new(&m.source) == top).unwrap();
                let g = mount_all(std::slice::from_ref(image), &self.work.join(&vkey));
                snapshot(&g.0)
            }
        };
        remove(&mut self.c, &vkey).await.unwrap();
        tree.iter()
            .map(|(p, e)| {
                let kind = match e.kind {
                    Kind::CharDev if e.rdev == Some((0, 0)) => "whiteout".to_string(),
                    Kind::Dir => "dir".to_string(),
                    Kind::File => "file".to_string(),
                    k => format!("{k:?}"),
                };
                let opaque = e
                    .xattrs
                    .iter()
                    .any(|(k, v)| k == b"trusted.overlay.opaque" && v == b"y");
                format!("{} {kind}{}", show(p), if opaque { " opaque" } else { "" })
            })
            .collect()
    }

    /// The layers the overlay in `m` stacks, top first: the daemon's lower
    /// mounts (self-mount), or the images of the `erofs` mounts its
    /// `lowerdir` template names (mount manager), checking the shape.
    fn lowers(&self, m: &[Mount]) -> Vec<PathBuf> {
        let (ovl, layers) = m.split_last().expect("no mounts");
        let (ovl_type, n) = match self.mode {
            MountMode::SelfMount => ("overlay", 0),
            MountMode::MountManager => ("format/mkdir/overlay", layers.len()),
        };
        assert_eq!((ovl.r#type.as_str(), layers.len()), (ovl_type, n), "{m:?}");
        let images: Vec<PathBuf> = layers
            .iter()
            .map(|l| {
                assert_eq!(l.r#type, "erofs", "{m:?}");
                PathBuf::from(&l.source)
            })
            .collect();
        let lowerdir = ovl
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .expect("no lowerdir");
        let lowerdir = expand_template(lowerdir, &images)
            .unwrap_or_else(|| panic!("bad lowerdir template in {m:?}"));
        lowerdir.split(':').map(PathBuf::from).collect()
    }
}

/// Mount-manager mode: the daemon must mount nothing, ever. A thread scans
/// the mount table each time it changes (poll(2) on /proc/self/mountinfo
/// wakes on every mount and unmount in the namespace, which the daemon
/// shares) and keeps every mount point at or below the daemon's root it
/// saw.
struct MountWatch {
    root: PathBuf,
    seen: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MountWatch {
    fn start(root: &Path) -> MountWatch {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, r) = (Arc::clone(&seen), Arc::clone(&stop), root.to_path_buf());
        let thread = std::thread::spawn(move || {
            let table = fs::File::open("/proc/self/mountinfo").unwrap();
            // Only to notice `stop`: changes wake the poll at once.
            let tick = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 20_000_000,
            };
            // Scan, then wait: a change in between wakes the next poll.
            while !st.load(Ordering::Relaxed) {
                s.lock().unwrap().extend(mounts_below(&r));
                let mut fds = [PollFd::new(&table, PollFlags::PRI)];
                match rustix::event::poll(&mut fds, Some(&tick)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => panic!("poll /proc/self/mountinfo: {e}"),
                }
            }
        });
        MountWatch {
            root: root.to_path_buf(),
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// What the daemon mounted so far, after one more scan.
    fn seen(&self) -> BTreeSet<String> {
        let running = self.thread.as_ref().is_some_and(|t| !t.is_finished());
        assert!(running, "the mount watch stopped");
        let mut seen = self.seen.lock().unwrap();
        seen.extend(mounts_below(&self.root));
        seen.clone()
    }
}

impl Drop for MountWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Fx {
    /// After a failure only: the daemon's lower mounts outlive it by
    /// design, and the temporary directory cannot go while they are there.
    fn drop(&mut self) {
        for m in mounts_below(self.tmp.path()).iter().rev() {
            let _ = rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// The Go suite's comparison with a flat directory: everything but times
/// and the root directory's own metadata.
fn like_fstest() -> DiffOpts {
    DiffOpts {
        ignore_root: true,
        ignore_dir_nlink: true,
        ignore_fields: vec![(None, "mtime")],
        ..Default::default()
    }
}

/// Everything, mtimes included. Only directory link counts differ
/// legitimately: overlayfs reports 1 for a merged directory.
fn exact() -> DiffOpts {
    DiffOpts {
        ignore_dir_nlink: true,
        ..Default::default()
    }
}

/// A flat directory `work/name` with `appliers` applied in order, as a
/// snapshot (the Go suite's `CheckDirectoryEqualWithApplier`).
fn flat_of(work: &Path, name: &str, appliers: &[&[Op]]) -> Snapshot {
    let dir = work.join(name);
    fs::create_dir(&dir).unwrap();
    for ops in appliers {
        apply(&dir, ops);
    }
    snapshot(&dir)
}

// ---------------------------------------------------------------------------
// fstest's appliers.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Write (create or truncate) a file, then chmod it.
    File(String, Vec<u8>, u32),
    /// mkdir, then chmod (the umask plays no part).
    Dir(String, u32),
    /// Remove a file or a tree; absent is fine.
    RemoveAll(String),
    Chown(String, u32, u32),
    /// Hard link `.1` to existing `.0`.
    Link(String, String),
    Rename(String, String),
    /// A rename of a directory from a lower layer. overlayfs without
    /// `redirect_dir` refuses it with EXDEV, and containerd (since 2.2)
    /// leaves it out of the Rename case for "overlayfs", "fuse-overlayfs"
    /// and "erofs"; so EXDEV skips it here, and the flat directory does not
    /// get it either. Any other outcome is checked like any change.
    RenameDir(String, String),
}

fn file(p: &str, content: &[u8], mode: u32) -> Op {
    Op::File(p.into(), content.to_vec(), mode)
}
fn dir(p: &str, mode: u32) -> Op {
    Op::Dir(p.into(), mode)
}
fn remove_all(p: &str) -> Op {
    Op::RemoveAll(p.into())
}
fn chown(p: &str, uid: u32, gid: u32) -> Op {
    Op::Chown(p.into(), uid, gid)
}
fn link(old: &str, new: &str) -> Op {
    Op::Link(old.into(), new.into())
}
fn rename(old: &str, new: &str) -> Op {
    Op::Rename(old.into(), new.into())
}

fn at(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

fn chmod(p: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

/// Apply `ops` below `root`, panicking on any failure; returns the ops
/// that took effect (all but a `RenameDir` refused with EXDEV).
fn apply(root: &Path, ops: &[Op]) -> Vec<Op> {
    let mut done = Vec::new();
    for op in ops {
        let r = match op {
            Op::File(p, content, mode) => {
                fs::write(at(root, p), content).and_then(|()| chmod(&at(root, p), *mode))
            }
            Op::Dir(p, mode) => {
                fs::create_dir(at(root, p)).and_then(|()| chmod(&at(root, p), *mode))
            }
            Op::RemoveAll(p) => {
                let path = at(root, p);
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                    Ok(_) => fs::remove_file(&path),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Op::Chown(p, uid, gid) => {
                std::os::unix::fs::lchown(at(root, p), Some(*uid), Some(*gid))
            }
            Op::Link(old, new) => fs::hard_link(at(root, old), at(root, new)),
            Op::Rename(old, new) => fs::rename(at(root, old), at(root, new)),
            Op::RenameDir(old, new) => match fs::rename(at(root, old), at(root, new)) {
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                    eprintln!("{op:?} below {}: EXDEV, left out", root.display());
                    continue;
                }
                r => r,
            },
        };
        if let Err(e) = r {
            panic!("{op:?} below {}: {e}", root.display());
        }
        done.push(op.clone());
    }
    done
}

// ---------------------------------------------------------------------------
// Requests only these cases make.
// ---------------------------------------------------------------------------

async fn update(c: &mut Client, info: Info, paths: &[&str]) -> Result<Info, Status> {
    let r = c
        .update(UpdateSnapshotRequest {
            info: Some(info),
            update_mask: Some(proto::prost_types::FieldMask {
                paths: paths.iter().map(|p| (*p).to_string()).collect(),
            }),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().info.expect("update answered without info"))
}

async fn mounts_of(c: &mut Client, key: &str) -> Result<Vec<Mount>, Status> {
    let r = c
        .mounts(MountsRequest {
            key: key.into(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().mounts)
}

fn time(t: &Option<proto::prost_types::Timestamp>) -> SystemTime {
    let t = t.as_ref().expect("no timestamp");
    UNIX_EPOCH
        + Duration::new(
            u64::try_from(t.seconds).unwrap(),
            u32::try_from(t.nanos).unwrap(),
        )
}

fn is_erofs_error(r: io::Result<()>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error()))
}

// ---------------------------------------------------------------------------
// The cases, in the Go suite's order, each run in both mount modes.
// ---------------------------------------------------------------------------

/// One `#[tokio::test]` per case and mode: `self_mount::CASE` and
/// `mount_manager::CASE` call `CASE(MountMode::…)`.
macro_rules! in_both_modes {
    ($($case:ident),* $(,)?) => {
        in_both_modes!(@mode self_mount, SelfMount, $($case),*);
        in_both_modes!(@mode mount_manager, MountManager, $($case),*);
    };
    (@mode $module:ident, $mode:ident, $($case:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::MountMode::$mode).await;
                }
            )*
        }
    };
}

in_both_modes!(
    basic,
    stat_active,
    stat_committed,
    transitivity,
    prepare_view_failing,
    update_labels,
    remove_and_reuse,
    walk,
    layer_file_update,
    remove_directory_in_lower_layer,
    chown_in_upper,
    directory_permission_on_commit,
    remove_intermediate_snapshot,
    deleted_files_in_child_snapshot,
    move_file_from_lower_layer,
    view_readonly,
    stat_in_walk,
    close_twice,
    root_permission,
    rename_in_lower,
    layers_128_mount,
);

/// Basic: a layer, a child layer that adds, overwrites and removes, Stat
/// and Walk of both, a view of the two, and Remove refusing a parent.
async fn basic(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let initial = vec![
        file("/foo", b"foo\n", 0o777),
        dir("/a", 0o755),
        dir("/a/b", 0o755),
        dir("/a/b/c", 0o755),
    ];
    let changes = vec![
        file("/bar", b"bar\n", 0o777),
        file("/foo", b"bar\n", 0o777),
        remove_all("/a/b"),
    ];

    let preparing = fx.key("preparing");
    let m = prepare(&mut fx.c, &preparing, "", OPT).await.unwrap();
    assert!(!m.is_empty(), "expected mounts to have entries");
    let layer1 = {
        let g = mount_all(&m, Path::new(&preparing));
        apply(&g.0, &initial);
        snapshot(&g.0)
    };
    let committed = fx.key("committed");
    commit(&mut fx.c, &preparing, &committed, OPT)
        .await
        .unwrap();
    let si = stat(&mut fx.c, &committed).await.unwrap();
    assert_eq!(si.parent, "");
    assert_eq!(si.kind, COMMITTED);
    assert_eq!(si.labels, label_map(OPT));
    assert_eq!(
        code(stat(&mut fx.c, &preparing).await),
        Code::NotFound,
        "{preparing} should no longer be available after Commit"
    );

    let next = fx.key("nextlayer");
    let m = prepare(&mut fx.c, &next, &committed, OPT).await.unwrap();
    let layer2 = {
        let g = mount_all(&m, Path::new(&next));
        let seen = snapshot(&g.0);
        let flat = flat_of(&fx.work, "flat-1", &[&initial]);
        assert_same(
            "child before changes",
            "flat",
            &flat,
            "mount",
            &seen,
            &like_fstest(),
        );
        let below_root = DiffOpts {
            ignore_root: true,
            ..exact()
        };
        assert_same(
            "child before changes",
            "layer 1",
            &layer1,
            "mount",
            &seen,
            &below_root,
        );
        apply(&g.0, &changes);
        snapshot(&g.0)
    };
    let ni = stat(&mut fx.c, &next).await.unwrap();
    assert_eq!(ni.parent, committed);
    assert_eq!(ni.kind, ACTIVE);

    let next_committed = fx.key("committed-next");
    commit(&mut fx.c, &next, &next_committed, OPT)
        .await
        .unwrap();
    let si2 = stat(&mut fx.c, &next_committed).await.unwrap();
    assert_eq!(si2.parent, committed);
    assert_eq!(si2.kind, COMMITTED);
    assert_eq!(
        code(stat(&mut fx.c, &next).await),
        Code::NotFound,
        "{next} should no longer be available after Commit"
    );

    let walked: BTreeMap<String, Info> = list(&mut fx.c, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect();
    for expected in [&si, &si2] {
        assert_eq!(walked.get(&expected.name), Some(expected), "Walk vs Stat");
    }

    let nextnext = fx.key("nextnextlayer");
    let m = view(&mut fx.c, &nextnext, &next_committed, OPT)
        .await
        .unwrap();
    {
        let g = mount_all(&m, Path::new(&nextnext));
        let seen = snapshot(&g.0);
        let flat = flat_of(&fx.work, "flat-2", &[&initial, &changes]);
        assert_same("view of both", "flat", &flat, "view", &seen, &like_fstest());
        assert_same(
            "view of both",
            "active child",
            &layer2,
            "view",
            &seen,
            &exact(),
        );
    }
    remove(&mut fx.c, &nextnext).await.unwrap();

    let err = remove(&mut fx.c, &committed)
        .await
        .expect_err("removing a parent must fail");
    assert!(err.message().contains("remove"), "{err:?}");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    remove(&mut fx.c, &next_committed).await.unwrap();
    remove(&mut fx.c, &committed).await.unwrap();
    fx.finish().await;
}

/// StatActive: Stat of a mounted, written active snapshot.
async fn stat_active(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let preparing = fx.key("preparing");
    let m = prepare(&mut fx.c, &preparing, "", OPT).await.unwrap();
    assert!(!m.is_empty(), "expected mounts to have entries");
    let g = mount_all(&m, Path::new(&preparing));
    apply(&g.0, &[file("/foo", b"foo\n", 0o777)]);
    let si = stat(&mut fx.c, &preparing).await.unwrap();
    assert_eq!(si.name, preparing);
    assert_eq!(si.kind, ACTIVE);
    assert_eq!(si.parent, "");
    drop(g);
    fx.finish().await;
}

/// StatComitted: Commit while the active snapshot is still mounted (as
/// the Go case does), then Stat.
async fn stat_committed(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let preparing = fx.key("preparing");
    let m = prepare(&mut fx.c, &preparing, "", OPT).await.unwrap();
    assert!(!m.is_empty(), "expected mounts to have entries");
    let g = mount_all(&m, Path::new(&preparing));
    apply(&g.0, &[file("/foo", b"foo\n", 0o777)]);
    let committed = fx.key("committed");
    commit(&mut fx.c, &preparing, &committed, OPT)
        .await
        .unwrap();
    let si = stat(&mut fx.c, &committed).await.unwrap();
    assert_eq!(si.name, committed);
    assert_eq!(si.kind, COMMITTED);
    assert_eq!(si.parent, "");
    drop(g);

    // Beyond the Go suite: the commit under a live mount holds the file.
    let view_key = fx.key("view");
    let m = view(&mut fx.c, &view_key, &committed, OPT).await.unwrap();
    {
        let g = mount_all(&m, &fx.work.join("view"));
        let flat = flat_of(&fx.work, "flat", &[&[file("/foo", b"foo\n", 0o777)]]);
        assert_same(
            "commit of a mounted snapshot",
            "flat",
            &flat,
            "view",
            &snapshot(&g.0),
            &like_fstest(),
        );
    }
    fx.finish().await;
}

/// Write `content` to /foo through a new active snapshot on `parent`,
/// unmount, commit as `name`.
async fn foo_layer(fx: &mut Fx, key: &str, parent: &str, name: &str, content: &[u8]) {
    let m = prepare(&mut fx.c, key, parent, OPT).await.unwrap();
    assert!(!m.is_empty(), "expected mounts to have entries");
    {
        let g = mount_all(&m, Path::new(key));
        apply(&g.0, &[file("/foo", content, 0o777)]);
    }
    commit(&mut fx.c, key, name, OPT).await.unwrap();
}

/// TransitivityTest: A <- B; B's parent is A, A has none.
async fn transitivity(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let (preparing, snap_a) = (fx.key("preparing"), fx.key("snapA"));
    foo_layer(&mut fx, &preparing, "", &snap_a, b"foo\n").await;
    let (next, snap_b) = (fx.key("next"), fx.key("snapB"));
    foo_layer(&mut fx, &next, &snap_a, &snap_b, b"foo bar\n").await;
    let si_a = stat(&mut fx.c, &snap_a).await.unwrap();
    let si_b = stat(&mut fx.c, &snap_b).await.unwrap();
    let si_parent_b = stat(&mut fx.c, &si_b.parent).await.unwrap();
    assert_eq!(si_a.parent, "");
    assert_eq!(si_b.parent, snap_a);
    assert_eq!(si_parent_b.parent, "");
    fx.finish().await;
}

/// PreareViewFailingtest: a key can be created once, whatever the kind.
/// Beyond the Go suite: the error codes, the other refusals of
/// containerd's storage, and that a refused request leaves the existing
/// snapshots usable.
async fn prepare_view_failing(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let preparing = fx.key("preparing");
    let m = prepare(&mut fx.c, &preparing, "", OPT).await.unwrap();
    drop(mount_all(&m, Path::new(&preparing)));
    let snap_a = fx.key("snapA");
    commit(&mut fx.c, &preparing, &snap_a, OPT).await.unwrap();

    // Prepare and View with the same key.
    let new_layer = fx.key("newlayer");
    prepare(&mut fx.c, &new_layer, &snap_a, OPT).await.unwrap();
    assert_eq!(
        code(view(&mut fx.c, &new_layer, &snap_a, OPT).await),
        Code::AlreadyExists
    );
    // Two Prepares with the same key.
    let prep_layer = fx.key("prepLayer");
    prepare(&mut fx.c, &prep_layer, &snap_a, OPT).await.unwrap();
    assert_eq!(
        code(prepare(&mut fx.c, &prep_layer, &snap_a, OPT).await),
        Code::AlreadyExists
    );
    // Two Views with the same key.
    let view_layer = fx.key("viewLayer");
    view(&mut fx.c, &view_layer, &snap_a, OPT).await.unwrap();
    assert_eq!(
        code(view(&mut fx.c, &view_layer, &snap_a, OPT).await),
        Code::AlreadyExists
    );

    // Beyond the Go suite: containerd's storage semantics.
    let c = &mut fx.c;
    assert_eq!(
        code(prepare(c, &snap_a, "", OPT).await),
        Code::AlreadyExists,
        "a committed name"
    );
    assert_eq!(
        code(view(c, &snap_a, &snap_a, OPT).await),
        Code::AlreadyExists,
        "a committed name"
    );
    assert_eq!(
        code(prepare(c, "orphan", "no-such-parent", OPT).await),
        Code::NotFound
    );
    assert_eq!(
        code(view(c, "orphan", "no-such-parent", OPT).await),
        Code::NotFound
    );
    assert_eq!(
        code(prepare(c, "on-active", &new_layer, OPT).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(view(c, "on-view", &view_layer, OPT).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(commit(c, &view_layer, "x", OPT).await),
        Code::FailedPrecondition,
        "commit of a view"
    );
    assert_eq!(
        code(commit(c, &snap_a, "x", OPT).await),
        Code::FailedPrecondition,
        "commit of a committed snapshot"
    );
    assert_eq!(
        code(commit(c, "no-such-key", "x", OPT).await),
        Code::NotFound
    );
    assert_eq!(
        code(commit(c, &new_layer, &snap_a, OPT).await),
        Code::AlreadyExists,
        "commit onto an existing name"
    );
    assert_eq!(
        code(mounts_of(c, &snap_a).await),
        Code::FailedPrecondition,
        "mounts of a committed snapshot"
    );
    assert_eq!(code(mounts_of(c, "no-such-key").await), Code::NotFound);
    assert_eq!(code(remove(c, "no-such-key").await), Code::NotFound);
    assert_eq!(code(stat(c, "no-such-key").await), Code::NotFound);
    for k in ["orphan", "on-active", "on-view", "x"] {
        assert_eq!(code(stat(c, k).await), Code::NotFound, "{k} was created");
    }

    // The refused requests left the snapshots as they were.
    for (k, kind) in [
        (&new_layer, ACTIVE),
        (&prep_layer, ACTIVE),
        (&view_layer, VIEW),
        (&snap_a, COMMITTED),
    ] {
        let si = stat(c, k).await.unwrap();
        assert_eq!(si.kind, kind, "{k}");
    }
    // Including the active snapshot whose commit was refused: what is
    // written into it afterwards is what its commit holds (the image the
    // refused commit had converted must not be adopted by the next one).
    let m = mounts_of(c, &new_layer).await.unwrap();
    let written = {
        let g = mount_all(&m, Path::new(&new_layer));
        apply(
            &g.0,
            &[file("/after", b"written after a refused commit\n", 0o644)],
        );
        snapshot(&g.0)
    };
    let done = fx.key("newlayer-committed");
    commit(&mut fx.c, &new_layer, &done, OPT).await.unwrap();
    let check = fx.key("check");
    let m = view(&mut fx.c, &check, &done, OPT).await.unwrap();
    {
        let g = mount_all(&m, &fx.work.join("check"));
        assert_same(
            "commit after a refused commit",
            "active",
            &written,
            "view",
            &snapshot(&g.0),
            &exact(),
        );
    }
    fx.finish().await;
}

/// The Go suite's `baseTestSnapshots`: c1, c2 <- c1 (committed), a1 <- c2,
/// a2 (active), v1 <- c2, v2 (views).
async fn base_snapshots(c: &mut Client) {
    prepare(c, "c1-a", "", OPT).await.unwrap();
    commit(c, "c1-a", "c1", OPT).await.unwrap();
    prepare(c, "c2-a", "c1", OPT).await.unwrap();
    commit(c, "c2-a", "c2", OPT).await.unwrap();
    prepare(c, "a1", "c2", OPT).await.unwrap();
    prepare(c, "a2", "", OPT).await.unwrap();
    view(c, "v1", "c2", OPT).await.unwrap();
    view(c, "v2", "", OPT).await.unwrap();
}

/// Update: times, kind, parent and name of every kind; labels replaced
/// whole, per `labels.KEY`, and per `labels`; `parent` is immutable
/// (InvalidArgument with a field path, ignored without).
async fn update_labels(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let t1 = SystemTime::now();
    base_snapshots(&mut fx.c).await;
    let t2 = SystemTime::now();
    let c = &mut fx.c;
    for (name, kind, parent) in [
        ("c1", COMMITTED, ""),
        ("c2", COMMITTED, "c1"),
        ("a1", ACTIVE, "c2"),
        ("a2", ACTIVE, ""),
        ("v1", VIEW, "c2"),
        ("v2", VIEW, ""),
    ] {
        let mut st = stat(c, name).await.unwrap();
        let created = time(&st.created_at);
        assert!(
            created >= t1 && created <= t2,
            "{name}: created {created:?} not in [{t1:?}, {t2:?}]"
        );
        assert_eq!(st.created_at, st.updated_at, "{name}: updated at creation");
        assert_eq!(st.kind, kind, "{name}");
        assert_eq!(st.parent, parent, "{name}");
        assert_eq!(st.name, name);
        let created_at = st.created_at;

        let root_time = format!("{:?}", SystemTime::now());
        let expected = label_map(&[
            ("l1", "v1"),
            ("l2", "v2"),
            ("l3", "v3"),
            (GC_ROOT, &root_time),
        ]);
        st.parent = "doesnotexist".into();
        st.labels = expected.clone();
        let u1 = SystemTime::now();
        let st2 = update(c, st, &[]).await.unwrap();
        let u2 = SystemTime::now();
        assert_eq!(st2.created_at, created_at, "{name}: created changed");
        let updated = time(&st2.updated_at);
        assert!(
            updated >= u1 && updated <= u2,
            "{name}: updated {updated:?} not in [{u1:?}, {u2:?}]"
        );
        assert_eq!(st2.kind, kind, "{name}");
        assert_eq!(
            st2.parent, parent,
            "{name}: parent changed by an update without field paths"
        );
        assert_eq!(st2.name, name);
        assert_eq!(st2.labels, expected, "{name}");

        let mut st = st2;
        st.labels = label_map(&[("l1", "updated"), ("l4", "v4")]);
        let st = update(c, st, &["labels.l1", "labels.l2"]).await.unwrap();
        let expected = label_map(&[("l1", "updated"), ("l3", "v3"), (GC_ROOT, &root_time)]);
        assert_eq!(st.labels, expected, "{name}");

        let mut st = st;
        let expected = label_map(&[("l4", "v4"), (GC_ROOT, &root_time)]);
        st.labels = expected.clone();
        let mut st = update(c, st, &["labels"]).await.unwrap();
        assert_eq!(st.labels, expected, "{name}");

        st.parent = "doesnotexist".into();
        assert_eq!(
            code(update(c, st, &["parent"]).await),
            Code::InvalidArgument,
            "{name}"
        );
        // Beyond the Go suite: the refused update changed nothing.
        let now = stat(c, name).await.unwrap();
        assert_eq!(
            (now.parent.as_str(), &now.labels),
            (parent, &expected),
            "{name}"
        );
    }
    fx.finish().await;
}

/// Remove: keys of removed snapshots can be used again, as active, view
/// and committed name.
async fn remove_and_reuse(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    // Beyond the Go suite: the snapshots have content, so that a reused
    // name cannot show the old one's.
    let m = prepare(&mut fx.c, "committed-a", "", OPT).await.unwrap();
    {
        let g = mount_all(&m, &fx.work.join("a"));
        apply(&g.0, &[file("/old", b"first committed-1\n", 0o644)]);
    }
    let c = &mut fx.c;
    commit(c, "committed-a", "committed-1", OPT).await.unwrap();
    prepare(c, "reuse-1", "committed-1", OPT).await.unwrap();
    remove(c, "reuse-1").await.unwrap();
    view(c, "reuse-1", "committed-1", OPT).await.unwrap();
    remove(c, "reuse-1").await.unwrap();
    let m = prepare(c, "reuse-1", "", OPT).await.unwrap();
    remove(c, "committed-1").await.unwrap();
    let written = {
        let g = mount_all(&m, &fx.work.join("reuse"));
        apply(&g.0, &[file("/new", b"second committed-1\n", 0o644)]);
        snapshot(&g.0)
    };
    let c = &mut fx.c;
    commit(c, "reuse-1", "committed-1", OPT).await.unwrap();

    assert_eq!(code(remove(c, "reuse-1").await), Code::NotFound);
    let si = stat(c, "committed-1").await.unwrap();
    assert_eq!((si.kind, si.parent.as_str()), (COMMITTED, ""));
    let m = view(c, "check", "committed-1", OPT).await.unwrap();
    {
        let g = mount_all(&m, &fx.work.join("check"));
        assert_same(
            "reused name",
            "active",
            &written,
            "view",
            &snapshot(&g.0),
            &exact(),
        );
    }
    fx.finish().await;
}

/// Walk: filters over kind, name, parent and labels.
async fn walk(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let c = &mut fx.c;
    let opt: &[(&str, &str)] = &[(GC_ROOT, "check-walk")];
    let with = |l: &'static str| [("l", l), (GC_ROOT, "check-walk")];
    prepare(c, "a-np", "", opt).await.unwrap();
    prepare(c, "p-tmp", "", opt).await.unwrap();
    commit(c, "p-tmp", "p", opt).await.unwrap();
    prepare(c, "a", "p", opt).await.unwrap();
    view(c, "v", "p", opt).await.unwrap();
    prepare(c, "p-wl-tmp", "", opt).await.unwrap();
    commit(c, "p-wl-tmp", "p-wl", &with("1")).await.unwrap();
    prepare(c, "a-wl", "p-wl", &with("2")).await.unwrap();
    view(c, "v-wl", "p-wl", &with("3")).await.unwrap();
    prepare(c, "a-np-wl", "", &with("2")).await.unwrap();

    let cases: &[(&[&str], &[&str])] = &[
        (
            &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
            &[r#"labels."containerd.io/gc.root"==check-walk"#],
        ),
        (
            &["a-np", "a", "a-wl", "a-np-wl"],
            &[r#"kind==active,labels."containerd.io/gc.root"==check-walk"#],
        ),
        (
            &["v", "v-wl"],
            &[r#"kind==view,labels."containerd.io/gc.root"==check-walk"#],
        ),
        (
            &["p", "p-wl"],
            &[r#"kind==committed,labels."containerd.io/gc.root"==check-walk"#],
        ),
        (&["p", "a-np-wl"], &["name==p", "name==a-np-wl"]),
        (&["a-wl"], &["name==a-wl,labels.l"]),
        (&["a", "v"], &["parent==p"]),
        (
            &["a", "v", "a-wl", "v-wl"],
            &[r#"parent!="",labels."containerd.io/gc.root"==check-walk"#],
        ),
        (&["p-wl", "a-wl", "v-wl", "a-np-wl"], &["labels.l"]),
        (&["a-wl", "a-np-wl"], &["labels.l==2"]),
    ];
    for (i, (matches, filters)) in cases.iter().enumerate() {
        let mut actual: Vec<String> = list(c, filters)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        actual.sort();
        let mut expected: Vec<String> = matches.iter().map(|s| (*s).to_string()).collect();
        expected.sort();
        assert_eq!(actual, expected, "[{i}] filters {filters:?}");
    }
    fx.finish().await;
}

/// LayerFileupdate (docker#21555): files of a lower directory rewritten,
/// one with a new mode; five times, each across a second boundary.
async fn layer_file_update(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let l1 = vec![
        dir("/etc", 0o700),
        file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
        file("/etc/profile", b"PATH=/usr/bin", 0o644),
    ];
    let l2 = vec![
        file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
        file("/etc/profile", b"PATH=/usr/bin", 0o666),
        dir("/root", 0o700),
        file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644),
    ];
    for i in 0..5 {
        if i > 0 {
            // Until the next second boundary.
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let to_next = Duration::from_secs(1) - Duration::from_nanos(now.subsec_nanos().into());
            tokio::time::sleep(to_next).await;
        }
        fx.check_chain(&format!("run{i}-"), &[l1.clone(), l2.clone()])
            .await;
    }
    fx.finish().await;
}

/// RemoveDirectoryInLowerLayer (docker#25244): a lower directory removed
/// and made again stays opaque for the layers above.
async fn remove_directory_in_lower_layer(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let names = fx
        .check_chain(
            "",
            &[
                vec![dir("/lib", 0o700), file("/lib/hidden", b"", 0o644)],
                vec![
                    remove_all("/lib"),
                    dir("/lib", 0o700),
                    file("/lib/not-hidden", b"", 0o644),
                ],
                vec![file("/lib/newfile", b"", 0o644)],
            ],
        )
        .await;
    // Beyond the Go suite: layer 2 holds an opaque /lib.
    assert_eq!(
        fx.layer_entries(&names[1]).await,
        [". dir", "lib dir opaque", "lib/not-hidden file"]
    );
    fx.finish().await;
}

/// Chown (docker#20240, #24913, #28391): lower directories and a file
/// chowned in an upper layer.
async fn chown_in_upper(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    fx.check_chain(
        "",
        &[
            vec![
                dir("/opt", 0o700),
                dir("/opt/a", 0o700),
                dir("/opt/a/b", 0o700),
                file("/opt/a/b/file.txt", b"hello", 0o644),
            ],
            vec![
                chown("/opt", 1, 1),
                chown("/opt/a", 1, 1),
                chown("/opt/a/b", 1, 1),
                chown("/opt/a/b/file.txt", 1, 1),
            ],
        ],
    )
    .await;
    fx.finish().await;
}

/// DirectoryPermissionOnCommit (docker#27298): ownership of directories
/// changed, removed and made again over three layers.
async fn directory_permission_on_commit(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    fx.check_chain(
        "",
        &[
            vec![
                dir("/dir1", 0o700),
                dir("/dir2", 0o700),
                dir("/dir3", 0o700),
                dir("/dir4", 0o700),
                file("/dir4/f1", b"...", 0o644),
                dir("/dir5", 0o700),
                file("/dir5/f1", b"...", 0o644),
                chown("/dir1", 1, 1),
                chown("/dir2", 1, 1),
                chown("/dir3", 1, 1),
                chown("/dir5", 1, 1),
                chown("/dir5/f1", 1, 1),
            ],
            vec![
                chown("/dir2", 0, 0),
                remove_all("/dir3"),
                chown("/dir4", 1, 1),
                chown("/dir4/f1", 1, 1),
            ],
            vec![
                dir("/dir3", 0o700),
                chown("/dir3", 1, 1),
                remove_all("/dir5"),
                dir("/dir5", 0o700),
                chown("/dir5", 1, 1),
            ],
        ],
    )
    .await;
    fx.finish().await;
}

/// RemoveIntermediateSnapshot: base <- inter <- top; inter cannot go
/// before top; top, inter, base can.
async fn remove_intermediate_snapshot(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let base = fx.key("base");
    let m = prepare(&mut fx.c, &base, "", OPT).await.unwrap();
    drop(mount_all(&m, Path::new(&base)));
    let (committed_base, intermediate, committed_inter, top) = (
        fx.key("committed-base"),
        fx.key("intermediate"),
        fx.key("committed-inter"),
        fx.key("toplayer"),
    );
    let c = &mut fx.c;
    commit(c, &base, &committed_base, OPT).await.unwrap();
    prepare(c, &intermediate, &committed_base, OPT)
        .await
        .unwrap();
    commit(c, &intermediate, &committed_inter, OPT)
        .await
        .unwrap();
    prepare(c, &top, &committed_inter, OPT).await.unwrap();
    assert_eq!(
        code(remove(c, &committed_inter).await),
        Code::FailedPrecondition,
        "intermediate layer removal should fail"
    );
    remove(c, &top).await.unwrap();
    remove(c, &committed_inter).await.unwrap();
    remove(c, &committed_base).await.unwrap();
    fx.finish().await;
}

/// DeletedFilesInChildSnapshot: a file deleted in layer 2 stays deleted in
/// layers 2 and 3.
async fn deleted_files_in_child_snapshot(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let names = fx
        .check_chain(
            "",
            &[
                vec![
                    file("/foo", b"foo\n", 0o777),
                    file("/foobar", b"foobar\n", 0o777),
                ],
                vec![remove_all("/foobar")],
                vec![],
            ],
        )
        .await;
    // Beyond the Go suite: the whiteout is in layer 2, layer 3 is empty.
    assert_eq!(
        fx.layer_entries(&names[1]).await,
        [". dir", "foobar whiteout"]
    );
    assert_eq!(fx.layer_entries(&names[2]).await, [". dir"]);
    fx.finish().await;
}

/// MoveFileFromLowerLayer: a lower directory removed, a lower file hard
/// linked to a new directory and removed at its old place.
async fn move_file_from_lower_layer(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let names = fx
        .check_chain(
            "",
            &[
                vec![
                    dir("/dir1", 0o700),
                    file("/dir1/f1", b"Hello", 0o644),
                    dir("dir2", 0o700),
                    file("dir2/f2", b"...", 0o644),
                ],
                vec![
                    dir("/dir3", 0o700),
                    file("/dir3/f1", b"Hello", 0o644),
                    remove_all("/dir1"),
                    link("dir2/f2", "dir3/f2"),
                    remove_all("dir2/f2"),
                ],
            ],
        )
        .await;
    // Beyond the Go suite: whiteouts for a directory and for a file.
    assert_eq!(
        fx.layer_entries(&names[1]).await,
        [
            ". dir",
            "dir1 whiteout",
            "dir2 dir",
            "dir2/f2 whiteout",
            "dir3 dir",
            "dir3/f1 file",
            "dir3/f2 file"
        ]
    );
    fx.finish().await;
}

/// ViewReadonly: a real mount of a view rejects writes (EROFS). Beyond
/// the Go suite: every view shape, not only the single-layer one.
async fn view_readonly(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let (preparing, committed) = (fx.key("preparing"), fx.key("committed"));
    prepare(&mut fx.c, &preparing, "", OPT).await.unwrap();
    commit(&mut fx.c, &preparing, &committed, OPT)
        .await
        .unwrap();
    let view_key = fx.key("view");
    let m = view(&mut fx.c, &view_key, &committed, OPT).await.unwrap();
    {
        let g = mount_all(&m, &fx.work.join("view-mount"));
        let r = fs::write(g.0.join("testfile"), "testcontent");
        assert!(
            is_erofs_error(r),
            "a view of one layer ({m:?}) accepted a write or failed otherwise"
        );
    }
    remove(&mut fx.c, &view_key).await.unwrap();

    // Beyond the Go suite: a view without parent, and one of two layers.
    let (second, committed_2) = (fx.key("second"), fx.key("committed-2"));
    foo_layer(&mut fx, &second, &committed, &committed_2, b"2").await;
    for (key, parent) in [("view-empty", ""), ("view-2", committed_2.as_str())] {
        let m = view(&mut fx.c, key, parent, OPT).await.unwrap();
        let g = mount_all(&m, &fx.work.join(key));
        let r = fs::write(g.0.join("testfile"), "testcontent");
        assert!(
            is_erofs_error(r),
            "{key} ({m:?}) accepted a write or failed otherwise"
        );
    }
    fx.finish().await;
}

/// The Go suite's `createNamedSnapshots`.
async fn named_snapshots(c: &mut Client, ns: &str) {
    let (c1, c2) = (format!("{ns}c1"), format!("{ns}c2"));
    prepare(c, &format!("{c1}-a"), "", OPT).await.unwrap();
    commit(c, &format!("{c1}-a"), &c1, OPT).await.unwrap();
    prepare(c, &format!("{c2}-a"), &c1, OPT).await.unwrap();
    commit(c, &format!("{c2}-a"), &c2, OPT).await.unwrap();
    prepare(c, &format!("{ns}a1"), &c2, OPT).await.unwrap();
    view(c, &format!("{ns}v1"), &c2, OPT).await.unwrap();
}

/// StatInWalk: Stat during a Walk agrees with what the Walk gave. Over
/// gRPC the walk is a stream, read here while the Stats are made.
async fn stat_in_walk(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let prefix = "stats-in-walk-";
    named_snapshots(&mut fx.c, prefix).await;
    let mut stream =
        fx.c.list(proto::snapshots::ListSnapshotsRequest::default())
            .await
            .unwrap()
            .into_inner();
    let mut other = fx.d.client().await;
    let mut seen = 0;
    while let Some(batch) = stream.message().await.unwrap() {
        for si in batch
            .info
            .into_iter()
            .filter(|i| i.name.starts_with(prefix))
        {
            let si2 = stat(&mut other, &si.name).await.unwrap();
            assert_eq!(si, si2, "Walk vs Stat of {}", si.name);
            seen += 1;
        }
    }
    assert_eq!(seen, 4, "c1, c2, a1 and v1");
    fx.finish().await;
}

/// CloseTwice: closing twice is not an error. The daemon closes on
/// SIGTERM: two in a row must still give a clean exit, and the root must
/// open (and close) again with the state it had.
async fn close_twice(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let n = format!("closeTwice-{}", std::process::id());
    let prep = format!("{n}-prepare");
    prepare(&mut fx.c, &prep, "", OPT).await.unwrap();
    commit(&mut fx.c, &prep, &n, OPT).await.unwrap();
    remove(&mut fx.c, &n).await.unwrap();

    fx.d.signal_term();
    let status = fx.d.terminate();
    assert!(status.success(), "first close: {status:?}");
    assert!(!fx.d.sock.exists(), "socket left after close");

    fx.d = Daemon::start(fx.tmp.path(), fx.mode);
    fx.c = fx.d.client().await;
    assert_eq!(code(stat(&mut fx.c, &n).await), Code::NotFound);
    assert!(list(&mut fx.c, &[]).await.unwrap().is_empty());
    fx.assert_clean().await;
    let status = fx.d.terminate();
    assert!(status.success(), "second close: {status:?}");
}

/// RootPermission: the root of a fresh active snapshot is 0755. Beyond
/// the Go suite: root-owned, and the same on top of a parent (overlay).
async fn root_permission(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let preparing = fx.key("preparing");
    let m = prepare(&mut fx.c, &preparing, "", OPT).await.unwrap();
    {
        let g = mount_all(&m, Path::new(&preparing));
        let md = fs::metadata(&g.0).unwrap();
        assert_eq!(
            md.mode() & 0o777,
            0o755,
            "expected 0755, got {:o}",
            md.mode() & 0o777
        );
        assert_eq!((md.uid(), md.gid()), (0, 0));
    }
    commit(&mut fx.c, &preparing, "base", OPT).await.unwrap();
    let child = fx.key("child");
    let m = prepare(&mut fx.c, &child, "base", OPT).await.unwrap();
    {
        let g = mount_all(&m, Path::new(&child));
        let md = fs::metadata(&g.0).unwrap();
        assert_eq!(
            md.mode() & 0o777,
            0o755,
            "child: expected 0755, got {:o}",
            md.mode() & 0o777
        );
        assert_eq!((md.uid(), md.gid()), (0, 0));
    }
    fx.finish().await;
}

/// Rename (docker#25409): a file renamed over a lower file, another
/// renamed; the lower directory rename only where overlayfs allows it (see
/// `Op::RenameDir`).
async fn rename_in_lower(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    fx.check_chain(
        "",
        &[
            vec![
                dir("/dir1", 0o700),
                dir("/somefiles", 0o700),
                file("/somefiles/f1", b"was here first!", 0o644),
                file("/somefiles/f2", b"nothing interesting", 0o644),
            ],
            vec![
                Op::RenameDir("/dir1".into(), "/dir2".into()),
                file("/somefiles/f1-overwrite", b"new content 1", 0o644),
                rename("/somefiles/f1-overwrite", "/somefiles/f1"),
                rename("/somefiles/f2", "/somefiles/f3"),
            ],
        ],
    )
    .await;
    fx.finish().await;
}

/// 128LayersMount: a chain of 128 layers, each overwriting, adding, and
/// removing and making again a directory; every active mount and the view
/// of all 128 equal a flat directory. The deep overlays need more than a
/// page of mount options (see `daemon::mount_all`).
async fn layers_128_mount(mode: MountMode) {
    let Some(mut fx) = Fx::start(mode).await else {
        return;
    };
    let mut appliers = vec![vec![
        file("/bottom", b"way at the bottom\n", 0o777),
        file("/overwriteme", b"FIRST!\n", 0o777),
        dir("/addhere", 0o755),
        dir("/onlyme", 0o755),
        file("/onlyme/bottom", b"bye!\n", 0o777),
    ]];
    for i in 1..=127 {
        appliers.push(vec![
            file("/overwriteme", format!("{i} WAS HERE!\n").as_bytes(), 0o777),
            file(&format!("/addhere/file-{i}"), b"same\n", 0o755),
            remove_all("/onlyme"),
            dir("/onlyme", 0o755),
            file(&format!("/onlyme/file-{i}"), b"only me!\n", 0o777),
        ]);
    }
    let flat = fx.work.join("flat");
    fs::create_dir(&flat).unwrap();
    let mut parent = String::new();
    let mut last_active = Snapshot::new();
    for (i, ops) in appliers.iter().enumerate() {
        let preparing = fx.key(&format!("prepare-layer-{i}"));
        let m = prepare(&mut fx.c, &preparing, &parent, OPT)
            .await
            .unwrap_or_else(|e| panic!("[layer {i}] prepare: {e}"));
        {
            let g = mount_all(&m, Path::new(&preparing));
            let what = format!("[layer {i}] before apply");
            assert_same(
                &what,
                "flat",
                &snapshot(&flat),
                "mount",
                &snapshot(&g.0),
                &like_fstest(),
            );
            apply(&flat, ops);
            apply(&g.0, ops);
            last_active = snapshot(&g.0);
            let what = format!("[layer {i}] after apply");
            assert_same(
                &what,
                "flat",
                &snapshot(&flat),
                "mount",
                &last_active,
                &like_fstest(),
            );
        }
        parent = fx.key(&format!("committed-{i}"));
        commit(&mut fx.c, &preparing, &parent, OPT)
            .await
            .unwrap_or_else(|e| panic!("[layer {i}] commit: {e}"));
    }
    let full = fx.key("fullview");
    let m = view(&mut fx.c, &full, &parent, OPT).await.unwrap();
    assert_eq!(fx.lowers(&m).len(), 128, "{m:?}");
    {
        let g = mount_all(&m, Path::new(&full));
        let seen = snapshot(&g.0);
        assert_same(
            "fullview",
            "flat",
            &snapshot(&flat),
            "view",
            &seen,
            &like_fstest(),
        );
        assert_same(
            "fullview",
            "last active mount",
            &last_active,
            "view",
            &seen,
            &exact(),
        );
    }
    fx.finish().await;
}
