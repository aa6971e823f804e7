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
    /// there.
    pub fn start(dir: &Path) -> Daemon {
        let root = dir.join("root");
        let sock = dir.join("snap.sock");
        let child = Command::new(bin())
            .args(["serve", "--root"])
            .arg(&root)
            .arg("--address")
            .arg(&sock)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting serve");
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

/// Mount what a snapshot returned at `target`, as containerd's
/// `mount.All` would for the three self-mount types (`bind`, `erofs`,
/// `overlay`), with mount(8).
///
/// mount(2) copies at most one page of options, so mount(8) cannot pass
/// the overlay of a deep chain (its lowerdir is cut short and the kernel
/// fails to resolve the truncated path). containerd 2.1's `mount.All`
/// shortens such a lowerdir by chdir-ing to the lowers' common parent and
/// passing relative paths; this checks that condition holds and then
/// mounts the overlay with `sys::mount_overlay` (one `lowerdir+` per layer).
pub fn mount_all(mounts: &[Mount], target: &Path) -> MountGuard {
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let m = &mounts[0];
    fs::create_dir_all(target).unwrap();
    if m.r#type == "overlay" && m.options.join(",").len() >= rustix::param::page_size() {
        mount_long_overlay(m, target);
        return MountGuard(target.to_path_buf());
    }
    let mut cmd = Command::new("mount");
    match m.r#type.as_str() {
        "bind" => {
            cmd.arg("--bind").arg(&m.source).arg(target);
        }
        "erofs" => {
            cmd.args(["-t", "erofs", "-o", &m.options.join(",")])
                .arg(&m.source)
                .arg(target);
        }
        "overlay" => {
            cmd.args(["-t", "overlay", "overlay", "-o", &m.options.join(",")])
                .arg(target);
        }
        other => panic!("unexpected mount type {other}"),
    }
    run(&mut cmd).ok();
    if m.options.iter().any(|o| o == "ro") && m.r#type == "bind" {
        run(Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(target))
        .ok();
    }
    MountGuard(target.to_path_buf())
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

/// Unmounts (with umount(8)) when dropped; a failure to unmount fails the
/// test unless it is already failing.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let r = run(Command::new("umount").arg(&self.0));
        if !r.success() && !std::thread::panicking() {
            panic!("umount {}: {}", self.0.display(), r.stderr);
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
