//! Generates the gRPC *server* side of containerd's Snapshots and Diff
//! services.
//!
//! containerd-client ships the message types and the clients but was built
//! with `build_server(false)`, so we only need the service plumbing. The
//! `manual` builder lets us name containerd-client's existing Rust types
//! instead of compiling `.proto` files a second time, which would give us a
//! parallel set of incompatible message types.

use tonic_build::manual::{Builder, Method, Service};

const SNAPSHOT_TYPES: &str = "::containerd_client::services::v1::snapshots";
const DIFF_TYPES: &str = "::containerd_client::services::v1";
/// prost maps `google.protobuf.Empty` to `()`, which `manual` cannot parse
/// as a path, hence the alias defined in `src/lib.rs`.
const EMPTY: &str = "crate::Empty";

/// One unary (or, with `streaming`, server-streaming) method.
/// `route` is the proto method name used in the HTTP/2 path.
fn method(route: &str, input: String, output: String, streaming: bool, comment: &str) -> Method {
    let mut b = Method::builder()
        .name(route.to_ascii_lowercase())
        .route_name(route)
        .input_type(input)
        .output_type(output)
        .codec_path("::tonic_prost::ProstCodec")
        .comment(comment);
    if streaming {
        b = b.server_streaming();
    }
    b.build()
}

fn snap(route: &str, input: &str, output: &str, comment: &str) -> Method {
    let out = if output == EMPTY {
        EMPTY.to_string()
    } else {
        format!("{SNAPSHOT_TYPES}::{output}")
    };
    method(
        route,
        format!("{SNAPSHOT_TYPES}::{input}"),
        out,
        false,
        comment,
    )
}

fn main() {
    let snapshots = Service::builder()
        .name("Snapshots")
        .package("containerd.services.snapshots.v1")
        .comment("containerd's snapshotter API, as called by a proxy plugin of type `snapshot`.")
        .method(snap(
            "Prepare",
            "PrepareSnapshotRequest",
            "PrepareSnapshotResponse",
            "Create an active snapshot `key` on top of `parent`; returns its mounts.",
        ))
        .method(snap(
            "View",
            "ViewSnapshotRequest",
            "ViewSnapshotResponse",
            "Create a read-only view `key` of the committed `parent`; returns its mounts.",
        ))
        .method(snap(
            "Mounts",
            "MountsRequest",
            "MountsResponse",
            "Mounts of an existing active snapshot or view.",
        ))
        .method(method(
            "Commit",
            // Ours, not containerd-client's: that one predates the `parent`
            // field (rebase, containerd 2.2) and prost would drop it.
            "crate::snapshots::CommitSnapshotRequest".to_string(),
            EMPTY.to_string(),
            false,
            "Turn active snapshot `key` into committed snapshot `name`, on top of `parent` if given (rebase).",
        ))
        .method(snap(
            "Remove",
            "RemoveSnapshotRequest",
            EMPTY,
            "Remove a snapshot; FailedPrecondition if it still has children.",
        ))
        .method(snap(
            "Stat",
            "StatSnapshotRequest",
            "StatSnapshotResponse",
            "Info of one snapshot; NotFound if missing (containerd relies on it).",
        ))
        .method(snap(
            "Update",
            "UpdateSnapshotRequest",
            "UpdateSnapshotResponse",
            "Update the mutable fields (labels) named by the mask.",
        ))
        .method(method(
            "List",
            format!("{SNAPSHOT_TYPES}::ListSnapshotsRequest"),
            format!("{SNAPSHOT_TYPES}::ListSnapshotsResponse"),
            true,
            "Stream the snapshots matching any of the filters, in batches.",
        ))
        .method(snap(
            "Usage",
            "UsageRequest",
            "UsageResponse",
            "Disk usage of one snapshot.",
        ))
        .method(snap(
            "Cleanup",
            "CleanupRequest",
            EMPTY,
            "Reclaim space not referenced by any snapshot; may be Unimplemented.",
        ))
        .build();

    let diff = Service::builder()
        .name("Diff")
        .package("containerd.services.diff.v1")
        .comment("containerd's differ API, as called by a proxy plugin of type `diff`.")
        .method(method(
            "Apply",
            format!("{DIFF_TYPES}::ApplyRequest"),
            format!("{DIFF_TYPES}::ApplyResponse"),
            false,
            "Apply a layer blob onto the mounts; Unimplemented lets containerd try the next differ.",
        ))
        .method(method(
            "Diff",
            format!("{DIFF_TYPES}::DiffRequest"),
            format!("{DIFF_TYPES}::DiffResponse"),
            false,
            "Compute a layer from two sets of mounts.",
        ))
        .build();

    // Clients too: containerd-client's snapshots client would send its own
    // CommitSnapshotRequest, without `parent`.
    Builder::new()
        .build_client(true)
        .build_server(true)
        .compile(&[snapshots, diff]);
    println!("cargo:rerun-if-changed=build.rs");
}
