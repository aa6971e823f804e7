//! Our daemon's other modes and its Compare behind a real containerd,
//! with images pulled from a registry on loopback (see pull.rs):
//!
//! - `enable_tar_index`: every layer our differ writes is a tar index
//!   (512-byte blocks) that fsck.erofs accepts, and containers see the
//!   image's model through them;
//! - `--mode vm`: a container snapshot's mounts are the chain's fsmeta
//!   with every layer as a device plus an ext4 `rwlayer.img`, nothing is
//!   mounted on the host for it, the fsmeta mounted with its devices is
//!   the image's model, and QEMU reads the `merged.vmdk` beside it;
//! - Compare: a container's changes exported by our differ (`ctr
//!   snapshots diff`) become the top layer of a new image that, pushed and
//!   pulled again, shows exactly those changes.
//!
//! Needs what pull.rs needs, plus qemu-img and mkfs.ext4 for VM mode and
//! GNU tar.
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
#[path = "common/pulls.rs"]
mod pulls;
#[path = "common/registry.rs"]
mod registry;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::{Cluster, Mode, Options, SNAPSHOTTER, mounts_under};
use common::*;
use images::{Check, TestImage};
use oci::{Compression, ImageSpec, Layer, MEDIA_LAYER_GZIP};
use pulls::{Setup, applied, check_container, setup};
use snapshotter::durability;

/// The UUID of a layer image as hex: our differ makes it the first 16
/// bytes of the layer's diffID, so it says which layer an image holds.
fn layer_uuid(image: &erofs::reader::Image<fs::File>) -> String {
    hex::encode(image.superblock().uuid)
}

/// The UUIDs of the image's layer images, oldest first: the first 16
/// bytes of each diffID, as hex.
fn expected_uuids(image: &TestImage) -> Vec<String> {
    let diff_ids = image.built.diff_ids.iter();
    diff_ids
        .map(|d| d.trim_start_matches("sha256:")[..32].to_string())
        .collect()
}

fn open_layer(path: &Path) -> erofs::reader::Image<fs::File> {
    erofs::reader::Image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The whiteouts image pushed to `s`'s registry and pulled into the
/// namespace of a cluster started with `opts`.
fn pull_whiteouts(s: &Setup, opts: Options) -> (TestImage, String, Cluster) {
    let image = images::whiteouts(Compression::Gzip, &s.dir("image")).unwrap();
    let reference = s.push(&image);
    let ns = opts.namespace.clone();
    let c = s.cluster(opts);
    c.pull(&ns, &reference);
    (image, reference, c)
}

#[test]
fn tar_index_layers_pull_and_run() {
    let Some(s) = setup() else { return };
    let ns = "modes-tar-index";
    let opts = Options {
        daemon_config: Some("enable_tar_index = true\n".into()),
        ..Options::new(ns, Mode::Ours)
    };
    let (image, reference, c) = pull_whiteouts(&s, opts);
    let n = image.built.diff_ids.len();
    assert_eq!(applied(&c), n, "layers our differ applied");
    assert_eq!(apply_sources(&c), ["grpc"], "blobs read over content.v1");
    // Both fscks (fsck.erofs and ours) run on each in layer_images.
    let layers = c.layer_images();
    let mut uuids = BTreeSet::new();
    for l in &layers {
        let img = open_layer(l);
        assert_eq!(
            img.superblock().blkszbits,
            9,
            "{} is not a tar index (512-byte blocks)",
            l.display()
        );
        uuids.insert(layer_uuid(&img));
    }
    let want: BTreeSet<String> = expected_uuids(&image).into_iter().collect();
    assert_eq!(uuids, want, "one tar-index image per layer of the image");
    check_container(&c, ns, &reference, &image, "check");
}

/// Where our differ read each blob from (`source=` of its apply lines).
fn apply_sources(c: &Cluster) -> Vec<String> {
    c.daemon_log()
        .lines()
        .filter(|l| l.contains(" msg=apply "))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("source=")))
        .map(str::to_string)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// `content_dir`: blobs come straight from containerd's content
/// directory instead of over content.v1; the result is the same.
#[test]
fn content_dir_pull_and_run() {
    let Some(s) = setup() else { return };
    let ns = "modes-content-dir";
    // Where the cluster's containerd keeps its content
    // (scripts/containerd-config.sh: root = DIR/ctd-root).
    let store = s
        .dir(&format!("cluster-{:?}", Mode::Ours))
        .join("ctd-root/io.containerd.content.v1.content");
    let opts = Options {
        daemon_config: Some(format!("content_dir = {:?}\n", store.to_str().unwrap())),
        ..Options::new(ns, Mode::Ours)
    };
    let (image, reference, c) = pull_whiteouts(&s, opts);
    assert_eq!(applied(&c), image.built.diff_ids.len());
    assert_eq!(apply_sources(&c), ["content_dir"]);
    check_container(&c, ns, &reference, &image, "check");
}

/// One line of `ctr snapshots mounts`: `mount -t TYPE SOURCE TARGET -o
/// OPTIONS`.
#[derive(Debug)]
struct MountCommand {
    kind: String,
    source: PathBuf,
    target: String,
    options: Vec<String>,
}

fn parse_mount_commands(out: &str) -> Vec<MountCommand> {
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["mount", "-t", kind, source, target, "-o", options] => MountCommand {
                    kind: kind.to_string(),
                    source: source.into(),
                    target: target.to_string(),
                    options: options.split(',').map(str::to_string).collect(),
                },
                _ => panic!("unexpected line from ctr snapshots mounts: {l:?} in\n{out}"),
            }
        })
        .collect()
}

/// `n` bytes in whole 4 KiB blocks: what a VMDK flat extent covers.
fn blocks_4k(n: u64) -> u64 {
    n.div_ceil(4096) * 4096
}

/// `qemu-img info`'s virtual size of a disk, from its `virtual size: 32
/// KiB (32768 bytes)` line (in JSON the extents come first, with sizes
/// of their own).
fn qemu_virtual_size(disk: &Path) -> u64 {
    let out = run(Command::new("qemu-img").arg("info").arg(disk))
        .ok()
        .stdout;
    out.lines()
        .find_map(|l| {
            let bytes = l.strip_prefix("virtual size: ")?.split_once('(')?.1;
            bytes.strip_suffix(" bytes)")?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no virtual size in qemu-img info:\n{out}"))
}

/// A VM container snapshot over `image`'s chain: its mounts, nothing on
/// the host, the fsmeta with its devices is the image's model, the VMDK
/// covers fsmeta and layers, and removal takes its `rwlayer.img`.
fn check_vm_snapshot(c: &Cluster, image: &TestImage, mnt: &Path) {
    let snapshots = ["snapshots", "--snapshotter", SNAPSHOTTER];
    let top = image.built.chain_ids.last().unwrap();
    c.ctr(&[&snapshots[..], &["prepare", "vmtest", top]].concat());
    let out = c
        .ctr(&[&snapshots[..], &["mounts", "/x", "vmtest"]].concat())
        .stdout;
    let mounts = parse_mount_commands(&out);
    let [lower, rw] = mounts.as_slice() else {
        panic!(
            "{}: want an erofs and an ext4 mount, got\n{out}",
            image.name
        );
    };

    // The chain as one erofs mount: fsmeta in the top layer's directory,
    // every layer a device, oldest first (each image's UUID names its
    // layer's diffID).
    assert_eq!(
        (lower.kind.as_str(), lower.target.as_str()),
        ("erofs", "/x"),
        "{out}"
    );
    assert_eq!(lower.options[..2], ["ro", "loop"], "{out}");
    let devices: Vec<PathBuf> = lower.options[2..]
        .iter()
        .map(|o| {
            let d = o.strip_prefix("device=");
            PathBuf::from(d.unwrap_or_else(|| panic!("option {o} in\n{out}")))
        })
        .collect();
    let uuids: Vec<String> = devices.iter().map(|d| layer_uuid(&open_layer(d))).collect();
    assert_eq!(
        uuids,
        expected_uuids(image),
        "{}: the devices are not the layers",
        image.name
    );
    let snapshot_dirs = c.snap_root.join("snapshots");
    for d in &devices {
        assert_eq!(d.file_name().unwrap(), "layer.erofs", "{out}");
        assert_eq!(
            d.parent().unwrap().parent().unwrap(),
            snapshot_dirs,
            "{out}"
        );
    }
    let top_dir = devices.last().unwrap().parent().unwrap();
    assert_eq!(lower.source, top_dir.join("fsmeta.erofs"), "{out}");

    // The container's writable layer: a raw ext4 image for the VM.
    assert_eq!(
        (rw.kind.as_str(), rw.target.as_str(), &rw.options[..]),
        ("ext4", "/x", &["rw".to_string(), "loop".to_string()][..]),
        "{out}"
    );
    assert_eq!(rw.source.file_name().unwrap(), "rwlayer.img", "{out}");
    assert_eq!(
        rw.source.parent().unwrap().parent().unwrap(),
        snapshot_dirs,
        "{out}"
    );
    assert!(rw.source.is_file(), "{} missing", rw.source.display());
    let on_host = mounts_under(&c.snap_root);
    assert!(
        on_host.is_empty(),
        "mounted on the host for a VM container: {on_host:?}"
    );

    let merged = Mount::erofs_devices(&lower.source, &devices, mnt)
        .unwrap_or_else(|e| panic!("mounting {} with its devices: {e}", lower.source.display()));
    if let Some(d) = image.check.compare_tree(merged.path()).unwrap() {
        panic!("{}: the fsmeta shows the wrong tree: {d}", image.name);
    }
    drop(merged);

    let disk_bytes: u64 = std::iter::once(&lower.source)
        .chain(&devices)
        .map(|f| blocks_4k(fs::metadata(f).unwrap().len()))
        .sum();
    let vmdk = top_dir.join("merged.vmdk");
    assert_eq!(
        qemu_virtual_size(&vmdk),
        disk_bytes,
        "merged.vmdk's size is not fsmeta and the layers in 4 KiB blocks:\n{}",
        fs::read_to_string(&vmdk).unwrap()
    );
    let manifest = fs::read_to_string(top_dir.join("layers.manifest")).unwrap();
    let listed: Vec<PathBuf> = manifest.lines().map(PathBuf::from).collect();
    assert_eq!(listed, devices, "layers.manifest vs the device= options");

    // containerd removes the backend snapshot in its GC, asynchronously.
    c.ctr(&[&snapshots[..], &["rm", "vmtest"]].concat());
    let deadline = Instant::now() + Duration::from_secs(30);
    while rw.source.exists() {
        assert!(
            Instant::now() < deadline,
            "{} outlived its snapshot by 30 s",
            rw.source.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn vm_mode_container_snapshots() {
    if !require(&["qemu-img", "mkfs.ext4"]) {
        return;
    }
    let Some(s) = setup() else { return };
    let ns = "modes-vm";
    let c = s.cluster(Options {
        daemon_args: vec!["--mode".into(), "vm".into()],
        ..Options::new(ns, Mode::Ours)
    });
    let many = images::many(&s.dir("many")).unwrap();
    assert!(many.built.chain_ids.len() >= 40);
    let whiteouts = images::whiteouts(Compression::Gzip, &s.dir("whiteouts")).unwrap();
    for image in [many, whiteouts] {
        let reference = s.push(&image);
        c.pull(ns, &reference);
        check_vm_snapshot(&c, &image, &s.dir(&format!("mnt-{}", image.name)));
    }
}

/// What the Compare test's container changes, in the whiteouts image:
/// a file of layer 2 modified, one of layer 1 deleted, a new directory
/// with a file, and a directory's contents replaced (which makes it
/// opaque in the overlay upper). busybox has no applet links for rm and
/// mkdir in that image.
const CHANGES: &str = "set -e
echo 'changed by the container' > /etc/motd
busybox rm /var/kept
busybox mkdir /srv/made
echo made > /srv/made/file
busybox rm -rf /opt/old
busybox mkdir /opt/old
echo x > /opt/old/new
";

/// The whiteouts image's model after [`CHANGES`].
fn changed_model(model: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut m = model.clone();
    let sum = |s: &str| sha256_bytes(s.as_bytes());
    m.insert("/etc/motd".into(), sum("changed by the container\n"));
    assert!(
        m.remove("/var/kept").is_some(),
        "/var/kept not in the model"
    );
    m.insert("/srv/made".into(), "d".into());
    m.insert("/srv/made/file".into(), sum("made\n"));
    m.retain(|p, _| !p.starts_with("/opt/old/"));
    m.insert("/opt/old/new".into(), sum("x\n"));
    m
}

/// Entries of a layer blob as GNU tar lists them, without `./` or a
/// trailing `/`, below the top-level directories `roots` only (runc adds
/// mount points such as /proc to every container's upper).
fn tar_entries(blob: &Path, roots: &[String]) -> BTreeSet<String> {
    let listing = run(Command::new("tar").arg("-tzvf").arg(blob)).ok().stdout;
    listing
        .lines()
        .map(|l| {
            let name = l.split_whitespace().nth(5);
            let name = name.unwrap_or_else(|| panic!("tar -tv line {l:?}"));
            name.trim_start_matches("./")
                .trim_end_matches('/')
                .to_string()
        })
        .filter(|n| {
            roots
                .iter()
                .any(|r| n == &r[1..] || n.starts_with(&format!("{}/", &r[1..])))
        })
        .collect()
}

#[test]
fn compare_layer_becomes_an_image() {
    let Some(s) = setup() else { return };
    let ns = "modes-compare";
    let (image, reference, c) = pull_whiteouts(&s, Options::new(ns, Mode::Ours));
    c.run_with(ns, &[], &reference, "changer", &["/bin/sh", "-c", CHANGES])
        .ok();

    // Our differ (not the walking one) exports the container's upper.
    let blob = s.dir("changes.tar.gz");
    let snapshots = ["snapshots", "--snapshotter", SNAPSHOTTER];
    c.ctr_to(
        &[&snapshots[..], &["diff", "--keep", "changer"]].concat(),
        &blob,
    );
    let log = c.daemon_log();
    let compared = log
        .lines()
        .find(|l| l.contains(" msg=compare "))
        .unwrap_or_else(|| panic!("our differ logged no compare:\n{log}"));
    let digest = oci::sha256_file(&blob).unwrap();
    let mut gunzip = flate2::read::MultiGzDecoder::new(fs::File::open(&blob).unwrap());
    let diff_id = format!("sha256:{}", sha256_reader(&mut gunzip).unwrap());
    for field in [format!(" digest={digest} "), format!(" diff_id={diff_id} ")] {
        assert!(compared.contains(&field), "{field} not in {compared}");
    }
    let want: BTreeSet<String> = [
        "etc",
        "etc/motd",
        "var",
        "var/.wh.kept",
        "srv",
        "srv/made",
        "srv/made/file",
        "opt",
        "opt/old",
        "opt/old/.wh..wh..opq",
        "opt/old/new",
    ]
    .map(String::from)
    .into();
    assert_eq!(tar_entries(&blob, &image.check.list), want, "the layer");

    // The image plus that layer, through the registry into a namespace
    // that has never seen it.
    let mut layers: Vec<Layer> =
        oci::layout_layers(&image.layout, &image.built, MEDIA_LAYER_GZIP).unwrap();
    layers.push(Layer::prebuilt(&blob, MEDIA_LAYER_GZIP, &diff_id).unwrap());
    let name = "whiteouts-changed";
    let layout = s.dir("changed-layout");
    let spec = ImageSpec::new(&format!("localhost/{name}:1"), &["/bin/sh"]);
    let changed = TestImage {
        name: name.into(),
        built: oci::write_layout(&spec, &layers, &layout).unwrap(),
        layout,
        check: Check {
            list: image.check.list.clone(),
            sum: image.check.sum.clone(),
            expected: changed_model(&image.check.expected),
        },
    };
    let changed_ref = s.push(&changed);
    let fresh = "modes-compare-fresh";
    c.pull(fresh, &changed_ref);
    assert_eq!(
        applied(&c),
        layers.len(),
        "applies: the image's layers once, then only the new one"
    );
    check_container(&c, fresh, &changed_ref, &changed, "check");
}

/// For each layer image under our root, the index of the image layer it
/// holds (by its UUID, the diffID's first 16 bytes).
fn layer_dirs(root: &Path, image: &TestImage) -> Vec<(PathBuf, usize)> {
    let uuids = expected_uuids(image);
    let mut dirs = Vec::new();
    for e in fs::read_dir(root.join("snapshots")).unwrap() {
        let dir = e.unwrap().path();
        let blob = dir.join("layer.erofs");
        if blob.exists() {
            let uuid = layer_uuid(&open_layer(&blob));
            let i = uuids.iter().position(|u| *u == uuid).unwrap();
            dirs.push((dir, i));
        }
    }
    assert_eq!(dirs.len(), uuids.len(), "one image per layer");
    dirs
}

fn pending_record(dir: &Path) -> Option<String> {
    let mut buf = [0u8; 4096];
    rustix::fs::getxattr(dir, durability::PENDING, &mut buf[..])
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// What a power cut right after the pull leaves for the next boot: each
/// image with a record of its blob from another boot, and cut short.
fn simulate_crash(root: &Path, image: &TestImage, namespace: &str) {
    for (dir, i) in layer_dirs(root, image) {
        let record = durability::Record {
            boot_id: "00000000-0000-0000-0000-000000000000".into(),
            namespace: namespace.into(),
            digest: image.built.layers[i].clone(),
            media_type: MEDIA_LAYER_GZIP.into(),
            size: 0,
            diff_id: image.built.diff_ids[i].clone(),
            tar_index: false,
            failure: None,
        };
        rustix::fs::setxattr(
            &dir,
            durability::PENDING,
            record.to_text().as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let blob = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("layer.erofs"))
            .unwrap();
        blob.set_len(4096).unwrap();
    }
}

fn wait_for_log(c: &Cluster, what: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while c.daemon_log().matches(what).count() < n {
        assert!(
            Instant::now() < deadline,
            "never saw {n} × {what:?} in\n{}",
            c.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `layer_sync = "deferred"` (the default): a clean stop leaves every
/// image on disk; after a crash the images that may be torn are rebuilt
/// from their blobs (over content.v1, in the namespace that pulled them)
/// to the same bytes, and one whose blob is gone makes `ctr run` fail
/// with an error that names it.
#[test]
fn layers_torn_by_a_crash_are_rebuilt_from_their_blobs() {
    let Some(s) = setup() else { return };
    let ns = "modes-crash";
    let (image, reference, mut c) = pull_whiteouts(&s, Options::new(ns, Mode::Ours));
    let n = image.built.diff_ids.len();
    let log = c.daemon_log();
    let applies: Vec<&str> = log.lines().filter(|l| l.contains(" msg=apply ")).collect();
    assert_eq!(applies.len(), n);
    assert!(
        applies.iter().all(|l| l.contains(" deferred=true ")),
        "Apply waited for the disk:\n{log}"
    );
    let mut before = BTreeMap::new();
    c.restart_daemon(|root| {
        for (dir, i) in layer_dirs(root, &image) {
            assert_eq!(
                pending_record(&dir),
                None,
                "a clean stop left {dir:?} pending"
            );
            before.insert(i, fs::read(dir.join("layer.erofs")).unwrap());
        }
        simulate_crash(root, &image, ns);
    });
    wait_for_log(&c, "msg=\"layer rebuilt\"", n);
    assert!(
        !c.daemon_log().contains("rebuild failed"),
        "{}",
        c.daemon_log()
    );
    for (dir, i) in layer_dirs(&c.snap_root, &image) {
        assert_eq!(
            fs::read(dir.join("layer.erofs")).unwrap(),
            before[&i],
            "layer {i} came back different"
        );
        assert!(!dir.join(durability::LOST).exists());
    }
    check_container(&c, ns, &reference, &image, "after-rebuild");

    // Again, with the top layer's blob gone from containerd's store.
    let top = image.built.layers[n - 1].clone();
    c.ctr_in(ns, &["content", "rm", &top]).ok();
    c.restart_daemon(|root| simulate_crash(root, &image, ns));
    wait_for_log(&c, "msg=\"layer rebuilt\"", 2 * n - 1);
    wait_for_log(&c, "msg=\"layer rebuild failed\"", 1);
    let r = c.run_in(ns, &reference, "torn", &["true"]);
    assert!(!r.success(), "a container ran on a torn layer");
    assert!(
        r.stderr.contains("could not be rebuilt") && r.stderr.contains(&top),
        "{}",
        r.stderr
    );
}
