//! VM mode: containers get raw files (fsmeta with `device=` options, an
//! ext4 writable layer) and nothing is mounted on the host; extraction
//! snapshots keep the host shape. Checked by mounting what the mounts name
//! with the kernel, as a VM runtime's guest would. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Scratch, mounts_under, root_or_skip};
use snapshotter::config::Mode;
use snapshotter::mounts::MountSpec;
use snapshotter::snapshotter::{Config, Snapshotter, TARGET_LABEL};

fn open(root: &Path) -> Snapshotter {
    Snapshotter::open(Config {
        root: root.to_path_buf(),
        mode: Mode::Vm,
        ..Config::default()
    })
    .unwrap()
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = sys::unmount(&self.0, true);
    }
}

fn mount_erofs(spec: &MountSpec, target: &Path) -> Mounted {
    assert_eq!(spec.kind, "erofs");
    fs::create_dir_all(target).unwrap();
    let devices: Vec<PathBuf> = spec
        .options
        .iter()
        .filter_map(|o| o.strip_prefix("device="))
        .map(PathBuf::from)
        .collect();
    sys::mount_erofs(
        &spec.source,
        target,
        &sys::ErofsOptions {
            devices,
            ..Default::default()
        },
    )
    .unwrap();
    Mounted(target.to_path_buf())
}

fn whiteout(path: &Path) {
    let st = Command::new("mknod")
        .arg(path)
        .args(["c", "0", "0"])
        .status()
        .unwrap();
    assert!(st.success());
}

fn opaque(dir: &Path) {
    let st = Command::new("setfattr")
        .args(["-n", "trusted.overlay.opaque", "-v", "y"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
}

/// An extraction snapshot filled through its (host) bind mount source,
/// as a fallback differ would, then committed.
fn layer(s: &Snapshotter, n: u32, parent: Option<&str>, fill: impl FnOnce(&Path)) -> String {
    let key = format!("default/{n}/extract-{n} sha256:{n}");
    let name = format!("layer{n}");
    let labels = BTreeMap::from([(TARGET_LABEL.to_string(), name.clone())]);
    let m = s.prepare(&key, parent, labels.clone()).unwrap();
    let upper = if parent.is_none() {
        assert_eq!(m[0].kind, "bind", "{m:?}");
        m[0].source.clone()
    } else {
        // Host overlay: fill the upper directly.
        assert_eq!(m[0].kind, "overlay", "{m:?}");
        let up = m[0]
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .unwrap();
        PathBuf::from(up)
    };
    fill(&upper);
    s.commit(&key, &name, labels, None).unwrap();
    name
}

fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel, "dir".into());
                stack.push(p);
            } else if ft.is_symlink() {
                out.insert(rel, format!("-> {}", fs::read_link(&p).unwrap().display()));
            } else {
                out.insert(rel, fs::read_to_string(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn vm_mode_mounts_fsmeta_and_commits_the_ext4_upper() {
    if !root_or_skip() {
        return;
    }
    let tmp = Scratch::new();
    let root = tmp.path().join("root");
    let s = open(&root);

    let l1 = layer(&s, 1, None, |d| {
        fs::create_dir_all(d.join("a")).unwrap();
        fs::write(d.join("a/x"), "x1").unwrap();
        fs::create_dir_all(d.join("d")).unwrap();
        fs::write(d.join("d/old"), "old").unwrap();
        fs::create_dir_all(d.join("rd")).unwrap();
        fs::write(d.join("rd/x"), "rx").unwrap();
        std::os::unix::fs::symlink("a/x", d.join("link")).unwrap();
    });
    // The extraction snapshots above L1 mount their parents on the host;
    // those mounts go when the first container is made.
    let l2 = layer(&s, 2, Some(&l1), |d| {
        fs::create_dir_all(d.join("a")).unwrap();
        whiteout(&d.join("a/x"));
        fs::create_dir_all(d.join("d")).unwrap();
        opaque(&d.join("d"));
        fs::write(d.join("d/new"), "new").unwrap();
        whiteout(&d.join("rd"));
        fs::remove_file(d.join("link")).ok();
        std::os::unix::fs::symlink("d/new", d.join("link")).unwrap();
    });
    let l3 = layer(&s, 3, Some(&l2), |d| {
        fs::create_dir_all(d.join("rd")).unwrap();
        fs::write(d.join("rd/y"), "ry").unwrap();
    });

    // A container: fsmeta over the chain (devices oldest first), then the
    // ext4 writable layer. Nothing mounted on the host.
    let m = s
        .prepare("default/9/ctr", Some(&l3), BTreeMap::new())
        .unwrap();
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0].source, root.join("snapshots/3/fsmeta.erofs"));
    let devices: Vec<&str> = m[0]
        .options
        .iter()
        .filter_map(|o| o.strip_prefix("device="))
        .collect();
    let blobs: Vec<String> = (1..=3)
        .map(|i| format!("{}/snapshots/{i}/layer.erofs", root.display()))
        .collect();
    assert_eq!(devices, blobs);
    assert_eq!(m[0].options[..2], ["ro".to_string(), "loop".to_string()]);
    assert_eq!(m[1].kind, "ext4");
    assert_eq!(m[1].options, ["rw", "loop"]);
    assert_eq!(fs::metadata(&m[1].source).unwrap().len(), 64 << 20);
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
    let manifest = fs::read_to_string(root.join("snapshots/3/layers.manifest")).unwrap();
    assert_eq!(manifest.lines().collect::<Vec<_>>(), blobs);
    let vmdk = fs::read_to_string(root.join("snapshots/3/merged.vmdk")).unwrap();
    assert!(vmdk.contains("createType=\"twoGbMaxExtentFlat\""), "{vmdk}");
    assert_eq!(vmdk.matches(" FLAT ").count(), 4, "{vmdk}");

    // The merged view equals overlay semantics over the three layers.
    let mnt = tmp.path().join("merged");
    let merged = mount_erofs(&m[0], &mnt);
    let got = tree(&mnt);
    drop(merged);
    let want: BTreeMap<String, String> = [
        ("a", "dir"),
        ("d", "dir"),
        ("d/new", "new"),
        ("rd", "dir"),
        ("rd/y", "ry"),
        ("link", "-> d/new"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, want);

    // Mounts never change shape: the same fsmeta, untouched, for the next
    // container and for Mounts.
    let before = fs::metadata(root.join("snapshots/3/fsmeta.erofs")).unwrap();
    let m2 = s
        .prepare("default/10/ctr2", Some(&l3), BTreeMap::new())
        .unwrap();
    assert_eq!(m2[0], m[0]);
    assert_eq!(s.mounts("default/9/ctr").unwrap(), m);
    let after = fs::metadata(root.join("snapshots/3/fsmeta.erofs")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&before),
        std::os::unix::fs::MetadataExt::ino(&after)
    );
    s.remove("default/10/ctr2").unwrap();

    // A view of one layer is that layer.
    let v = s.view("default/11/v", Some(&l1), BTreeMap::new()).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].kind, "erofs");
    assert_eq!(v[0].source, root.join("snapshots/1/layer.erofs"));
    s.remove("default/11/v").unwrap();

    // The guest writes upper/ inside the ext4 image; Commit converts it.
    let rw = tmp.path().join("guest");
    fs::create_dir_all(&rw).unwrap();
    sys::mount_ext4_image(&m[1].source, &rw).unwrap();
    let guest = Mounted(rw.clone());
    fs::create_dir_all(rw.join("upper/d")).unwrap();
    fs::create_dir_all(rw.join("work")).unwrap();
    fs::write(rw.join("upper/d/new"), "changed").unwrap();
    whiteout(&rw.join("upper/rd"));
    fs::set_permissions(rw.join("upper"), fs::Permissions::from_mode(0o755)).unwrap();
    drop(guest);

    // Compare reads that upper: the ext4 image is mounted for the export
    // only, and the parent view's fsmeta devices name exactly the chain.
    let left = s.view("default/13/p", Some(&l3), BTreeMap::new()).unwrap();
    let upper = s.compare_upper(&left, &m).unwrap().expect("ours");
    assert_eq!(
        fs::read_to_string(upper.path.join("d/new")).unwrap(),
        "changed"
    );
    drop(upper);
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
    // A left side that is not exactly the parents: not ours to answer.
    let one = s.view("default/14/p", Some(&l1), BTreeMap::new()).unwrap();
    assert!(s.compare_upper(&one, &m).unwrap().is_none());
    s.remove("default/13/p").unwrap();
    s.remove("default/14/p").unwrap();

    s.commit("default/9/ctr", "committed", BTreeMap::new(), None)
        .unwrap();
    assert!(!root.join("snapshots/4/rwlayer.img").exists());
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
    let v = s
        .view("default/12/v", Some("committed"), BTreeMap::new())
        .unwrap();
    let mnt = tmp.path().join("v");
    let merged = mount_erofs(&v[0], &mnt);
    let got = tree(&mnt);
    drop(merged);
    assert_eq!(got.get("d/new").map(String::as_str), Some("changed"));
    assert!(!got.contains_key("rd"), "{got:?}");
    assert_eq!(got.get("link").map(String::as_str), Some("-> d/new"));
    s.remove("default/12/v").unwrap();
}

#[test]
fn vm_mode_falls_back_to_per_layer_mounts_for_unmergeable_chains() {
    if !root_or_skip() {
        return;
    }
    let tmp = Scratch::new();
    let root = tmp.path().join("root");
    let s = open(&root);
    let l1 = layer(&s, 1, None, |d| fs::write(d.join("f"), "one").unwrap());
    let l2 = layer(&s, 2, Some(&l1), |d| fs::write(d.join("g"), "two").unwrap());
    // Replace layer 2 by an image with inline file data, which fsmeta
    // cannot point into.
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("g"), "two").unwrap();
    let blob = root.join("snapshots/2/layer.erofs");
    let out = fs::File::create(&blob).unwrap();
    let mut w = erofs::writer::ImageWriter::new(
        out,
        erofs::writer::WriterOptions {
            inline_data: true,
            ..Default::default()
        },
    )
    .unwrap();
    let (t, _) = layer::dir::read_dir_tree(&src, &mut w).unwrap();
    w.finish(&t).unwrap();

    let m = s.view("default/3/v", Some(&l2), BTreeMap::new()).unwrap();
    // Newest first, as overlay stacks them; the same every time.
    let sources: Vec<PathBuf> = m.iter().map(|m| m.source.clone()).collect();
    assert_eq!(
        sources,
        [blob.clone(), root.join("snapshots/1/layer.erofs")]
    );
    assert!(root.join("snapshots/2/fsmeta.refused").exists());
    assert!(!root.join("snapshots/2/fsmeta.erofs").exists());
    assert_eq!(s.mounts("default/3/v").unwrap(), m);
}

#[test]
fn vm_mode_refuses_to_commit_a_layer_a_vm_holds() {
    if !root_or_skip() {
        return;
    }
    let tmp = Scratch::new();
    let root = tmp.path().join("root");
    let s = open(&root);
    let l1 = layer(&s, 1, None, |d| fs::write(d.join("f"), "one").unwrap());
    let m = s
        .prepare("default/2/ctr", Some(&l1), BTreeMap::new())
        .unwrap();
    let image = m.last().unwrap().source.clone();
    // Another process holding a lock on the image, as QEMU does on the
    // disks of a running VM.
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import fcntl, sys, time\n\
             f = open(sys.argv[1], 'r+b')\n\
             fcntl.lockf(f, fcntl.LOCK_EX)\n\
             print('locked', flush=True)\n\
             time.sleep(120)",
        ])
        .arg(&image)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let err = s
        .commit("default/2/ctr", "c", BTreeMap::new(), None)
        .unwrap_err();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(
        err.class(),
        snapshotter::snapshotter::ErrorClass::FailedPrecondition
    );
    assert!(err.to_string().contains("rwlayer.img"), "{err}");
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
    // Once the VM is gone the commit goes through.
    s.commit("default/2/ctr", "c", BTreeMap::new(), None)
        .unwrap();
}
