//! `serve` as containerd sees it: a real daemon process on a unix socket,
//! driven with containerd-client's own Snapshots client, and the mounts it
//! returns mounted by the kernel exactly as a shim would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use proto::snapshots::snapshots_client::SnapshotsClient;
use proto::snapshots::*;
use proto::tonic::Code;
use proto::tonic::transport::Channel;
use proto::types::Mount;

/// The daemon under test; killed (not gracefully stopped) on drop so a
/// failing test never leaves it running.
struct Daemon {
    child: Child,
    root: PathBuf,
    sock: PathBuf,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
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

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        self.child.wait().unwrap()
    }

    /// Connect, retrying while the daemon starts: after a kill -9 the
    /// old socket file is still there until the new daemon replaces it.
    async fn client(&self) -> SnapshotsClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(channel) = proto::connect(&self.sock).await {
                let mut c = SnapshotsClient::new(channel);
                let probe = c
                    .stat(StatSnapshotRequest {
                        key: "probe".into(),
                        ..Default::default()
                    })
                    .await;
                if matches!(&probe, Err(s) if s.code() == Code::NotFound) {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "daemon never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Mount what a snapshot returned at `target`, as containerd's
/// `mount.All` would for these three types.
fn mount_all(mounts: &[Mount], target: &Path) -> MountGuard {
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let m = &mounts[0];
    fs::create_dir_all(target).unwrap();
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

struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mounts_below(root: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = root.to_string_lossy().into_owned();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

fn code<T: std::fmt::Debug>(r: Result<T, proto::tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

async fn prepare(c: &mut SnapshotsClient<Channel>, key: &str, parent: &str) -> Vec<Mount> {
    c.prepare(PrepareSnapshotRequest {
        key: key.into(),
        parent: parent.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .mounts
}

async fn view(c: &mut SnapshotsClient<Channel>, key: &str, parent: &str) -> Vec<Mount> {
    c.view(ViewSnapshotRequest {
        key: key.into(),
        parent: parent.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .mounts
}

async fn commit(c: &mut SnapshotsClient<Channel>, key: &str, name: &str) {
    c.commit(CommitSnapshotRequest {
        key: key.into(),
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn remove(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<(), proto::tonic::Status> {
    c.remove(RemoveSnapshotRequest {
        key: key.into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

fn prereqs() -> bool {
    require_root_and_fs(&["erofs", "overlay"]) && require(&["mount", "fsck.erofs"])
}

/// Three layers through the whole lifecycle: a base written through a
/// bind mount, a child that changes, deletes (whiteout) and makes a
/// directory opaque through overlayfs, both converted to EROFS at Commit,
/// then read back through a view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_through_kernel_mounts() {
    if !prereqs() {
        return;
    }
    let tmp = tempdir();
    let d = Daemon::start(tmp.path());
    let mut c = d.client().await;

    assert_eq!(
        code(
            c.stat(StatSnapshotRequest {
                key: "nope".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );

    // Layer 1, written through the returned bind mount.
    let m = prepare(&mut c, "ns/1/a", "").await;
    assert_eq!(m[0].r#type, "bind");
    {
        let g = mount_all(&m, &tmp.path().join("m1"));
        fs::create_dir_all(g.0.join("etc/conf.d")).unwrap();
        fs::write(g.0.join("etc/hostname"), "base\n").unwrap();
        fs::write(g.0.join("etc/conf.d/old"), "old\n").unwrap();
        fs::write(g.0.join("gone"), "x").unwrap();
    }
    commit(&mut c, "ns/1/a", "ns/2/base").await;
    let info = c
        .stat(StatSnapshotRequest {
            key: "ns/2/base".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(info.kind, proto::snapshots::Kind::Committed as i32);
    let blob = d.root.join("snapshots/1/layer.erofs");
    run(Command::new("fsck.erofs").arg(&blob)).ok();
    cli(["fsck".as_ref(), blob.as_os_str()]).ok();
    assert_eq!(
        code(
            c.mounts(MountsRequest {
                key: "ns/2/base".into(),
                ..Default::default()
            })
            .await
        ),
        Code::FailedPrecondition
    );

    // Layer 2 on top, through overlayfs.
    let m = prepare(&mut c, "ns/3/b", "ns/2/base").await;
    assert_eq!(m[0].r#type, "overlay");
    {
        let g = mount_all(&m, &tmp.path().join("m2"));
        assert_eq!(
            fs::read_to_string(g.0.join("etc/hostname")).unwrap(),
            "base\n"
        );
        fs::write(g.0.join("etc/hostname"), "child\n").unwrap();
        fs::remove_file(g.0.join("gone")).unwrap();
        fs::remove_dir_all(g.0.join("etc/conf.d")).unwrap();
        fs::create_dir(g.0.join("etc/conf.d")).unwrap();
        fs::write(g.0.join("etc/conf.d/new"), "new\n").unwrap();
    }
    commit(&mut c, "ns/3/b", "ns/4/top").await;

    // A view of both layers shows the child's changes.
    let m = view(&mut c, "ns/5/v", "ns/4/top").await;
    assert_eq!(m[0].r#type, "overlay");
    {
        let g = mount_all(&m, &tmp.path().join("m3"));
        assert_eq!(
            fs::read_to_string(g.0.join("etc/hostname")).unwrap(),
            "child\n"
        );
        assert!(!g.0.join("gone").exists());
        assert!(!g.0.join("etc/conf.d/old").exists());
        assert_eq!(
            fs::read_to_string(g.0.join("etc/conf.d/new")).unwrap(),
            "new\n"
        );
        assert!(
            fs::write(g.0.join("x"), "y").is_err(),
            "views are read-only"
        );
    }
    // A view of one layer is that layer's image.
    let m = view(&mut c, "ns/6/v1", "ns/2/base").await;
    assert_eq!(m[0].r#type, "erofs");
    {
        let g = mount_all(&m, &tmp.path().join("m4"));
        assert!(g.0.join("gone").exists());
    }

    // List with filters.
    let mut stream = c
        .list(ListSnapshotsRequest {
            filters: vec!["kind==committed".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        names.extend(batch.info.into_iter().map(|i| i.name));
    }
    names.sort();
    assert_eq!(names, ["ns/2/base", "ns/4/top"]);

    // Usage of a committed layer is its image size.
    let u = c
        .usage(UsageRequest {
            key: "ns/2/base".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.size, fs::metadata(&blob).unwrap().len() as i64);

    // Remove: parents with children refuse; leaves first works.
    assert_eq!(
        code(remove(&mut c, "ns/2/base").await),
        Code::FailedPrecondition
    );
    for k in ["ns/5/v", "ns/6/v1", "ns/4/top", "ns/2/base"] {
        remove(&mut c, k).await.unwrap();
    }
    assert_eq!(code(remove(&mut c, "ns/2/base").await), Code::NotFound);
    c.cleanup(CleanupRequest::default()).await.unwrap();
    assert!(
        mounts_below(&d.root).is_empty(),
        "leaked mounts: {:?}",
        mounts_below(&d.root)
    );
    let left: Vec<_> = fs::read_dir(d.root.join("snapshots")).unwrap().collect();
    assert!(left.is_empty(), "leftover snapshot dirs: {left:?}");
}

/// kill -9 while a container-like overlay is mounted: the mounted tree
/// stays intact, the restarted daemon serves the same snapshots without
/// mounting any layer twice, and everything is reclaimed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_9_with_a_mounted_rootfs() {
    if !prereqs() {
        return;
    }
    let tmp = tempdir();
    let mut d = Daemon::start(tmp.path());
    let mut c = d.client().await;
    let m = prepare(&mut c, "k/1/a", "").await;
    {
        let g = mount_all(&m, &tmp.path().join("w"));
        fs::write(g.0.join("file"), "layer\n").unwrap();
    }
    commit(&mut c, "k/1/a", "k/2/base").await;
    let m = prepare(&mut c, "k/3/ctr", "k/2/base").await;
    let rootfs = mount_all(&m, &tmp.path().join("rootfs"));
    let before = mounts_below(&d.root);

    d.kill9();
    drop(c);
    assert_eq!(
        fs::read_to_string(rootfs.0.join("file")).unwrap(),
        "layer\n"
    );

    let d2 = Daemon::start(tmp.path());
    let mut c = d2.client().await;
    assert_eq!(
        fs::read_to_string(rootfs.0.join("file")).unwrap(),
        "layer\n"
    );
    let again = c
        .mounts(MountsRequest {
            key: "k/3/ctr".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(again, m, "mounts must not change across a restart");
    assert_eq!(mounts_below(&d2.root), before, "no layer mounted twice");

    // New work still goes through.
    let m2 = prepare(&mut c, "k/4/ctr2", "k/2/base").await;
    assert_eq!(m2[0].r#type, "overlay");

    drop(rootfs);
    for k in ["k/3/ctr", "k/4/ctr2", "k/2/base"] {
        remove(&mut c, k).await.unwrap();
    }
    assert!(mounts_below(&d2.root).is_empty());
}

/// SIGTERM stops the daemon cleanly and removes its socket; the socket is
/// private to root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_socket_mode() {
    if !prereqs() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempdir();
    let mut d = Daemon::start(tmp.path());
    let mode = fs::metadata(&d.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let status = d.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!d.sock.exists());
}
