//! `serve`: the containerd proxy plugin on a unix socket.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use snapshotter::config::{Config, LayerSync};
use snapshotter::content::ContentSource;
use snapshotter::diff_service::DiffService;
use snapshotter::differ::ApplyOptions;
use snapshotter::metrics::Metrics;
use snapshotter::service::SnapshotService;
use snapshotter::snapshotter::{Config as CoreConfig, Snapshotter};

#[derive(clap::Args)]
pub struct Args {
    /// TOML configuration (containerd's option names).
    #[arg(long)]
    config: Option<PathBuf>,
    /// State directory; overrides `root_path`.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Socket path; overrides `address`.
    #[arg(long)]
    address: Option<PathBuf>,
    /// containerd's socket, for reading layer blobs; overrides
    /// `containerd_address`.
    #[arg(long)]
    containerd_address: Option<PathBuf>,
    /// `host` (runc) or `vm` (VM runtimes: raw image paths, no host
    /// mounts for containers); overrides `mode`.
    #[arg(long)]
    mode: Option<snapshotter::config::Mode>,
    /// `host:port` of a Prometheus endpoint; overrides `metrics_address`.
    #[arg(long)]
    metrics_address: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(r) = args.root {
        cfg.root_path = r;
    }
    if let Some(a) = args.address {
        cfg.address = a;
    }
    if let Some(a) = args.containerd_address {
        cfg.containerd_address = a;
    }
    if let Some(m) = args.mode {
        cfg.mode = m;
    }
    if let Some(a) = args.metrics_address {
        cfg.metrics_address = Some(a);
    }
    if let Some(dir) = cfg.address.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let core = Snapshotter::open(CoreConfig {
        root: cfg.root_path.clone(),
        ovl_mount_options: cfg.ovl_mount_options.clone(),
        set_immutable: cfg.set_immutable,
        enable_fsverity: cfg.enable_fsverity,
        default_size: cfg.default_size,
        mount_mode: cfg.mount_mode,
        mode: cfg.mode,
        sync_pacing: snapshotter::durability::Pacing {
            idle: std::time::Duration::from_millis(cfg.layer_sync_idle_ms),
            max_delay: snapshotter::durability::MAX_DELAY,
        },
    })
    .with_context(|| format!("opening {}", cfg.root_path.display()))?;
    let core = Arc::new(core);
    let metrics = Arc::new(Metrics::default());
    let snapshots = SnapshotService::new(core.clone(), metrics.clone());
    let diff = DiffService::new(
        core.clone(),
        ContentSource {
            address: cfg.containerd_address.clone(),
            dir: cfg.content_dir.clone(),
        },
        ApplyOptions {
            tar_index: cfg.enable_tar_index,
            defer_sync: cfg.layer_sync == LayerSync::Deferred,
        },
        metrics.clone(),
    );
    let rebuilder = diff.rebuilder();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    eprintln!(
        "serving snapshots and diff for {} on {}",
        cfg.root_path.display(),
        cfg.address.display()
    );
    let address = cfg.address.clone();
    let metrics_address = cfg.metrics_address.clone();
    rt.block_on(async move {
        if let Some(addr) = metrics_address {
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
            eprintln!("metrics on http://{addr}/metrics");
            tokio::spawn(metrics.serve(listener));
        }
        tokio::spawn(rebuilder.run());
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        proto::serve_unix(&address, Some(snapshots), Some(diff), shutdown)
            .await
            .with_context(|| format!("serving on {}", address.display()))
    })?;
    // A clean stop leaves every image on disk, so the next start has
    // nothing to check.
    core.stop_syncing();
    Ok(())
}
