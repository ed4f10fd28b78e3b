//! Who may call the API: access keys from `server.auth`, proven by an AWS Signature Version 4
//! (what every AWS SDK and the AWS CLI send) or by `Authorization: Bearer <id>:<secret>` (for
//! curl, log shippers and Prometheus), each allowed some operations on some streams.
//!
//! [`authenticate`] runs before every protected route: it establishes the caller (a
//! [`Principal`]) or answers with AWS's error; each handler then asks the principal whether
//! it may do what the call asks ([`Principal::authorize`]), once it knows the stream.

pub mod sigv4;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::ApiState;
use super::aws_error::{AwsError, AwsErrorType};
use super::record_limits::MAX_NDJSON_BODY_BYTES;
use crate::config::{AuthConfig, Secret};

/// Why a caller was not let in, as AWS names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// The `Authorization` header is malformed; what is wrong with it.
    Incomplete(String),
    /// No such access key.
    UnknownKey,
    /// The signature does not check out (or is expired, or scoped elsewhere); why.
    InvalidSignature(String),
}

impl From<AuthFailure> for AwsError {
    fn from(failure: AuthFailure) -> Self {
        match failure {
            AuthFailure::Missing => AwsError::new(
                AwsErrorType::MissingAuthenticationToken,
                "Missing Authentication Token",
            ),
            AuthFailure::Incomplete(message) => {
                AwsError::new(AwsErrorType::IncompleteSignature, message)
            }
            AuthFailure::UnknownKey => AwsError::new(
                AwsErrorType::UnrecognizedClient,
                "The security token included in the request is invalid.",
            ),
            AuthFailure::InvalidSignature(message) => {
                AwsError::new(AwsErrorType::InvalidSignature, message)
            }
        }
    }
}

/// What one key may do.
#[derive(Debug)]
struct Allowed {
    streams: Vec<String>,
    actions: Vec<String>,
}

impl Allowed {
    fn action(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == "*" || a == action)
    }

    fn stream(&self, stream: &str) -> bool {
        self.streams
            .iter()
            .any(|pattern| glob_match(pattern, stream))
    }
}

/// One configured access key: its secret and what it may do.
pub struct AccessKey {
    secret: Secret,
    allowed: Allowed,
}

/// The configured keys, checked against every protected call.
pub struct Authenticator {
    keys: HashMap<String, Arc<AccessKey>>,
    region: Option<String>,
}

impl Authenticator {
    /// The keys of `server.auth`.
    pub fn new(config: &AuthConfig) -> Self {
        let keys = config
            .access_keys
            .value
            .iter()
            .map(|key| {
                (
                    key.id.value.clone(),
                    Arc::new(AccessKey {
                        secret: key.secret.value.clone(),
                        allowed: Allowed {
                            streams: key.allow.streams.iter().map(|s| s.value.clone()).collect(),
                            actions: key.allow.actions.iter().map(|a| a.value.clone()).collect(),
                        },
                    }),
                )
            })
            .collect();
        Self {
            keys,
            region: config.region.as_ref().map(|r| r.value.clone()),
        }
    }

    /// The caller of a request with these parts and body.
    fn principal(
        &self,
        parts: &axum::http::request::Parts,
        body: &[u8],
    ) -> Result<Principal, AuthFailure> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthFailure::Missing)?
            .to_str()
            .map_err(|_| AuthFailure::Incomplete("the Authorization header is not text".into()))?;
        if let Some(token) = value.strip_prefix("Bearer ") {
            return self.bearer(token.trim());
        }
        // What a browser sends for the console once asked: the same key and secret.
        if let Some(encoded) = value.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    AuthFailure::Incomplete("Basic credentials must be base64 of id:secret".into())
                })?;
            return self.bearer(&decoded);
        }
        let signature = sigv4::parse_header(value)?;
        let key = self
            .keys
            .get(signature.access_key)
            .ok_or(AuthFailure::UnknownKey)?;
        let request = sigv4::ArrivedRequest {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            body,
        };
        sigv4::verify(
            &request,
            &signature,
            key.secret.expose(),
            self.region.as_deref(),
            chrono::Utc::now(),
        )?;
        Ok(Principal::Key {
            id: signature.access_key.to_string(),
            key: Arc::clone(key),
        })
    }

    /// The caller presenting `<id>:<secret>`; the secret compared in constant time.
    fn bearer(&self, token: &str) -> Result<Principal, AuthFailure> {
        let (id, secret) = token.split_once(':').ok_or_else(|| {
            AuthFailure::Incomplete("a Bearer token must be <access key id>:<secret>".into())
        })?;
        let key = self.keys.get(id).ok_or(AuthFailure::UnknownKey)?;
        let given = Sha256::digest(secret.as_bytes());
        let expected = Sha256::digest(key.secret.expose().as_bytes());
        if !bool::from(given.as_slice().ct_eq(expected.as_slice())) {
            return Err(AuthFailure::InvalidSignature(
                "The secret in the Bearer token does not match the access key's secret.".into(),
            ));
        }
        Ok(Principal::Key {
            id: id.to_string(),
            key: Arc::clone(key),
        })
    }
}

/// Who is calling.
#[derive(Clone)]
pub enum Principal {
    /// Anyone: the service runs without `auth`.
    Anyone,
    /// A configured access key.
    Key {
        /// Its id (never its secret).
        id: String,
        /// The key.
        key: Arc<AccessKey>,
    },
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Anyone => f.write_str("Anyone"),
            Principal::Key { id, .. } => write!(f, "Key({id})"),
        }
    }
}

impl Principal {
    /// Whether the caller may do `action` (on `stream`), without logging a refusal: for
    /// listings that just leave out what the caller may not see.
    pub fn may(&self, action: &str, stream: Option<&str>) -> bool {
        match self {
            Principal::Anyone => true,
            Principal::Key { key, .. } => {
                key.allowed.action(action) && stream.is_none_or(|s| key.allowed.stream(s))
            }
        }
    }

    /// Whether the caller may do `action` (a Firehose operation, or `GetMetrics`) on
    /// `stream` (`None`: an operation on no one stream, allowed if any stream is).
    pub fn authorize(&self, action: &str, stream: Option<&str>) -> Result<(), AwsError> {
        if self.may(action, stream) {
            return Ok(());
        }
        let Principal::Key { id, .. } = self else {
            return Ok(());
        };
        let resource = stream.map_or_else(|| "*".to_string(), |s| format!("deliverystream/{s}"));
        tracing::info!(access_key = %id, action, resource, "access denied");
        Err(AwsError::new(
            AwsErrorType::AccessDenied,
            format!(
                "User: {id} is not authorized to perform: firehose:{action} on resource: {resource}"
            ),
        ))
    }
}

/// Establishes the caller of a protected route (reading the body, which the signature
/// covers, and handing it on) or answers with AWS's authentication error.
pub async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(auth) = state.auth.clone() else {
        let mut request = request;
        request.extensions_mut().insert(Principal::Anyone);
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    if !parts.headers.contains_key(header::AUTHORIZATION) {
        if crate::console::is_console_request(&parts.method, parts.uri.path()) {
            return crate::console::ask_for_credentials();
        }
        return AwsError::from(AuthFailure::Missing).into_response();
    }
    let body = match super::body::read_body(body, MAX_NDJSON_BODY_BYTES).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    match auth.principal(&parts, &body) {
        Ok(principal) => {
            parts.extensions.insert(principal);
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
        Err(failure) => {
            tracing::info!(
                path = parts.uri.path(),
                "refused an unauthenticated call: {failure:?}"
            );
            AwsError::from(failure).into_response()
        }
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    let (mut p, mut n) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            backtrack = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            n = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_patterns_match_as_globs() {
        for (pattern, name, expected) in [
            ("*", "anything", true),
            ("app-*", "app-web", true),
            ("app-*", "app-", true),
            ("app-*", "ap", false),
            ("app-*", "web-app-x", false),
            ("*-logs", "nginx-logs", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(pattern, name), expected, "{pattern} ~ {name}");
        }
    }

    #[test]
    fn principals_are_allowed_only_their_actions_on_their_streams() {
        let key = Principal::Key {
            id: "AKIDSHIPPER01".into(),
            key: Arc::new(AccessKey {
                secret: serde_json::from_str("\"s\"").unwrap(),
                allowed: Allowed {
                    streams: vec!["app-*".into()],
                    actions: vec!["PutRecord".into(), "PutRecordBatch".into()],
                },
            }),
        };
        assert!(key.authorize("PutRecord", Some("app-web")).is_ok());
        let denied = key.authorize("PutRecord", Some("billing")).unwrap_err();
        assert_eq!(denied.kind, AwsErrorType::AccessDenied);
        assert_eq!(
            denied.message,
            "User: AKIDSHIPPER01 is not authorized to perform: firehose:PutRecord on resource: deliverystream/billing"
        );
        assert!(
            key.authorize("DescribeDeliveryStream", Some("app-web"))
                .is_err()
        );
        assert!(key.authorize("ListDeliveryStreams", None).is_err());
        assert!(Principal::Anyone.authorize("GetMetrics", None).is_ok());
        assert_eq!(format!("{key:?}"), "Key(AKIDSHIPPER01)");
    }
}
