//! The load generator (`hydrant bench`): starts a Hydrant service from a configuration file
//! (or targets a running one), drives its HTTP API with concurrent `PutRecordBatch` calls (or
//! NDJSON posts) of realistic JSON records, waits until everything accepted has been
//! delivered, and reports
//! records/s, MiB/s, call latency percentiles and the service's peak RSS, next to a ceiling
//! measured in the same run on one core, in process: flate2 compressing the same bytes (zstd
//! at the stream's level for a zstd stream), or,
//! for a Parquet stream, arrow-json decoding them and ArrowWriter writing them with the
//! stream's schema and writer settings; for a search stream, building (and compressing) the
//! same bulk request bodies.
//!
//! Delivered throughput is the service's delivered-records counter sampled while the load
//! runs, over the last three quarters of the run (the first quarter fills the buffers); the
//! end-to-end figure also counts draining the last, partly filled batch.

mod bulk_sink;
pub mod corpus;
mod driver;
mod endpoint_sink;
mod service;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use corpus::Corpus;
use service::Service;

/// Options of `hydrant bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Configuration of the service to start and measure (a child `hydrant run`).
    #[arg(long, conflicts_with = "endpoint")]
    pub config: Option<PathBuf>,
    /// Base URL of an already running service (no RSS figure unless `--pid` is given).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Process id of the running service, for its peak RSS.
    #[arg(long, requires = "endpoint")]
    pub pid: Option<u32>,
    /// Delivery stream to put into.
    #[arg(long, default_value = "bench")]
    pub stream: String,
    /// Concurrent connections; several, comma-separated (`16,64`), run one measurement
    /// each against a fresh service.
    #[arg(
        long,
        alias = "connections",
        value_delimiter = ',',
        default_value = "16"
    )]
    pub concurrency: Vec<usize>,
    /// The API the load goes to: `firehose` (PutRecordBatch) or `ndjson`
    /// (`POST /streams/{stream}/records`, the same records as NDJSON bodies).
    #[arg(long, value_enum, default_value_t = driver::Api::Firehose)]
    pub api: driver::Api,
    /// Records per PutRecordBatch call.
    #[arg(long, default_value_t = 500)]
    pub records_per_call: usize,
    /// Approximate size of each JSON record in bytes.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// gzip level of the in-process ceiling measurement (match the stream's level; Parquet
    /// streams use their own settings).
    #[arg(long, default_value_t = 6)]
    pub gzip_level: u32,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Skip the in-process ceiling (for scenarios without compression).
    #[arg(long)]
    pub no_ceiling: bool,
    /// Measure the puts only, without waiting for the service to deliver what it accepted
    /// (a node of a cluster delivers partitions, not its own puts).
    #[arg(long)]
    pub send_only: bool,
    /// Serve a `_bulk` endpoint that answers every document `201` on this address (point
    /// the scenario's search destination at it), so the search server is not measured.
    #[arg(long)]
    pub bulk_sink: Option<std::net::SocketAddr>,
    /// Serve a Firehose HTTP endpoint that takes every request on this address (point the
    /// scenario's `http_endpoint` destination at it), so no receiver is measured.
    #[arg(long)]
    pub endpoint_sink: Option<std::net::SocketAddr>,
}

/// Runs the load generator and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=500).contains(&args.records_per_call),
        "--records-per-call must be 1 to 500"
    );
    let corpus = Corpus::generate(&args.stream, args.records_per_call, args.record_bytes);
    eprintln!(
        "bench: {} distinct request bodies of {} records (~{} bytes each)",
        corpus.bodies.len(),
        args.records_per_call,
        corpus.mean_record_bytes()
    );
    if let Some(addr) = args.bulk_sink {
        bulk_sink::serve(addr).await?;
    }
    if let Some(addr) = args.endpoint_sink {
        endpoint_sink::serve(addr).await?;
    }
    let ceiling = if args.no_ceiling {
        None
    } else {
        let data = corpus.framed_records();
        let encoding = match &args.config {
            Some(path) => stream_encoding_of(path, &args.stream).await?,
            None => None,
        };
        let level = args.gzip_level;
        let ceiling = tokio::task::spawn_blocking(move || match encoding {
            Some(CeilingEncoding::Parquet(encoder)) => {
                corpus::parquet_ceiling_mib_s(&data, &encoder)
                    .map(|rate| ("arrow_json_arrow_writer", rate))
            }
            Some(CeilingEncoding::Destination(destination)) => Ok((
                "destination_requests",
                corpus::seam_ceiling_mib_s(&data, &destination),
            )),
            Some(CeilingEncoding::Zstd(level)) => {
                Ok(("zstd", corpus::zstd_ceiling_mib_s(&data, level)))
            }
            _ => Ok(("gzip", corpus::gzip_ceiling_mib_s(&data, level))),
        })
        .await??;
        eprintln!(
            "bench: single-core {} ceiling {:.1} MiB/s",
            ceiling.0, ceiling.1
        );
        Some(ceiling)
    };
    anyhow::ensure!(
        !args.concurrency.is_empty() && !args.concurrency.contains(&0),
        "--concurrency takes connection counts of at least 1"
    );
    for &concurrency in &args.concurrency {
        let report = measure(&args, &corpus, ceiling, concurrency).await?;
        if args.json {
            println!("{report}");
        } else {
            println!("== {concurrency} connections");
            print_table(&report);
        }
    }
    Ok(())
}

/// One measurement at `concurrency` connections, against a service started for it.
async fn measure(
    args: &BenchArgs,
    corpus: &Corpus,
    ceiling: Option<(&'static str, f64)>,
    concurrency: usize,
) -> anyhow::Result<serde_json::Value> {
    let ceiling_mib_s = ceiling.map(|(_, rate)| rate);
    let mut service = match (&args.config, &args.endpoint) {
        (Some(config), _) => Service::start(config)?,
        (None, Some(endpoint)) => Service::external(endpoint, args.pid),
        (None, None) => anyhow::bail!("give --config (start a service) or --endpoint"),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let before = service.stats(&client, &args.stream).await?;
    let started = Instant::now();
    let duration = Duration::from_secs(args.seconds);
    let sampler = service.sample_delivered(&client, &args.stream, duration);
    let (sent, samples) = tokio::join!(
        driver::drive(
            &client,
            service.base_url(),
            (args.api, &args.stream),
            corpus,
            concurrency,
            duration
        ),
        sampler
    );
    let sent = sent?;
    let send_elapsed = started.elapsed();
    let steady_mib_s = service::steady_rate(&samples?, duration)
        .map(|records_per_s| records_per_s * corpus.mean_record_bytes() as f64 / (1024.0 * 1024.0));
    let target = before.accepted + sent.accepted_records;
    let end_to_end = if args.send_only {
        None
    } else {
        let delivered_at = service
            .wait_delivered(&client, &args.stream, target, Duration::from_secs(300))
            .await
            .context("waiting for the service to deliver what it accepted")?;
        Some(delivered_at.duration_since(started))
    };
    let peak_rss = service.peak_rss_bytes();
    service.stop();

    let mib = sent.accepted_bytes as f64 / (1024.0 * 1024.0);
    Ok(serde_json::json!({
        "api": args.api,
        "concurrency": concurrency,
        "records_per_call": args.records_per_call,
        "record_bytes": corpus.mean_record_bytes(),
        "calls": sent.calls,
        "accepted_records": sent.accepted_records,
        "refused_records": sent.refused_records,
        "accepted_mib": mib,
        "ingest_records_per_s": sent.accepted_records as f64 / send_elapsed.as_secs_f64(),
        "ingest_mib_per_s": mib / send_elapsed.as_secs_f64(),
        "delivered_mib_per_s_steady": steady_mib_s,
        "delivered_vs_ceiling": steady_mib_s.zip(ceiling_mib_s).map(|(rate, ceiling)| rate / ceiling),
        "end_to_end_mib_per_s": end_to_end.map(|e| mib / e.as_secs_f64()),
        "end_to_end_seconds": end_to_end.map(|e| e.as_secs_f64()),
        "p50_call_ms": sent.latency_percentile(50.0).as_secs_f64() * 1000.0,
        "p99_call_ms": sent.latency_percentile(99.0).as_secs_f64() * 1000.0,
        "ceiling": ceiling.map(|(name, _)| name),
        "ceiling_mib_per_s": ceiling_mib_s,
        "peak_rss_mib": peak_rss.map(|b| b as f64 / (1024.0 * 1024.0)),
    }))
}

/// What sets a stream's single-core ceiling, when gzip does not.
enum CeilingEncoding {
    /// arrow-json and ArrowWriter with the stream's schema and settings.
    Parquet(std::sync::Arc<hydrant_sinks::object::parquet::ParquetEncoder>),
    /// The requests a destination (other than an object store) builds.
    Destination(std::sync::Arc<dyn hydrant_sinks::prelude::AnyDestination>),
    /// zstd at this level, for a stream of zstd-compressed objects.
    Zstd(i32),
}

/// How `stream` in the configuration at `path` encodes records, when that sets the ceiling:
/// a Parquet stream (arrow-json and ArrowWriter with the same schema and settings), a
/// search stream (the same bulk bodies), a destination behind the seam (the same requests)
/// or a zstd stream (zstd at its level); `None` means gzip sets it.
async fn stream_encoding_of(
    path: &std::path::Path,
    stream: &str,
) -> anyhow::Result<Option<CeilingEncoding>> {
    let config = crate::config::load_config(path)?;
    let Some((_, stream_config)) = config.streams.iter().find(|(name, _)| name.value == stream)
    else {
        return Ok(None);
    };
    if let Some(seam) = stream_config
        .destination
        .seam(path.parent().unwrap_or(path), stream, fastrand::u64(..))
        .await
    {
        return Ok(Some(CeilingEncoding::Destination(seam?.destination)));
    }
    match stream_config.object_format().map_err(anyhow::Error::msg)? {
        hydrant_sinks::object::ObjectFormat::Parquet(encoder) => {
            Ok(Some(CeilingEncoding::Parquet(encoder)))
        }
        hydrant_sinks::object::ObjectFormat::Framed(_) => Ok(
            match crate::compress::codec_of(
                stream_config.compression.value,
                stream_config.compression_level.as_ref().map(|l| l.value),
                stream_config.gzip_members.value,
            ) {
                hydrant_sinks::compress::Codec::Zstd { level } => {
                    Some(CeilingEncoding::Zstd(level))
                }
                _ => None,
            },
        ),
    }
}

fn print_table(report: &serde_json::Value) {
    let object = report.as_object().expect("report is an object");
    for (key, value) in object {
        match value.as_f64() {
            Some(number) if value.is_f64() => println!("{key:>26}  {number:.2}"),
            _ => println!("{key:>26}  {value}"),
        }
    }
}
