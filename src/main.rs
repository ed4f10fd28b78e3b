//! The `hydrant` command line.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Hydrant: a self-hosted, Firehose-compatible delivery pipeline.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Run {
        /// Pipeline configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and list every problem as FILE:LINE:COLUMN: message.
    Validate {
        /// Pipeline configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Have a running service read its configuration file again and apply it.
    Reload(hydrant::reload_command::ReloadArgs),
    /// Print every stream's health, rates, backlog and freshness from a running service.
    Status(hydrant::console::terminal::StatusArgs),
    /// Drive a running Hydrant with PutRecordBatch load and report throughput and latency.
    Bench(hydrant::bench::BenchArgs),
    /// Work with WebAssembly transforms.
    #[command(subcommand)]
    Transform(TransformCommand),
}

#[derive(Subcommand)]
enum TransformCommand {
    /// Run a transform module over sample records (one per line) and print each outcome.
    Test(hydrant::transform::try_out::TestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("HYDRANT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Run { config } => {
            runtime().and_then(|rt| rt.block_on(hydrant::server::run(&config)))
        }
        Command::Reload(args) => {
            runtime().and_then(|rt| rt.block_on(hydrant::reload_command::run(args)))
        }
        Command::Status(args) => {
            runtime().and_then(|rt| rt.block_on(hydrant::console::terminal::run(args)))
        }
        Command::Bench(args) => runtime().and_then(|rt| rt.block_on(hydrant::bench::run(args))),
        Command::Transform(TransformCommand::Test(args)) => hydrant::transform::try_out::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn validate(path: &std::path::Path) -> anyhow::Result<()> {
    let config = hydrant::config::load_config(path)?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let runtime = runtime()?;
    let mut checked = runtime.block_on(hydrant::pipeline::check_destinations(&config, base_dir));
    let mut notes = Vec::new();
    checked.extend(runtime.block_on(hydrant::cluster::check_cluster(
        &config, base_dir, &mut notes,
    )));
    let (warnings, unreadable) = hydrant::source::check_sources(&config, base_dir);
    checked.extend(unreadable);
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    if !checked.is_empty() {
        anyhow::bail!(
            "{}: the configuration is valid but its destinations, transforms, source files or cluster cannot be used:\n  {}",
            path.display(),
            checked.join("\n  ")
        );
    }
    for note in notes {
        println!("{note}");
    }
    for note in hydrant::config::encryption_notes(&config) {
        println!("{note}");
    }
    println!(
        "{}: ok ({} delivery stream{})",
        path.display(),
        config.streams.0.len(),
        if config.streams.0.len() == 1 { "" } else { "s" }
    );
    Ok(())
}
