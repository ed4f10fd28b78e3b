//! Server-side encryption of an S3 destination: the settings checked into one
//! [`ServerSideEncryption`](hydrant_sinks::prelude::ServerSideEncryption), and what
//! `hydrant validate` says about which stores do it.

use super::{Config, Destination, S3Destination, Secret};

impl S3Destination {
    /// The server-side encryption asked for, or why the settings do not make one.
    pub fn server_side_encryption(
        &self,
    ) -> Result<
        Option<hydrant_sinks::prelude::ServerSideEncryption>,
        (serde_saphyr::Location, String),
    > {
        use hydrant_sinks::prelude::ServerSideEncryption as Sse;
        let Some(mode) = &self.server_side_encryption else {
            if let Some(key) = &self.kms_key_id {
                return Err((
                    key.referenced,
                    "`kms_key_id` needs `server_side_encryption: aws:kms` (or aws:kms:dsse)".into(),
                ));
            }
            if let Some(key) = &self.sse_customer_key {
                return Err((
                    key.referenced,
                    "`sse_customer_key` needs `server_side_encryption: SSE-C`".into(),
                ));
            }
            return Ok(None);
        };
        let kms_key_id = self.kms_key_id.as_ref().map(|k| k.value.clone());
        if kms_key_id.is_some() && !matches!(mode.value.as_str(), "aws:kms" | "aws:kms:dsse") {
            let key = self.kms_key_id.as_ref().expect("checked");
            return Err((
                key.referenced,
                format!(
                    "`kms_key_id` is only for aws:kms and aws:kms:dsse, not `{}`",
                    mode.value
                ),
            ));
        }
        let encryption = match mode.value.as_str() {
            "AES256" => Sse::S3Managed,
            "aws:kms" => Sse::Kms { key_id: kms_key_id },
            "aws:kms:dsse" => Sse::DualKms { key_id: kms_key_id },
            "SSE-C" => {
                let Some(key) = &self.sse_customer_key else {
                    return Err((mode.referenced, "`server_side_encryption: SSE-C` needs `sse_customer_key` (32 bytes in base64)".into()));
                };
                Secret::key_32(key, "`sse_customer_key`")
                    .map_err(|(key, message)| (key.referenced, message))?;
                Sse::CustomerKey {
                    key_base64: key.value.expose().trim().to_string(),
                }
            }
            other => {
                return Err((
                    mode.referenced,
                    format!(
                        "`server_side_encryption` must be AES256, aws:kms, aws:kms:dsse or SSE-C, got `{other}`"
                    ),
                ));
            }
        };
        if !matches!(encryption, Sse::CustomerKey { .. })
            && let Some(key) = &self.sse_customer_key
        {
            return Err((
                key.referenced,
                "`sse_customer_key` is only for `server_side_encryption: SSE-C`".into(),
            ));
        }
        Ok(Some(encryption))
    }
}

/// What `hydrant validate` tells about each stream's server-side encryption: which stores
/// do what is asked, as a line per S3 stream that asks for it.
pub fn encryption_notes(config: &Config) -> Vec<String> {
    use hydrant_sinks::prelude::ServerSideEncryption as Sse;
    let mut notes = Vec::new();
    for (name, stream) in config.streams.iter() {
        let Destination::S3(s3) = &stream.destination else {
            continue;
        };
        let Ok(Some(encryption)) = s3.server_side_encryption() else {
            continue;
        };
        let what = match encryption {
            Sse::S3Managed => {
                "AES256 (SSE-S3): AWS S3 and SeaweedFS encrypt with keys they manage; MinIO \
                 needs a KMS (KES) configured"
            }
            Sse::Kms { .. } | Sse::DualKms { .. } => {
                "aws:kms: the store needs a KMS: AWS S3 (the key policy must let these \
                 credentials use the key), MinIO with KES; SeaweedFS without a KMS provider \
                 answers InternalError"
            }
            Sse::CustomerKey { .. } => {
                "SSE-C: AWS S3 and MinIO take it over HTTPS only, SeaweedFS over HTTP too; \
                 every reader must send the same key, and objects are lost with the key"
            }
        };
        notes.push(format!(
            "note: stream `{}` asks its store for {what}. A store that does not do it refuses \
             every write; those are retried and, after retry_duration_seconds, reported.",
            name.value
        ));
    }
    notes
}
