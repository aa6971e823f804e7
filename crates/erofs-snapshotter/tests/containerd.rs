//! The daemon behind a real containerd: a three-layer OCI image (file
//! and directory whiteouts, opaque directories, see `common/images.rs`)
//! built here, imported into a private containerd that has our daemon as
//! a proxy snapshotter, unpacked by containerd's walking differ into the
//! mounts we return, converted to EROFS at Commit, and run with runc.
//! Then everything is removed again and nothing may be left mounted.
//!
//! Needs root, containerd 2.x (`containerd`, `ctr`,
//! `containerd-shim-runc-v2` on PATH or in /opt/containerd/usr/bin, as
//! scripts/setup.sh installs it), runc, /bin/busybox (a static one) and
//! fsck.erofs. Skipped loudly without them, failed on CI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[allow(dead_code)]
#[path = "common/images.rs"]
mod images;
#[allow(dead_code)]
#[path = "common/oci.rs"]
mod oci;

use std::time::{Duration, Instant};

use cluster::{Cluster, Mode, Options, SNAPSHOTTER, mounts_under, prereqs};
use common::*;

/// containerd namespace of everything this test creates.
const NS: &str = "erofs-it";

#[test]
fn import_and_run_with_containerd() {
    let Some(tools) = prereqs(&[]) else {
        return;
    };
    let started = Instant::now();
    let tmp = tempdir();
    let dir = tmp.path();

    let image = images::whiteouts(oci::Compression::Gzip, &dir.join("image")).unwrap();
    let image_tar = dir.join("image.tar");
    oci::pack_layout(&image.layout, &image_tar).unwrap();
    let built = &image.built;
    let name = "localhost/whiteouts:1";

    let mut c = Cluster::start(dir, &tools, Options::new(NS, Mode::OursWalking));
    let t_ready = started.elapsed();

    // Import through the transfer service; it unpacks into our snapshotter.
    c.ctr(&[
        "images",
        "import",
        "--snapshotter",
        SNAPSHOTTER,
        image_tar.to_str().unwrap(),
    ]);
    let images = c.ctr(&["images", "ls", "-q"]).stdout;
    assert!(
        images.lines().any(|l| l.trim() == name),
        "imported image not named {name}: {images:?}"
    );
    assert_eq!(
        c.snapshots(),
        cluster::committed_chain(&built.chain_ids),
        "snapshots after import"
    );
    // Stat and Usage through containerd's metadata layer.
    let info = c.ctr(&[
        "snapshots",
        "--snapshotter",
        SNAPSHOTTER,
        "info",
        &built.chain_ids[1],
    ]);
    assert!(
        info.stdout.contains(&built.chain_ids[0]) && info.stdout.contains(r#""Kind": "Committed""#),
        "snapshot info: {}",
        info.stdout
    );
    let usage = c.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "usage"]);
    for id in &built.chain_ids {
        assert!(
            usage.stdout.contains(id.as_str()),
            "usage: {}",
            usage.stdout
        );
    }

    let mut whiteout_seen = false;
    let mut opaque_seen = false;
    let blobs = c.layer_images();
    assert_eq!(
        blobs.len(),
        built.chain_ids.len(),
        "layer images: {blobs:?}"
    );
    for blob in blobs {
        let etc = cli([
            "inspect".as_ref(),
            "--ls".as_ref(),
            "/etc".as_ref(),
            blob.as_os_str(),
        ]);
        // The walking differ deletes `doomed` in the overlay; the upper
        // gets a 0:0 character device, which the image keeps.
        whiteout_seen |= etc.success()
            && etc
                .stdout
                .lines()
                .any(|l| l.starts_with('c') && l.contains(" 0, 0 ") && l.ends_with(" doomed"));
        let old = cli([
            "inspect".as_ref(),
            "--ls".as_ref(),
            "/opt/old".as_ref(),
            blob.as_os_str(),
        ]);
        opaque_seen |= old.success() && old.stdout.contains("trusted.overlay.opaque");
    }
    assert!(
        whiteout_seen,
        "no 0:0 whiteout for /etc/doomed in any layer"
    );
    assert!(opaque_seen, "no opaque /opt/old in any layer");
    let t_import = started.elapsed();

    // Run: every path and file hash as the image's model says (whiteouts
    // gone, opaque directories showing only their upper content).
    let out = c.sh(name, "t1", &image.check.script());
    if let Some(d) = image.check.compare(&out) {
        panic!("container t1 sees the wrong tree: {d}");
    }
    let t_run = started.elapsed();

    // The rootfs is writable (the overlay upper of an active snapshot).
    let out = c.sh(
        name,
        "t2",
        "echo written > /etc/new-file && cat /etc/new-file",
    );
    assert_eq!(out, "written\n");

    // Remove the image (with a synchronous GC), then whatever is left,
    // children first; our root must end up empty and unmounted.
    c.ctr(&["images", "rm", "--sync", name]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let snaps = c.snapshots();
        if snaps.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "snapshots never went: {snaps:?}");
        let parents: Vec<&String> = snaps.values().map(|(p, _)| p).collect();
        for key in snaps.keys().filter(|k| !parents.contains(k)) {
            let _ = c.ctr_raw(&["snapshots", "--snapshotter", SNAPSHOTTER, "rm", key]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // containerd removes backend snapshots in its GC, asynchronously.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.snapshot_dirs().is_empty() || !mounts_under(&c.snap_root).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left in our root: {:?}, mounted: {:?}",
            c.snapshot_dirs(),
            mounts_under(&c.snap_root)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = c.teardown();
    assert!(left.is_empty(), "mounts left after shutdown: {left:?}");
    eprintln!(
        "timing: ready {:.1?}, imported {:.1?}, ran {:.1?}, total {:.1?}",
        t_ready,
        t_import,
        t_run,
        started.elapsed()
    );
}
