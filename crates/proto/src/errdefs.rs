//! The one place where our error kinds become gRPC status codes.
//!
//! containerd turns the codes of a proxy plugin's replies back into its
//! `errdefs` errors (`errgrpc.ToNative`) and branches on them; the message
//! is only shown to people. What each kind makes containerd do:
//!
//! - NotFound: `Stat` of a missing key is how the unpacker and
//!   `IsUnpacked` learn a layer is not there yet.
//! - AlreadyExists: Prepare/Commit of an existing key; the unpacker retries
//!   on it, and a Prepare target that already exists means "skip this layer".
//! - FailedPrecondition: e.g. removing a snapshot that still has children;
//!   garbage collection tolerates it and tries again later.
//! - InvalidArgument: a malformed request.
//! - Unimplemented: containerd's diff service falls through to the next
//!   differ in its `default` list, so a differ uses it for "not mine".
//! - Unavailable: a temporary condition; the caller may retry.
//! - Internal: everything else. Any code containerd does not map becomes an
//!   opaque error, so there is no gain in inventing others.

use tonic::{Code, Status};

/// What went wrong, in containerd's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Unimplemented,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// The gRPC code containerd expects for this kind.
    pub const fn code(self) -> Code {
        match self {
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::FailedPrecondition => Code::FailedPrecondition,
            Self::InvalidArgument => Code::InvalidArgument,
            Self::Unimplemented => Code::Unimplemented,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }

    /// The kind for a code received from containerd (e.g. a content.v1 read
    /// that failed), so it can be passed on unchanged. Codes outside our
    /// kinds (Canceled, DeadlineExceeded, ...) give `None`: the caller
    /// decides, typically Unavailable or Internal.
    pub const fn from_code(code: Code) -> Option<Self> {
        Some(match code {
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists => Self::AlreadyExists,
            Code::FailedPrecondition => Self::FailedPrecondition,
            Code::InvalidArgument => Self::InvalidArgument,
            Code::Unimplemented => Self::Unimplemented,
            Code::Unavailable => Self::Unavailable,
            Code::Internal => Self::Internal,
            _ => return None,
        })
    }
}

/// `e` and all its sources, joined with ": ". containerd shows only a
/// status's message to the user, so the message must carry the causes.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The status to return for an error of `kind`; `msg` is for people.
pub fn status(kind: ErrorKind, msg: impl Into<String>) -> Status {
    Status::new(kind.code(), msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorKind; 7] = [
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::FailedPrecondition,
        ErrorKind::InvalidArgument,
        ErrorKind::Unimplemented,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    #[test]
    fn codes_round_trip() {
        for kind in ALL {
            assert_eq!(ErrorKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(ErrorKind::from_code(Code::Ok), None);
        assert_eq!(ErrorKind::from_code(Code::Cancelled), None);
    }

    #[test]
    fn status_keeps_code_and_message() {
        let s = status(ErrorKind::NotFound, "snapshot k does not exist");
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "snapshot k does not exist");
    }
}
