//! Request building: each chunk's records become `{"data":"<base64>"}` entries on the CPU
//! pool while the batch fills; a batch's entries are cut into requests of at most
//! `max_request_bytes` (before compression), each named by a request id derived from the
//! records it carries, so a retry — or a replay after a crash — sends the same id with the
//! same records.

use std::io::Write as _;

use base64::Engine as _;
use bytes::Bytes;

use crate::destination::{BatchId, RecordRef, Request};

/// The entries of one chunk: `{"data":"..."}` one after another, and where each ends.
#[derive(Debug, Default)]
pub struct EntriesPiece {
    json: Vec<u8>,
    entries: Vec<Entry>,
}

/// One record's entry.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    arrival_ms: i64,
    end: u32,
}

/// A batch's entries, and the requests of its first attempt (built, and compressed, on the
/// CPU pool).
#[derive(Debug)]
pub struct EndpointBatch {
    id: BatchId,
    timestamp_ms: i64,
    pieces: Vec<EntriesPiece>,
    /// Each item's piece and place in it.
    items: Vec<(u32, u32)>,
    first: Vec<(EndpointBody, Vec<u32>)>,
}

/// One request body and the id it carries.
#[derive(Debug, Clone)]
pub struct EndpointBody {
    /// `requestId` of the body and `X-Amz-Firehose-Request-Id`.
    pub request_id: String,
    /// The body as sent (gzip-compressed when asked).
    pub bytes: Bytes,
}

/// How requests are cut and encoded.
#[derive(Debug, Clone, Copy)]
pub struct RequestShape {
    /// Largest body before compression (a single larger record still goes alone).
    pub max_request_bytes: usize,
    /// Whether bodies are gzip-compressed.
    pub gzip: bool,
}

const ENTRY_OPEN: &[u8] = b"{\"data\":\"";
const ENTRY_CLOSE: &[u8] = b"\"}";

/// Encodes records as entries.
pub fn encode(records: &[RecordRef<'_>]) -> EntriesPiece {
    let base64 = base64::engine::general_purpose::STANDARD;
    let size: usize = records
        .iter()
        .map(|r| r.data.len().div_ceil(3) * 4 + ENTRY_OPEN.len() + ENTRY_CLOSE.len())
        .sum();
    let mut piece = EntriesPiece {
        json: Vec::with_capacity(size),
        entries: Vec::with_capacity(records.len()),
    };
    for record in records {
        piece.json.extend_from_slice(ENTRY_OPEN);
        let start = piece.json.len();
        piece
            .json
            .resize(start + record.data.len().div_ceil(3) * 4, 0);
        let written = base64
            .encode_slice(record.data, &mut piece.json[start..])
            .expect("the buffer was sized for the encoding");
        piece.json.truncate(start + written);
        piece.json.extend_from_slice(ENTRY_CLOSE);
        piece.entries.push(Entry {
            seq: record.seq,
            arrival_ms: record.arrival_ms,
            end: piece.json.len() as u32,
        });
    }
    piece
}

impl EndpointBatch {
    /// Puts `pieces` together and builds the first attempt's requests.
    pub fn assemble(id: BatchId, pieces: Vec<EntriesPiece>, shape: RequestShape) -> Self {
        let items = pieces
            .iter()
            .enumerate()
            .flat_map(|(p, piece)| (0..piece.entries.len()).map(move |e| (p as u32, e as u32)))
            .collect::<Vec<_>>();
        let mut batch = Self {
            id,
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
            pieces,
            items,
            first: Vec::new(),
        };
        let all: Vec<u32> = (0..batch.items.len() as u32).collect();
        batch.first = batch
            .build(&all, shape)
            .into_iter()
            .map(|request| (request.body, request.items))
            .collect();
        batch
    }

    /// The first attempt's requests.
    pub fn first_requests(&self) -> Vec<Request<EndpointBody>> {
        self.first
            .iter()
            .map(|(body, items)| Request {
                body: body.clone(),
                items: items.clone(),
            })
            .collect()
    }

    fn entry(&self, item: u32) -> (&Entry, &[u8]) {
        let (p, e) = self.items[item as usize];
        let piece = &self.pieces[p as usize];
        let start = match e {
            0 => 0,
            e => piece.entries[e as usize - 1].end as usize,
        };
        let entry = &piece.entries[e as usize];
        (entry, &piece.json[start..entry.end as usize])
    }

    /// Requests carrying `items`, in order, cut at `shape.max_request_bytes`; built (and
    /// compressed) in parallel on the CPU pool.
    pub fn build(&self, items: &[u32], shape: RequestShape) -> Vec<Request<EndpointBody>> {
        use rayon::prelude::*;
        let mut cuts = Vec::new();
        let mut start = 0;
        while start < items.len() {
            let mut bytes = 0;
            let mut end = start;
            while end < items.len() {
                let len = self.entry(items[end]).1.len() + 1;
                if end > start && bytes + len > shape.max_request_bytes {
                    break;
                }
                bytes += len;
                end += 1;
            }
            cuts.push(start..end);
            start = end;
        }
        cuts.into_par_iter()
            .map(|range| self.request(&items[range], shape))
            .collect()
    }

    fn request(&self, items: &[u32], shape: RequestShape) -> Request<EndpointBody> {
        let first = self.entry(items[0]).0.seq;
        let last = self.entry(items[items.len() - 1]).0.seq;
        let request_id = request_id(self.id.run, first, last);
        let mut json = Vec::with_capacity(
            items
                .iter()
                .map(|&i| self.entry(i).1.len() + 1)
                .sum::<usize>()
                + 128,
        );
        json.extend_from_slice(b"{\"requestId\":\"");
        json.extend_from_slice(request_id.as_bytes());
        json.extend_from_slice(b"\",\"timestamp\":");
        json.extend_from_slice(self.timestamp_ms.to_string().as_bytes());
        json.extend_from_slice(b",\"records\":[");
        for (n, &item) in items.iter().enumerate() {
            if n > 0 {
                json.push(b',');
            }
            json.extend_from_slice(self.entry(item).1);
        }
        json.extend_from_slice(b"]}");
        let bytes = match shape.gzip {
            false => Bytes::from(json),
            true => Bytes::from(gzip(&json)),
        };
        Request {
            body: EndpointBody { request_id, bytes },
            items: items.to_vec(),
        }
    }

    /// Item `item`'s sequence number, when it arrived, and its record, decoded from its
    /// entry.
    pub fn record(&self, item: u32) -> (u64, i64, Vec<u8>) {
        let (entry, json) = self.entry(item);
        let encoded = &json[ENTRY_OPEN.len()..json.len() - ENTRY_CLOSE.len()];
        let data = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_default();
        (entry.seq, entry.arrival_ms, data)
    }

    /// Items in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch has no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::new(6),
    );
    encoder
        .write_all(data)
        .expect("writing into memory does not fail");
    encoder.finish().expect("writing into memory does not fail")
}

/// A GUID-shaped id of the records `first..=last` of log incarnation `run`: the same for
/// the same records on every attempt and after a restart, different for any other range.
pub fn request_id(run: u64, first: u64, last: u64) -> String {
    let high = mix(run ^ mix(first));
    let low = mix(high ^ last.rotate_left(17) ^ 0x6874_7470_656e_6470);
    let hex = format!("{high:016x}{low:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// SplitMix64's finaliser: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<(u64, Vec<u8>)> {
        (0..n)
            .map(|i| (i as u64, format!("record {i} \u{1F600}").into_bytes()))
            .collect()
    }

    fn batch(n: usize, shape: RequestShape) -> EndpointBatch {
        let owned = records(n);
        let refs: Vec<RecordRef<'_>> = owned
            .iter()
            .map(|(seq, data)| RecordRef {
                seq: *seq,
                arrival_ms: 1_000 + *seq as i64,
                data,
            })
            .collect();
        let (a, b) = refs.split_at(n / 2);
        EndpointBatch::assemble(
            BatchId {
                run: 7,
                first_seq: 0,
                last_seq: n as u64 - 1,
                oldest_ms: 1_000,
                partition: None,
            },
            vec![encode(a), encode(b)],
            shape,
        )
    }

    #[test]
    fn requests_follow_the_specification_and_carry_every_record_once() {
        let shape = RequestShape {
            max_request_bytes: 200,
            gzip: false,
        };
        let batch = batch(20, shape);
        let requests = batch.first_requests();
        assert!(requests.len() > 1, "200 bytes cut 20 records");
        let mut seen = Vec::new();
        for request in &requests {
            let body: serde_json::Value = serde_json::from_slice(&request.body.bytes).unwrap();
            assert_eq!(body["requestId"], request.body.request_id.as_str());
            assert!(body["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
            let records = body["records"].as_array().unwrap();
            assert_eq!(records.len(), request.items.len());
            for (record, &item) in records.iter().zip(&request.items) {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(record["data"].as_str().unwrap())
                    .unwrap();
                assert_eq!(data, batch.record(item).2);
                seen.push(String::from_utf8(data).unwrap());
            }
        }
        let expected: Vec<String> = records(20)
            .into_iter()
            .map(|(_, d)| String::from_utf8(d).unwrap())
            .collect();
        assert_eq!(seen, expected);
        let ids: std::collections::HashSet<_> =
            requests.iter().map(|r| &r.body.request_id).collect();
        assert_eq!(ids.len(), requests.len(), "every request has its own id");
    }

    #[test]
    fn the_same_records_get_the_same_request_id_and_gzip_bodies_decode() {
        let shape = RequestShape {
            max_request_bytes: 1 << 20,
            gzip: true,
        };
        let one = batch(10, shape).first_requests();
        let again = batch(10, shape).first_requests();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].body.request_id, again[0].body.request_id);
        assert_ne!(request_id(7, 0, 9), request_id(7, 0, 8));
        assert_ne!(request_id(7, 0, 9), request_id(8, 0, 9));
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&one[0].body.bytes[..]),
            &mut decoded,
        )
        .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(body["records"].as_array().unwrap().len(), 10);
    }
}
