//! The one place where errors become gRPC status codes: an exhaustive match, no catch-all arm,
//! so a new error variant cannot silently get the wrong code.

use crate::registry::state::Rejection;
use tonic::{Code, Status};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {expected}")]
    InvalidArgument { field: String, expected: String },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{field} is {size} bytes, the limit is {limit}")]
    TooLarge {
        field: &'static str,
        size: usize,
        limit: usize,
    },
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("the ledger is shutting down or its writer stopped")]
    Unavailable,
    /// Logged in full, answered with little.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, expected: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field: field.into(),
            expected: expected.into(),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::TooLarge { .. } => Code::ResourceExhausted,
            ApiError::Unavailable => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
            ApiError::Rejected(r) => match r {
                Rejection::WrongLedger { .. } => Code::InvalidArgument,
                Rejection::UnknownKey { .. } => Code::Unauthenticated,
                Rejection::ActorMismatch { .. } => Code::Unauthenticated,
                Rejection::NonceReused { .. } => Code::AlreadyExists,
                // Answered as success by the handlers; reaching here would be a bug.
                Rejection::Duplicate { .. } => Code::AlreadyExists,
                Rejection::PermissionDenied(_) => Code::PermissionDenied,
                Rejection::InvalidArgument { .. } => Code::InvalidArgument,
                Rejection::NotFound { .. } => Code::NotFound,
                Rejection::AlreadyExists { .. } => Code::AlreadyExists,
                Rejection::StaleParent { .. } => Code::Aborted,
                Rejection::FailedPrecondition { .. } => Code::FailedPrecondition,
                Rejection::NoPolicy => Code::FailedPrecondition,
                Rejection::GateFailed(_) => Code::FailedPrecondition,
                Rejection::Conflict { .. } => Code::Aborted,
                Rejection::NotAppendable { .. } => Code::InvalidArgument,
            },
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        if let ApiError::Internal(detail) = &e {
            tracing::error!(%detail, "internal error");
        }
        let message = match &e {
            ApiError::Rejected(Rejection::WrongLedger { expected, found }) => {
                format!("statement.ledger_id: expected {expected}, got {found}")
            }
            other => other.to_string(),
        };
        Status::new(e.code(), message)
    }
}
