//! How records are laid out one after another inside an object (`raw`, `ndjson`), and why a
//! record cannot be.

/// Why a record could not be written in the stream's format; it goes to the
/// `format-conversion-failed` error output instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionError {
    /// Firehose-style error code.
    pub code: &'static str,
    /// What is wrong with the record.
    pub message: String,
}

impl ConversionError {
    /// The record is not (one) JSON value: `DataFormatConversion.ParseError`.
    pub fn parse(message: impl Into<String>) -> Self {
        Self {
            code: "DataFormatConversion.ParseError",
            message: message.into(),
        }
    }

    /// The record is JSON but does not fit the schema: `DataFormatConversion.MalformedData`.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self {
            code: "DataFormatConversion.MalformedData",
            message: message.into(),
        }
    }
}

/// Checks that `record` is one valid JSON value by the rules every JSON format shares
/// ([`crate::json`]); a record that is not fails with `DataFormatConversion.ParseError`.
pub fn check_json(record: &[u8]) -> Result<(), ConversionError> {
    crate::json::check_record(record)
        .map_err(|error| ConversionError::parse(format!("{NOT_VALID_JSON}{error}")))
}

pub use crate::json::NOT_VALID_JSON;

/// Writes records into an object body according to the stream's format.
#[derive(Debug, Clone, Copy)]
pub struct RecordFramer {
    newline: bool,
    json: bool,
}

impl RecordFramer {
    /// Records one after another as they are (`raw`), each followed by `\n` when `newline`
    /// is set and it does not already end with one.
    pub fn raw(newline: bool) -> Self {
        Self {
            newline,
            json: false,
        }
    }

    /// One JSON value per line (`ndjson`).
    pub fn ndjson() -> Self {
        Self {
            newline: true,
            json: true,
        }
    }

    /// Appends `record` in the stream's format, or says why it cannot be. With `ndjson`, the
    /// record must be exactly one valid JSON value ([`check_json`]); it is written on one line (line breaks between
    /// tokens are dropped: inside JSON strings they can only appear escaped, so this never
    /// changes a value).
    pub fn frame(&self, record: &[u8], out: &mut Vec<u8>) -> Result<(), ConversionError> {
        if !self.json {
            self.append(record, out);
            return Ok(());
        }
        check_json(record)?;
        out.extend(
            record
                .iter()
                .copied()
                .filter(|b| !matches!(b, b'\n' | b'\r')),
        );
        out.push(b'\n');
        Ok(())
    }

    /// Bytes `record` takes once framed (at most).
    pub fn framed_len(&self, record: &[u8]) -> usize {
        record.len() + usize::from(self.json || self.needs_newline(record))
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
        let framer = RecordFramer::raw(true);
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
    fn ndjson_takes_one_json_value_per_record_and_writes_it_on_one_line() {
        let framer = RecordFramer::ndjson();
        let mut out = Vec::new();
        for record in [
            &b"{\"a\":1}"[..],
            b"{\n  \"b\": [1,\r\n 2]\n}\n",
            b"\"text with \\n escaped\"",
            b"42",
        ] {
            framer.frame(record, &mut out).unwrap();
        }
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "{\"a\":1}\n{  \"b\": [1, 2]}\n\"text with \\n escaped\"\n42\n"
        );
        for bad in [&b"not json"[..], b"", b"{\"a\":1} {\"b\":2}", b"{\"a\":"] {
            let error = framer.frame(bad, &mut out).unwrap_err();
            assert_eq!(error.code, "DataFormatConversion.ParseError");
            assert!(error.message.starts_with("the record is not valid JSON"));
        }
        assert_eq!(
            out.iter().filter(|b| **b == b'\n').count(),
            4,
            "failures write nothing"
        );
    }

    #[test]
    fn no_delimiter_concatenates() {
        let framer = RecordFramer::raw(false);
        let mut out = Vec::new();
        framer.append(b"ab", &mut out);
        framer.append(b"cd", &mut out);
        assert_eq!(out, b"abcd");
    }
}
