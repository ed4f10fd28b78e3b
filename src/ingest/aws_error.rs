//! Call-level errors in the AWS JSON 1.1 shape, so SDKs raise their usual exception types.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The error types Hydrant's Firehose API returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsErrorType {
    /// A parameter violates a documented constraint (length, count, pattern).
    Validation,
    /// A parameter value is not valid in a way no single constraint names.
    InvalidArgument,
    /// The named delivery stream does not exist.
    ResourceNotFound,
    /// The body is not valid JSON, or a field has the wrong type or encoding.
    Serialization,
    /// `X-Amz-Target` names no operation Hydrant serves.
    UnknownOperation,
    /// The service is temporarily unable to take the call; retry with backoff.
    ServiceUnavailable,
    /// The call carries no `Authorization` header.
    MissingAuthenticationToken,
    /// The `Authorization` header is malformed.
    IncompleteSignature,
    /// The access key is not known.
    UnrecognizedClient,
    /// The signature does not match, has expired, or is scoped to another service or region.
    InvalidSignature,
    /// The key may not perform this operation on this stream.
    AccessDenied,
    /// The request body did not arrive in time.
    RequestTimeout,
}

impl AwsErrorType {
    /// The `__type` string SDKs map to exception classes.
    pub fn name(self) -> &'static str {
        match self {
            AwsErrorType::Validation => "ValidationException",
            AwsErrorType::InvalidArgument => "InvalidArgumentException",
            AwsErrorType::ResourceNotFound => "ResourceNotFoundException",
            AwsErrorType::Serialization => "SerializationException",
            AwsErrorType::UnknownOperation => "UnknownOperationException",
            AwsErrorType::ServiceUnavailable => "ServiceUnavailableException",
            AwsErrorType::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            AwsErrorType::IncompleteSignature => "IncompleteSignatureException",
            AwsErrorType::UnrecognizedClient => "UnrecognizedClientException",
            AwsErrorType::InvalidSignature => "InvalidSignatureException",
            AwsErrorType::AccessDenied => "AccessDeniedException",
            AwsErrorType::RequestTimeout => "RequestTimeoutException",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            AwsErrorType::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            AwsErrorType::MissingAuthenticationToken => StatusCode::FORBIDDEN,
            AwsErrorType::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An AWS-style error answer: `{"__type": ..., "message": ...}` with the matching status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    /// Which error.
    pub kind: AwsErrorType,
    /// What was wrong, naming the field.
    pub message: String,
}

impl AwsError {
    /// An error of `kind` with `message`.
    pub fn new(kind: AwsErrorType, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// AWS's wording for a violated constraint on one member.
    pub fn constraint(member: &str, value: impl std::fmt::Display, constraint: &str) -> Self {
        Self::new(
            AwsErrorType::Validation,
            format!(
                "1 validation error detected: Value '{value}' at '{member}' failed to satisfy \
                 constraint: {constraint}"
            ),
        )
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "__type": self.kind.name(), "message": self.message });
        let mut response = (self.kind.status(), body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(super::AMZ_JSON),
        );
        headers.insert(
            "x-amzn-ErrorType",
            HeaderValue::from_static(self.kind.name()),
        );
        response
    }
}
