//! What the registry-based containerd tests (pull.rs, modes.rs) share: a
//! test directory with a registry, clusters in it, a container's view
//! checked against an image's model, and our differ's applies counted.

use std::path::PathBuf;

use crate::cluster::{Cluster, Options, Tools, prereqs};
use crate::common::tempdir;
use crate::images::TestImage;
use crate::registry::Registry;

/// A test's tools, directory and registry.
pub struct Setup {
    pub tools: Tools,
    pub tmp: tempfile::TempDir,
    pub registry: Registry,
}

/// Everything a registry test needs, or None after reporting what is
/// missing (a failure on CI).
pub fn setup() -> Option<Setup> {
    let tools = prereqs(&["skopeo", "docker-registry", "mkfs.erofs"])?;
    let tmp = tempdir();
    let registry = Registry::start(&tmp.path().join("registry"));
    Some(Setup {
        tools,
        tmp,
        registry,
    })
}

impl Setup {
    pub fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Push `image`; returns its reference.
    pub fn push(&self, image: &TestImage) -> String {
        self.registry
            .push(&image.layout, &format!("{}:1", image.name))
    }

    /// A cluster in a directory of its own (one per mode).
    pub fn cluster(&self, opts: Options) -> Cluster {
        let dir = self.dir(&format!("cluster-{:?}", opts.mode));
        std::fs::create_dir_all(&dir).unwrap();
        Cluster::start(&dir, &self.tools, opts)
    }
}

/// A container of `reference` in `ns` sees exactly the image's model.
pub fn check_container(c: &Cluster, ns: &str, reference: &str, image: &TestImage, id: &str) {
    let script = image.check.script();
    let r = c
        .run_in(ns, reference, id, &["/bin/sh", "-c", &script])
        .ok();
    if let Some(d) = image.check.compare(&r.stdout) {
        panic!("{} in namespace {ns} sees the wrong tree: {d}", image.name);
    }
}

/// Applied layers our daemon logged: one logfmt line each, `apply
/// layer=sha256:... bytes=... total_ms=...` (bare or as `msg=apply`).
pub fn applied(c: &Cluster) -> usize {
    c.daemon_log()
        .lines()
        .filter(|l| l.starts_with("apply ") || l.contains(" msg=apply "))
        .filter(|l| l.contains(" layer=sha256:"))
        .count()
}
