//! The CPU pool (rayon's global pool): compression, conversion and transforms run there,
//! off the async reactor, and are awaited from it.
//!
//! A job that panics (a bug in an encoder reached by some input) must not take the service
//! down: rayon aborts the process on a panic in a spawned job, and a restart would replay
//! the same records into the same panic. Jobs started here catch their panic and report it
//! as a failure the delivery loop can retry and, in the end, send to the error output.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::oneshot;

/// Why a job gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobFailure {
    /// The job panicked; the panic's message.
    #[error("a job on the CPU pool panicked: {0}")]
    Panicked(String),
    /// The job ended without sending its result (the pool was shut down).
    #[error("a job on the CPU pool ended without a result")]
    Lost,
}

/// A job started on the CPU pool; await [`result`](Self::result).
#[derive(Debug)]
pub struct CpuJob<T> {
    receiver: oneshot::Receiver<Result<T, JobFailure>>,
}

impl<T> CpuJob<T> {
    /// The job's result, or why it has none.
    pub async fn result(self) -> Result<T, JobFailure> {
        self.receiver.await.unwrap_or(Err(JobFailure::Lost))
    }
}

/// Runs `job` on the CPU pool, catching a panic.
pub fn spawn<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> CpuJob<T> {
    let (sender, receiver) = oneshot::channel();
    rayon::spawn(move || {
        let _ = sender.send(run_caught(job));
    });
    CpuJob { receiver }
}

/// Runs `job` on a blocking thread of its own rather than in the CPU pool's queue: for the
/// short step that finishes a sealed batch (a destination assembling its requests), which
/// must not wait behind the chunks of the batches filling after it. Catches a panic;
/// `faults` as [`spawn_encoding`].
pub fn spawn_finishing<T: Send + 'static>(
    faults: Option<Arc<EncodeFaults>>,
    job: impl FnOnce() -> T + Send + 'static,
) -> CpuJob<T> {
    let (sender, receiver) = oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let _ = sender.send(run_caught(with_faults(faults, job)));
    });
    CpuJob { receiver }
}

/// `job`'s result, or its panic's message.
fn run_caught<T>(job: impl FnOnce() -> T) -> Result<T, JobFailure> {
    catch_unwind(AssertUnwindSafe(job)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        JobFailure::Panicked(message)
    })
}

/// Runs encoding `job` on the CPU pool, first panicking as `faults` (tests only) ask.
pub fn spawn_encoding<T: Send + 'static>(
    faults: Option<Arc<EncodeFaults>>,
    job: impl FnOnce() -> T + Send + 'static,
) -> CpuJob<T> {
    spawn(with_faults(faults, job))
}

/// `job`, first panicking as `faults` (tests only) ask.
fn with_faults<T>(
    faults: Option<Arc<EncodeFaults>>,
    job: impl FnOnce() -> T,
) -> impl FnOnce() -> T {
    move || {
        if let Some(faults) = faults {
            faults.before_job();
        }
        job()
    }
}

/// Makes encoding jobs panic on demand, so tests can prove that a batch whose body cannot be
/// built is built again and, if that keeps failing, reported in the error output rather
/// than lost. A running service has none.
#[derive(Debug, Default)]
pub struct EncodeFaults {
    remaining: AtomicU32,
}

impl EncodeFaults {
    /// The next `jobs` encoding jobs panic (`u32::MAX`: until told otherwise; 0: none).
    pub fn fail_next(&self, jobs: u32) {
        self.remaining.store(jobs, Ordering::SeqCst);
    }

    /// Called at the start of every encoding job: panics while faults remain.
    pub fn before_job(&self) {
        let failed = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                u32::MAX => Some(u32::MAX),
                n => Some(n - 1),
            })
            .is_ok();
        if failed {
            panic!("injected encoding fault");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_job_is_a_failure_with_its_message_and_the_pool_keeps_working() {
        let failed = spawn(|| -> u32 { panic!("boom {}", 7) }).result().await;
        assert_eq!(failed, Err(JobFailure::Panicked("boom 7".into())));
        assert_eq!(spawn(|| 6 * 7).result().await, Ok(42));
    }

    #[tokio::test]
    async fn a_finishing_job_runs_apart_from_the_pool_and_reports_panics_and_faults() {
        // The pool's threads are all busy: a finishing job still runs.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(std::sync::Mutex::new(held));
        let blockers: Vec<_> = (0..rayon::current_num_threads())
            .map(|_| {
                let held = Arc::clone(&held);
                spawn(move || {
                    let _ = held.lock().unwrap().recv();
                })
            })
            .collect();
        assert_eq!(spawn_finishing(None, || 6 * 7).result().await, Ok(42));
        let failed = spawn_finishing(None, || -> u32 { panic!("bust") })
            .result()
            .await;
        assert_eq!(failed, Err(JobFailure::Panicked("bust".into())));
        let faults = Arc::new(EncodeFaults::default());
        faults.fail_next(1);
        let injected = spawn_finishing(Some(Arc::clone(&faults)), || 1)
            .result()
            .await;
        assert_eq!(
            injected,
            Err(JobFailure::Panicked("injected encoding fault".into()))
        );
        for _ in &blockers {
            release.send(()).unwrap();
        }
        for blocker in blockers {
            blocker.result().await.unwrap();
        }
    }

    #[test]
    fn faults_run_out_unless_unbounded() {
        let faults = EncodeFaults::default();
        faults.fail_next(2);
        for _ in 0..2 {
            assert!(catch_unwind(|| faults.before_job()).is_err());
        }
        faults.before_job();
        faults.fail_next(u32::MAX);
        for _ in 0..5 {
            assert!(catch_unwind(|| faults.before_job()).is_err());
        }
        faults.fail_next(0);
        faults.before_job();
    }
}
