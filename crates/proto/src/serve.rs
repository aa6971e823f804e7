//! Serving the Snapshots and Diff services on a unix socket.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::diff::{Diff, DiffServer};
use crate::snapshots::{Snapshots, SnapshotsServer};

/// Why [`serve_unix`] could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("neither a snapshotter nor a differ was given to serve")]
    NothingToServe,
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{0} is in use by a live server")]
    InUse(PathBuf),
    #[error("{path} has no file name")]
    BadPath { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ServeError {
    let path = path.to_path_buf();
    move |source| ServeError::Io { op, path, source }
}

/// Serve `snapshots` and/or `diff` on the unix socket `path` until
/// `shutdown` resolves, then finish in-flight calls and return.
///
/// The socket is created with mode 0600: containerd connects as root, and
/// anyone else who could connect could mount and delete snapshots. A stale
/// socket left by a previous run is replaced; a live one (something accepts
/// connections on it), or a path that is not a socket, is an error so that
/// two daemons never silently steal each other's socket. On return the
/// socket file is removed if it is still ours.
///
/// To serve only one service, pass `None::<T>` with any implementing type
/// for the other (the type is needed even for `None`).
pub async fn serve_unix<S, D, F>(
    path: &Path,
    snapshots: Option<S>,
    diff: Option<D>,
    shutdown: F,
) -> Result<(), ServeError>
where
    S: Snapshots,
    D: Diff,
    F: Future<Output = ()>,
{
    if snapshots.is_none() && diff.is_none() {
        return Err(ServeError::NothingToServe);
    }
    check_replaceable(path).await?;
    let listener = bind_private(path)?;
    let ours = std::fs::symlink_metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .map_err(io_err("stat", path))?;

    let served = Server::builder()
        .add_optional_service(snapshots.map(SnapshotsServer::new))
        .add_optional_service(diff.map(DiffServer::new))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;

    // Only remove the file if nobody has replaced it meanwhile (e.g. a new
    // instance started during our graceful shutdown): theirs must survive.
    if let Ok(m) = std::fs::symlink_metadata(path)
        && (m.dev(), m.ino()) == ours
    {
        // Best effort: a leftover socket is replaced by the next start.
        let _ = std::fs::remove_file(path);
    }
    Ok(served?)
}

/// Fails unless `path` is absent or a socket nobody is listening on.
async fn check_replaceable(path: &Path) -> Result<(), ServeError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("stat", path)(e)),
        Ok(m) if !m.file_type().is_socket() => Err(ServeError::NotASocket(path.to_path_buf())),
        // Connecting is the only way to tell a crashed server's leftover
        // from a running one; refused (or vanished) means stale.
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => Err(ServeError::InUse(path.to_path_buf())),
            Err(_) => Ok(()),
        },
    }
}

/// Bind a listener at `path` that is never reachable with looser
/// permissions than 0600.
///
/// The socket is bound under a temporary name beside `path`, chmod-ed, and
/// then renamed over `path` (atomically replacing a stale socket). Setting
/// the umask instead would affect every thread of the process, and
/// chmod-ing in place would leave a window in which `path` is open to all.
/// The temporary name is about 15 bytes longer than `path`, which matters
/// only near the kernel's 107-byte limit for socket paths.
fn bind_private(path: &Path) -> Result<UnixListener, ServeError> {
    let name = path.file_name().ok_or_else(|| ServeError::BadPath {
        path: path.to_path_buf(),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);

    // Left over only if a previous process with our pid died right here.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("remove", &tmp)(e)),
        _ => {}
    }
    let listener = UnixListener::bind(&tmp).map_err(io_err("bind", &tmp))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod", &tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err("rename to", path)));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}
