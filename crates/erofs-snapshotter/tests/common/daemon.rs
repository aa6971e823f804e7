//! The daemon as containerd sees it: `erofs-snapshotter serve` as a child
//! process on a unix socket, containerd-client's own Snapshots client, and
//! the returned mounts mounted by the kernel the way containerd's
//! `mount.All` would.
//!
//! Not part of `common` because only the daemon tests use it; each of them
//! declares it with `#[path = "common/daemon.rs"] mod daemon;` and uses all
//! of it, so nothing here needs `#[allow(dead_code)]`.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use proto::snapshots::snapshots_client::SnapshotsClient;
use proto::snapshots::{
    CommitSnapshotRequest, Info, ListSnapshotsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
};
use proto::tonic::transport::Channel;
use proto::tonic::{Code, Status};
use proto::types::Mount;
pub use snapshotter::config::MountMode;
use snapshotter::mounts::expand_template;

use crate::common::{bin, run};

pub type Client = SnapshotsClient<Channel>;

/// The daemon under test; killed (not gracefully stopped) on drop so a
/// failing test never leaves it running.
pub struct Daemon {
    child: Child,
    pub root: PathBuf,
    pub sock: PathBuf,
}

impl Daemon {
    /// `serve --root DIR/root --address DIR/snap.sock`, once the socket is
    /// there. In mount-manager mode with `--config DIR/config.toml` saying
    /// so; self-mount is the default, without a configuration file.
    pub fn start(dir: &Path, mode: MountMode) -> Daemon {
        let root = dir.join("root");
        let sock = dir.join("snap.sock");
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--root"])
            .arg(&root)
            .arg("--address")
            .arg(&sock);
        match mode {
            MountMode::SelfMount => {}
            MountMode::MountManager => {
                let config = dir.join("config.toml");
                fs::write(&config, "mount_mode = \"mount-manager\"\n").unwrap();
                cmd.arg("--config").arg(config);
            }
        }
        let child = cmd.stdout(Stdio::null()).spawn().expect("starting serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "socket never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, root, sock }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ask for a clean shutdown without waiting for it.
    pub fn signal_term(&self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_term();
        self.child.wait().unwrap()
    }

    /// Connect, retrying while the daemon starts: after a kill -9 the
    /// old socket file is still there until the new daemon replaces it.
    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(channel) = proto::connect(&self.sock).await {
                let mut c = SnapshotsClient::new(channel);
                if matches!(stat(&mut c, "probe").await, Err(s) if s.code() == Code::NotFound) {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "daemon never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    /// Kill the daemon, then undo what it mounted under its root (lower
    /// layers, ext4 uppers), deepest first: after a failed assertion
    /// nothing may stay mounted. A passing test has already removed its
    /// snapshots, so this finds nothing then.
    fn drop(&mut self) {
        self.kill9();
        let mut points = mounts_below(&self.root);
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = std::process::Command::new("umount")
                .args(["-l", &p])
                .status();
        }
    }
}

/// Mount what a snapshot returned at `target`, as containerd would.
///
/// One mount (every self-mount shape, and a bind or a single layer from
/// the mount manager) is mounted at `target`, as `mount.All` does. Several
/// are performed the way containerd ≥ 2.2's mount manager does: each but
/// the last at a mount point of its own (`TARGET.mounts/N`), and every one
/// after its transformers have run (`format/`: `{{ mount N }}` and
/// `{{ overlay A B }}` expanded to the mount points before it; `mkdir/`:
/// nothing to create, the daemon sends no `X-containerd.mkdir.*` option);
/// the last one at `target`.
///
/// `overlay` is mounted with mount(8) (but see below), `bind` with
/// `sys::mount_bind` (not recursive; `ro` remounted read-only), `erofs`
/// with `sys::mount_erofs`, like containerd's EROFS handler: the image file
/// itself (file-backed), loop devices only on kernels without that.
///
/// mount(2) copies at most one page of options, so mount(8) cannot pass
/// the overlay of a deep chain (its lowerdir is cut short and the kernel
/// fails to resolve the truncated path). containerd 2.1's `mount.All`
/// shortens such a lowerdir by chdir-ing to the lowers' common parent and
/// passing relative paths; this checks that condition holds and then
/// mounts the overlay with `sys::mount_overlay` (one `lowerdir+` per layer).
///
/// Whatever was mounted is unmounted, last first, when the guard is
/// dropped, also after a failure half-way.
pub fn mount_all(mounts: &[Mount], target: &Path) -> MountGuard {
    assert!(!mounts.is_empty(), "no mounts");
    let mut guard = MountGuard(target.to_path_buf(), Vec::new());
    let mut name = target
        .file_name()
        .expect("target without a name")
        .to_owned();
    name.push(".mounts");
    let points = target.with_file_name(name);
    for (i, m) in mounts.iter().enumerate() {
        let point = if i + 1 == mounts.len() {
            target.to_path_buf()
        } else {
            points.join(i.to_string())
        };
        mount_one(&transform(m, &guard.1), &point);
        guard.1.push(point);
    }
    guard
}

/// `m` after the mount manager's transformers (the `/`-separated prefixes
/// of its type), given the mount points of the mounts before it.
fn transform(m: &Mount, points: &[PathBuf]) -> Mount {
    let mut parts: Vec<&str> = m.r#type.split('/').collect();
    let mut out = Mount {
        r#type: parts.pop().unwrap().to_string(),
        ..m.clone()
    };
    for t in parts {
        match t {
            "format" => {
                let expand = |s: &str| {
                    expand_template(s, points)
                        .unwrap_or_else(|| panic!("bad template {s:?} in {m:?} ({points:?})"))
                };
                out.source = expand(&out.source);
                out.options = out.options.iter().map(|o| expand(o)).collect();
            }
            "mkdir" => assert!(
                !out.options
                    .iter()
                    .any(|o| o.starts_with("X-containerd.mkdir.")),
                "mkdir options are not handled here: {m:?}"
            ),
            other => panic!("unexpected transformer {other} in {m:?}"),
        }
    }
    out
}

/// Mount `m` (its transformers done) at `target`, created if need be.
fn mount_one(m: &Mount, target: &Path) {
    fs::create_dir_all(target).unwrap();
    let r = match m.r#type.as_str() {
        "bind" => {
            let ro = m.options.iter().any(|o| o == "ro");
            sys::mount_bind(Path::new(&m.source), target, ro)
        }
        "erofs" => {
            let opts = sys::ErofsOptions {
                extra: m.options.clone(),
                ..Default::default()
            };
            sys::mount_erofs(Path::new(&m.source), target, &opts).map(drop)
        }
        "overlay" if m.options.join(",").len() >= rustix::param::page_size() => {
            mount_long_overlay(m, target);
            Ok(())
        }
        "overlay" => {
            run(Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &m.options.join(",")])
                .arg(target))
            .ok();
            Ok(())
        }
        other => panic!("unexpected mount type {other}"),
    };
    if let Err(e) = r {
        panic!("mounting {m:?} at {}: {e}", target.display());
    }
}

fn mount_long_overlay(m: &Mount, target: &Path) {
    let (mut lowers, mut upper, mut work, mut extra) = (Vec::new(), None, None, Vec::new());
    for o in &m.options {
        assert!(
            !o.contains('\\'),
            "escaped overlay paths are not handled here: {o}"
        );
        if let Some(v) = o.strip_prefix("lowerdir=") {
            lowers = v.split(':').map(PathBuf::from).collect();
        } else if let Some(v) = o.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(v));
        } else if let Some(v) = o.strip_prefix("workdir=") {
            work = Some(PathBuf::from(v));
        } else {
            extra.push(o.clone());
        }
    }
    let parents: BTreeSet<_> = lowers.iter().map(|l| l.parent()).collect();
    assert_eq!(
        parents.len(),
        1,
        "lowers without a common parent: containerd's mount.All could not shorten \
         this {}-byte option string to fit a page: {:?}",
        m.options.join(",").len(),
        parents
    );
    let upper = match (&upper, &work) {
        (Some(u), Some(w)) => Some((u.as_path(), w.as_path())),
        (None, None) => None,
        _ => panic!("upperdir without workdir or the reverse: {:?}", m.options),
    };
    sys::mount_overlay(target, &lowers, upper, &extra).unwrap_or_else(|e| {
        panic!(
            "mounting {} layers at {}: {e}",
            lowers.len(),
            target.display()
        )
    });
}

/// What [`mount_all`] mounted: `.0` is where the snapshot is (`target`);
/// `.1` every mount point, in mounting order, `target` last. Dropping it
/// unmounts them in reverse order; a failure to unmount fails the test
/// unless it is already failing.
pub struct MountGuard(pub PathBuf, Vec<PathBuf>);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let failed: Vec<String> = self
            .1
            .iter()
            .rev()
            .filter_map(|p| unmount(p).err())
            .map(|e| e.to_string())
            .collect();
        if !failed.is_empty() && !std::thread::panicking() {
            panic!("unmounting {}: {}", self.0.display(), failed.join("; "));
        }
    }
}

/// Unmount `target`, waiting out a brief EBUSY: a process that another
/// test thread is starting holds copies of this process's descriptors
/// (say, of a directory being walked below `target`) until it execs.
fn unmount(target: &Path) -> Result<(), sys::Error> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match sys::unmount(target, false) {
            Err(e) if e.errno() == rustix::io::Errno::BUSY && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// Mount points at or below `root`, per /proc/self/mountinfo.
pub fn mounts_below(root: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = root.to_string_lossy().into_owned();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| *mp == prefix || mp.starts_with(&format!("{prefix}/")))
        .map(str::to_string)
        .collect()
}

/// The status code of a call that must fail.
pub fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

fn labels(l: &[(&str, &str)]) -> HashMap<String, String> {
    l.iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

pub async fn prepare(
    c: &mut Client,
    key: &str,
    parent: &str,
    l: &[(&str, &str)],
) -> Result<Vec<Mount>, Status> {
    let r = c
        .prepare(PrepareSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            labels: labels(l),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().mounts)
}

pub async fn view(
    c: &mut Client,
    key: &str,
    parent: &str,
    l: &[(&str, &str)],
) -> Result<Vec<Mount>, Status> {
    let r = c
        .view(ViewSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            labels: labels(l),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().mounts)
}

/// Commit active snapshot `key` as `name`.
pub async fn commit(
    c: &mut Client,
    key: &str,
    name: &str,
    l: &[(&str, &str)],
) -> Result<(), Status> {
    c.commit(CommitSnapshotRequest {
        key: key.into(),
        name: name.into(),
        labels: labels(l),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

pub async fn remove(c: &mut Client, key: &str) -> Result<(), Status> {
    c.remove(RemoveSnapshotRequest {
        key: key.into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

pub async fn stat(c: &mut Client, key: &str) -> Result<Info, Status> {
    let r = c
        .stat(StatSnapshotRequest {
            key: key.into(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().info.expect("stat answered without info"))
}

/// Every snapshot matching `filters` (containerd's Walk), all batches.
pub async fn list(c: &mut Client, filters: &[&str]) -> Result<Vec<Info>, Status> {
    let mut stream = c
        .list(ListSnapshotsRequest {
            filters: filters.iter().map(|f| (*f).to_string()).collect(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await? {
        out.extend(batch.info);
    }
    Ok(out)
}
