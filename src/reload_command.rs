//! `hydrant reload --config F`: checks the file here, then asks the service started from it
//! (at the file's `server.listen`, or `--endpoint`) to read it again and apply it, and prints
//! what changed — or every problem, `FILE:LINE:COLUMN: message`, with nothing changed.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::Value;

use crate::config::load_config;
use crate::console::terminal::call_service;

/// Arguments of `hydrant reload`.
#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// The configuration file the running service was started with, edited.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Base URL of the running service (default: from the file's `server.listen`).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// `ACCESS_KEY_ID:SECRET` of a key allowed `Reload`, when the service has `server.auth`
    /// (or set `HYDRANT_CREDENTIALS`).
    #[arg(long, env = "HYDRANT_CREDENTIALS", hide_env_values = true)]
    pub credentials: Option<String>,
}

/// Checks the file, asks the service to reload it, and prints the outcome.
pub async fn run(args: ReloadArgs) -> anyhow::Result<()> {
    // Problems found here are the ones the service would refuse the file for.
    let config = load_config(&args.config)?;
    let endpoint = match &args.endpoint {
        Some(endpoint) => endpoint.trim_end_matches('/').to_string(),
        None => {
            let listen = config.server.listen.value.replace("0.0.0.0", "127.0.0.1");
            let scheme = if config.server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", listen.replace("[::]", "[::1]"))
        }
    };
    let url = format!("{endpoint}/admin/reload");
    let request = reqwest::Client::new().post(&url);
    let response = call_service(request, args.credentials.as_deref(), &url).await?;
    let code = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("{url} answered {code} without JSON"))?;
    if let Some(problems) = body["problems"].as_array() {
        for problem in problems {
            eprintln!("{}", problem.as_str().unwrap_or_default());
        }
        anyhow::bail!("the service refused the file; it runs as before");
    }
    if !code.is_success() {
        anyhow::bail!(
            "{url} answered {code}: {}",
            body["message"].as_str().unwrap_or(&body.to_string())
        );
    }
    let report = &body["reloaded"];
    let names = |key: &str| {
        report[key]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|names| !names.is_empty())
            .unwrap_or_else(|| "-".into())
    };
    println!("added: {}", names("added"));
    println!("removed (draining): {}", names("removed"));
    println!("changed (restarted from the spool): {}", names("changed"));
    println!("unchanged: {}", names("unchanged"));
    if report["needs_restart"]
        .as_array()
        .is_some_and(|s| !s.is_empty())
    {
        println!("apply at the next start only: {}", names("needs_restart"));
    }
    Ok(())
}
