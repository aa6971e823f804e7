//! `serve` as containerd sees it: a real daemon process on a unix socket,
//! driven with containerd-client's own Snapshots client, and the mounts it
//! returns mounted by the kernel exactly as a shim would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use daemon::*;
use proto::snapshots::*;
use proto::tonic::Code;

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
    let d = Daemon::start(tmp.path(), MountMode::SelfMount);
    let mut c = d.client().await;

    assert_eq!(code(stat(&mut c, "nope").await), Code::NotFound);

    // Layer 1, written through the returned bind mount.
    let m = prepare(&mut c, "ns/1/a", "", &[]).await.unwrap();
    assert_eq!(m[0].r#type, "bind");
    {
        let g = mount_all(&m, &tmp.path().join("m1"));
        fs::create_dir_all(g.0.join("etc/conf.d")).unwrap();
        fs::write(g.0.join("etc/hostname"), "base\n").unwrap();
        fs::write(g.0.join("etc/conf.d/old"), "old\n").unwrap();
        fs::write(g.0.join("gone"), "x").unwrap();
    }
    commit(&mut c, "ns/1/a", "ns/2/base", &[]).await.unwrap();
    let info = stat(&mut c, "ns/2/base").await.unwrap();
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
    let m = prepare(&mut c, "ns/3/b", "ns/2/base", &[]).await.unwrap();
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
    commit(&mut c, "ns/3/b", "ns/4/top", &[]).await.unwrap();

    // A view of both layers shows the child's changes.
    let m = view(&mut c, "ns/5/v", "ns/4/top", &[]).await.unwrap();
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
    let m = view(&mut c, "ns/6/v1", "ns/2/base", &[]).await.unwrap();
    assert_eq!(m[0].r#type, "erofs");
    {
        let g = mount_all(&m, &tmp.path().join("m4"));
        assert!(g.0.join("gone").exists());
    }

    // List with filters.
    let mut names: Vec<String> = list(&mut c, &["kind==committed"])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
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
    let mut d = Daemon::start(tmp.path(), MountMode::SelfMount);
    let mut c = d.client().await;
    let m = prepare(&mut c, "k/1/a", "", &[]).await.unwrap();
    {
        let g = mount_all(&m, &tmp.path().join("w"));
        fs::write(g.0.join("file"), "layer\n").unwrap();
    }
    commit(&mut c, "k/1/a", "k/2/base", &[]).await.unwrap();
    let m = prepare(&mut c, "k/3/ctr", "k/2/base", &[]).await.unwrap();
    let rootfs = mount_all(&m, &tmp.path().join("rootfs"));
    let before = mounts_below(&d.root);
    let loops_before = loops_below(tmp.path());

    d.kill9();
    drop(c);
    assert_eq!(
        fs::read_to_string(rootfs.0.join("file")).unwrap(),
        "layer\n"
    );

    let d2 = Daemon::start(tmp.path(), MountMode::SelfMount);
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
    assert_eq!(
        loops_below(tmp.path()),
        loops_before,
        "no loop device added"
    );

    // New work still goes through.
    let m2 = prepare(&mut c, "k/4/ctr2", "k/2/base", &[]).await.unwrap();
    assert_eq!(m2[0].r#type, "overlay");

    drop(rootfs);
    for k in ["k/3/ctr", "k/4/ctr2", "k/2/base"] {
        remove(&mut c, k).await.unwrap();
    }
    assert!(mounts_below(&d2.root).is_empty());
    assert!(loops_below(tmp.path()).is_empty(), "leaked loop devices");
}

/// Loop devices whose backing file lies under `dir`.
fn loops_below(dir: &Path) -> Vec<PathBuf> {
    sys::loop_devices()
        .unwrap()
        .into_iter()
        .filter(|(_, backing)| backing.starts_with(dir))
        .map(|(dev, _)| dev)
        .collect()
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
    let mut d = Daemon::start(tmp.path(), MountMode::SelfMount);
    let mode = fs::metadata(&d.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let status = d.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!d.sock.exists());
}

/// Parallel unpack and remote-snapshot dedupe as containerd drives them:
/// a parentless extraction committed onto a parent (`rebase`, Commit's
/// field 5), and a second extraction of an already unpacked target
/// answered with AlreadyExists, which containerd then finds by label and
/// parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebase_and_already_unpacked_targets() {
    if !prereqs() {
        return;
    }
    let tmp = tempdir();
    let d = Daemon::start(tmp.path(), MountMode::SelfMount);
    let mut c = d.client().await;
    const REF: &str = "containerd.io/snapshot.ref";

    // Both layers extracted without a parent, as parallel unpack does.
    for (key, file) in [("ns/1/extract-a", "a"), ("ns/2/extract-b", "b")] {
        let target = format!("sha256:{file}");
        let m = prepare(&mut c, key, "", &[(REF, &target)]).await.unwrap();
        let g = mount_all(&m, &tmp.path().join(file));
        fs::write(g.0.join(file), file).unwrap();
    }
    commit(
        &mut c,
        "ns/1/extract-a",
        "ns/3/chain-a",
        &[(REF, "sha256:a")],
    )
    .await
    .unwrap();
    c.commit(CommitSnapshotRequest {
        key: "ns/2/extract-b".into(),
        name: "ns/4/chain-b".into(),
        labels: [(REF.to_string(), "sha256:b".to_string())].into(),
        parent: "ns/3/chain-a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        stat(&mut c, "ns/4/chain-b").await.unwrap().parent,
        "ns/3/chain-a"
    );
    let m = view(&mut c, "ns/5/v", "ns/4/chain-b", &[]).await.unwrap();
    {
        let g = mount_all(&m, &tmp.path().join("v"));
        assert_eq!(fs::read_to_string(g.0.join("a")).unwrap(), "a");
        assert_eq!(fs::read_to_string(g.0.join("b")).unwrap(), "b");
    }
    remove(&mut c, "ns/5/v").await.unwrap();

    // Another namespace extracting the same targets: already there.
    assert_eq!(
        code(prepare(&mut c, "other/6/extract-a", "", &[(REF, "sha256:a")]).await),
        Code::AlreadyExists
    );
    let found = list(
        &mut c,
        &["labels.\"containerd.io/snapshot.ref\"==sha256:a,parent==\"\""],
    )
    .await
    .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].name, "ns/3/chain-a");
    assert_eq!(
        code(
            prepare(
                &mut c,
                "other/7/extract-b",
                "ns/3/chain-a",
                &[(REF, "sha256:b")]
            )
            .await
        ),
        Code::AlreadyExists
    );
    // The same target on another parent is a different layer stack.
    prepare(&mut c, "other/8/extract-b", "", &[(REF, "sha256:b")])
        .await
        .unwrap();
    remove(&mut c, "other/8/extract-b").await.unwrap();
}
