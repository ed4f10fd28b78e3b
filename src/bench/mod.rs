//! The load generator: drives a running Hydrant's HTTP API with concurrent PutRecordBatch
//! calls of realistic JSON records and reports records/s, MiB/s, latency percentiles and
//! the service's peak memory.

/// Options of `hydrant bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the Hydrant API.
    #[arg(long, default_value = "http://127.0.0.1:4573")]
    pub endpoint: String,
}

/// Runs the load generator.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("load generator against {} not built yet", args.endpoint)
}
