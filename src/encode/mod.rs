//! How records are laid out inside an object.

use crate::config::{Format, RecordDelimiter};

/// Writes records into an object body according to the stream's format.
#[derive(Debug, Clone, Copy)]
pub struct RecordFramer {
    newline: bool,
}

impl RecordFramer {
    /// The framer a stream's configuration asks for.
    pub fn new(format: Format, delimiter: RecordDelimiter) -> Self {
        match format {
            Format::Raw => Self {
                newline: delimiter == RecordDelimiter::Newline,
            },
        }
    }

    /// Bytes `record` takes once framed.
    pub fn framed_len(&self, record: &[u8]) -> usize {
        record.len() + usize::from(self.needs_newline(record))
    }

    /// Appends `record` to `out`, adding `\n` when the delimiter is `newline` and the record
    /// does not already end with one (so producers that add their own newline, as many
    /// Firehose clients do, do not get blank lines).
    pub fn append(&self, record: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(record);
        if self.needs_newline(record) {
            out.push(b'\n');
        }
    }

    fn needs_newline(&self, record: &[u8]) -> bool {
        self.newline && record.last() != Some(&b'\n')
    }

    /// `Content-Type` of objects this framer writes.
    pub fn content_type(&self) -> &'static str {
        if self.newline {
            "application/x-ndjson"
        } else {
            "application/octet-stream"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_framing_adds_missing_newlines_only() {
        let framer = RecordFramer::new(Format::Raw, RecordDelimiter::Newline);
        let mut out = Vec::new();
        for record in [&b"{\"a\":1}"[..], b"{\"b\":2}\n", b""] {
            assert_eq!(framer.framed_len(record), {
                let before = out.len();
                framer.append(record, &mut out);
                out.len() - before
            });
        }
        assert_eq!(out, b"{\"a\":1}\n{\"b\":2}\n\n");
    }

    #[test]
    fn no_delimiter_concatenates() {
        let framer = RecordFramer::new(Format::Raw, RecordDelimiter::None);
        let mut out = Vec::new();
        framer.append(b"ab", &mut out);
        framer.append(b"cd", &mut out);
        assert_eq!(out, b"abcd");
    }
}
