//! Records as documents of `_bulk` request bodies: each record (one JSON object) becomes an
//! action line naming its index and `_id`, followed by the document on one line.

use chrono::{DateTime, Datelike, Utc};

use crate::compress::{Codec, CompressedChunk};
use crate::destination::RecordRef;
use crate::partition::{NameTemplate, PartitionKeys};

/// Error code of records that are not one JSON object.
pub const NOT_A_JSON_OBJECT: &str = "OpenSearch.NotJsonObject";

/// Error code of records whose `document_id` field is missing or unusable.
pub const INVALID_DOCUMENT_ID: &str = "OpenSearch.InvalidDocumentId";

/// Longest `_id` the clusters accept, in bytes.
const MAX_ID_BYTES: usize = 512;

/// How the index name follows time (Firehose's index rotation, by the record's arrival).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexRotation {
    /// One index.
    #[default]
    None,
    /// `-yyyy-MM-dd-HH`.
    Hour,
    /// `-yyyy-MM-dd`.
    Day,
    /// `-yyyy-'w'ww` (ISO 8601 week-numbering year and week).
    Week,
    /// `-yyyy-MM`.
    Month,
}

/// Why a record cannot be a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable code (`OpenSearch.NotJsonObject`, `OpenSearch.InvalidDocumentId`).
    pub code: &'static str,
    /// What is wrong with the record.
    pub message: String,
}

/// Where `_id`s come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentIds {
    /// The record id `PutRecord` returned (32 hex digits: `run`, then the sequence number).
    RecordId {
        /// The stream's record id prefix (its spool's incarnation).
        run: u64,
    },
    /// Left to the cluster.
    Auto,
    /// A JSON field (its path, one key per element).
    Field(Vec<String>),
}

/// Turns records into bulk request bodies.
#[derive(Debug)]
pub struct DocumentEncoder {
    /// The index name, with partition keys where the stream is partitioned.
    index: NameTemplate,
    rotation: IndexRotation,
    ids: DocumentIds,
    codec: Codec,
}

/// Where one document is in a chunk's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocSpan {
    /// Start of its action line.
    pub start: u32,
    /// Start of the document line.
    pub doc_start: u32,
    /// End of the document line (after its `\n`).
    pub end: u32,
    /// Its record's sequence number.
    pub seq: u64,
    /// When its record arrived (Unix ms).
    pub arrival_ms: i64,
}

/// A chunk's documents, ready to send: the lines, compressed when the cluster takes gzip.
#[derive(Debug, Clone)]
pub struct BulkChunk {
    /// Action and document lines (kept for retries, backups and the error output).
    pub body: bytes::Bytes,
    /// `body` compressed as a piece of a gzip member, when requests are compressed.
    pub compressed: Option<CompressedChunk>,
    /// Each document's place in `body`.
    pub docs: Vec<DocSpan>,
}

/// One chunk of records as bulk request lines.
#[derive(Debug, Default)]
pub struct EncodedDocuments {
    /// Action and document lines.
    pub body: Vec<u8>,
    /// Each document's place in `body`, in order.
    pub docs: Vec<DocSpan>,
    /// Records (by index in the chunk) that cannot be documents, and why.
    pub rejected: Vec<(usize, Rejection)>,
}

impl DocumentEncoder {
    /// An encoder writing to `index` (rotated by `rotation`), with `_id`s from `ids`; bulk
    /// bodies are compressed with `codec` (none or gzip).
    pub fn new(
        index: impl Into<NameTemplate>,
        rotation: IndexRotation,
        ids: DocumentIds,
        codec: Codec,
    ) -> Self {
        Self {
            index: index.into(),
            rotation,
            ids,
            codec,
        }
    }

    /// How bulk bodies are compressed.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The index a record of the partition with `keys` (if the stream is partitioned) that
    /// arrived at `arrival_ms` goes to.
    pub fn index_name(&self, arrival_ms: i64, keys: Option<&PartitionKeys>) -> String {
        self.rotated(&self.index.render_index(keys), arrival_ms)
    }

    /// `base` rotated for a record that arrived at `arrival_ms`.
    fn rotated(&self, base: &str, arrival_ms: i64) -> String {
        let at = DateTime::<Utc>::from_timestamp_millis(arrival_ms).unwrap_or_default();
        rotated_index(base, self.rotation, at)
    }

    /// The `_id` of record `seq` with bytes `record` (`None`: left to the cluster, or the
    /// field is missing).
    pub fn document_id(&self, seq: u64, record: &[u8]) -> Option<String> {
        match &self.ids {
            DocumentIds::RecordId { run } => Some(format!("{run:016x}{seq:016x}")),
            DocumentIds::Auto => None,
            DocumentIds::Field(path) => field_id(record, path).ok(),
        }
    }

    /// Encodes a chunk's records (all of the partition with `keys`, if the stream is
    /// partitioned) as action and document lines; records that are not one JSON object (or
    /// lack their id field) are reported instead.
    pub fn encode_chunk(
        &self,
        records: &[RecordRef<'_>],
        keys: Option<&PartitionKeys>,
    ) -> EncodedDocuments {
        let base = self.index.render_index(keys);
        let size: usize = records.iter().map(|r| r.data.len() + 80).sum();
        let mut out = EncodedDocuments {
            body: Vec::with_capacity(size),
            docs: Vec::with_capacity(records.len()),
            rejected: Vec::new(),
        };
        let mut index_cache: Option<(i64, String)> = None;
        for (i, record) in records.iter().enumerate() {
            let bytes = record.data;
            if let Err(error) = check_object(bytes) {
                out.rejected.push((i, error));
                continue;
            }
            let field_id = match &self.ids {
                DocumentIds::Field(path) => match field_id(bytes, path) {
                    Ok(id) => Some(id),
                    Err(error) => {
                        out.rejected.push((i, error));
                        continue;
                    }
                },
                _ => None,
            };
            let bucket = self.rotation_bucket(record.arrival_ms);
            let index = match &index_cache {
                Some((cached, name)) if *cached == bucket => name,
                _ => {
                    let name = self.rotated(&base, record.arrival_ms);
                    &index_cache.insert((bucket, name)).1
                }
            };
            let start = out.body.len();
            out.body.extend_from_slice(b"{\"index\":{\"_index\":\"");
            out.body.extend_from_slice(index.as_bytes());
            out.body.push(b'"');
            match (&self.ids, field_id) {
                (DocumentIds::RecordId { run }, _) => {
                    out.body.extend_from_slice(b",\"_id\":\"");
                    push_hex(&mut out.body, *run);
                    push_hex(&mut out.body, record.seq);
                    out.body.push(b'"');
                }
                (_, Some(id)) => {
                    out.body.extend_from_slice(b",\"_id\":");
                    let _ = serde_json::to_writer(&mut out.body, &id);
                }
                (_, None) => {}
            }
            out.body.extend_from_slice(b"}}\n");
            let doc_start = out.body.len();
            out.body.extend(
                bytes
                    .iter()
                    .copied()
                    .filter(|b| !matches!(b, b'\n' | b'\r')),
            );
            out.body.push(b'\n');
            out.docs.push(DocSpan {
                start: start as u32,
                doc_start: doc_start as u32,
                end: out.body.len() as u32,
                seq: record.seq,
                arrival_ms: record.arrival_ms,
            });
        }
        out
    }

    /// Compresses one request body (or a chunk's part of one); CPU-heavy with gzip, so
    /// call it off the async reactor.
    pub fn compress(&self, body: &[u8]) -> CompressedChunk {
        self.codec.compress_slice(body)
    }

    /// A number that changes when the rotated index name may change.
    fn rotation_bucket(&self, arrival_ms: i64) -> i64 {
        match self.rotation {
            IndexRotation::None => 0,
            IndexRotation::Hour => arrival_ms.div_euclid(3_600_000),
            IndexRotation::Day | IndexRotation::Week | IndexRotation::Month => {
                arrival_ms.div_euclid(86_400_000)
            }
        }
    }
}

/// `index` with `at` appended as Firehose's index rotation does.
pub fn rotated_index(index: &str, rotation: IndexRotation, at: DateTime<Utc>) -> String {
    match rotation {
        IndexRotation::None => index.to_string(),
        IndexRotation::Hour => format!("{index}-{}", at.format("%Y-%m-%d-%H")),
        IndexRotation::Day => format!("{index}-{}", at.format("%Y-%m-%d")),
        IndexRotation::Week => {
            let week = at.iso_week();
            format!("{index}-{}-w{:02}", week.year(), week.week())
        }
        IndexRotation::Month => format!("{index}-{}", at.format("%Y-%m")),
    }
}

fn push_hex(out: &mut Vec<u8>, value: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(HEX[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

/// Whether `record` is exactly one valid JSON object.
fn check_object(record: &[u8]) -> Result<(), Rejection> {
    crate::json::check_record(record).map_err(|error| Rejection {
        code: NOT_A_JSON_OBJECT,
        message: format!("{}{error}", crate::json::NOT_VALID_JSON),
    })?;
    let first = record.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(Rejection {
            code: NOT_A_JSON_OBJECT,
            message: "the record is not a JSON object; a search document must be one".into(),
        });
    }
    Ok(())
}

/// The `_id` in the record's field `path`: a string, or a number as written.
fn field_id(record: &[u8], path: &[String]) -> Result<String, Rejection> {
    let invalid = |message: String| Rejection {
        code: INVALID_DOCUMENT_ID,
        message,
    };
    let name = path.join(".");
    let value: serde_json::Value = serde_json::from_slice(record)
        .map_err(|e| invalid(format!("the record is not JSON: {e}")))?;
    let mut current = &value;
    for key in path {
        current = current
            .get(key)
            .ok_or_else(|| invalid(format!("the record has no `{name}` field for its _id")))?;
    }
    let id = match current {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => {
            return Err(invalid(format!(
                "`{name}` must be a string or a number to be an _id, got {other}"
            )));
        }
    };
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(invalid(format!(
            "`{name}` must be 1 to {MAX_ID_BYTES} bytes to be an _id, got {}",
            id.len()
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn chunk<'a>(records: &[&'a [u8]], arrival_ms: i64) -> Vec<RecordRef<'a>> {
        records
            .iter()
            .enumerate()
            .map(|(seq, data)| RecordRef {
                seq: 100 + seq as u64,
                arrival_ms,
                data,
            })
            .collect()
    }

    #[test]
    fn every_rotation_names_the_index_as_firehose_does() {
        let at = Utc.with_ymd_and_hms(2016, 2, 25, 13, 4, 5).unwrap();
        let names: Vec<String> = [
            IndexRotation::None,
            IndexRotation::Hour,
            IndexRotation::Day,
            IndexRotation::Week,
            IndexRotation::Month,
        ]
        .into_iter()
        .map(|r| rotated_index("idx", r, at))
        .collect();
        assert_eq!(
            names,
            [
                "idx",
                "idx-2016-02-25-13",
                "idx-2016-02-25",
                "idx-2016-w08",
                "idx-2016-02"
            ]
        );
        // ISO weeks: 1 January 2016 belongs to week 53 of 2015.
        let new_year = Utc.with_ymd_and_hms(2016, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(
            rotated_index("idx", IndexRotation::Week, new_year),
            "idx-2015-w53"
        );
    }

    #[test]
    fn documents_get_action_lines_with_their_index_and_record_id() {
        let encoder = DocumentEncoder::new(
            "logs".to_string(),
            IndexRotation::Day,
            DocumentIds::RecordId { run: 0xabc },
            Codec::None,
        );
        let at = Utc.with_ymd_and_hms(2026, 11, 26, 1, 0, 0).unwrap();
        let records = chunk(
            &[
                b"{\"a\":1}",
                b"[1,2]",
                b"{\n \"b\": \"x\"\r\n}",
                b"{\"c\":",
                b"7",
            ],
            at.timestamp_millis(),
        );
        let encoded = encoder.encode_chunk(&records, None);
        let body = String::from_utf8(encoded.body.clone()).unwrap();
        assert_eq!(
            body,
            concat!(
                "{\"index\":{\"_index\":\"logs-2026-11-26\",\"_id\":\"0000000000000abc0000000000000064\"}}\n",
                "{\"a\":1}\n",
                "{\"index\":{\"_index\":\"logs-2026-11-26\",\"_id\":\"0000000000000abc0000000000000066\"}}\n",
                "{ \"b\": \"x\"}\n",
            )
        );
        let rejected: Vec<(usize, &str)> =
            encoded.rejected.iter().map(|(i, e)| (*i, e.code)).collect();
        assert_eq!(
            rejected,
            [
                (1, NOT_A_JSON_OBJECT),
                (3, NOT_A_JSON_OBJECT),
                (4, NOT_A_JSON_OBJECT)
            ]
        );
        let second = encoded.docs[1];
        assert_eq!(second.seq, 102);
        assert_eq!(
            &encoded.body[second.doc_start as usize..second.end as usize],
            b"{ \"b\": \"x\"}\n"
        );
        assert_eq!(
            encoder.document_id(102, b"").as_deref(),
            Some("0000000000000abc0000000000000066")
        );
    }

    #[test]
    fn ids_can_come_from_a_field_or_the_cluster() {
        let field = DocumentEncoder::new(
            "i".to_string(),
            IndexRotation::None,
            DocumentIds::Field(vec!["req".into(), "id".into()]),
            Codec::None,
        );
        let records = chunk(
            &[
                b"{\"req\":{\"id\":\"a\\\"b\"}}",
                b"{\"req\":{\"id\":42}}",
                b"{\"req\":{}}",
                b"{\"req\":{\"id\":[1]}}",
            ],
            0,
        );
        let encoded = field.encode_chunk(&records, None);
        let body = String::from_utf8(encoded.body).unwrap();
        assert!(body.starts_with("{\"index\":{\"_index\":\"i\",\"_id\":\"a\\\"b\"}}\n"));
        assert!(body.contains("{\"index\":{\"_index\":\"i\",\"_id\":\"42\"}}\n"));
        let codes: Vec<_> = encoded.rejected.iter().map(|(i, e)| (*i, e.code)).collect();
        assert_eq!(codes, [(2, INVALID_DOCUMENT_ID), (3, INVALID_DOCUMENT_ID)]);

        let auto = DocumentEncoder::new(
            "i".to_string(),
            IndexRotation::None,
            DocumentIds::Auto,
            Codec::None,
        );
        let encoded = auto.encode_chunk(&records[..1], None);
        assert!(
            encoded
                .body
                .starts_with(b"{\"index\":{\"_index\":\"i\"}}\n")
        );
    }
}
