//! Reading the file, substituting `${ENV}` references, and reporting problems with locations.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, SnippetMode};

use super::Config;

/// One problem in a configuration file, at a 1-based line and column (0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line, 0 when the problem has no single place in the file.
    pub line: u64,
    /// 1-based column, 0 when unknown.
    pub column: u64,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at `location`.
    pub fn at(location: Location, message: impl Into<String>) -> Self {
        Self {
            line: location.line(),
            column: location.column(),
            message: message.into(),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", render_problems(source_name, problems))]
    Invalid {
        /// Name shown in front of each problem (the path).
        source_name: String,
        /// Every problem found, in file order.
        problems: Vec<ConfigProblem>,
    },
}

fn render_problems(source_name: &str, problems: &[ConfigProblem]) -> String {
    let mut out = String::new();
    for (i, problem) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&problem.to_line(source_name));
    }
    out
}

impl ConfigProblem {
    /// `FILE:LINE:COLUMN: message`, the form editors and CI logs link to.
    pub fn to_line(&self, source_name: &str) -> String {
        if self.line == 0 {
            format!("{source_name}: {}", self.message)
        } else {
            format!(
                "{source_name}:{}:{}: {}",
                self.line, self.column, self.message
            )
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Reads, parses and validates the configuration file at `path`.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse_config(&text, &path.display().to_string())
}

/// Parses and validates configuration text; `source_name` prefixes every reported problem.
/// `${NAME}` in plain (unquoted) scalars is replaced by the environment variable `NAME`;
/// a reference to an unset variable is a problem, and substituted values never appear in
/// error messages.
pub fn parse_config(text: &str, source_name: &str) -> Result<Config, ConfigError> {
    let options = serde_saphyr::options! {}.with_properties(std::env::vars().collect());
    let config: Config = serde_saphyr::from_str_with_options(text, options).map_err(|error| {
        ConfigError::Invalid {
            source_name: source_name.to_string(),
            problems: vec![problem_from_yaml_error(&error, text)],
        }
    })?;
    let problems = super::validate::validate(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            source_name: source_name.to_string(),
            problems,
        })
    }
}

fn problem_from_yaml_error(error: &serde_saphyr::Error, text: &str) -> ConfigProblem {
    let location = error.location().unwrap_or(Location::UNKNOWN);
    let mut inner = error;
    while let serde_saphyr::Error::WithSnippet { error, .. } = inner {
        inner = error;
    }
    let message = match inner {
        serde_saphyr::Error::InvalidScalar { ty, .. } => format!(
            "expected {}, found `{}`",
            describe_scalar_type(ty),
            token_at(text, location)
        ),
        serde_saphyr::Error::UnresolvedProperty { name, .. } => format!(
            "environment variable `{name}` is not set (referenced as `${{{name}}}`); set it, \
             or write `${{{name}:-default}}`"
        ),
        _ => {
            let options = serde_saphyr::render_options! { snippets: SnippetMode::Off };
            strip_location_suffix(&error.render_with_options(options))
        }
    };
    ConfigProblem::at(location, message)
}

fn describe_scalar_type(ty: &str) -> &'static str {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "bool" => "`true` or `false`",
        _ => "a different kind of value",
    }
}

/// The scalar starting at `location` (1-based line and column), for quoting in messages.
fn token_at(text: &str, location: Location) -> String {
    let line = text
        .lines()
        .nth(location.line().saturating_sub(1) as usize)
        .unwrap_or("");
    let start = line
        .char_indices()
        .nth(location.column().saturating_sub(1) as usize)
        .map_or(line.len(), |(i, _)| i);
    let token = line[start..].split(" #").next().unwrap_or("").trim();
    token.trim_end_matches([',', '}', ']']).to_string()
}

/// Plain serde-saphyr messages end with " at line L, column C"; the location is already in
/// front of the problem, so drop the repetition.
fn strip_location_suffix(message: &str) -> String {
    let trimmed = message.trim();
    match trimmed.rfind(" at line ") {
        Some(index) if trimmed[index..].contains("column") => trimmed[..index].to_string(),
        _ => trimmed.to_string(),
    }
}
