//! Pulls from a registry on loopback (`docker-registry`, images pushed
//! with `skopeo`) through containerd's transfer service, unpacked by our
//! snapshotter and differ (`unpack_config`), then run with runc: every
//! path and file hash a container sees must match the image's model
//! (`common/images.rs`), the committed snapshots must form the image's
//! chain, and each layer must be one `layer.erofs` in our root.
//!
//! `EROFS_PULL_MODE` = `ours` (default), `ours-walking`, `overlayfs` or
//! `erofs` runs the same tests with another snapshotter and differ (the
//! last two are containerd's own, to check the harness and the models).
//! The 1 GB image is `pull_large`, ignored by default: scripts/test.sh
//! runs it explicitly after `scripts/bench-layer.sh` has built the layer.
//!
//! Needs what tests/containerd.rs needs, plus skopeo and docker-registry;
//! `pull_small` the corpus (`EROFS_TEST_CORPUS`, scripts/corpus.sh).
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

use std::path::{Path, PathBuf};
use std::time::Instant;

use cluster::{Cluster, Mode, Options, committed_chain};
use common::*;
use images::TestImage;
use pulls::{Setup, applied, check_container, setup};

/// The mode under test, from `EROFS_PULL_MODE`.
fn mode() -> Mode {
    match std::env::var("EROFS_PULL_MODE").as_deref() {
        Err(_) | Ok("ours") => Mode::Ours,
        Ok("ours-walking") => Mode::OursWalking,
        Ok("overlayfs") => Mode::Overlayfs,
        Ok("erofs") => Mode::Erofs,
        Ok(other) => panic!("EROFS_PULL_MODE={other}: not ours, ours-walking, overlayfs, erofs"),
    }
}

/// After a pull of `image` alone, before any container (whose snapshot
/// containerd's GC removes later): containerd's snapshots are the
/// image's chain; in our snapshotter each is a `layer.erofs` and, with
/// our differ, each was applied by it.
fn check_snapshots(c: &Cluster, image: &TestImage) {
    let n = image.built.chain_ids.len();
    assert_eq!(
        c.snapshots(),
        committed_chain(&image.built.chain_ids),
        "snapshots after pulling {}",
        image.name
    );
    if matches!(c.opts.mode, Mode::Ours | Mode::OursWalking) {
        assert_eq!(c.layer_images().len(), n, "layer images in our root");
    }
    if c.opts.mode == Mode::Ours {
        assert_eq!(applied(c), n, "layers our differ logged as applied");
    }
}

/// Push, pull, run, check; with `opts` for the cluster.
fn pull_and_check(s: &Setup, image: &TestImage, opts: Options) {
    let started = Instant::now();
    let reference = s.push(image);
    let pushed = started.elapsed();
    let ns = opts.namespace.clone();
    let c = s.cluster(opts);
    let pull = c.pull(&ns, &reference);
    check_snapshots(&c, image);
    let t = Instant::now();
    check_container(&c, &ns, &reference, image, "check");
    let run = t.elapsed();
    eprintln!(
        "{} ({} layers, {:?}): pushed in {pushed:.1?}, pulled in {pull:.1?}, \
         checked in a container in {run:.1?}, total {:.1?}",
        image.name,
        image.built.chain_ids.len(),
        c.opts.mode,
        started.elapsed()
    );
}

#[test]
fn pull_whiteouts() {
    let Some(s) = setup() else { return };
    let image = images::whiteouts(oci::Compression::Gzip, &s.dir("image")).unwrap();
    pull_and_check(&s, &image, Options::new("pull-whiteouts", mode()));
}

#[test]
fn pull_whiteouts_zstd() {
    if !require(&["zstd"]) {
        return;
    }
    let Some(s) = setup() else { return };
    let image = images::whiteouts(oci::Compression::Zstd, &s.dir("image")).unwrap();
    pull_and_check(&s, &image, Options::new("pull-zstd", mode()));
}

#[test]
fn pull_many_layers() {
    let Some(s) = setup() else { return };
    let image = images::many(&s.dir("image")).unwrap();
    pull_and_check(&s, &image, Options::new("pull-many", mode()));
}

/// Parallel unpack (containerd ≥ 2.2 with `max_concurrent_unpacks` > 1
/// and the snapshotter's `rebase` capability): layers are applied on
/// parentless snapshots and rebased onto their parent at Commit. The
/// chain must come out the same. containerd 2.1 ignores both settings
/// and unpacks one layer after the other.
#[test]
fn pull_many_layers_parallel_unpack() {
    let Some(s) = setup() else { return };
    let image = images::many(&s.dir("image")).unwrap();
    let opts = Options {
        max_concurrent_unpacks: Some(2),
        rebase: true,
        ..Options::new("pull-parallel", mode())
    };
    pull_and_check(&s, &image, opts);
}

#[test]
fn pull_small() {
    let Some(corpus) = std::env::var_os("EROFS_TEST_CORPUS") else {
        missing("EROFS_TEST_CORPUS (run scripts/corpus.sh)");
        return;
    };
    let Some(s) = setup() else { return };
    let image = images::small(&Path::new(&corpus).join("minbase")).unwrap();
    pull_and_check(&s, &image, Options::new("pull-small", mode()));
}

/// The 1 GB layer (a minbase rootfs plus tensorflow); ignored by default
/// for its size, run by scripts/test.sh.
#[test]
#[ignore = "1 GB image: scripts/test.sh runs it after scripts/bench-layer.sh"]
fn pull_large() {
    let bench = std::env::var_os("EROFS_BENCH_LAYER")
        .map(PathBuf::from)
        .unwrap_or_else(|| images::cache_dir().join("../bench"));
    if !bench.join("layer.tar.gz").is_file() {
        missing("the benchmark layer (run scripts/bench-layer.sh)");
        return;
    }
    let Some(s) = setup() else { return };
    let image = images::large(&bench).unwrap();
    pull_and_check(&s, &image, Options::new("pull-large", mode()));
}

/// The same image pulled into a second namespace: containerd asks to
/// unpack every layer again (its snapshots are per namespace), and our
/// snapshotter answers each extraction Prepare with AlreadyExists, as it
/// has a committed snapshot of that `snapshot.ref` on the same parent:
/// one layer image per layer, each applied once, whichever differ
/// unpacked it. Both namespaces get the full chain and working
/// containers.
#[test]
fn pull_into_second_namespace() {
    let Some(s) = setup() else { return };
    let image = images::many(&s.dir("image")).unwrap();
    let reference = s.push(&image);
    let c = s.cluster(Options::new("pull-dedupe", mode()));
    let chain = committed_chain(&image.built.chain_ids);
    let namespaces = ["pull-dedupe", "pull-dedupe-other"];
    for ns in namespaces {
        let t = c.pull(ns, &reference);
        eprintln!("pulled into {ns} in {t:.1?}");
        assert_eq!(c.snapshots_in(ns), chain, "snapshots in {ns}");
    }
    let n = image.built.chain_ids.len();
    if matches!(c.opts.mode, Mode::Ours | Mode::OursWalking) {
        assert_eq!(
            c.layer_images().len(),
            n,
            "layer images for 2 × {n} snapshots"
        );
    }
    if c.opts.mode == Mode::Ours {
        assert_eq!(applied(&c), n, "applies for 2 × {n} snapshots");
    }
    for ns in namespaces {
        check_container(&c, ns, &reference, &image, "check");
    }
}

/// containerd's own snapshotters and differs see the same trees as the
/// models of the generated images: the harness and the models are right,
/// whatever ours does.
#[test]
fn reference_snapshotters_agree_with_models() {
    let Some(s) = setup() else { return };
    let images = [
        images::whiteouts(oci::Compression::Gzip, &s.dir("whiteouts")).unwrap(),
        images::many(&s.dir("many")).unwrap(),
    ];
    let references: Vec<String> = images.iter().map(|i| s.push(i)).collect();
    for mode in [Mode::Overlayfs, Mode::Erofs] {
        let ns = "pull-reference";
        let mut c = s.cluster(Options::new(ns, mode));
        for (image, reference) in images.iter().zip(&references) {
            c.pull(ns, reference);
            check_container(&c, ns, reference, image, "check");
        }
        c.teardown();
    }
}
