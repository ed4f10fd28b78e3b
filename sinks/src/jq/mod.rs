//! jq expressions run with jaq: table column values (`from: '.a + .b'`) and dynamic
//! partitioning queries.

mod projection;

use std::cell::RefCell;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use projection::Projection;

/// A compiled jq filter; its first output on a record is what counts.
pub struct JqFilter {
    filter: jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>,
    /// The only fields the filter reads, when it provably reads no others.
    projection: Option<Projection>,
}

thread_local! {
    /// The projected object of the record being run, reused between records.
    static PROJECTED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl std::fmt::Debug for JqFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JqFilter")
    }
}

impl JqFilter {
    /// Compiles `code` with jq's standard library; the error says what is wrong.
    pub fn compile(code: &str) -> Result<Self, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errors| format!("jq expression `{code}` does not parse: {errors:?}"))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| format!("jq expression `{code}` does not compile: {errors:?}"))?;
        let projection = projection::root_fields(code).map(Projection::new);
        Ok(Self { filter, projection })
    }

    /// The JSON text of the filter's first output on `record`; `None` when it has none
    /// or the output is `null`.
    pub fn first_output(&self, record: &[u8]) -> Result<Option<String>, String> {
        match self.first_value(record)? {
            None | Some(Val::Null) => Ok(None),
            Some(value) => Ok(Some(value.to_string())),
        }
    }

    /// The same filter, always parsing the whole record (what projection must agree with).
    #[cfg(test)]
    fn without_projection(mut self) -> Self {
        self.projection = None;
        self
    }

    /// The filter's first output on `record`, as a jaq value; `None` when it has none.
    pub fn first_value(&self, record: &[u8]) -> Result<Option<Val>, String> {
        let projected = self.projection.as_ref().and_then(|projection| {
            PROJECTED.with_borrow_mut(|object| {
                projection
                    .write(record, object)
                    .then(|| jaq_json::read::parse_single(object).ok())
                    .flatten()
            })
        });
        let input = match projected {
            Some(input) => input,
            None => jaq_json::read::parse_single(record)
                .map_err(|e| format!("the record is not JSON: {e}"))?,
        };
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = self.filter.id.run((ctx, input)).map(unwrap_valr);
        match outputs.next() {
            None => Ok(None),
            Some(Err(error)) => Err(format!("the jq expression failed: {error}")),
            Some(Ok(value)) => Ok(Some(value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projected_records_give_what_the_whole_record_gives() {
        let records: &[&[u8]] = &[
            br#"{"a": 1, "b": 2, "ts": "2026-11-29T10:00:00Z", "user_id": 12345}"#,
            br#"{"a": "x", "b": [1, 2], "user_id": -7, "other": {"deep": [{"a": 1}]}}"#,
            br#"{"a": 1, "a": "last", "user_id": 1e3}"#,
            br#"{"\u0061": 5, "b": null, "ts": "caf\u00e9"}"#,
            br#"{"b": 1}"#,
            br#"{"a": {"n": 1}, "b": {"m": 2}, "ts": 5}"#,
            br#"{"a": 1, "z": "\ud83d\ude00"}"#,
            br#"{"a": 01, "b": 2}"#,
            br#"{"a": 1, "b": "\ud800"}"#,
            br#"[1, 2]"#,
            br#""text""#,
            br#"{"a": 1"#,
            b"{\"a\": \"\xff\", \"b\": 1}",
            br#"{"a": 1, "b": 2} trailing"#,
        ];
        for code in [
            ".a + .b",
            "{user: (.user_id % 100)}",
            "{day: (.ts | .[0:10])}",
            "{a, b}",
            ".a as $x | [$x, .b] | length",
            r#"try (.a + .b) catch "failed""#,
            r#""constant""#,
        ] {
            let filter = JqFilter::compile(code).unwrap();
            assert!(filter.projection.is_some(), "{code} is projected");
            let whole = JqFilter::compile(code).unwrap().without_projection();
            for record in records {
                assert_eq!(
                    filter.first_output(record),
                    whole.first_output(record),
                    "{code} on {}",
                    String::from_utf8_lossy(record)
                );
            }
        }
    }

    #[test]
    fn first_outputs_as_json_text() {
        let filter = JqFilter::compile(r#".a + .b"#).unwrap();
        assert_eq!(
            filter.first_output(br#"{"a": 1, "b": 2}"#),
            Ok(Some("3".into()))
        );
        let filter = JqFilter::compile(r#".tags | join(",")"#).unwrap();
        assert_eq!(
            filter.first_output(br#"{"tags": ["x", "y"]}"#),
            Ok(Some(r#""x,y""#.into()))
        );
        let filter = JqFilter::compile(".missing").unwrap();
        assert_eq!(filter.first_output(br#"{"a": 1}"#), Ok(None));
        let filter = JqFilter::compile(".a | error(\"boom\")").unwrap();
        assert!(
            filter
                .first_output(br#"{"a": 1}"#)
                .unwrap_err()
                .contains("failed")
        );
        assert!(
            JqFilter::compile(".a +")
                .unwrap_err()
                .contains("does not parse")
        );
        assert!(
            JqFilter::compile("nosuchfn(1)")
                .unwrap_err()
                .contains("does not compile")
        );
    }
}
