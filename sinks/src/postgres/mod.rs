//! A PostgreSQL table as a destination: rows are loaded with binary `COPY ... FROM STDIN`,
//! one transaction per batch, and the batch's id is recorded in the `hydrant_deliveries`
//! ledger in the same transaction, so a batch that is retried or replayed after a crash is
//! loaded exactly once.

mod copy;
mod table;
mod tls;
mod value;

pub use crate::jq::JqFilter;
pub use copy::{EncodedRows, RowError, RowSpan, copy_stream_of};
pub use table::{
    POSTGRES_FAILED, POSTGRES_INVALID_VALUE, POSTGRES_REFUSED, PostgresTable, TableBatch,
    TablePiece,
};
pub use tls::TlsMode;
pub use tokio_postgres::config::{Config as ConnectionConfig, SslMode};
pub use value::{ColumnType, Value, encode_numeric};

use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::{SinkExt, pin_mut};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::error::{Service, SinkError, SinkErrorKind};

/// The ledger of loaded batches, created when missing.
pub const LEDGER_TABLE: &str = "hydrant_deliveries";

/// Records a batch in the ledger, unless it is there already.
const RECORD_BATCH: &str = "INSERT INTO hydrant_deliveries (batch_id, target_table, rows) \
     VALUES ($1, $2, $3) ON CONFLICT (batch_id) DO NOTHING";

/// One configured column: where its value comes from and, optionally, the type the
/// configuration expects it to have.
#[derive(Debug, Clone)]
pub struct ColumnSpec {
    /// Column name in the table.
    pub name: String,
    /// Where the value comes from: a JSON field path (`a.b.c`), `.` for the whole record,
    /// or a jq expression (anything else, e.g. `.a + .b`).
    pub from: String,
    /// Type the configuration declares, checked against the table.
    pub declared: Option<ColumnType>,
}

/// How to reach the table.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// Connection settings.
    pub connection: tokio_postgres::Config,
    /// Table name, optionally schema-qualified.
    pub table: String,
    /// Columns to fill, in order.
    pub columns: Vec<ColumnSpec>,
    /// Most connections the pool opens.
    pub max_connections: usize,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// Plain inserts, or upserts on these columns.
    pub mode: LoadMode,
    /// Whether and how connections are encrypted.
    pub tls: TlsMode,
}

/// How rows meet rows already in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadMode {
    /// Every row is inserted.
    Insert,
    /// A row whose conflict columns match an existing row updates it in place (the last
    /// row of a batch wins among rows with the same key).
    Upsert {
        /// The columns of a unique index or primary key.
        conflict_columns: Vec<String>,
    },
}

/// A column as the table defines it, with where its value comes from.
#[derive(Debug)]
struct Column {
    name: String,
    source: Source,
    ty: ColumnType,
    pg_type: Type,
    not_null: bool,
}

/// Upsert statements: rows are copied into a temporary table, then merged.
#[derive(Debug)]
struct Upsert {
    create_stage: String,
    merge: String,
    /// Plans a merge without running it: fails unless a unique index matches the keys.
    check: String,
}

impl Upsert {
    fn new(table: &str, columns: &[String], conflict: &[String]) -> Self {
        let table = quote_table(table);
        let list = columns.join(", ");
        let keys: Vec<String> = conflict.iter().map(|c| quote_ident(c)).collect();
        let keys = keys.join(", ");
        let check = format!(
            "EXPLAIN INSERT INTO {table} ({list}) SELECT {list} FROM {table} WHERE false \
             ON CONFLICT ({keys}) DO NOTHING"
        );
        let updates: Vec<String> = columns
            .iter()
            .filter(|c| !conflict.iter().any(|k| quote_ident(k) == **c))
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let action = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        Self {
            create_stage: format!(
                "CREATE TEMP TABLE hydrant_stage ON COMMIT DROP AS SELECT {list} FROM {table} WITH NO DATA; \
                 ALTER TABLE hydrant_stage ADD COLUMN hydrant_row bigserial"
            ),
            merge: format!(
                "INSERT INTO {table} ({list}) SELECT DISTINCT ON ({keys}) {list} FROM hydrant_stage \
                 ORDER BY {keys}, hydrant_row DESC ON CONFLICT ({keys}) {action}"
            ),
            check,
        }
    }
}

/// Where a column's value comes from.
#[derive(Debug)]
enum Source {
    /// The whole record.
    Record,
    /// A field path.
    Path(Vec<String>),
    /// The first output of a jq expression.
    Jq(JqFilter),
}

impl Source {
    /// `.` is the record, `a.b` and `.a.b` are paths, anything else is a jq expression.
    fn parse(from: &str) -> Result<Self, String> {
        if from == "." {
            return Ok(Source::Record);
        }
        let is_key = |k: &str| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '@')
        };
        let path = from.strip_prefix('.').unwrap_or(from);
        if path.split('.').all(is_key) {
            return Ok(Source::Path(path.split('.').map(str::to_string).collect()));
        }
        JqFilter::compile(from).map(Source::Jq)
    }
}

/// Why a batch was not loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The server refused one row (a value out of a column's range, a constraint): the
    /// batch can be loaded without it.
    Row {
        /// Its position among the rows sent.
        row: usize,
        /// The server's reason, with the column where it names one.
        reason: String,
    },
    /// Anything else: retry the batch.
    Batch(SinkError),
}

/// The row a COPY error is about, from its context (`COPY t, line 3, column x: ...`), for
/// data and constraint errors (classes 22 and 23).
fn refused_row(error: &tokio_postgres::Error) -> Option<(usize, String)> {
    let db = error.as_db_error()?;
    let class = &db.code().code()[..2];
    if class != "22" && class != "23" {
        return None;
    }
    let context = db.where_()?;
    let after = context.split(", line ").nth(1)?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let line: usize = digits.parse().ok()?;
    let column = after[digits.len()..]
        .strip_prefix(", column ")
        .and_then(|rest| rest.split(':').next());
    let reason = match column {
        Some(column) => format!("column '{column}': {}", db.message()),
        None => db.message().to_string(),
    };
    Some((line.checked_sub(1)?, reason))
}

/// What loading a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The rows were loaded.
    Loaded,
    /// The ledger already holds the batch: it was loaded before (e.g. before a restart).
    AlreadyLoaded,
    /// A rehearsal went through: the server takes every row, and nothing was committed.
    Rehearsed,
}

/// Whether a load commits or only finds out whether the server takes every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadCommit {
    /// Commit the rows with the batch's ledger entry.
    Commit,
    /// Load everything, then roll back: finds the rows the server refuses (one per
    /// attempt) without committing the batch before their error output is written.
    Rehearse,
}

/// A connection pool to one table, checked at start-up.
pub struct PostgresSink {
    pool: Pool,
    columns: Vec<Column>,
    copy_statement: String,
    /// For upserts: the statements that stage the rows and merge them.
    upsert: Option<Upsert>,
    table: String,
    description: String,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("table", &self.table)
            .field("destination", &self.description)
            .finish()
    }
}

impl PostgresSink {
    /// Connects, checks that the table has the configured columns with loadable types
    /// (every mismatch is listed), and creates the ledger table when missing.
    pub async fn connect(settings: PostgresSettings) -> Result<Self, SinkError> {
        let description = describe(&settings.connection);
        let fail = |kind, reason: String| {
            SinkError::new(
                kind,
                Service::Postgres,
                description.clone(),
                settings.table.clone(),
                reason,
            )
        };
        let mut connection = settings.connection.clone();
        connection.connect_timeout(settings.connect_timeout);
        connection.ssl_mode(match settings.tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyFull { .. } => SslMode::Require,
        });
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &settings.tls {
            TlsMode::Disable => Manager::from_config(connection, NoTls, manager_config),
            mode => {
                let tls =
                    tls::connector(mode).map_err(|reason| fail(SinkErrorKind::Rejected, reason))?;
                Manager::from_config(connection, tls, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections.max(1))
            .build()
            .map_err(|e| fail(SinkErrorKind::Rejected, e.to_string()))?;
        let client = pool
            .get()
            .await
            .map_err(|e| classify(&description, &settings.table, &e))?;
        let rows = client
            .query(
                "SELECT a.attname, a.atttypid, a.attnotnull, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&settings.table],
            )
            .await
            .map_err(|e| pg_error(&description, &settings.table, &e))?;
        if rows.is_empty() {
            return Err(fail(
                SinkErrorKind::NotFound,
                format!(
                    "table `{}` does not exist (or has no columns) in this database; create it first",
                    settings.table
                ),
            ));
        }
        let mut problems = Vec::new();
        let mut columns = Vec::new();
        for spec in &settings.columns {
            let Some(row) = rows.iter().find(|r| r.get::<_, String>(0) == spec.name) else {
                let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                problems.push(format!(
                    "column `{}` does not exist (the table has: {})",
                    spec.name,
                    names.join(", ")
                ));
                continue;
            };
            let oid: u32 = row.get(1);
            let pg_type = Type::from_oid(oid).unwrap_or(Type::UNKNOWN);
            let type_name: String = row.get(3);
            let Some(ty) = ColumnType::of(&pg_type) else {
                problems.push(format!(
                    "column `{}` is `{type_name}`, which Hydrant cannot load (text, int2/4/8, float4/8, numeric, bool, timestamptz, timestamp, date, uuid, json, jsonb)",
                    spec.name
                ));
                continue;
            };
            if let Some(declared) = spec.declared
                && declared != ty
            {
                problems.push(format!(
                    "column `{}` is `{type_name}` in the table but `{declared:?}` in the configuration",
                    spec.name
                ));
                continue;
            }
            let source = match Source::parse(&spec.from) {
                Ok(source) => source,
                Err(reason) => {
                    problems.push(format!("column `{}`: {reason}", spec.name));
                    continue;
                }
            };
            columns.push(Column {
                name: spec.name.clone(),
                source,
                ty,
                pg_type,
                not_null: row.get(2),
            });
        }
        if !problems.is_empty() {
            return Err(fail(SinkErrorKind::Rejected, problems.join("; ")));
        }
        let ledger = format!(
            "CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (\
             batch_id text PRIMARY KEY, target_table text NOT NULL, \
             rows bigint NOT NULL, delivered_at timestamptz NOT NULL DEFAULT now())"
        );
        if let Err(error) = client.batch_execute(&ledger).await {
            // Several streams may create it at once; losing that race is fine.
            let raced = matches!(
                error.code(),
                Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::DUPLICATE_TABLE
            );
            if !raced {
                return Err(pg_error(&description, LEDGER_TABLE, &error));
            }
        }
        let column_list: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
        let upsert = match &settings.mode {
            LoadMode::Insert => None,
            LoadMode::Upsert { conflict_columns } => {
                let upsert = Upsert::new(&settings.table, &column_list, conflict_columns);
                if let Err(error) = client.batch_execute(&upsert.check).await {
                    let reason = pg_error(&description, &settings.table, &error).reason;
                    return Err(fail(
                        SinkErrorKind::Rejected,
                        format!(
                            "upsert on ({}) is not possible: {reason} (it needs a primary key or unique index on exactly those columns)",
                            conflict_columns.join(", ")
                        ),
                    ));
                }
                Some(upsert)
            }
        };
        let copy_target = match upsert {
            Some(_) => "hydrant_stage".to_string(),
            None => quote_table(&settings.table),
        };
        let copy_statement = format!(
            "COPY {copy_target} ({}) FROM STDIN (FORMAT binary)",
            column_list.join(", ")
        );
        Ok(Self {
            pool,
            columns,
            copy_statement,
            upsert,
            table: settings.table,
            description,
        })
    }

    /// Where rows go, for logs: `postgres://host:port/db`.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// The table rows go to.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Encodes JSON records as rows in binary COPY format (see [`copy_stream_of`]); a record
    /// that is not a JSON object, or whose value does not fit its column, is left out with
    /// the reason. CPU-heavy: call it off the reactor.
    pub fn encode_rows<'a>(&self, records: impl Iterator<Item = &'a [u8]>) -> EncodedRows {
        copy::encode_rows(&self.columns, records)
    }

    /// Loads the binary COPY `stream` (`rows` rows) as batch `batch_id` in one
    /// transaction with its ledger entry; a batch already in the ledger is not loaded again.
    /// With [`LoadCommit::Rehearse`] the transaction is rolled back once everything is in.
    pub async fn load(
        &self,
        batch_id: &str,
        stream: &[Bytes],
        rows: u64,
        commit: LoadCommit,
    ) -> Result<LoadOutcome, LoadError> {
        let error = |e: &tokio_postgres::Error| match refused_row(e) {
            Some((row, reason)) => LoadError::Row { row, reason },
            None => LoadError::Batch(pg_error(&self.description, batch_id, e)),
        };
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| LoadError::Batch(classify(&self.description, batch_id, &e)))?;
        let transaction = client.transaction().await.map_err(|e| error(&e))?;
        let recorded = transaction
            .execute(RECORD_BATCH, &[&batch_id, &self.table, &(rows as i64)])
            .await
            .map_err(|e| error(&e))?;
        if recorded == 0 {
            transaction.rollback().await.map_err(|e| error(&e))?;
            return Ok(LoadOutcome::AlreadyLoaded);
        }
        if let Some(upsert) = &self.upsert {
            transaction
                .batch_execute(&upsert.create_stage)
                .await
                .map_err(|e| error(&e))?;
        }
        let sink = transaction
            .copy_in::<_, Bytes>(&self.copy_statement)
            .await
            .map_err(|e| error(&e))?;
        pin_mut!(sink);
        for part in stream {
            sink.send(part.clone()).await.map_err(|e| error(&e))?;
        }
        sink.finish().await.map_err(|e| error(&e))?;
        if let Some(upsert) = &self.upsert {
            transaction
                .batch_execute(&upsert.merge)
                .await
                .map_err(|e| error(&e))?;
        }
        if commit == LoadCommit::Rehearse {
            transaction.rollback().await.map_err(|e| error(&e))?;
            return Ok(LoadOutcome::Rehearsed);
        }
        transaction.commit().await.map_err(|e| error(&e))?;
        Ok(LoadOutcome::Loaded)
    }
}

/// `postgres://host:port/dbname`, without credentials.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{host}:{port}/{}",
        config.get_dbname().unwrap_or("postgres")
    )
}

fn classify(destination: &str, target: &str, error: &deadpool_postgres::PoolError) -> SinkError {
    match error {
        deadpool_postgres::PoolError::Backend(e) => pg_error(destination, target, e),
        other => SinkError::new(
            SinkErrorKind::Unavailable,
            Service::Postgres,
            destination.to_string(),
            target.to_string(),
            other.to_string(),
        ),
    }
}

fn pg_error(destination: &str, target: &str, error: &tokio_postgres::Error) -> SinkError {
    let kind = match error.code() {
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || *c == SqlState::INSUFFICIENT_PRIVILEGE =>
        {
            SinkErrorKind::AccessDenied
        }
        Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_CATALOG_NAME => {
            SinkErrorKind::NotFound
        }
        Some(c)
            if c.code().starts_with("08")
                || c.code().starts_with("57")
                || c.code().starts_with("53") =>
        {
            SinkErrorKind::Unavailable
        }
        Some(_) => SinkErrorKind::Rejected,
        None => SinkErrorKind::Unavailable,
    };
    let reason = match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut reason = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(inner) = source {
                reason = format!("{reason}: {inner}");
                source = inner.source();
            }
            reason
        }
    };
    SinkError::new(
        kind,
        Service::Postgres,
        destination.to_string(),
        target.to_string(),
        reason,
    )
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` or `table`, each part quoted.
fn quote_table(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}
