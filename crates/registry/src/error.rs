//! The registry's errors, each mapped to the Distribution spec's error code
//! and HTTP status and rendered as `{"errors":[{"code","message","detail"}]}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    RangeInvalid,
    /// Past a size limit: `413`.
    TooLarge,
    /// A conditional manifest PUT (`If-Match`/`If-None-Match`) whose tag
    /// moved: `412`. Not in the distribution spec, which has no
    /// conditional requests; only Slipway's cache export sends them.
    PreconditionFailed,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid | Code::RangeInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid | Code::TooLarge => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::PreconditionFailed => "PRECONDITION_FAILED",
            Code::Internal => "UNKNOWN",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Code::BlobUnknown
            | Code::BlobUploadUnknown
            | Code::ManifestUnknown
            | Code::NameUnknown => StatusCode::NOT_FOUND,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error answered to a registry client.
#[derive(Debug)]
pub struct RegistryError {
    pub code: Code,
    pub message: String,
    pub status: Option<StatusCode>,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RegistryError {
            code,
            message: message.into(),
            status: None,
            headers: Vec::new(),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {err}");
        RegistryError::new(Code::Internal, format!("{context}: {err}"))
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::BlobUnknown(_) => RegistryError::new(Code::BlobUnknown, e.to_string()),
            StoreError::UploadUnknown(_) => {
                RegistryError::new(Code::BlobUploadUnknown, e.to_string())
            }
            StoreError::OffsetMismatch { expected, .. } => {
                let range = format!("0-{}", expected.saturating_sub(1));
                RegistryError::new(Code::RangeInvalid, e.to_string())
                    .with_header(header::RANGE, &range)
            }
            StoreError::RangeNotSatisfiable { size, .. } => {
                RegistryError::new(Code::RangeInvalid, e.to_string())
                    .with_header(header::CONTENT_RANGE, &format!("bytes */{size}"))
            }
            StoreError::DigestMismatch { .. } => {
                RegistryError::new(Code::DigestInvalid, e.to_string())
            }
            StoreError::Body { .. } => RegistryError::new(Code::BlobUploadInvalid, e.to_string()),
            _ => RegistryError::internal("blob store", e),
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{"code": self.code.as_str(), "message": self.message, "detail": null}]
        });
        let status = self.status.unwrap_or_else(|| self.code.status());
        let mut resp = (status, axum::Json(body)).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}
