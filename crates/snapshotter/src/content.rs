//! Layer blobs from containerd's content store.
//!
//! A proxy differ receives a descriptor, not bytes. It reads the blob over
//! containerd's `content.v1` Read API in the caller's namespace, or, when
//! the daemon is told where containerd keeps its content, straight from
//! that directory: the same bytes without a gRPC copy. Either way the
//! result is a blocking [`Read`], because conversion runs on plain threads.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use proto::content::content_client::ContentClient;
use proto::content::{ReadContentRequest, WriteAction, WriteContentRequest};
use proto::tonic::Streaming;

use proto::content::ReadContentResponse;

/// Where to find blobs.
#[derive(Debug, Clone)]
pub struct ContentSource {
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// containerd's content store root (`…/io.containerd.content.v1.content`),
    /// read directly when set and the blob is there.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("connecting to containerd at {address}")]
    Connect {
        address: PathBuf,
        source: proto::tonic::transport::Error,
    },
    #[error("reading {digest} from containerd's content store")]
    Read {
        digest: String,
        source: Box<proto::tonic::Status>,
    },
    #[error("writing {reference} to containerd's content store")]
    Write {
        reference: String,
        source: Box<proto::tonic::Status>,
    },
    #[error("digest {0:?} is not of the form sha256:<64 hex digits>")]
    BadDigest(String),
}

impl ContentError {
    /// containerd is not there (yet): worth retrying.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ContentError::Connect { .. } => true,
            ContentError::Read { source, .. } | ContentError::Write { source, .. } => {
                source.code() == proto::tonic::Code::Unavailable
            }
            ContentError::BadDigest(_) => false,
        }
    }
}

/// The path of `digest` below a content store root, if it is a
/// well-formed sha256 digest (anything else could name a path outside).
fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, ContentError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ContentError::BadDigest(digest.to_string()))?;
    Ok(dir.join("blobs").join("sha256").join(hex))
}

impl ContentSource {
    /// A connection per transfer: containerd may start after us or
    /// restart, and a unix-socket connect costs microseconds.
    async fn connect(&self) -> Result<proto::tonic::transport::Channel, ContentError> {
        proto::connect(&self.address)
            .await
            .map_err(|source| ContentError::Connect {
                address: self.address.clone(),
                source,
            })
    }

    /// Open blob `digest` in namespace `ns`. Called on the async side; the
    /// returned reader must then be used off the executor (it blocks on
    /// `handle` for each gRPC message). Also says where it reads from
    /// (`content_dir` or `grpc`), for the log.
    pub async fn open(
        &self,
        ns: &str,
        digest: &str,
        handle: tokio::runtime::Handle,
    ) -> Result<(Box<dyn Read + Send>, &'static str), ContentError> {
        // Checked whichever way the blob is read: a malformed digest is
        // the caller's error, not containerd's.
        let relative = blob_path(Path::new(""), digest)?;
        if let Some(dir) = &self.dir {
            // Absent: this daemon may see a different containerd root than
            // configured, or the blob lives in another store; fall back.
            if let Ok(f) = File::open(dir.join(&relative)) {
                return Ok((Box::new(f), "content_dir"));
            }
        }
        let channel = self.connect().await?;
        let read_err = |s: proto::tonic::Status| ContentError::Read {
            digest: digest.to_string(),
            source: Box::new(s),
        };
        let req = proto::metadata::with_namespace(
            ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            },
            ns,
        )
        .map_err(read_err)?;
        let stream = ContentClient::new(channel)
            .read(req)
            .await
            .map_err(read_err)?
            .into_inner();
        Ok((
            Box::new(GrpcBlob {
                stream,
                handle,
                buf: Vec::new(),
                pos: 0,
                done: false,
            }),
            "grpc",
        ))
    }
}

/// Where an upload goes: the caller's namespace and lease, and the ingest
/// reference (containerd locks it for the duration of the write).
#[derive(Debug, Clone)]
pub struct UploadTarget {
    pub namespace: String,
    pub lease: Option<String>,
    pub reference: String,
}

impl ContentSource {
    /// Start writing a blob into containerd's content store. The returned
    /// [`Upload`] is a blocking writer for a plain thread; the task drives
    /// the gRPC stream and ends with the write's outcome once the upload
    /// is committed or dropped.
    pub async fn upload(
        &self,
        target: &UploadTarget,
    ) -> Result<(Upload, tokio::task::JoinHandle<Result<(), ContentError>>), ContentError> {
        let channel = self.connect().await?;
        let write_err = |s: proto::tonic::Status| ContentError::Write {
            reference: target.reference.clone(),
            source: Box::new(s),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let mut req = proto::metadata::with_namespace(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &target.namespace,
        )
        .map_err(write_err)?;
        if let Some(lease) = &target.lease {
            proto::metadata::set_lease(&mut req, lease).map_err(write_err)?;
        }
        let reference = target.reference.clone();
        let task = tokio::spawn(async move {
            let write_err = |s: proto::tonic::Status| ContentError::Write {
                reference: reference.clone(),
                source: Box::new(s),
            };
            let mut responses = ContentClient::new(channel)
                .write(req)
                .await
                .map_err(write_err)?
                .into_inner();
            loop {
                match responses.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    // The same bytes are already stored: what we wanted.
                    Err(s) if s.code() == proto::tonic::Code::AlreadyExists => return Ok(()),
                    Err(s) => return Err(write_err(s)),
                }
            }
        });
        Ok((
            Upload {
                tx,
                reference: target.reference.clone(),
                offset: 0,
                buf: Vec::with_capacity(UPLOAD_CHUNK),
            },
            task,
        ))
    }
}

/// Bytes per Write message: large enough to amortise the per-message
/// cost, well under gRPC's default 4 MiB message limit.
const UPLOAD_CHUNK: usize = 1 << 20;

/// The writing end of [`ContentSource::upload`].
pub struct Upload {
    tx: tokio::sync::mpsc::Sender<WriteContentRequest>,
    reference: String,
    offset: u64,
    buf: Vec<u8>,
}

impl Upload {
    fn send(&mut self, action: WriteAction, data: Vec<u8>) -> io::Result<()> {
        let len = data.len() as u64;
        let msg = WriteContentRequest {
            action: action as i32,
            r#ref: self.reference.clone(),
            offset: i64::try_from(self.offset).unwrap_or(i64::MAX),
            data,
            ..Default::default()
        };
        self.tx
            .blocking_send(msg)
            .map_err(|_| io::Error::other("containerd closed the content write"))?;
        self.offset += len;
        Ok(())
    }

    /// Send what is buffered, then commit the blob as `digest` of `size`
    /// bytes with `labels`.
    pub fn commit(
        mut self,
        size: u64,
        digest: &str,
        labels: std::collections::HashMap<String, String>,
    ) -> io::Result<()> {
        let data = std::mem::take(&mut self.buf);
        let msg = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            offset: i64::try_from(self.offset).unwrap_or(i64::MAX),
            total: i64::try_from(size).unwrap_or(i64::MAX),
            expected: digest.to_string(),
            data,
            labels,
        };
        self.tx
            .blocking_send(msg)
            .map_err(|_| io::Error::other("containerd closed the content write"))
    }
}

impl Write for Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = UPLOAD_CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == UPLOAD_CHUNK {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(UPLOAD_CHUNK));
            self.send(WriteAction::Write, chunk)?;
        }
        Ok(n)
    }

    /// Buffered data goes out with the next full chunk or the commit;
    /// flushing early would only make smaller messages.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A content.v1 Read stream as a blocking reader.
struct GrpcBlob {
    stream: Streaming<ReadContentResponse>,
    handle: tokio::runtime::Handle,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for GrpcBlob {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match self.handle.block_on(self.stream.message()) {
                Ok(Some(msg)) => {
                    self.buf = msg.data;
                    self.pos = 0;
                }
                Ok(None) => self.done = true,
                Err(s) => return Err(io::Error::other(format!("content read: {s}"))),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn blob_paths_are_confined_to_the_store() {
        let dir = Path::new("/store");
        let hex = "a".repeat(64);
        assert_eq!(
            blob_path(dir, &format!("sha256:{hex}")).unwrap(),
            Path::new("/store/blobs/sha256").join(&hex)
        );
        for bad in [
            "sha256:../../etc/passwd".to_string(),
            format!("sha512:{hex}"),
            format!("sha256:{}", "g".repeat(64)),
            format!("sha256:{hex}/x"),
            String::new(),
        ] {
            assert!(matches!(
                blob_path(dir, &bad),
                Err(ContentError::BadDigest(_))
            ));
        }
    }
}
