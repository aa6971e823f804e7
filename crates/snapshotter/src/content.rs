//! Layer blobs from containerd's content store.
//!
//! A proxy differ receives a descriptor, not bytes. It reads the blob over
//! containerd's `content.v1` Read API in the caller's namespace, or, when
//! the daemon is told where containerd keeps its content, straight from
//! that directory: the same bytes without a gRPC copy. Either way the
//! result is a blocking [`Read`], because conversion runs on plain threads.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use proto::content::ReadContentRequest;
use proto::content::content_client::ContentClient;
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
    #[error("digest {0:?} is not of the form sha256:<64 hex digits>")]
    BadDigest(String),
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
    /// Open blob `digest` in namespace `ns`. Called on the async side; the
    /// returned reader must then be used off the executor (it blocks on
    /// `handle` for each gRPC message).
    pub async fn open(
        &self,
        ns: &str,
        digest: &str,
        handle: tokio::runtime::Handle,
    ) -> Result<Box<dyn Read + Send>, ContentError> {
        if let Some(dir) = &self.dir {
            let path = blob_path(dir, digest)?;
            // Absent: this daemon may see a different containerd root than
            // configured, or the blob lives in another store; fall back.
            if let Ok(f) = File::open(&path) {
                return Ok(Box::new(f));
            }
        } else {
            blob_path(Path::new(""), digest)?;
        }
        let channel =
            proto::connect(&self.address)
                .await
                .map_err(|source| ContentError::Connect {
                    address: self.address.clone(),
                    source,
                })?;
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
        Ok(Box::new(GrpcBlob {
            stream,
            handle,
            buf: Vec::new(),
            pos: 0,
            done: false,
        }))
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
