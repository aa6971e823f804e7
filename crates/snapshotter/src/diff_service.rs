//! containerd's `Diff` gRPC service. Apply writes a layer blob from
//! containerd's content store into one of our snapshots as `layer.erofs`.
//! Compare (the `Diff` RPC) exports an active snapshot's overlay upper as
//! an OCI layer into containerd's content store. Mounts that are not ours
//! get Unimplemented, which makes containerd's diff service try its next
//! differ. At start-up it also rebuilds the layers a crash may have torn
//! (`durability`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::diff::{ApplyRequest, ApplyResponse, DiffRequest, DiffResponse};
use proto::errdefs::{ErrorKind, chain, status};
use proto::tonic::{Request, Response, Status};
use proto::types::Descriptor;

use crate::content::{ContentError, ContentSource, UploadTarget};
use crate::differ::{self, ApplyError, ApplyOptions, Blob};
use crate::durability::Record;
use crate::metrics::{self, Metrics};
use crate::mounts::MountSpec;
use crate::snapshotter::Snapshotter;

pub struct DiffService {
    snapshots: Arc<Snapshotter>,
    content: ContentSource,
    opts: ApplyOptions,
    metrics: Arc<Metrics>,
}

/// How long a rebuild waits for containerd to come up (it may start after
/// us at boot) before it gives up on a layer.
const REBUILD_PATIENCE: Duration = Duration::from_secs(300);

impl DiffService {
    pub fn new(
        snapshots: Arc<Snapshotter>,
        content: ContentSource,
        opts: ApplyOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        DiffService {
            snapshots,
            content,
            opts,
            metrics,
        }
    }

    /// The task that rebuilds the layers a crash may have torn.
    pub fn rebuilder(&self) -> Rebuilder {
        Rebuilder {
            snapshots: self.snapshots.clone(),
            content: self.content.clone(),
            metrics: self.metrics.clone(),
        }
    }

    async fn apply_inner(&self, req: Request<ApplyRequest>) -> Result<ApplyResponse, Status> {
        let ns = proto::metadata::namespace(&req)
            .ok_or_else(|| status(ErrorKind::InvalidArgument, "apply without a namespace"))?
            .to_string();
        // Background fsyncs wait while layers are being applied.
        let _busy = self.snapshots.busy();
        let r = req.into_inner();
        let desc = r
            .diff
            .ok_or_else(|| status(ErrorKind::InvalidArgument, "apply without a descriptor"))?;
        let mounts = mount_specs(r.mounts);
        let snaps = self.snapshots.clone();
        let dir = tokio::task::spawn_blocking(move || snaps.apply_target(&mounts))
            .await
            .map_err(|e| status(ErrorKind::Internal, format!("worker failed: {e}")))?
            .map_err(|e| status(ErrorKind::Internal, e.to_string()))?
            .ok_or_else(|| {
                status(
                    ErrorKind::Unimplemented,
                    "mounts are not an active erofs-snapshotter snapshot",
                )
            })?;
        if !r.payloads.is_empty() {
            let names: Vec<&String> = r.payloads.keys().collect();
            return Err(status(
                ErrorKind::InvalidArgument,
                format!(
                    "layer {}: stream processor payloads {names:?} (e.g. decryption) are not supported",
                    desc.digest
                ),
            ));
        }
        let blob = Blob {
            namespace: ns.clone(),
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: u64::try_from(desc.size).unwrap_or(0),
        };
        // Refuse before fetching anything.
        differ::classify(&blob.media_type).map_err(apply_status)?;
        let (input, source) = self
            .content
            .open(&ns, &blob.digest, tokio::runtime::Handle::current())
            .await
            .map_err(content_status)?;
        let sync_fs = r.sync_fs;
        let opts = ApplyOptions {
            // syncfs makes the image durable anyway.
            defer_sync: self.opts.defer_sync && !sync_fs,
            ..self.opts.clone()
        };
        let applied = tokio::task::spawn_blocking(move || {
            let applied = differ::apply(&dir, &blob, input, &opts)?;
            if sync_fs {
                // containerd's sync_fs: the whole filesystem, not just our
                // file (which apply fsynced).
                let f = std::fs::File::open(&dir).map_err(|source| ApplyError::Io {
                    what: "opening",
                    path: dir.clone(),
                    source,
                })?;
                rustix::fs::syncfs(&f).map_err(|e| ApplyError::Io {
                    what: "syncfs",
                    path: dir.clone(),
                    source: e.into(),
                })?;
            }
            Ok::<_, ApplyError>(applied)
        })
        .await
        .map_err(|e| status(ErrorKind::Internal, format!("worker failed: {e}")))?
        .map_err(apply_status)?;
        let mut fields = vec![
            ("layer", desc.digest.clone()),
            ("diff_id", applied.digest.clone()),
            ("source", source.to_string()),
            // false under `layer_sync = "deferred"` means the filesystem
            // could not hold the record and the image was fsynced first.
            ("deferred", applied.deferred.to_string()),
        ];
        fields.extend(metrics::apply_fields(&applied.timings));
        metrics::log("apply", &fields);
        self.metrics.applied(&applied.timings);
        Ok(ApplyResponse {
            applied: Some(Descriptor {
                media_type: applied.media_type,
                digest: applied.digest,
                size: i64::try_from(applied.size).unwrap_or(i64::MAX),
                annotations: Default::default(),
            }),
        })
    }
}

/// Rebuilds, at start-up, the layers a crash may have torn.
pub struct Rebuilder {
    snapshots: Arc<Snapshotter>,
    content: ContentSource,
    metrics: Arc<Metrics>,
}

impl Rebuilder {
    /// Rebuild every layer the start-up scan found possibly torn, from
    /// the blob its record names; the snapshotter refuses to mount them
    /// until then. A layer that cannot be rebuilt stays refused, with
    /// the reason in its error.
    pub async fn run(self) {
        for (id, dir, record) in self.snapshots.lost_layers() {
            let start = Instant::now();
            let Some(record) = record else {
                // Nothing to rebuild from; the error says so already.
                continue;
            };
            let result = self.rebuild(id, &dir, &record).await;
            self.metrics.op(
                "layer_rebuild",
                if result.is_ok() { "ok" } else { "error" },
                start.elapsed(),
            );
            let mut fields = vec![
                ("snapshot", id.to_string()),
                ("layer", record.digest.clone()),
                ("total_ms", metrics::ms(start.elapsed())),
            ];
            if let Err(e) = result {
                fields.push(("error", e.clone()));
                if let Err(e2) = self.snapshots.rebuild_failed(id, &record, &e) {
                    fields.push(("record_error", chain(&e2)));
                }
                metrics::log("layer rebuild failed", &fields);
            } else {
                metrics::log("layer rebuilt", &fields);
            }
        }
    }

    async fn rebuild(&self, id: u64, dir: &Path, record: &Record) -> Result<(), String> {
        let blob = Blob {
            namespace: record.namespace.clone(),
            media_type: record.media_type.clone(),
            digest: record.digest.clone(),
            size: record.size,
        };
        let deadline = Instant::now() + REBUILD_PATIENCE;
        let mut delay = Duration::from_millis(500);
        let (input, _) = loop {
            match self
                .content
                .open(
                    &blob.namespace,
                    &blob.digest,
                    tokio::runtime::Handle::current(),
                )
                .await
            {
                Ok(opened) => break opened,
                Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(chain(&e)),
            }
        };
        let snaps = self.snapshots.clone();
        let dir: PathBuf = dir.to_path_buf();
        let opts = ApplyOptions {
            tar_index: record.tar_index,
            defer_sync: false,
        };
        let expected = record.diff_id.clone();
        tokio::task::spawn_blocking(move || {
            snaps.begin_rebuild(id).map_err(|e| chain(&e))?;
            let applied = differ::apply(&dir, &blob, input, &opts).map_err(|e| chain(&e))?;
            if applied.digest != expected {
                return Err(format!(
                    "the rebuilt image has digest {} where Apply returned {expected}",
                    applied.digest
                ));
            }
            snaps.rebuilt(id).map_err(|e| chain(&e))
        })
        .await
        .map_err(|e| format!("worker failed: {e}"))?
    }
}

impl DiffService {
    /// Compare: the active snapshot's overlay upper, exported as an OCI
    /// layer straight into containerd's content store.
    async fn compare_inner(&self, req: Request<DiffRequest>) -> Result<DiffResponse, Status> {
        let namespace = proto::metadata::namespace(&req)
            .ok_or_else(|| status(ErrorKind::InvalidArgument, "diff without a namespace"))?
            .to_string();
        let lease = proto::metadata::lease(&req).map(str::to_string);
        let r = req.into_inner();
        let layer_type = layer::export::layer_media_type(&r.media_type).map_err(|e| {
            // The walking differ supports the same types; let it say so.
            status(ErrorKind::Unimplemented, e.to_string())
        })?;
        let (left, right) = (mount_specs(r.left), mount_specs(r.right));
        let snaps = self.snapshots.clone();
        let upper = tokio::task::spawn_blocking(move || snaps.compare_upper(&left, &right))
            .await
            .map_err(|e| status(ErrorKind::Internal, format!("worker failed: {e}")))?
            .map_err(|e| status(ErrorKind::Internal, chain(&e)))?
            .ok_or_else(|| {
                status(
                    ErrorKind::Unimplemented,
                    "mounts are not an erofs-snapshotter snapshot over its own parents",
                )
            })?;
        let reference = if r.r#ref.is_empty() {
            format!(
                "erofs-snapshotter-compare-{}-{}",
                std::process::id(),
                start_nanos()
            )
        } else {
            r.r#ref.clone()
        };
        let target = UploadTarget {
            namespace,
            lease,
            reference,
        };
        let (upload, task) = self.content.upload(&target).await.map_err(content_status)?;
        let opts = layer::export::ExportOptions {
            compression: layer_type.compression,
            source_date_epoch: r.source_date_epoch.map(|t| t.seconds),
        };
        let mut labels = r.labels;
        let exported = tokio::task::spawn_blocking(move || {
            let mut upload = upload;
            let exported =
                layer::export::export_layer(&upper.path, &mut upload, &opts).map_err(|e| {
                    status(
                        ErrorKind::FailedPrecondition,
                        format!("{}: {}", upper.path.display(), chain(&e)),
                    )
                })?;
            drop(upper);
            labels.insert(
                "containerd.io/uncompressed".to_string(),
                exported.diff_id.to_string(),
            );
            upload
                .commit(exported.size, &exported.digest.to_string(), labels)
                .map_err(|e| status(ErrorKind::Unavailable, e.to_string()))?;
            Ok::<_, Status>(exported)
        })
        .await
        .map_err(|e| status(ErrorKind::Internal, format!("worker failed: {e}")))?;
        // The write's own error explains a failed export best (the channel
        // closing is only its symptom).
        let written = task
            .await
            .map_err(|e| status(ErrorKind::Internal, format!("worker failed: {e}")))?;
        let exported = match (exported, written) {
            (Ok(e), Ok(())) => e,
            (_, Err(e)) => return Err(content_status(e)),
            (Err(s), Ok(())) => return Err(s),
        };
        metrics::log(
            "compare",
            &[
                ("digest", exported.digest.to_string()),
                ("diff_id", exported.diff_id.to_string()),
                ("size", exported.size.to_string()),
                ("entries", exported.stats.entries.to_string()),
                ("whiteouts", exported.stats.whiteouts.to_string()),
            ],
        );
        Ok(DiffResponse {
            diff: Some(Descriptor {
                media_type: layer_type.media_type.to_string(),
                digest: exported.digest.to_string(),
                size: i64::try_from(exported.size).unwrap_or(i64::MAX),
                annotations: Default::default(),
            }),
        })
    }
}

fn mount_specs(mounts: Vec<proto::types::Mount>) -> Vec<MountSpec> {
    mounts
        .into_iter()
        .map(|m| MountSpec {
            kind: m.r#type,
            source: m.source.into(),
            options: m.options,
        })
        .collect()
}

/// Nanoseconds since the epoch, to make ingest references unique.
fn start_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn apply_status(e: ApplyError) -> Status {
    let kind = if e.is_invalid_input() {
        ErrorKind::InvalidArgument
    } else {
        ErrorKind::Internal
    };
    status(kind, chain(&e))
}

fn content_status(e: ContentError) -> Status {
    let kind = match &e {
        ContentError::Connect { .. } => ErrorKind::Unavailable,
        ContentError::BadDigest(_) => ErrorKind::InvalidArgument,
        ContentError::Read { source, .. } | ContentError::Write { source, .. } => {
            ErrorKind::from_code(source.code()).unwrap_or(ErrorKind::Unavailable)
        }
    };
    status(kind, chain(&e))
}

#[proto::async_trait]
impl proto::diff::Diff for DiffService {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let start = Instant::now();
        let result = self.apply_inner(req).await;
        if let Err(s) = &result {
            // Not ours: containerd moves on to its next differ; not a
            // failure worth counting.
            if s.code() != proto::tonic::Code::Unimplemented {
                self.metrics.apply_failed(&format!("{:?}", s.code()));
                metrics::log(
                    "apply failed",
                    &[
                        ("error", s.message().to_string()),
                        ("total_ms", metrics::ms(start.elapsed())),
                    ],
                );
            }
        }
        result.map(Response::new)
    }

    async fn diff(&self, req: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let start = Instant::now();
        let result = self.compare_inner(req).await;
        if let Err(s) = &result
            && s.code() != proto::tonic::Code::Unimplemented
        {
            metrics::log("compare failed", &[("error", s.message().to_string())]);
        }
        self.metrics.op(
            "compare",
            &match &result {
                Ok(_) => "ok".to_string(),
                Err(s) => format!("{:?}", s.code()),
            },
            start.elapsed(),
        );
        result.map(Response::new)
    }
}
