//! `mount_mode = "mount-manager"`: the daemon mounts nothing and returns
//! `erofs` mounts plus `format/mkdir/overlay` templates (and, with
//! `default_size`, a `mkfs/ext4` image). These tests play containerd 2.2's
//! mount manager: they format and mount the image, perform the erofs
//! mounts, make the `X-containerd.mkdir.path` directories, expand the
//! `{{ mount N }}` / `{{ overlay A B }}` templates and mount the overlay,
//! and check the result. Needs root.
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
        let expand = |o: &str| expand_template(o, &points).unwrap_or_else(|| panic!("{o}"));
        // `X-containerd.*` options are the manager's own instructions: the
        // kernel never sees them.
        let mut options = Vec::new();
        for o in &m.options {
            let o = expand(o);
            if let Some(spec) = o.strip_prefix("X-containerd.mkdir.path=") {
                let (path, mode) = spec.rsplit_once(':').unwrap();
                fs::create_dir_all(path).unwrap();
                let mode = u32::from_str_radix(mode, 8).unwrap();
                let perms = <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(mode);
                fs::set_permissions(path, perms).unwrap();
            } else if !o.starts_with("X-containerd.") {
                options.push(o);
            }
        }
        let source = PathBuf::from(expand(m.source.to_str().unwrap()));
        match m.kind.as_str() {
            "erofs" => mount("erofs", &source, &options, &target),
            "mkfs/ext4" => {
                // Formatted on first use, at the size the snapshot asked.
                if !source.exists() {
                    let size: u64 = m
                        .options
                        .iter()
                        .find_map(|o| o.strip_prefix("X-containerd.mkfs.size="))
                        .unwrap()
                        .parse()
                        .unwrap();
                    fs::File::create(&source).unwrap().set_len(size).unwrap();
                    let st = Command::new("mkfs.ext4")
                        .args(["-q", "-F", "-m", "0"])
                        .arg(&source)
                        .status()
                        .unwrap();
                    assert!(st.success());
                }
                mount("ext4", &source, &options, &target);
            }
            "bind" | "format/mkdir/bind" => {
                fs::create_dir_all(&target).unwrap();
                let st = Command::new("mount")
                    .arg("--bind")
                    .arg(&source)
                    .arg(&target)
                    .status()
                    .unwrap();
                assert!(st.success());
            }
            "format/mkdir/overlay" => mount("overlay", Path::new("overlay"), &options, &target),
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
    s.commit("a", "l1", BTreeMap::new(), None).unwrap();

    let m = s.prepare("b", Some("l1"), BTreeMap::new()).unwrap();
    assert_eq!(m[0].kind, "erofs");
    assert_eq!(m[1].kind, "format/mkdir/overlay");
    let top = activate(&m, &tmp.path().join("b"), &mut guard);
    assert_eq!(fs::read_to_string(top.join("one")).unwrap(), "1\n");
    fs::write(top.join("two"), "2\n").unwrap();
    fs::remove_file(top.join("one")).unwrap();
    drop(guard);
    guard = Unmount(Vec::new());
    s.commit("b", "l2", BTreeMap::new(), None).unwrap();

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

/// Block mode under the mount manager (containerd.md section 2.3): the
/// manager formats `rwlayer.img` at the promised size on first use; writes
/// beyond it fail; Commit reads the upper out of that image.
#[test]
fn mount_manager_block_mode_is_a_quota_and_commits() {
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
        default_size: 16 << 20,
        ..Config::default()
    })
    .unwrap();
    let mut guard = Unmount(Vec::new());
    let m = s.prepare("a", None, BTreeMap::new()).unwrap();
    assert_eq!(m[0].kind, "mkfs/ext4");
    let top = activate(&m, &tmp.path().join("a"), &mut guard);
    fs::write(top.join("base"), "b\n").unwrap();
    drop(guard);
    s.commit("a", "l1", BTreeMap::new(), None).unwrap();
    assert!(!root.join("snapshots/1/rwlayer.img").exists());

    let mut guard = Unmount(Vec::new());
    let m = s.prepare("b", Some("l1"), BTreeMap::new()).unwrap();
    assert_eq!(m.len(), 3);
    let top = activate(&m, &tmp.path().join("b"), &mut guard);
    assert_eq!(fs::read_to_string(top.join("base")).unwrap(), "b\n");
    let mut f = fs::File::create(top.join("big")).unwrap();
    let chunk = vec![3u8; 1 << 20];
    let err = (0..32)
        .try_for_each(|_| std::io::Write::write_all(&mut f, &chunk))
        .and_then(|()| f.sync_all())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(sys::Errno::NOSPC.raw_os_error()));
    drop(f);
    fs::remove_file(top.join("big")).unwrap();
    fs::write(top.join("child"), "c\n").unwrap();
    drop(guard);
    s.commit("b", "l2", BTreeMap::new(), None).unwrap();

    let mut guard = Unmount(Vec::new());
    let v = s.view("v", Some("l2"), BTreeMap::new()).unwrap();
    let top = activate(&v, &tmp.path().join("v"), &mut guard);
    assert_eq!(fs::read_to_string(top.join("child")).unwrap(), "c\n");
    assert_eq!(fs::read_to_string(top.join("base")).unwrap(), "b\n");
    drop(guard);
    for k in ["v", "l2", "l1"] {
        s.remove(k).unwrap();
    }
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info.contains(root.to_str().unwrap()),
        "leftover mounts under the root"
    );
}
