//! [`ObjectSink`] over the `object_store` crate.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

use super::{EncodedObject, ObjectSink, S3Options, ServerSideEncryption, WriteMode};
use crate::error::{Service, SinkError, SinkErrorKind};

/// Parts of a multipart upload sent at once.
const MULTIPART_CONCURRENCY: usize = 4;

/// An object destination backed by any `object_store` implementation.
#[derive(Debug, Clone)]
pub struct ObjectStoreSink {
    store: Arc<dyn ObjectStore>,
    description: String,
    supports_attributes: bool,
    multipart_threshold_bytes: usize,
    multipart_part_bytes: usize,
}

impl ObjectStoreSink {
    /// A sink writing files under `root`, creating the directory if needed. Writes go to a
    /// temporary file first and are renamed into place, so readers never see partial objects.
    pub fn local(root: &std::path::Path) -> Result<Self, SinkError> {
        let describe = format!("file://{}", root.display());
        std::fs::create_dir_all(root).map_err(|e| {
            SinkError::new(
                SinkErrorKind::Rejected,
                Service::ObjectStore,
                describe.clone(),
                root.display().to_string(),
                format!("cannot create the directory: {e}"),
            )
        })?;
        let store = LocalFileSystem::new_with_prefix(root).map_err(|e| {
            SinkError::new(
                SinkErrorKind::Rejected,
                Service::ObjectStore,
                describe.clone(),
                root.display().to_string(),
                e.to_string(),
            )
        })?;
        Ok(Self {
            store: Arc::new(store),
            description: describe,
            supports_attributes: false,
            multipart_threshold_bytes: usize::MAX,
            multipart_part_bytes: usize::MAX,
        })
    }

    /// A sink holding objects in memory (`object_store`'s `InMemory`): for tests of what is
    /// written, and benchmarks without a disk.
    pub fn in_memory() -> Self {
        Self {
            store: Arc::new(object_store::memory::InMemory::new()),
            description: "memory://".into(),
            supports_attributes: true,
            multipart_threshold_bytes: usize::MAX,
            multipart_part_bytes: usize::MAX,
        }
    }

    /// The store underneath, to read back what was written.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// A sink writing to an S3-compatible bucket.
    pub fn s3(options: &S3Options) -> Result<Self, SinkError> {
        let describe = format!("s3://{}", options.bucket);
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&options.bucket);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &options.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &options.session_token {
            builder = builder.with_token(token);
        }
        builder = builder
            .with_virtual_hosted_style_request(!options.force_path_style)
            // Hydrant's delivery loop owns retries (it logs each one and keeps its own
            // deadline), so the client makes only a couple of quick attempts of its own.
            .with_retry(RetryConfig {
                max_retries: 1,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            })
            // Set key by key: replacing the client options wholesale would drop what
            // `from_env` read (AWS_ALLOW_HTTP, proxies, ...).
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                format!("{}ms", options.request_timeout.as_millis()),
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "5s",
            );
        if let Some(encryption) = &options.server_side_encryption {
            // The encryption keys are named by their configuration strings: object_store
            // does not export their enum.
            let sse = |builder: AmazonS3Builder, key: &str, value: &str| {
                let key: AmazonS3ConfigKey = key.parse().expect("an object_store encryption key");
                builder.with_config(key, value)
            };
            let (mode, kms_key_id) = match encryption {
                ServerSideEncryption::S3Managed => ("AES256", None),
                ServerSideEncryption::Kms { key_id } => ("aws:kms", key_id.as_deref()),
                ServerSideEncryption::DualKms { key_id } => ("aws:kms:dsse", key_id.as_deref()),
                ServerSideEncryption::CustomerKey { key_base64 } => {
                    builder = sse(builder, "aws_sse_customer_key_base64", key_base64);
                    ("sse-c", None)
                }
            };
            builder = sse(builder, "aws_server_side_encryption", mode);
            if let Some(key_id) = kms_key_id {
                builder = sse(builder, "aws_sse_kms_key_id", key_id);
            }
        }
        let endpoint = options
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok());
        if endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
        {
            builder = builder.with_allow_http(true);
        }
        let store = builder.build().map_err(|e| {
            SinkError::new(
                SinkErrorKind::Rejected,
                Service::ObjectStore,
                describe.clone(),
                String::new(),
                e.to_string(),
            )
        })?;
        Ok(Self {
            store: Arc::new(store),
            description: describe,
            supports_attributes: true,
            multipart_threshold_bytes: options.multipart_threshold_bytes,
            multipart_part_bytes: options.multipart_part_bytes.max(5 * 1024 * 1024),
        })
    }

    fn attributes(&self, object: &EncodedObject) -> Attributes {
        let mut attributes = Attributes::new();
        if self.supports_attributes {
            attributes.insert(Attribute::ContentType, object.content_type.into());
            if let Some(encoding) = object.content_encoding {
                attributes.insert(Attribute::ContentEncoding, encoding.into());
            }
        }
        attributes
    }

    fn error(&self, key: &str, error: object_store::Error) -> SinkError {
        let kind = match &error {
            object_store::Error::NotFound { .. } => SinkErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => SinkErrorKind::AlreadyExists,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => SinkErrorKind::AccessDenied,
            object_store::Error::NotImplemented { .. }
            | object_store::Error::NotSupported { .. } => SinkErrorKind::Rejected,
            other => classify_generic(&other.to_string()),
        };
        SinkError::new(
            kind,
            Service::ObjectStore,
            self.description.clone(),
            key.to_string(),
            flatten_error(&error),
        )
        .caused_by(error)
    }

    async fn put_multipart(
        &self,
        path: &Path,
        object: &EncodedObject,
        mode: WriteMode,
    ) -> Result<(), SinkError> {
        if mode == WriteMode::CreateOnly {
            // Multipart uploads cannot be conditional everywhere; one writer per key makes
            // a check first equivalent.
            match self.store.head(path).await {
                Ok(_) => {
                    return Err(SinkError::new(
                        SinkErrorKind::AlreadyExists,
                        Service::ObjectStore,
                        self.description.clone(),
                        object.key.clone(),
                        "an object with this key already exists",
                    ));
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(&object.key, e)),
            }
        }
        let options = PutMultipartOptions {
            attributes: self.attributes(object),
            ..Default::default()
        };
        let upload = self
            .store
            .put_multipart_opts(path, options)
            .await
            .map_err(|e| self.error(&object.key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.multipart_part_bytes);
        for part in &object.parts {
            if let Err(e) = writer.wait_for_capacity(MULTIPART_CONCURRENCY).await {
                let _ = writer.abort().await;
                return Err(self.error(&object.key, e));
            }
            writer.put(part.clone());
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| self.error(&object.key, e))
    }
}

#[async_trait]
impl ObjectSink for ObjectStoreSink {
    async fn put(&self, object: &EncodedObject, mode: WriteMode) -> Result<(), SinkError> {
        let path = Path::parse(&object.key).map_err(|e| {
            SinkError::new(
                SinkErrorKind::Rejected,
                Service::ObjectStore,
                self.description.clone(),
                object.key.clone(),
                format!("invalid object key: {e}"),
            )
        })?;
        if object.len() >= self.multipart_threshold_bytes {
            return self.put_multipart(&path, object, mode).await;
        }
        let payload: PutPayload = object.parts.iter().cloned().collect();
        let options = PutOptions {
            attributes: self.attributes(object),
            mode: match mode {
                WriteMode::Overwrite => PutMode::Overwrite,
                WriteMode::CreateOnly => PutMode::Create,
            },
            ..Default::default()
        };
        self.store
            .put_opts(&path, payload, options)
            .await
            .map(|_| ())
            .map_err(|e| self.error(&object.key, e))
    }

    fn describe(&self) -> &str {
        &self.description
    }
}

/// S3 reports many faults as generic errors carrying the HTTP status and the S3 error code in
/// their text; pick the kind from those.
fn classify_generic(text: &str) -> SinkErrorKind {
    let has = |needle: &str| text.contains(needle);
    if has("NoSuchBucket") || has("404 Not Found") {
        SinkErrorKind::NotFound
    } else if has("SignatureDoesNotMatch")
        || has("InvalidAccessKeyId")
        || has("AccessDenied")
        || has("403 Forbidden")
    {
        SinkErrorKind::AccessDenied
    } else if has("400 Bad Request") {
        SinkErrorKind::Rejected
    } else {
        SinkErrorKind::Unavailable
    }
}

/// The error and every source under it on one line, so a log line carries the real cause
/// (connection refused, the server's error code) rather than only the outermost wrapper.
fn flatten_error(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    compact_reason(&text)
}

/// Puts a reason on one line: S3 error bodies are multi-line XML, of which only `<Code>` and
/// `<Message>` matter to a reader of the log.
fn compact_reason(text: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].trim().to_string())
    };
    let mut reason = match text.find("<?xml").or_else(|| text.find("<Error>")) {
        Some(xml_start) => {
            let mut head = text[..xml_start]
                .trim_end()
                .trim_end_matches(':')
                .to_string();
            if let Some(code) = tag("Code") {
                head.push_str(": ");
                head.push_str(&code);
            }
            if let Some(message) = tag("Message") {
                head.push_str(": ");
                head.push_str(&message);
            }
            head
        }
        None => text.to_string(),
    };
    reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn local_sink_writes_all_parts_in_order() {
        let dir = std::env::temp_dir().join(format!("hydrant-sink-test-{}", std::process::id()));
        let sink = ObjectStoreSink::local(&dir).unwrap();
        let object = EncodedObject {
            key: "a/b/object.txt".into(),
            parts: vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")],
            content_type: "text/plain",
            content_encoding: None,
        };
        sink.put(&object, WriteMode::CreateOnly).await.unwrap();
        let written = std::fs::read(dir.join("a/b/object.txt")).unwrap();
        assert_eq!(written, b"hello world");
        let again = sink.put(&object, WriteMode::CreateOnly).await.unwrap_err();
        assert_eq!(again.kind, SinkErrorKind::AlreadyExists);
        let replaced = EncodedObject {
            parts: vec![Bytes::from_static(b"new")],
            ..object.clone()
        };
        sink.put(&replaced, WriteMode::Overwrite).await.unwrap();
        assert_eq!(std::fs::read(dir.join("a/b/object.txt")).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn xml_error_bodies_become_one_line_with_code_and_message() {
        let text = "PUT failed: 403 Forbidden: <?xml version=\"1.0\"?>\n<Error>\n  \
                    <Code>SignatureDoesNotMatch</Code>\n  <Message>The signature\n does not match\
                    </Message>\n</Error>";
        assert_eq!(
            compact_reason(text),
            "PUT failed: 403 Forbidden: SignatureDoesNotMatch: The signature does not match"
        );
        assert_eq!(compact_reason("a\n  b"), "a b");
    }

    #[test]
    fn generic_errors_are_classified_from_their_text() {
        assert_eq!(
            classify_generic("Error performing PUT: 403 Forbidden: SignatureDoesNotMatch"),
            SinkErrorKind::AccessDenied
        );
        assert_eq!(
            classify_generic("<Code>NoSuchBucket</Code>"),
            SinkErrorKind::NotFound
        );
        assert_eq!(
            classify_generic("error sending request: Connection refused"),
            SinkErrorKind::Unavailable
        );
    }
}
