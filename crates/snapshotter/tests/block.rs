//! `default_size`: each active snapshot's changes live in an ext4 image of
//! that size, so a container cannot write more (ENOSPC), and Commit turns
//! what it wrote into an EROFS layer like any other upper. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::{Scratch, mounts_under, root_or_skip};
use snapshotter::snapshotter::{Config, Snapshotter};

/// Mount an overlay spec with mount(8); unmounted on drop.
struct Mounted(std::path::PathBuf);

impl Mounted {
    fn overlay(options: &[String], target: &Path) -> Mounted {
        fs::create_dir_all(target).unwrap();
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options.join(",")])
            .arg(target)
            .status()
            .unwrap();
        assert!(st.success());
        Mounted(target.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn fill(dir: &Path, mib: usize) -> std::io::Result<()> {
    let mut f = fs::File::create(dir.join("big"))?;
    let chunk = vec![1u8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

#[test]
fn default_size_is_a_quota_and_commits_to_erofs() {
    if !root_or_skip() {
        return;
    }
    let tmp = Scratch::new();
    let root = tmp.path().join("root");
    let s = Snapshotter::open(Config {
        root: root.clone(),
        default_size: 16 << 20,
        ..Config::default()
    })
    .unwrap();

    // No parent: the bind source is the upper inside the ext4 image.
    let m = s.prepare("a", None, BTreeMap::new()).unwrap();
    assert_eq!(m[0].kind, "bind");
    let upper = m[0].source.clone();
    assert!(upper.ends_with("rw/upper"), "{upper:?}");
    fs::write(upper.join("hello"), "world\n").unwrap();
    let err = fill(&upper, 32).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(sys::Errno::NOSPC.raw_os_error()));
    fs::remove_file(upper.join("big")).unwrap();
    s.commit("a", "base", BTreeMap::new(), None).unwrap();
    assert!(!root.join("snapshots/1/rwlayer.img").exists());

    // With a parent: overlay whose upperdir is in the image.
    let m = s.prepare("b", Some("base"), BTreeMap::new()).unwrap();
    {
        let g = Mounted::overlay(&m[0].options, &tmp.path().join("ovl"));
        assert_eq!(fs::read_to_string(g.0.join("hello")).unwrap(), "world\n");
        let err = fill(&g.0, 32).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(sys::Errno::NOSPC.raw_os_error()));
        fs::remove_file(g.0.join("big")).unwrap();
        fs::remove_file(g.0.join("hello")).unwrap();
        fs::write(g.0.join("new"), "n\n").unwrap();
    }
    let usage = s.usage("b").unwrap();
    assert!(usage.inodes >= 3, "{usage:?}");
    s.commit("b", "top", BTreeMap::new(), None).unwrap();

    // The committed layer holds the change and the whiteout.
    let v = s.view("v", Some("top"), BTreeMap::new()).unwrap();
    {
        let g = Mounted::overlay(&v[0].options, &tmp.path().join("view"));
        assert!(!g.0.join("hello").exists());
        assert_eq!(fs::read_to_string(g.0.join("new")).unwrap(), "n\n");
    }
    for k in ["v", "top", "base"] {
        s.remove(k).unwrap();
    }
    s.cleanup().unwrap();
    assert_eq!(mounts_under(&root).len(), 0);
}

/// `set_immutable`: the committed image cannot be changed or deleted,
/// yet Remove still reclaims it (the flag is cleared first).
#[test]
fn set_immutable_protects_committed_layers() {
    if !root_or_skip() {
        return;
    }
    let tmp = Scratch::new();
    let root = tmp.path().join("root");
    let s = Snapshotter::open(Config {
        root: root.clone(),
        set_immutable: true,
        ..Config::default()
    })
    .unwrap();
    let m = s.prepare("a", None, BTreeMap::new()).unwrap();
    fs::write(m[0].source.join("f"), "x").unwrap();
    s.commit("a", "base", BTreeMap::new(), None).unwrap();
    let blob = root.join("snapshots/1/layer.erofs");
    assert!(sys::flags::is_immutable(&blob).unwrap());
    assert!(fs::OpenOptions::new().append(true).open(&blob).is_err());
    assert!(fs::remove_file(&blob).is_err());
    s.remove("base").unwrap();
    s.cleanup().unwrap();
    assert!(!blob.exists());
    assert_eq!(fs::read_dir(root.join("trash")).unwrap().count(), 0);
}

/// A child's upper root takes the owner of the parent layer's root, read
/// from the layer image, in both mount modes (the self-mount path used to
/// be the only one that did).
#[test]
fn upper_root_inherits_the_parent_layer_owner_in_both_modes() {
    if !root_or_skip() {
        return;
    }
    for mode in [
        snapshotter::config::MountMode::SelfMount,
        snapshotter::config::MountMode::MountManager,
    ] {
        let tmp = Scratch::new();
        let root = tmp.path().join("root");
        let s = Snapshotter::open(Config {
            root: root.clone(),
            mount_mode: mode,
            ..Config::default()
        })
        .unwrap();
        let m = s.prepare("a", None, BTreeMap::new()).unwrap();
        std::os::unix::fs::chown(&m[0].source, Some(1000), Some(1000)).unwrap();
        s.commit("a", "base", BTreeMap::new(), None).unwrap();
        s.prepare("b", Some("base"), BTreeMap::new()).unwrap();
        let md = fs::metadata(root.join("snapshots/2/fs")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((md.uid(), md.gid()), (1000, 1000), "{mode:?}");
        for k in ["b", "base"] {
            s.remove(k).unwrap();
        }
    }
}
