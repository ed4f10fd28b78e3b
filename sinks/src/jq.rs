//! jq expressions run with jaq: table column values (`from: '.a + .b'`) and dynamic
//! partitioning queries.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

/// A compiled jq filter; its first output on a record is what counts.
pub struct JqFilter {
    filter: jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>,
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
        Ok(Self { filter })
    }

    /// The JSON text of the filter's first output on `record`; `None` when it has none
    /// or the output is `null`.
    pub fn first_output(&self, record: &[u8]) -> Result<Option<String>, String> {
        match self.first_value(record)? {
            None | Some(Val::Null) => Ok(None),
            Some(value) => Ok(Some(value.to_string())),
        }
    }

    /// The filter's first output on `record`, as a jaq value; `None` when it has none.
    pub fn first_value(&self, record: &[u8]) -> Result<Option<Val>, String> {
        let input = jaq_json::read::parse_single(record)
            .map_err(|e| format!("the record is not JSON: {e}"))?;
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
