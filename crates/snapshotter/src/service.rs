//! containerd's `Snapshots` gRPC service over [`Snapshotter`]: message
//! conversion, errdefs status codes, and running the blocking work off the
//! async executor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use proto::errdefs::{ErrorKind, chain, status};
use proto::snapshots as pb;
use proto::tonic::{Request, Response, Status};
use proto::types::Mount;

use crate::metrics::Metrics;
use crate::mounts::MountSpec;
use crate::snapshotter::{Error, ErrorClass, Snapshotter};
use crate::store::{Info, Kind};

/// The service; cheap to clone.
#[derive(Clone)]
pub struct SnapshotService {
    inner: Arc<Snapshotter>,
    metrics: Arc<Metrics>,
}

impl SnapshotService {
    pub fn new(inner: Arc<Snapshotter>, metrics: Arc<Metrics>) -> Self {
        let m = metrics.clone();
        inner.on_synced(Box::new(move |synced| {
            let result = if synced.error.is_none() {
                "ok"
            } else {
                "error"
            };
            m.op("layer_sync", result, synced.sync);
        }));
        SnapshotService { inner, metrics }
    }

    /// Run `f` on the blocking pool, counting it as operation `op`.
    async fn timed<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let start = Instant::now();
        let r = blocking(f).await;
        let result = match &r {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.metrics.op(op, &result, start.elapsed());
        r
    }
}

fn to_status(e: Error) -> Status {
    let kind = match e.class() {
        ErrorClass::NotFound => ErrorKind::NotFound,
        ErrorClass::AlreadyExists => ErrorKind::AlreadyExists,
        ErrorClass::FailedPrecondition => ErrorKind::FailedPrecondition,
        ErrorClass::InvalidArgument => ErrorKind::InvalidArgument,
        ErrorClass::Internal => ErrorKind::Internal,
    };
    status(kind, chain(&e))
}

/// Run blocking snapshot work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(to_status),
        Err(e) => Err(status(ErrorKind::Internal, format!("worker failed: {e}"))),
    }
}

fn mounts_pb(m: Vec<MountSpec>) -> Vec<Mount> {
    m.into_iter()
        .map(|m| Mount {
            r#type: m.kind,
            source: m.source.to_string_lossy().into_owned(),
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn parent_opt(p: &str) -> Option<String> {
    (!p.is_empty()).then(|| p.to_string())
}

fn labels_in(l: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

fn timestamp(t: SystemTime) -> proto::prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    proto::prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn from_timestamp(t: Option<proto::prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let nanos = u32::try_from(t.nanos).ok()?;
        UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
    })
    .unwrap_or(UNIX_EPOCH)
}

fn kind_pb(k: Kind) -> i32 {
    match k {
        Kind::View => pb::Kind::View as i32,
        Kind::Active => pb::Kind::Active as i32,
        Kind::Committed => pb::Kind::Committed as i32,
    }
}

fn info_pb(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        kind: kind_pb(i.kind),
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

fn info_in(i: pb::Info) -> Info {
    let kind = match pb::Kind::try_from(i.kind) {
        Ok(pb::Kind::View) => Kind::View,
        Ok(pb::Kind::Committed) => Kind::Committed,
        _ => Kind::Active,
    };
    Info {
        name: i.name,
        parent: parent_opt(&i.parent),
        kind,
        labels: labels_in(i.labels),
        created: from_timestamp(i.created_at),
        updated: from_timestamp(i.updated_at),
    }
}

fn require_key(key: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(status(ErrorKind::InvalidArgument, "empty snapshot key"));
    }
    Ok(())
}

#[proto::async_trait]
impl pb::Snapshots for SnapshotService {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        require_key(&r.key)?;
        let s = self.inner.clone();
        let mounts = self
            .timed("prepare", move || {
                s.prepare(
                    &r.key,
                    parent_opt(&r.parent).as_deref(),
                    labels_in(r.labels),
                )
            })
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts_pb(mounts),
        }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        require_key(&r.key)?;
        let s = self.inner.clone();
        let mounts = self
            .timed("view", move || {
                s.view(
                    &r.key,
                    parent_opt(&r.parent).as_deref(),
                    labels_in(r.labels),
                )
            })
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts_pb(mounts),
        }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        let mounts = self.timed("mounts", move || s.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: mounts_pb(mounts),
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let r = req.into_inner();
        require_key(&r.key)?;
        if r.name.is_empty() {
            return Err(status(ErrorKind::InvalidArgument, "empty snapshot name"));
        }
        let s = self.inner.clone();
        let start = Instant::now();
        let (key, name, parent) = (r.key.clone(), r.name.clone(), r.parent.clone());
        self.timed("commit", move || {
            s.commit(
                &r.key,
                &r.name,
                labels_in(r.labels),
                parent_opt(&r.parent).as_deref(),
            )
        })
        .await?;
        // The last stage of a layer's unpack, after the differ's `apply`
        // line; a commit that converts an upper directory shows here too.
        crate::metrics::log(
            "commit",
            &[
                ("key", key),
                ("name", name),
                ("parent", parent),
                ("commit_ms", crate::metrics::ms(start.elapsed())),
            ],
        );
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        self.timed("remove", move || s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        let info = self.timed("stat", move || s.stat(&r.key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info_pb(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let Some(info) = r.info else {
            return Err(status(ErrorKind::InvalidArgument, "update without info"));
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let s = self.inner.clone();
        let info = self
            .timed("update", move || s.update(info_in(info), &paths))
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info_pb(info)),
        }))
    }

    type ListStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<pb::ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        let infos = self.timed("list", move || s.list(&r.filters)).await?;
        // Batches keep each message well under gRPC's size limit.
        let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> = infos
            .chunks(100)
            .map(|c| {
                Ok(pb::ListSnapshotsResponse {
                    info: c.iter().cloned().map(info_pb).collect(),
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        let u = self.timed("usage", move || s.usage(&r.key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(
        &self,
        _req: Request<pb::CleanupRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let s = self.inner.clone();
        self.timed("cleanup", move || s.cleanup()).await?;
        Ok(Response::new(()))
    }
}
