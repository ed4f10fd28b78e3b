//! `hydrant run`: load the configuration, start the streams and the API, and shut down
//! gracefully (stop taking puts, deliver everything buffered) on SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::console::{History, run_sampler};
use crate::ingest::{ApiState, router};
use crate::pipeline::{Pipeline, ReloadError, ReloadReport, load_with_fingerprints};
use crate::tls::TlsFiles;
use axum_server::tls_rustls::RustlsConfig;

/// Runs the service described by the configuration file at `config_path` until a signal.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let (config, fingerprints) = load_with_fingerprints(config_path)?;
    let metrics = crate::metrics::install()?;
    let base_dir = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let pipeline = Arc::new(Pipeline::start(&config, fingerprints, base_dir).await?);
    let listen: SocketAddr = config
        .server
        .listen
        .value
        .parse()
        .context("server.listen was validated but does not parse")?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}: is another process using it?"))?;
    let local = listener.local_addr()?;
    let console = &config.server.console;
    let history = console.enabled.then(|| {
        let resolution = Duration::from_secs(console.resolution_seconds.value);
        Arc::new(History::new(resolution))
    });
    if let Some(history) = &history {
        tokio::spawn(run_sampler(Arc::clone(history), Arc::clone(&pipeline)));
    }
    let state = ApiState {
        pipeline: Arc::clone(&pipeline),
        request_slots: Arc::new(Semaphore::new(
            config.server.max_concurrent_requests.value as usize,
        )),
        request_memory: Arc::new(Semaphore::new(
            config.server.max_request_memory_mib.value as usize * 1024 * 1024,
        )),
        metrics: Some(metrics),
        auth: config
            .server
            .auth
            .as_ref()
            .map(|auth| Arc::new(crate::ingest::auth::Authenticator::new(auth))),
        body_read_timeout: Duration::from_secs(config.server.body_read_timeout_seconds.value),
        history: history.clone(),
        config_path: Some(Arc::new(config_path.to_path_buf())),
    };
    let header_timeout = Duration::from_secs(config.server.header_read_timeout_seconds.value);
    match &config.server.auth {
        Some(auth) => tracing::info!(
            access_keys = auth.access_keys.value.len(),
            "API calls must be signed (AWS Signature Version 4) or carry a Bearer key"
        ),
        None => tracing::warn!(
            "no `server.auth` configured: the API accepts unsigned calls from anyone who can \
             reach {}",
            config.server.listen.value
        ),
    }
    tracing::info!(
        streams = pipeline.sorted_names().join(","),
        "hydrant listening on {local}"
    );
    let app = router(state).into_make_service();
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stopping.graceful_shutdown(None);
    });
    let listener = listener.into_std()?;
    let tls = match &config.server.tls {
        None => None,
        Some(tls) => {
            let files = TlsFiles::new(tls, base_dir);
            let rustls = RustlsConfig::from_config(files.load()?);
            Some((files, rustls))
        }
    };
    tokio::spawn(reload_on_hangup(
        Arc::clone(&pipeline),
        config_path.to_path_buf(),
        tls.clone(),
    ));
    match tls {
        None => {
            println!("hydrant listening on http://{local}");
            let mut server = axum_server::from_tcp(listener)?.handle(handle);
            configure_http1(server.http_builder(), header_timeout);
            server.serve(app).await
        }
        Some((files, rustls)) => {
            tracing::info!(
                client_certificates = files.requires_client_certificates(),
                "serving HTTPS (TLS 1.2 and 1.3); SIGHUP re-reads the certificate files"
            );
            println!("hydrant listening on https://{local}");
            let mut server = axum_server::from_tcp_rustls(listener, rustls)?.handle(handle);
            configure_http1(server.http_builder(), header_timeout);
            server.serve(app).await
        }
    }
    .context("the API server failed")?;
    tracing::info!(
        undelivered_records = pipeline.undelivered_records(),
        "stopped taking records; delivering what is buffered (signal again to exit at once)"
    );
    tokio::select! {
        () = pipeline.drain() => {
            tracing::info!("everything buffered was delivered; exiting");
            Ok(())
        }
        () = shutdown_signal() => {
            let pending = pipeline.undelivered_records();
            if pipeline.is_spooled() {
                tracing::warn!("second signal: exiting with {pending} accepted records not yet delivered; they stay in the spool and are delivered at the next start");
                Ok(())
            } else {
                anyhow::bail!("second signal: exiting with {pending} accepted records not delivered (the spool is disabled, so they are lost)")
            }
        }
    }
}

/// Most a connection's read buffer grows to. hyper's default (about 400 KiB) made the read
/// buffers of 64 connections sending 275 KB bodies hold 55 MB at the heap's peak, most of it
/// allocations kept alive by body pieces; at 64 KiB a body arrives in a few more reads.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Closes connections whose request headers do not arrive within `timeout`, and bounds each
/// connection's read buffer.
fn configure_http1(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    timeout: Duration,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(READ_BUFFER_BYTES);
}

/// At every SIGHUP: re-reads the configuration file and applies it to the streams (see
/// [`Pipeline::reload`]), and re-reads the listener's certificate files (new connections get
/// the new certificate, open ones keep theirs). Whatever does not load leaves what runs.
async fn reload_on_hangup(
    pipeline: Arc<Pipeline>,
    config_path: PathBuf,
    tls: Option<(TlsFiles, RustlsConfig)>,
) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::error!("cannot listen for SIGHUP; the configuration is read only at start-up");
        return;
    };
    while hangups.recv().await.is_some() {
        log_reload(&config_path, pipeline.reload(&config_path).await);
        let Some((files, rustls)) = &tls else {
            continue;
        };
        match tokio::task::spawn_blocking({
            let files = files.clone();
            move || files.load()
        })
        .await
        {
            Ok(Ok(config)) => {
                rustls.reload_from_config(config);
                tracing::info!("SIGHUP: reloaded the TLS certificate files");
            }
            Ok(Err(error)) => {
                tracing::error!("SIGHUP: keeping the current TLS certificate: {error}")
            }
            Err(error) => tracing::error!("SIGHUP: the reload task failed: {error}"),
        }
    }
}

/// Logs what a reload of `path` did, or every problem that refused it.
pub fn log_reload(path: &Path, outcome: Result<ReloadReport, ReloadError>) {
    match outcome {
        Ok(report) => {
            tracing::info!(
                added = ?report.added,
                removed = ?report.removed,
                changed = ?report.changed,
                unchanged = report.unchanged.len(),
                "reloaded {}",
                path.display()
            );
            if !report.needs_restart.is_empty() {
                tracing::warn!(
                    sections = ?report.needs_restart,
                    "these sections changed, and apply only at the next start"
                );
            }
        }
        Err(error) => {
            for problem in error.problems() {
                tracing::error!("reload refused, the running configuration stays: {problem}");
            }
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!("cannot listen for SIGTERM: {error}");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
