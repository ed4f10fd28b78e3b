//! A guest's stdout and stderr: each line goes to the service log, tagged with the stream and
//! the module, at most [`LINES_PER_SECOND`] lines a second per module (the rest are counted
//! and reported as suppressed).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Most guest output lines logged per second per module.
pub const LINES_PER_SECOND: u32 = 20;

/// The longest line logged; longer ones are cut.
const MAX_LINE: usize = 2048;

/// Where one module's output goes.
#[derive(Clone)]
pub struct GuestLog {
    inner: Arc<Mutex<LogState>>,
    which: &'static str,
}

struct LogState {
    stream: String,
    module: String,
    window_start: Instant,
    lines_in_window: u32,
    suppressed: u64,
    partial: Vec<u8>,
}

impl GuestLog {
    /// The stdout and stderr of `module` in `stream`, sharing one rate limit.
    pub fn pair(stream: &str, module: &str) -> (GuestLog, GuestLog) {
        let inner = Arc::new(Mutex::new(LogState {
            stream: stream.to_string(),
            module: module.to_string(),
            window_start: Instant::now(),
            lines_in_window: 0,
            suppressed: 0,
            partial: Vec::new(),
        }));
        (
            GuestLog {
                inner: Arc::clone(&inner),
                which: "stdout",
            },
            GuestLog {
                inner,
                which: "stderr",
            },
        )
    }

    fn write(&self, bytes: &[u8]) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.partial.extend_from_slice(bytes);
        while let Some(end) = state.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = state.partial.drain(..=end).collect();
            state.emit(self.which, &line[..line.len() - 1]);
        }
        if state.partial.len() > MAX_LINE {
            let line = std::mem::take(&mut state.partial);
            state.emit(self.which, &line);
        }
    }
}

impl LogState {
    fn emit(&mut self, which: &str, line: &[u8]) {
        if self.window_start.elapsed() >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::warn!(
                    stream = %self.stream,
                    module = %self.module,
                    suppressed = self.suppressed,
                    "guest output lines suppressed (more than {LINES_PER_SECOND} a second)"
                );
            }
            self.window_start = Instant::now();
            self.lines_in_window = 0;
            self.suppressed = 0;
        }
        if self.lines_in_window >= LINES_PER_SECOND {
            if self.suppressed == 0 {
                tracing::warn!(
                    stream = %self.stream,
                    module = %self.module,
                    "guest output over {LINES_PER_SECOND} lines a second; further lines this second are suppressed"
                );
            }
            self.suppressed += 1;
            return;
        }
        self.lines_in_window += 1;
        let text = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]);
        tracing::info!(stream = %self.stream, module = %self.module, output = which, "guest: {text}");
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestLog::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}
