//! End to end over a real unix socket: our generated servers, driven by
//! containerd-client's own clients, so a wire-level mismatch (route names,
//! message types, status codes, metadata) shows up here rather than in
//! containerd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use proto::diff::{ApplyRequest, ApplyResponse, Diff, DiffRequest, DiffResponse, diff_client};
use proto::errdefs::{ErrorKind, status};
use proto::metadata::{namespace, with_namespace};
use proto::snapshots::{
    CleanupRequest, CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, ListSnapshotsResponse,
    MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
    RemoveSnapshotRequest, Snapshots, StatSnapshotRequest, StatSnapshotResponse,
    UpdateSnapshotRequest, UpdateSnapshotResponse, UsageRequest, UsageResponse,
    ViewSnapshotRequest, ViewSnapshotResponse, snapshots_client,
};
use proto::tonic::{Code, Request, Response, Status};
use proto::types::{Descriptor, Mount};
use proto::{Empty, ServeError, serve_unix};

/// Snapshots kept in a map; just enough semantics to exercise the codes
/// containerd depends on.
#[derive(Default)]
struct ToySnapshots {
    snaps: Mutex<HashMap<String, Info>>,
}

fn toy_mounts(key: &str, rw: bool) -> Vec<Mount> {
    vec![Mount {
        r#type: "bind".into(),
        source: format!("/toy/{key}"),
        target: String::new(),
        options: vec![if rw { "rw" } else { "ro" }.into(), "rbind".into()],
    }]
}

impl ToySnapshots {
    fn create(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
        kind: Kind,
    ) -> Result<Vec<Mount>, Status> {
        let mut snaps = self.snaps.lock().unwrap();
        if snaps.contains_key(&key) {
            return Err(status(ErrorKind::AlreadyExists, format!("{key} exists")));
        }
        if !parent.is_empty() && snaps.get(&parent).map(|i| i.kind) != Some(Kind::Committed as i32)
        {
            return Err(status(
                ErrorKind::NotFound,
                format!("committed parent {parent}"),
            ));
        }
        let mounts = toy_mounts(&key, kind == Kind::Active);
        let info = Info {
            name: key.clone(),
            parent,
            kind: kind as i32,
            labels,
            ..Info::default()
        };
        snaps.insert(key, info);
        Ok(mounts)
    }
}

#[proto::async_trait]
impl Snapshots for ToySnapshots {
    async fn prepare(
        &self,
        req: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        // containerd always sends a namespace; insisting on it here proves
        // the metadata reaches the server.
        if namespace(&req).is_none() {
            return Err(status(
                ErrorKind::FailedPrecondition,
                "namespace is required",
            ));
        }
        let r = req.into_inner();
        let mounts = self.create(r.key, r.parent, r.labels, Kind::Active)?;
        Ok(Response::new(PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        req: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let mounts = self.create(r.key, r.parent, r.labels, Kind::View)?;
        Ok(Response::new(ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        req: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let key = req.into_inner().key;
        let snaps = self.snaps.lock().unwrap();
        match snaps.get(&key) {
            Some(i) if i.kind != Kind::Committed as i32 => Ok(Response::new(MountsResponse {
                mounts: toy_mounts(&key, i.kind == Kind::Active as i32),
            })),
            Some(_) => Err(status(ErrorKind::FailedPrecondition, "committed")),
            None => Err(status(ErrorKind::NotFound, key)),
        }
    }

    async fn commit(&self, req: Request<CommitSnapshotRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let mut snaps = self.snaps.lock().unwrap();
        if snaps.contains_key(&r.name) {
            return Err(status(ErrorKind::AlreadyExists, r.name));
        }
        match snaps.remove(&r.key) {
            Some(mut info) if info.kind == Kind::Active as i32 => {
                info.name = r.name.clone();
                // Rebase: field 5, which containerd-client's message lacks.
                if !r.parent.is_empty() {
                    info.parent = r.parent;
                }
                info.kind = Kind::Committed as i32;
                info.labels.extend(r.labels);
                snaps.insert(r.name, info);
                Ok(Response::new(()))
            }
            Some(info) => {
                snaps.insert(r.key, info);
                Err(status(ErrorKind::FailedPrecondition, "not active"))
            }
            None => Err(status(ErrorKind::NotFound, r.key)),
        }
    }

    async fn remove(&self, req: Request<RemoveSnapshotRequest>) -> Result<Response<Empty>, Status> {
        let key = req.into_inner().key;
        let mut snaps = self.snaps.lock().unwrap();
        if snaps.values().any(|i| i.parent == key) {
            return Err(status(ErrorKind::FailedPrecondition, "has children"));
        }
        match snaps.remove(&key) {
            Some(_) => Ok(Response::new(())),
            None => Err(status(ErrorKind::NotFound, key)),
        }
    }

    async fn stat(
        &self,
        req: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let key = req.into_inner().key;
        match self.snaps.lock().unwrap().get(&key) {
            Some(info) => Ok(Response::new(StatSnapshotResponse {
                info: Some(info.clone()),
            })),
            None => Err(status(
                ErrorKind::NotFound,
                format!("snapshot {key} does not exist"),
            )),
        }
    }

    async fn update(
        &self,
        _req: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        Err(status(ErrorKind::Unimplemented, "toy"))
    }

    type ListStream = tokio_stream::Iter<std::vec::IntoIter<Result<ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        _req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        // One message per snapshot, so the client really reads a stream.
        let items: Vec<_> = self
            .snaps
            .lock()
            .unwrap()
            .values()
            .map(|i| {
                Ok(ListSnapshotsResponse {
                    info: vec![i.clone()],
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(items)))
    }

    async fn usage(&self, _req: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        Ok(Response::new(UsageResponse { size: 0, inodes: 0 }))
    }

    async fn cleanup(&self, _req: Request<CleanupRequest>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(()))
    }
}

/// A differ that handles nothing, so containerd would move on to the next.
struct NoDiff;

#[proto::async_trait]
impl Diff for NoDiff {
    async fn apply(&self, _req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        Err(status(
            ErrorKind::Unimplemented,
            "toy differ applies nothing",
        ))
    }

    async fn diff(&self, _req: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        Err(status(ErrorKind::Unimplemented, "toy differ diffs nothing"))
    }
}

/// The socket path exists (a stale one may be there before ours replaces
/// it), so readiness is "a connection is accepted".
async fn wait_until_serving(path: &Path) {
    for _ in 0..500 {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server did not start listening on {}", path.display());
}

const NS: &str = "testns";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_diff_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("erofs.sock");

    // A crashed run leaves its socket behind; serving must replace it.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(
        std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_socket()
    );

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let sock = sock.clone();
        async move {
            serve_unix(&sock, Some(ToySnapshots::default()), Some(NoDiff), async {
                let _ = stopped.await;
            })
            .await
        }
    });
    wait_until_serving(&sock).await;

    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);

    // A second server must not take over a live socket.
    let second = serve_unix(
        &sock,
        Some(ToySnapshots::default()),
        None::<NoDiff>,
        async {},
    )
    .await;
    assert!(matches!(second, Err(ServeError::InUse(_))), "{second:?}");

    let channel = proto::connect(&sock).await.unwrap();
    let mut snaps = snapshots_client::SnapshotsClient::new(channel.clone());
    let mut differ = diff_client::DiffClient::new(channel);

    // Stat of a missing key: NotFound, which containerd's unpacker relies on.
    let err = snaps
        .stat(
            with_namespace(
                StatSnapshotRequest {
                    snapshotter: "erofs".into(),
                    key: "missing".into(),
                },
                NS,
            )
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "snapshot missing does not exist");

    let prepare = PrepareSnapshotRequest {
        snapshotter: "erofs".into(),
        key: "testns/1/extract".into(),
        parent: String::new(),
        labels: HashMap::from([("containerd.io/snapshot.ref".into(), "sha256:aa".into())]),
    };

    // Without the namespace metadata the toy refuses, so with it the header
    // demonstrably arrived. containerd-client's own macro sets it here.
    let err = snaps.prepare(prepare.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let mounts = snaps
        .prepare(proto::containerd_client::with_namespace!(
            prepare.clone(),
            NS
        ))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(mounts, toy_mounts("testns/1/extract", true));

    let err = snaps
        .prepare(with_namespace(prepare, NS).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    let got = snaps
        .mounts(
            with_namespace(
                MountsRequest {
                    snapshotter: "erofs".into(),
                    key: "testns/1/extract".into(),
                },
                NS,
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(got, mounts);

    // Commit returns google.protobuf.Empty, i.e. `()` on both sides.
    let () = snaps
        .commit(
            with_namespace(
                CommitSnapshotRequest {
                    snapshotter: "erofs".into(),
                    name: "testns/2/sha256:chain".into(),
                    key: "testns/1/extract".into(),
                    labels: HashMap::new(),
                    parent: "testns/0/base".into(),
                },
                NS,
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner();

    let mut stream = snaps
        .list(
            with_namespace(
                ListSnapshotsRequest {
                    snapshotter: "erofs".into(),
                    filters: vec![],
                },
                NS,
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut listed = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        listed.extend(batch.info);
    }
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, "testns/2/sha256:chain");
    assert_eq!(listed[0].parent, "testns/0/base");
    assert_eq!(listed[0].kind, Kind::Committed as i32);
    assert_eq!(
        listed[0]
            .labels
            .get("containerd.io/snapshot.ref")
            .map(String::as_str),
        Some("sha256:aa")
    );

    let err = differ
        .apply(
            with_namespace(
                ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                        digest: "sha256:00".into(),
                        size: 1,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                NS,
            )
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    // Graceful shutdown must finish even though the client still holds an
    // open connection, as containerd does.
    stop.send(()).unwrap();
    let served = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("shutdown did not complete")
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
    assert!(!sock.exists(), "socket file left behind");
    drop(snaps);
}

#[tokio::test]
async fn refuses_to_replace_a_non_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, b"keep me").unwrap();
    let res = serve_unix(&path, None::<ToySnapshots>, Some(NoDiff), async {}).await;
    assert!(matches!(res, Err(ServeError::NotASocket(_))), "{res:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[tokio::test]
async fn needs_something_to_serve() {
    let dir = tempfile::tempdir().unwrap();
    let res = serve_unix(
        &dir.path().join("s.sock"),
        None::<ToySnapshots>,
        None::<NoDiff>,
        async {},
    )
    .await;
    assert!(matches!(res, Err(ServeError::NothingToServe)), "{res:?}");
}
