//! What a crash leaves behind is reclaimed at the next start, and only
//! then: the Cleanup call at run time must not touch work in flight.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;

use snapshotter::snapshotter::{Config, Snapshotter};

fn open(root: &std::path::Path) -> Snapshotter {
    Snapshotter::open(Config {
        root: root.to_path_buf(),
        ..Config::default()
    })
    .unwrap()
}

#[test]
fn start_up_reclaims_crash_leftovers_and_keeps_real_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    {
        let s = open(&root);
        let m = s.prepare("a", None, BTreeMap::new()).unwrap();
        fs::write(m[0].source.join("f"), "x").unwrap();
    }
    let snaps = root.join("snapshots");
    // A create interrupted before its rename, a directory whose record
    // was removed before the move to the trash, and a commit's temporary
    // image: what kill -9 at the wrong moment leaves.
    fs::create_dir_all(snaps.join("new-abc/fs")).unwrap();
    fs::create_dir_all(snaps.join("999/fs")).unwrap();
    fs::write(snaps.join("1/.layer-x1y2"), "partial").unwrap();

    let s = open(&root);
    assert!(!snaps.join("new-abc").exists());
    assert!(!snaps.join("999").exists());
    assert!(!snaps.join("1/.layer-x1y2").exists());
    assert_eq!(fs::read_to_string(snaps.join("1/fs/f")).unwrap(), "x");
    assert_eq!(fs::read_dir(root.join("trash")).unwrap().count(), 0);
    // The snapshot still works end to end.
    s.commit("a", "base", BTreeMap::new(), None).unwrap();
    assert!(snaps.join("1/layer.erofs").exists());
}

#[test]
fn cleanup_at_run_time_spares_creations_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let s = open(&root);
    s.prepare("a", None, BTreeMap::new()).unwrap();
    let in_flight = root.join("snapshots/new-inflight");
    fs::create_dir_all(&in_flight).unwrap();
    let orphan = root.join("snapshots/777");
    fs::create_dir_all(&orphan).unwrap();
    s.cleanup().unwrap();
    assert!(
        in_flight.exists(),
        "a Prepare in progress lost its directory"
    );
    assert!(!orphan.exists());
    assert!(root.join("snapshots/1/fs").exists());
}
