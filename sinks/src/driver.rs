//! The one retry driver: sends a batch's requests with bounded concurrency, sends again
//! what the destination refused for now (after a backoff with jitter), regroups items that
//! must go in new requests, and stops when everything landed, was refused for good, or the
//! retry duration ran out. Every destination is driven by it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::time::Instant;

use crate::destination::{
    DeliveryReport, FailedItem, FailureKeeper, ItemError, ItemOutcome, Outcome, Request, Sending,
};
use crate::error::{SinkError, SinkErrorKind};
use crate::retry::Backoff;

/// How long and how hard a batch is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First pause after a failed round.
    pub initial_backoff: Duration,
    /// Longest pause.
    pub max_backoff: Duration,
    /// After this long, items still refused go to the error output; `None`: retried until
    /// they land (when there is no spool to read them back from, nothing may give up).
    pub give_up_after: Option<Duration>,
    /// Requests of one batch in flight at once.
    pub concurrency: usize,
    /// Longest one attempt may take before it counts as failed (and is sent again), should
    /// the destination's own timeouts not end it.
    pub attempt_timeout: Duration,
}

/// A request sent again as it is, with the error that sent it back.
struct Resend<B> {
    request: Request<B>,
    error: ItemError,
}

/// Hears of every request the driver sends, as it learns how it went: what the service
/// counts (`DeliveryToS3.Success`'s attempts and failures) and shows (a stream's health and
/// its recent errors).
pub trait AttemptLog: Send + Sync {
    /// A request was answered (wholly or partly taken), or `failed` with that error.
    fn attempt(&self, failed: Option<&SinkError>);
}

/// Counts failed requests only.
impl AttemptLog for AtomicU64 {
    fn attempt(&self, failed: Option<&SinkError>) {
        if failed.is_some() {
            self.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Delivers `batch` to `destination` under `policy`; `stream` names it in logs,
/// `attempts` hears of every request as it is answered, and `keeper` is handed the
/// failures so far before anything is sent again after a refusal. The report's failures
/// start with the batch's encoding failures.
pub async fn drive<D: Sending>(
    destination: &Arc<D>,
    batch: &Arc<D::Batch>,
    policy: &RetryPolicy,
    stream: &str,
    attempts: &dyn AttemptLog,
    keeper: &dyn FailureKeeper,
) -> DeliveryReport {
    let give_up_at = policy.give_up_after.map(|after| Instant::now() + after);
    let mut backoff = Backoff::new(policy.initial_backoff, policy.max_backoff);
    let mut report = DeliveryReport {
        attempts: 1,
        failed: destination.encoding_failures(batch),
        ..DeliveryReport::default()
    };
    let mut kept = 0;
    let mut shrink = 0u32;
    let mut pending = destination.requests(batch);
    loop {
        let results: Vec<(Request<D::Body>, Outcome)> = futures_util::stream::iter(pending)
            .map(|request| async move {
                let outcome = match tokio::time::timeout(
                    policy.attempt_timeout,
                    destination.send(batch, &request),
                )
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::Retry(SinkError::new(
                        SinkErrorKind::TimedOut,
                        destination.service(),
                        destination.describe(),
                        format!("{} items", request.items.len()),
                        format!(
                            "the attempt did not end within {} ms",
                            policy.attempt_timeout.as_millis()
                        ),
                    )),
                };
                (request, outcome)
            })
            .buffer_unordered(policy.concurrency.max(1))
            .collect()
            .await;
        let mut resend: Vec<Resend<D::Body>> = Vec::new();
        let mut regroup: Vec<(u32, ItemError)> = Vec::new();
        // Whether anything failed for now (rather than only waiting on a refused sibling).
        let mut pause = false;
        for (request, outcome) in results {
            match outcome {
                Outcome::Delivered => {
                    attempts.attempt(None);
                    report.delivered += request
                        .items
                        .iter()
                        .map(|&item| destination.item_records(batch, item))
                        .sum::<u64>();
                    report.bytes += destination.body_len(&request.body) as u64;
                    report.requests += 1;
                }
                Outcome::Retry(error) => {
                    pause = true;
                    attempts.attempt(Some(&error));
                    log_failed_request(stream, &error, request.items.len(), report.attempts);
                    resend.push(Resend {
                        request,
                        error: item_error(&error),
                    });
                }
                Outcome::TooLarge(error) => {
                    pause = true;
                    attempts.attempt(Some(&error));
                    log_failed_request(stream, &error, request.items.len(), report.attempts);
                    shrink += 1;
                    let reason = item_error(&error);
                    regroup.extend(request.items.into_iter().map(|i| (i, reason.clone())));
                }
                Outcome::Refused(error) => {
                    attempts.attempt(Some(&error));
                    let reason = item_error(&error);
                    report_failed(&mut report, destination, batch, request.items, &reason);
                }
                Outcome::Items(outcomes) => {
                    attempts.attempt(None);
                    let mut any_delivered = false;
                    for (item, outcome) in request.items.into_iter().zip(outcomes) {
                        match outcome {
                            ItemOutcome::Delivered => {
                                any_delivered = true;
                                report.delivered += destination.item_records(batch, item);
                            }
                            ItemOutcome::Retry(reason) => {
                                pause = true;
                                regroup.push((item, reason));
                            }
                            ItemOutcome::NotSent => regroup.push((
                                item,
                                ItemError {
                                    code: "Hydrant.NotSent".into(),
                                    message: "held back by another item's refusal".into(),
                                },
                            )),
                            ItemOutcome::Refused(reason) => {
                                report_failed(&mut report, destination, batch, [item], &reason)
                            }
                        }
                    }
                    if any_delivered {
                        report.requests += 1;
                    }
                }
            }
        }
        let waiting = resend.iter().map(|r| r.request.items.len()).sum::<usize>() + regroup.len();
        if waiting == 0 {
            return report;
        }
        if pause && give_up_at.is_some_and(|at| Instant::now() >= at) {
            tracing::error!(
                stream = %stream,
                destination = destination.describe(),
                items = waiting,
                attempts = report.attempts,
                "retry duration exhausted; sending what is still refused to the error output"
            );
            for Resend { request, error } in resend {
                report_failed(&mut report, destination, batch, request.items, &error);
            }
            for (item, error) in regroup {
                report_failed(&mut report, destination, batch, [item], &error);
            }
            return report;
        }
        if report.failed.len() > kept {
            keeper.keep(&report.failed).await;
            kept = report.failed.len();
        }
        if pause {
            let mut delay = backoff.next_delay();
            if let Some(at) = give_up_at {
                let left = at.saturating_duration_since(Instant::now());
                delay = delay.min(left.max(Duration::from_millis(10)));
            }
            tracing::warn!(
                stream = %stream,
                destination = destination.describe(),
                items = waiting,
                attempt = report.attempts,
                retry_in_ms = delay.as_millis() as u64,
                "the destination did not take every item; sending them again"
            );
            tokio::time::sleep(delay).await;
        }
        pending = resend.into_iter().map(|r| r.request).collect();
        if !regroup.is_empty() {
            let items: Vec<u32> = regroup.iter().map(|(item, _)| *item).collect();
            let (owner, shared) = (Arc::clone(destination), Arc::clone(batch));
            match tokio::task::spawn_blocking(move || owner.regroup(&shared, &items, shrink)).await
            {
                Ok(regrouped) => pending.extend(regrouped),
                Err(panicked) => {
                    // A destination's bug must not lose the items: they are reported.
                    let reason = ItemError {
                        code: "Hydrant.RegroupFailed".into(),
                        message: format!("building the retry requests failed: {panicked}"),
                    };
                    let items = regroup.into_iter().map(|(item, _)| item);
                    report_failed(&mut report, destination, batch, items, &reason);
                }
            }
        }
        report.attempts += 1;
    }
}

fn item_error(error: &SinkError) -> ItemError {
    ItemError {
        code: error.code().to_string(),
        message: error.to_string(),
    }
}

/// Adds `items` to the report's failures, refused for `reason` after the attempts so far.
fn report_failed<D: Sending>(
    report: &mut DeliveryReport,
    destination: &Arc<D>,
    batch: &Arc<D::Batch>,
    items: impl IntoIterator<Item = u32>,
    reason: &ItemError,
) {
    let attempts = report.attempts;
    report
        .failed
        .extend(items.into_iter().map(|item| FailedItem {
            record: destination.item_record(batch, item),
            code: reason.code.clone(),
            message: reason.message.clone(),
            attempts,
        }));
}

fn log_failed_request(stream: &str, error: &SinkError, items: usize, attempt: u32) {
    tracing::warn!(
        stream = %stream,
        destination = %error.destination,
        target = %error.target,
        code = error.code(),
        status = error.status,
        reason = %error.reason,
        items,
        attempt,
        "delivery attempt failed; will retry"
    );
}
