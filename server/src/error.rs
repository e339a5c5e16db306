//! The server's error type and its mapping to HTTP responses.
//!
//! Every refusal is a JSON body `{"error": "<code>", "message": "<detail>"}`
//! with a 4xx status (every 401 has the same body, [`UNAUTHORIZED_MESSAGE`]); internal failures are logged and answered with a 500 that
//! does not leak the detail.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// The message of every 401.
pub const UNAUTHORIZED_MESSAGE: &str = "authentication failed";

/// Result with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request is not authenticated (401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The authenticated caller may not do this (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such resource (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with the current state (409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A replayed manifest or report counter (409).
    #[error("replay refused: {0}")]
    Replay(String),
    /// The body is larger than allowed (413).
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// Wrong `Content-Type` (415).
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The request or its body did not arrive in time (408).
    #[error("request timeout: {0}")]
    RequestTimeout(String),
    /// A byte range outside the file (416).
    #[error("range not satisfiable for a {length}-byte file")]
    RangeNotSatisfiable {
        /// Length of the file.
        length: u64,
    },
    /// Signed content failed verification or violates a rule (422).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The Uptane core refused something (422).
    #[error("uptane: {0}")]
    Uptane(#[from] secureev_uptane::Error),
    /// Database failure (500).
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// PostgreSQL failure (500).
    #[error("database: {}", pg_message(.0))]
    Pg(#[from] tokio_postgres::Error),
    /// File system failure (500).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS setup failure.
    #[error("tls: {0}")]
    Tls(String),
    /// Bad configuration.
    #[error("config: {0}")]
    Config(String),
    /// A PKCS#11 token refused or failed an operation (500).
    #[error("pkcs11: {op}: {detail}")]
    Hsm {
        /// What was being done (`signing with director/targets key 3f2a…`).
        op: String,
        /// The module's answer.
        detail: String,
    },
    /// Any other internal failure (500).
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// A PKCS#11 failure with context.
    pub fn hsm(op: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Hsm {
            op: op.into(),
            detail: detail.to_string(),
        }
    }

    /// An I/O error with context.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// HTTP status and stable error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::Replay(_) => (StatusCode::CONFLICT, "replay"),
            Error::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Error::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Error::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            Error::Rejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
            Error::Uptane(_) => (StatusCode::UNPROCESSABLE_ENTITY, "verification_failed"),
            Error::Db(_)
            | Error::Pg(_)
            | Error::Io { .. }
            | Error::Tls(_)
            | Error::Config(_)
            | Error::Hsm { .. }
            | Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "internal error");
            "internal error; see the server log".to_owned()
        } else if status == StatusCode::UNAUTHORIZED {
            // One body for every authentication failure (unknown vehicle, bad
            // signature, stale, replayed, bad token): the reason is logged,
            // never told, so a client cannot probe which VINs or tokens exist.
            tracing::info!(status = 401, error = %self, "request refused");
            UNAUTHORIZED_MESSAGE.to_owned()
        } else {
            tracing::info!(status = status.as_u16(), error = %self, "request refused");
            self.to_string()
        };
        let mut resp = (status, Json(json!({ "error": code, "message": message }))).into_response();
        if let Error::RangeNotSatisfiable { length } = self {
            if let Ok(v) = format!("bytes */{length}").parse() {
                resp.headers_mut()
                    .insert(axum::http::header::CONTENT_RANGE, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("SecureEV-Signature"),
            );
        }
        resp
    }
}

/// A PostgreSQL error with the server's message and SQLSTATE, when it sent one.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}
