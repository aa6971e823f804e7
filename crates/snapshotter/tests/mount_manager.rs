//! `mount_mode = "mount-manager"`: the daemon mounts nothing and returns
//! `erofs` mounts plus a `format/mkdir/overlay` template. This test plays
//! containerd 2.2's mount manager: it performs the erofs mounts, expands
//! the `{{ mount N }}` / `{{ overlay A B }}` templates and mounts the
//! overlay, and checks the result. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use snapshotter::config::MountMode;
use snapshotter::mounts::{MountSpec, expand_template};
use snapshotter::snapshotter::{Config, Snapshotter};

struct Unmount(Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = Command::new("umount").arg(p).status();
        }
    }
}

fn mount(kind: &str, source: &Path, options: &[String], target: &Path) {
    fs::create_dir_all(target).unwrap();
    let st = Command::new("mount")
        .args(["-t", kind, "-o", &options.join(",")])
        .arg(source)
        .arg(target)
        .status()
        .unwrap();
    assert!(st.success(), "mount -t {kind} {source:?} {options:?}");
}

/// Perform `specs` the way the mount manager does; returns the final
/// mount point.
fn activate(specs: &[MountSpec], dir: &Path, guard: &mut Unmount) -> PathBuf {
    let mut points: Vec<PathBuf> = Vec::new();
    for (i, m) in specs.iter().enumerate() {
        let target = dir.join(i.to_string());
        match m.kind.as_str() {
            "erofs" => mount("erofs", &m.source, &m.options, &target),
            "bind" => {
                fs::create_dir_all(&target).unwrap();
                let st = Command::new("mount")
                    .arg("--bind")
                    .arg(&m.source)
                    .arg(&target)
                    .status()
                    .unwrap();
                assert!(st.success());
            }
            "format/mkdir/overlay" => {
                let options: Vec<String> = m
                    .options
                    .iter()
                    .map(|o| expand_template(o, &points).unwrap_or_else(|| panic!("{o}")))
                    .collect();
                mount("overlay", Path::new("overlay"), &options, &target);
            }
            other => panic!("unexpected mount type {other}"),
        }
        guard.0.push(target.clone());
        points.push(target);
    }
    points.pop().unwrap()
}

#[test]
fn mount_manager_specs_mount_to_the_right_tree() {
    if !rustix::process::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "needs root on CI");
        eprintln!("SKIPPED: needs root");
        return;
    }
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = tmp.path().join("root");
    let s = Snapshotter::open(Config {
        root: root.clone(),
        mount_mode: MountMode::MountManager,
        ..Config::default()
    })
    .unwrap();
    let mut guard = Unmount(Vec::new());

    let m = s.prepare("a", None, BTreeMap::new()).unwrap();
    assert_eq!(m[0].kind, "bind");
    fs::write(m[0].source.join("one"), "1\n").unwrap();
    s.commit("a", "l1", BTreeMap::new()).unwrap();

    let m = s.prepare("b", Some("l1"), BTreeMap::new()).unwrap();
    assert_eq!(m[0].kind, "erofs");
    assert_eq!(m[1].kind, "format/mkdir/overlay");
    let top = activate(&m, &tmp.path().join("b"), &mut guard);
    assert_eq!(fs::read_to_string(top.join("one")).unwrap(), "1\n");
    fs::write(top.join("two"), "2\n").unwrap();
    fs::remove_file(top.join("one")).unwrap();
    drop(guard);
    guard = Unmount(Vec::new());
    s.commit("b", "l2", BTreeMap::new()).unwrap();

    // The daemon itself mounted nothing.
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!info.contains(root.to_str().unwrap()));

    let v = s.view("v", Some("l2"), BTreeMap::new()).unwrap();
    assert_eq!(v.len(), 3);
    let top = activate(&v, &tmp.path().join("v"), &mut guard);
    assert!(!top.join("one").exists());
    assert_eq!(fs::read_to_string(top.join("two")).unwrap(), "2\n");
    drop(guard);
    for k in ["v", "l2", "l1"] {
        s.remove(k).unwrap();
    }
}
