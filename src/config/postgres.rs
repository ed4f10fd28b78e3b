//! `destination: postgres`: a table loaded with binary COPY, exactly once per batch.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::validate::at;
use super::{ConfigProblem, Destination};
use hydrant_sinks::postgres::{
    ColumnSpec, ColumnType, ConnectionConfig, LoadMode, PostgresSettings, PostgresSink,
    PostgresTable, TlsMode,
};
use hydrant_sinks::prelude::{Service, SinkError, SinkErrorKind};

/// A PostgreSQL table destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresDestination {
    /// Connection URL (`postgres://user:password@host:port/dbname`); or the fields below.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// Server host. Default `127.0.0.1` (when no `url`).
    #[serde(default)]
    pub host: Option<String>,
    /// Server port. Default 5432.
    #[serde(default)]
    pub port: Option<u16>,
    /// Role to log in as.
    #[serde(default)]
    pub user: Option<String>,
    /// Its password (use `${ENV}`).
    #[serde(default)]
    pub password: Option<String>,
    /// Database. Default: the user name.
    #[serde(default)]
    pub dbname: Option<String>,
    /// `disable`, `prefer` (default), `require` (encrypted, certificate not checked, as
    /// libpq) or `verify-full` (certificate checked against `sslrootcert` or the system's
    /// roots, and the host name).
    #[serde(default)]
    pub sslmode: Option<Spanned<String>>,
    /// PEM file of the root certificates `verify-full` trusts, relative to the
    /// configuration file. Default: the system's.
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// Table to load, optionally `schema.table`.
    pub table: Spanned<String>,
    /// Columns to fill and where their values come from.
    pub columns: Spanned<Vec<PostgresColumn>>,
    /// `insert` (default) or `upsert` (update rows whose `conflict_columns` match).
    #[serde(default = "default_mode")]
    pub mode: Spanned<PostgresMode>,
    /// Columns of the primary key or unique index upserts match on.
    #[serde(default)]
    pub conflict_columns: Vec<String>,
    /// Most connections to the server. Default 4.
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<u32>,
    /// Where records go that cannot be loaded (`postgres-failed`) or that the format
    /// refused: an object destination. Default `local: { path: hydrant-errors }`.
    #[serde(default = "default_error_output")]
    pub error_output: Box<Destination>,
    /// How long a failing batch is retried before its records go to the error output.
    /// 0–604800, default 86400.
    #[serde(default = "super::default_retry_duration_seconds")]
    pub retry_duration_seconds: Spanned<u64>,
    /// First retry delay, in milliseconds. Default 200.
    #[serde(default = "super::default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest retry delay, in seconds. Default 30.
    #[serde(default = "super::default_max_backoff_seconds")]
    pub max_backoff_seconds: u64,
}

/// How rows meet rows already in the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostgresMode {
    /// Every record is a new row.
    #[default]
    Insert,
    /// A record whose conflict columns match a row updates it.
    Upsert,
}

/// One column to fill.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresColumn {
    /// Column name in the table.
    pub name: Spanned<String>,
    /// JSON field path (`user.id` or `.user.id`); `.` is the whole record (for a `jsonb`
    /// column); anything else is a jq expression whose first output is the value
    /// (`.first + " " + .last`). Default: the column name.
    #[serde(default)]
    pub from: Option<String>,
    /// Expected column type (`int8`, `text`, `timestamptz`, `jsonb`, ...), checked against
    /// the table at start-up. Default: whatever the table says.
    #[serde(default, rename = "type")]
    pub data_type: Option<Spanned<String>>,
}

impl PostgresDestination {
    /// Connects to the table and checks its columns; `stream` names the sessions (for a
    /// DBA) and the batches in the ledger; relative paths are taken from `base_dir`.
    pub async fn build(
        &self,
        stream: &str,
        base_dir: &std::path::Path,
    ) -> Result<PostgresTable, SinkError> {
        let mut connection = self.connection().map_err(|reason| {
            SinkError::new(
                SinkErrorKind::Rejected,
                Service::Postgres,
                "postgres",
                self.table.value.clone(),
                reason,
            )
        })?;
        // Lets a DBA see which stream a session belongs to.
        connection.application_name(format!("hydrant/{stream}"));
        let sink = PostgresSink::connect(PostgresSettings {
            connection,
            table: self.table.value.clone(),
            columns: self
                .columns
                .value
                .iter()
                .map(|c| ColumnSpec {
                    name: c.name.value.clone(),
                    from: c.from.clone().unwrap_or_else(|| c.name.value.clone()),
                    declared: c
                        .data_type
                        .as_ref()
                        .and_then(|t| ColumnType::from_name(&t.value)),
                })
                .collect(),
            max_connections: self.max_connections.value as usize,
            connect_timeout: std::time::Duration::from_secs(10),
            tls: self.tls(base_dir),
            mode: match self.mode.value {
                PostgresMode::Insert => LoadMode::Insert,
                PostgresMode::Upsert => LoadMode::Upsert {
                    conflict_columns: self.conflict_columns.clone(),
                },
            },
        })
        .await?;
        Ok(PostgresTable::new(sink, stream))
    }

    /// The TLS mode `sslmode` asks for; `sslrootcert` is taken relative to `base_dir`.
    pub fn tls(&self, base_dir: &std::path::Path) -> TlsMode {
        match self.sslmode.as_ref().map(|m| m.value.as_str()) {
            Some("disable") => TlsMode::Disable,
            Some("require") => TlsMode::Require,
            Some("verify-full") => TlsMode::VerifyFull {
                root_cert: self.sslrootcert.as_ref().map(|p| base_dir.join(p)),
            },
            _ => TlsMode::Prefer,
        }
    }

    /// Connection settings: the URL, then the separate fields over it.
    pub fn connection(&self) -> Result<ConnectionConfig, String> {
        let mut config = match &self.url {
            Some(url) => url
                .value
                .parse::<ConnectionConfig>()
                .map_err(|e| format!("`url` is not a PostgreSQL connection URL: {e}"))?,
            None => {
                let mut config = ConnectionConfig::new();
                config.host("127.0.0.1");
                config
            }
        };
        if let Some(host) = &self.host {
            config.host(host);
        }
        if let Some(port) = self.port {
            config.port(port);
        }
        if let Some(user) = &self.user {
            config.user(user);
        }
        if let Some(password) = &self.password {
            config.password(password);
        }
        if let Some(dbname) = &self.dbname {
            config.dbname(dbname);
        }
        if config.get_user().is_none() {
            return Err("no `user` (in `url` or as `user:`)".into());
        }
        Ok(config)
    }
}

/// Problems with a stream's postgres destination.
pub(super) fn validate(
    name: &str,
    stream: &super::StreamConfig,
    problems: &mut Vec<ConfigProblem>,
) {
    let Destination::Postgres(pg) = &stream.destination else {
        return;
    };
    if let Err(reason) = pg.connection() {
        let location = pg
            .url
            .as_ref()
            .map_or(pg.table.referenced, |u| u.referenced);
        problems.push(ConfigProblem::at(
            location,
            format!("stream `{name}`: {reason}"),
        ));
    }
    if let Some(mode) = &pg.sslmode
        && !matches!(
            mode.value.as_str(),
            "disable" | "prefer" | "require" | "verify-full"
        )
    {
        problems.push(at(
            mode,
            format!(
                "stream `{name}`: `sslmode` must be disable, prefer, require or verify-full, got `{}`",
                mode.value
            ),
        ));
    }
    if pg.table.value.trim().is_empty() {
        problems.push(at(&pg.table, format!("stream `{name}`: `table` is empty")));
    }
    if pg.columns.value.is_empty() {
        problems.push(at(
            &pg.columns,
            format!("stream `{name}`: `columns` is empty"),
        ));
    }
    for (i, column) in pg.columns.value.iter().enumerate() {
        if pg.columns.value[..i]
            .iter()
            .any(|c| c.name.value == column.name.value)
        {
            problems.push(at(
                &column.name,
                format!(
                    "stream `{name}`: column `{}` is listed twice",
                    column.name.value
                ),
            ));
        }
        if let Some(data_type) = &column.data_type
            && ColumnType::from_name(&data_type.value).is_none()
        {
            problems.push(at(
                data_type,
                format!(
                    "stream `{name}`: column `{}`: unknown type `{}` (text, int2, int4, int8, float4, float8, numeric, bool, timestamptz, timestamp, date, uuid, json, jsonb)",
                    column.name.value, data_type.value
                ),
            ));
        }
    }
    match pg.mode.value {
        PostgresMode::Upsert if pg.conflict_columns.is_empty() => problems.push(at(
            &pg.mode,
            format!("stream `{name}`: `mode: upsert` needs `conflict_columns` (the primary key or a unique index)"),
        )),
        PostgresMode::Upsert => {
            for column in &pg.conflict_columns {
                if !pg.columns.value.iter().any(|c| &c.name.value == column) {
                    problems.push(at(
                        &pg.mode,
                        format!("stream `{name}`: conflict column `{column}` is not one of `columns`"),
                    ));
                }
            }
        }
        PostgresMode::Insert if !pg.conflict_columns.is_empty() => problems.push(at(
            &pg.mode,
            format!("stream `{name}`: `conflict_columns` needs `mode: upsert`"),
        )),
        PostgresMode::Insert => {}
    }
    if pg.max_connections.value == 0 {
        problems.push(at(
            &pg.max_connections,
            format!("stream `{name}`: `max_connections` must be at least 1"),
        ));
    }
    if !pg.error_output.is_object_store() {
        problems.push(at(
            &pg.table,
            format!("stream `{name}`: `error_output` must be a `local` or `s3` destination"),
        ));
    }
    if stream.format.value == super::Format::Parquet
        || stream.compression.value != super::Compression::None
    {
        problems.push(at(
            &stream.format,
            format!(
                "stream `{name}`: a postgres destination takes JSON records as they are; remove `format: parquet` and `compression`"
            ),
        ));
    }
}

fn default_mode() -> Spanned<PostgresMode> {
    super::spanned(PostgresMode::default())
}

fn default_max_connections() -> Spanned<u32> {
    super::spanned(4)
}

/// The error output when none is configured: a local `hydrant-errors` directory.
pub(super) fn default_error_output() -> Box<Destination> {
    Box::new(Destination::Local(Box::new(super::LocalDestination {
        path: super::spanned("hydrant-errors".into()),
        prefix: super::empty_prefix(),
        error_output_prefix: super::default_error_output_prefix(),
        retry_duration_seconds: super::default_retry_duration_seconds(),
        initial_backoff_ms: super::default_initial_backoff_ms(),
        max_backoff_seconds: super::default_max_backoff_seconds(),
    })))
}
