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

mod torn_layers {
    //! Images the differ wrote without waiting for the disk
    //! (`layer_sync = "deferred"`): a daemon restart only fsyncs them
    //! again, a crash (another boot) makes them unmountable until rebuilt.
    use std::collections::BTreeMap;
    use std::fs;
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use layer::digest::Digest;
    use snapshotter::config::MountMode;
    use snapshotter::differ::{self, ApplyOptions, Blob};
    use snapshotter::durability::{self, Record};
    use snapshotter::snapshotter::{Config, ErrorClass, Snapshotter, TARGET_LABEL};

    fn open(root: &Path) -> Snapshotter {
        // The mount manager's shapes: nothing is mounted, so the test
        // needs no root.
        Snapshotter::open(Config {
            root: root.to_path_buf(),
            mount_mode: MountMode::MountManager,
            ..Config::default()
        })
        .unwrap()
    }

    /// A layer tar holding one regular file.
    fn one_file_tar(path: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
        b.into_inner().unwrap()
    }

    fn blob() -> (Blob, Vec<u8>) {
        let tar = one_file_tar("data/file", &[42u8; 100_000]);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&tar).unwrap();
        let gz = e.finish().unwrap();
        let blob = Blob {
            namespace: "ns1".into(),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Digest::of(&gz).to_string(),
            size: gz.len() as u64,
        };
        (blob, gz)
    }

    /// Unpack `bytes` as layer `name` the way containerd does: extraction
    /// snapshot, Apply (deferred), Commit. Returns the snapshot directory
    /// and the record Apply left until the fsync.
    fn unpack(s: &Snapshotter, name: &str, blob: &Blob, bytes: &[u8]) -> (PathBuf, Record) {
        let labels = BTreeMap::from([(TARGET_LABEL.to_string(), name.to_string())]);
        let key = format!("extract-{name}");
        let mounts = s.prepare(&key, None, labels).unwrap();
        let dir = s.apply_target(&mounts).unwrap().unwrap();
        let opts = ApplyOptions {
            defer_sync: true,
            ..Default::default()
        };
        let input = Box::new(std::io::Cursor::new(bytes.to_vec()));
        let applied = differ::apply(&dir, blob, input, &opts).unwrap();
        assert!(applied.deferred);
        let record = pending(&dir).expect("no record after a deferred Apply");
        s.commit(&key, name, BTreeMap::new(), None).unwrap();
        (dir, record)
    }

    fn pending(dir: &Path) -> Option<Record> {
        let mut buf = [0u8; 4096];
        let n = rustix::fs::getxattr(dir, durability::PENDING, &mut buf[..]).ok()?;
        Record::parse(std::str::from_utf8(&buf[..n]).unwrap())
    }

    fn mark(dir: &Path, record: &Record) {
        assert!(durability::mark_pending(dir, record).unwrap());
    }

    /// What a crash before the fsync looks like to the next boot: the
    /// record names another boot, and the image lost its tail.
    fn crash(dir: &Path, record: &Record) {
        let other = Record {
            boot_id: "00000000-0000-0000-0000-000000000000".into(),
            ..record.clone()
        };
        mark(dir, &other);
        let image = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("layer.erofs"))
            .unwrap();
        image.set_len(4096).unwrap();
    }

    #[test]
    fn restart_resyncs_crash_refuses_until_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let (blob, gz) = blob();
        let (dir, record, image) = {
            let s = open(&root);
            let (dir, record) = unpack(&s, "base", &blob, &gz);
            // Commit queued the fsync.
            s.wait_synced();
            assert_eq!(pending(&dir), None);
            (
                dir.clone(),
                record,
                fs::read(dir.join("layer.erofs")).unwrap(),
            )
        };

        // Killed before the fsync, restarted in the same boot: fsynced
        // then, and usable meanwhile.
        mark(&dir, &record);
        let s = open(&root);
        assert!(s.lost_layers().is_empty());
        s.prepare("c1", Some("base"), BTreeMap::new()).unwrap();
        s.wait_synced();
        assert_eq!(pending(&dir), None);
        drop(s);

        // A crash: the chain is refused, by name, until rebuilt.
        crash(&dir, &record);
        let s = open(&root);
        let lost = s.lost_layers();
        assert_eq!(lost.len(), 1);
        let (id, lost_dir, record) = lost.into_iter().next().unwrap();
        assert_eq!(lost_dir, dir);
        let record = record.unwrap();
        assert_eq!(record.digest, blob.digest);
        assert_eq!(record.namespace, "ns1");
        for e in [
            s.prepare("c2", Some("base"), BTreeMap::new()).unwrap_err(),
            s.mounts("c1").unwrap_err(),
        ] {
            assert_eq!(e.class(), ErrorClass::FailedPrecondition);
            let msg = e.to_string();
            assert!(msg.contains(&blob.digest), "{msg}");
            assert!(msg.contains("being rebuilt"), "{msg}");
        }
        assert!(
            s.stat("c2").is_err(),
            "a refused Prepare left a snapshot behind"
        );

        // A failed rebuild is kept, with its reason, across restarts.
        s.rebuild_failed(id, &record, "blob not found").unwrap();
        drop(s);
        let s = open(&root);
        let msg = s.mounts("c1").unwrap_err().to_string();
        assert!(
            msg.contains("could not be rebuilt (blob not found)"),
            "{msg}"
        );

        // Rebuilt from the blob: the same bytes as before the crash.
        s.begin_rebuild(id).unwrap();
        let input = Box::new(std::io::Cursor::new(gz.clone()));
        let applied = differ::apply(&dir, &blob, input, &ApplyOptions::default()).unwrap();
        assert_eq!(applied.digest, record.diff_id);
        s.rebuilt(id).unwrap();
        assert_eq!(fs::read(dir.join("layer.erofs")).unwrap(), image);
        s.mounts("c1").unwrap();
        s.prepare("c2", Some("base"), BTreeMap::new()).unwrap();
        drop(s);
        let s = open(&root);
        assert!(s.lost_layers().is_empty());
        assert_eq!(pending(&dir), None);
    }

    #[test]
    fn a_torn_image_of_an_interrupted_unpack_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let (blob, gz) = blob();
        let dir = {
            let s = open(&root);
            let labels = BTreeMap::from([(TARGET_LABEL.to_string(), "base".to_string())]);
            let mounts = s.prepare("extract-base", None, labels).unwrap();
            let dir = s.apply_target(&mounts).unwrap().unwrap();
            let opts = ApplyOptions {
                defer_sync: true,
                ..Default::default()
            };
            let input = Box::new(std::io::Cursor::new(gz));
            differ::apply(&dir, &blob, input, &opts).unwrap();
            dir
        };
        let record = pending(&dir).unwrap();
        crash(&dir, &record);
        let s = open(&root);
        assert!(s.lost_layers().is_empty());
        // No Commit can adopt what the crash left.
        assert!(!dir.join("layer.erofs").exists());
        assert!(!dir.join(durability::LOST).exists());
        s.stat("extract-base").unwrap();
    }

    /// VM mode: merged metadata built over a layer that a crash tore is
    /// dropped when the layer is rebuilt, and built again, the same, at
    /// the next use.
    #[test]
    fn a_rebuild_drops_fsmeta_built_over_the_torn_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let open_vm = || {
            Snapshotter::open(Config {
                root: root.clone(),
                mode: snapshotter::config::Mode::Vm,
                mount_mode: MountMode::MountManager,
                ..Config::default()
            })
            .unwrap()
        };
        let (base_blob, base_gz) = blob();
        let s = open_vm();
        let (base_dir, base_record) = unpack(&s, "base", &base_blob, &base_gz);
        // A second layer above it.
        let top_tar = one_file_tar("top/file", b"top");
        let top_blob = Blob {
            namespace: "ns1".into(),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: Digest::of(&top_tar).to_string(),
            size: top_tar.len() as u64,
        };
        let labels = BTreeMap::from([(TARGET_LABEL.to_string(), "top".to_string())]);
        let mounts = s.prepare("extract-top", Some("base"), labels).unwrap();
        let top_dir = s.apply_target(&mounts).unwrap().unwrap();
        let opts = ApplyOptions {
            defer_sync: true,
            ..Default::default()
        };
        differ::apply(
            &top_dir,
            &top_blob,
            Box::new(std::io::Cursor::new(top_tar)),
            &opts,
        )
        .unwrap();
        s.commit("extract-top", "top", BTreeMap::new(), None)
            .unwrap();
        let m = s.view("v1", Some("top"), BTreeMap::new()).unwrap();
        let fsmeta = top_dir.join("fsmeta.erofs");
        assert_eq!(m[0].source, fsmeta);
        let merged = fs::read(&fsmeta).unwrap();
        s.wait_synced();
        drop(s);

        crash(&base_dir, &base_record);
        let s = open_vm();
        let e = s.view("v2", Some("top"), BTreeMap::new()).unwrap_err();
        assert_eq!(e.class(), ErrorClass::FailedPrecondition);
        let (id, _, _) = s.lost_layers().into_iter().next().unwrap();
        s.begin_rebuild(id).unwrap();
        let input = Box::new(std::io::Cursor::new(base_gz));
        differ::apply(&base_dir, &base_blob, input, &ApplyOptions::default()).unwrap();
        s.rebuilt(id).unwrap();
        assert!(!fsmeta.exists(), "fsmeta over the torn layer survived");
        let m = s.view("v2", Some("top"), BTreeMap::new()).unwrap();
        assert_eq!(m[0].source, fsmeta);
        assert_eq!(fs::read(&fsmeta).unwrap(), merged);
    }
}
