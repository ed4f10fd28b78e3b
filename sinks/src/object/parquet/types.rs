//! Column types as written in the pipeline YAML (`int64`, `decimal(10,2)`,
//! `list<string>`, `struct<id:int64,name:string>`, `map<string,double>`, ...) and the
//! Arrow types they stand for.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, TimeUnit};

/// The time zone of `timestamptz` columns: values are instants, stored adjusted to UTC.
pub const UTC: &str = "UTC";

/// Parses a column type. The error says what was expected where.
pub fn parse_type(text: &str) -> Result<DataType, String> {
    let mut parser = TypeParser { text, pos: 0 };
    let data_type = parser.data_type()?;
    parser.skip_spaces();
    if parser.pos != text.len() {
        return Err(parser.error("the end of the type"));
    }
    Ok(data_type)
}

/// A list's element field, named as Spark, Hive and Trino name it.
pub fn list_of(element: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("element", element, true)))
}

/// A map's entries field, named as the Parquet format specifies (`key_value`, `key`, `value`).
pub fn map_of(key: DataType, value: DataType) -> DataType {
    let entries = Fields::from(vec![
        Field::new("key", key, false),
        Field::new("value", value, true),
    ]);
    DataType::Map(
        Arc::new(Field::new("key_value", DataType::Struct(entries), false)),
        false,
    )
}

struct TypeParser<'a> {
    text: &'a str,
    pos: usize,
}

impl TypeParser<'_> {
    fn data_type(&mut self) -> Result<DataType, String> {
        self.skip_spaces();
        let start = self.pos;
        let word = self.word().to_ascii_lowercase();
        let simple = match word.as_str() {
            "string" | "varchar" => Some(DataType::Utf8),
            "bool" | "boolean" => Some(DataType::Boolean),
            "int" | "int32" | "integer" => Some(DataType::Int32),
            "bigint" | "int64" | "long" => Some(DataType::Int64),
            "float" | "float32" => Some(DataType::Float32),
            "double" | "float64" => Some(DataType::Float64),
            "date" => Some(DataType::Date32),
            "binary" => Some(DataType::Binary),
            _ => None,
        };
        if let Some(data_type) = simple {
            return Ok(data_type);
        }
        match word.as_str() {
            "timestamp" | "timestamptz" => {
                let unit = if self.eat('(') {
                    let unit = match self.word().to_ascii_lowercase().as_str() {
                        "ms" => TimeUnit::Millisecond,
                        "us" => TimeUnit::Microsecond,
                        _ => return Err(self.error("`ms` or `us`")),
                    };
                    self.expect(')')?;
                    unit
                } else {
                    TimeUnit::Millisecond
                };
                let zone = (word == "timestamptz").then(|| UTC.into());
                Ok(DataType::Timestamp(unit, zone))
            }
            "decimal" | "numeric" => {
                self.expect('(')?;
                let precision = self.number()?;
                self.expect(',')?;
                let scale = self.number()?;
                self.expect(')')?;
                if !(1..=38).contains(&precision) {
                    return Err(format!(
                        "decimal precision must be between 1 and 38, got {precision}"
                    ));
                }
                if scale > precision {
                    return Err(format!(
                        "decimal scale ({scale}) must not exceed its precision ({precision})"
                    ));
                }
                Ok(DataType::Decimal128(precision as u8, scale as i8))
            }
            "list" | "array" => {
                self.expect('<')?;
                let element = self.data_type()?;
                self.expect('>')?;
                Ok(list_of(element))
            }
            "map" => {
                self.expect('<')?;
                let key = self.data_type()?;
                if key != DataType::Utf8 {
                    return Err("map keys must be `string` (JSON object keys are strings)".into());
                }
                self.expect(',')?;
                let value = self.data_type()?;
                self.expect('>')?;
                Ok(map_of(key, value))
            }
            "struct" => {
                self.expect('<')?;
                let mut fields = Vec::new();
                loop {
                    self.skip_spaces();
                    let name = self.field_name()?;
                    if fields.iter().any(|f: &Field| f.name() == &name) {
                        return Err(format!("struct field `{name}` is declared twice"));
                    }
                    self.expect(':')?;
                    fields.push(Field::new(name, self.data_type()?, true));
                    if !self.eat(',') {
                        break;
                    }
                }
                self.expect('>')?;
                Ok(DataType::Struct(fields.into()))
            }
            _ => {
                self.pos = start;
                Err(self.error(
                    "a type: string, bool, int32, int64, float, double, timestamp[(ms|us)], \
                     timestamptz[(ms|us)], date, decimal(p,s), binary, list<T>, map<string,T> \
                     or struct<name:T,...>",
                ))
            }
        }
    }

    fn skip_spaces(&mut self) {
        while self.text[self.pos..].starts_with(' ') {
            self.pos += 1;
        }
    }

    fn word(&mut self) -> &str {
        self.skip_spaces();
        let start = self.pos;
        let len = self.text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.text.len() - start);
        self.pos += len;
        &self.text[start..self.pos]
    }

    fn field_name(&mut self) -> Result<String, String> {
        let name = self.word();
        if name.is_empty() {
            return Err(self.error("a field name"));
        }
        Ok(name.to_string())
    }

    fn number(&mut self) -> Result<u32, String> {
        let word = self.word();
        word.parse()
            .map_err(|_| format!("expected a number, got `{word}`"))
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_spaces();
        if self.text[self.pos..].starts_with(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("`{c}`")))
        }
    }

    fn error(&self, expected: &str) -> String {
        let rest = &self.text[self.pos..];
        if rest.is_empty() {
            format!("expected {expected} at the end of `{}`", self.text)
        } else {
            format!(
                "expected {expected} at `{rest}` (character {} of `{}`)",
                self.pos + 1,
                self.text
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_type() {
        let cases = [
            ("string", DataType::Utf8),
            ("BOOL", DataType::Boolean),
            ("int32", DataType::Int32),
            ("int64", DataType::Int64),
            ("float", DataType::Float32),
            ("double", DataType::Float64),
            ("date", DataType::Date32),
            ("binary", DataType::Binary),
            (
                "timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, None),
            ),
            (
                "timestamp(us)",
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            (
                "timestamptz(ms)",
                DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
            ),
            ("decimal(10, 2)", DataType::Decimal128(10, 2)),
            ("list<int64>", list_of(DataType::Int64)),
            (
                "map<string, list<double>>",
                map_of(DataType::Utf8, list_of(DataType::Float64)),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_type(text), Ok(expected), "{text}");
        }
        let nested =
            parse_type("struct<id:int64, tags:array<string>, at:timestamptz(us)>").unwrap();
        let DataType::Struct(fields) = nested else {
            panic!("not a struct: {nested}")
        };
        let names: Vec<_> = fields.iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "tags", "at"]);
        assert_eq!(fields[1].data_type(), &list_of(DataType::Utf8));
    }

    #[test]
    fn errors_say_what_was_expected_where() {
        let error = parse_type("int65").unwrap_err();
        assert!(
            error.starts_with("expected a type: string, bool"),
            "{error}"
        );
        assert!(error.contains("at `int65`"), "{error}");
        assert_eq!(
            parse_type("list<string").unwrap_err(),
            "expected `>` at the end of `list<string`"
        );
        assert!(
            parse_type("timestamp(ns)")
                .unwrap_err()
                .contains("`ms` or `us`")
        );
        assert!(
            parse_type("decimal(40,2)")
                .unwrap_err()
                .contains("between 1 and 38")
        );
        assert!(
            parse_type("decimal(5,6)")
                .unwrap_err()
                .contains("must not exceed")
        );
        assert!(
            parse_type("map<int64,string>")
                .unwrap_err()
                .contains("map keys must be")
        );
        assert!(
            parse_type("struct<a:int64,a:string>")
                .unwrap_err()
                .contains("declared twice")
        );
        assert!(
            parse_type("string string")
                .unwrap_err()
                .contains("the end of the type")
        );
    }
}
