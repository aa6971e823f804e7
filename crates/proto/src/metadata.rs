//! containerd's namespace travels as gRPC metadata, not in the messages.
//!
//! containerd sends it on every call to a proxy plugin, and its own services
//! (content.v1 in particular) refuse calls without it, so a differ must copy
//! the namespace of the incoming Apply onto its outgoing content reads.

use tonic::Request;
use tonic::metadata::MetadataValue;

use crate::errdefs::{ErrorKind, status};

/// The metadata key containerd uses (`namespaces.GRPCHeader` in Go).
pub const NAMESPACE_KEY: &str = "containerd-namespace";

/// The namespace an incoming request was made in, if it names one.
///
/// A value that is not visible ASCII is treated as absent: containerd's
/// namespace names are a restricted identifier syntax.
pub fn namespace<T>(req: &Request<T>) -> Option<&str> {
    req.metadata().get(NAMESPACE_KEY)?.to_str().ok()
}

/// The metadata key of the lease a client holds (`leases.GRPCHeader`):
/// content written on its behalf must be written under the same lease, or
/// containerd's garbage collector may delete it before the client refers
/// to it.
pub const LEASE_KEY: &str = "containerd-lease";

/// The lease an incoming request was made under, if any.
pub fn lease<T>(req: &Request<T>) -> Option<&str> {
    req.metadata().get(LEASE_KEY)?.to_str().ok()
}

/// Add lease `id` to an outgoing request.
pub fn set_lease<T>(req: &mut Request<T>, id: &str) -> Result<(), tonic::Status> {
    let value = MetadataValue::try_from(id).map_err(|_| {
        status(
            ErrorKind::InvalidArgument,
            format!("lease {id:?} is not a valid gRPC metadata value"),
        )
    })?;
    req.metadata_mut().insert(LEASE_KEY, value);
    Ok(())
}

/// Wrap `msg` in a request carrying namespace `ns`.
///
/// Fails with InvalidArgument if `ns` cannot be a metadata value (for
/// example it contains a newline); that can only come from a bad caller.
pub fn with_namespace<T>(msg: T, ns: &str) -> Result<Request<T>, tonic::Status> {
    let value = MetadataValue::try_from(ns).map_err(|_| {
        status(
            ErrorKind::InvalidArgument,
            format!("namespace {ns:?} is not a valid gRPC metadata value"),
        )
    })?;
    let mut req = Request::new(msg);
    req.metadata_mut().insert(NAMESPACE_KEY, value);
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() -> Result<(), tonic::Status> {
        let req = with_namespace((), "k8s.io")?;
        assert_eq!(namespace(&req), Some("k8s.io"));
        assert_eq!(namespace(&Request::new(())), None);
        let mut req = with_namespace((), "default")?;
        set_lease(&mut req, "lease-1")?;
        assert_eq!(lease(&req), Some("lease-1"));
        assert_eq!(namespace(&req), Some("default"));
        Ok(())
    }

    #[test]
    fn rejects_unencodable() {
        let err = with_namespace((), "a\nb").err().map(|s| s.code());
        assert_eq!(err, Some(tonic::Code::InvalidArgument));
    }
}
