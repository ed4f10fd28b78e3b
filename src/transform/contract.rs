//! Firehose's contract between a batch and its outcomes: every record comes back exactly
//! once, under its own id. Anything else is a processing failure of the records concerned.

use super::guest::{Outcome, OutcomeResult};

/// What the outcomes say about one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver this data (with its dynamic partitioning keys).
    Ok(Vec<u8>, Vec<(String, String)>),
    /// Left out on purpose.
    Dropped,
    /// Failed, with an error code and message.
    Failed(&'static str, String),
}

/// Error code of records the transform itself marked `processing-failed`.
pub const PROCESSING_FAILED: &str = "Transform.ProcessingFailed";
/// Error code of records with no outcome.
pub const MISSING_RECORD_ID: &str = "Transform.MissingRecordId";
/// Error code of records with more than one outcome.
pub const DUPLICATE_RECORD_ID: &str = "Transform.DuplicateRecordId";
/// Error code of records with no outcome when the batch's outcomes name records it does
/// not have.
pub const UNKNOWN_RECORD_ID: &str = "Transform.UnknownRecordId";
/// Error code of a `processing-failed` outcome without an error message.
pub const INVALID_OUTCOME: &str = "Transform.InvalidOutcome";

/// The verdict on each of `count` records (ids `"0"`..), and whether the outcomes broke the
/// contract (then the batch is worth calling again).
pub fn verdicts(count: usize, outcomes: Vec<Outcome>) -> (Vec<Verdict>, bool) {
    let mut seen: Vec<Option<Outcome>> = vec![None; count];
    let mut duplicated = vec![false; count];
    let mut unknown = Vec::new();
    for outcome in outcomes {
        match outcome.record_id.parse::<usize>() {
            Ok(index) if index < count && outcome.record_id == index.to_string() => {
                if seen[index].is_some() {
                    duplicated[index] = true;
                } else {
                    seen[index] = Some(outcome);
                }
            }
            _ => unknown.push(outcome.record_id),
        }
    }
    let mut broken = duplicated.contains(&true) || !unknown.is_empty();
    let verdicts = seen
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| {
            if duplicated[index] {
                return Verdict::Failed(
                    DUPLICATE_RECORD_ID,
                    format!("the transform returned record id {index} more than once"),
                );
            }
            let Some(outcome) = outcome else {
                broken = true;
                if !unknown.is_empty() {
                    return Verdict::Failed(
                        UNKNOWN_RECORD_ID,
                        format!(
                            "the transform returned no outcome for record id {index} but outcomes for ids not in the batch ({})",
                            unknown.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
                return Verdict::Failed(
                    MISSING_RECORD_ID,
                    format!("the transform returned no outcome for record id {index}"),
                );
            };
            match outcome.result {
                OutcomeResult::Ok => Verdict::Ok(outcome.data, outcome.partition_keys),
                OutcomeResult::Dropped => Verdict::Dropped,
                OutcomeResult::ProcessingFailed => match outcome.error_message {
                    Some(message) => Verdict::Failed(PROCESSING_FAILED, message),
                    None => Verdict::Failed(
                        INVALID_OUTCOME,
                        "processing-failed without an error message".into(),
                    ),
                },
            }
        })
        .collect();
    (verdicts, broken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, result: OutcomeResult, data: &[u8]) -> Outcome {
        Outcome {
            record_id: id.into(),
            result,
            data: data.to_vec(),
            partition_keys: Vec::new(),
            error_message: (result == OutcomeResult::ProcessingFailed).then(|| "bad".into()),
        }
    }

    #[test]
    fn each_record_takes_its_own_outcome_in_any_order() {
        let (found, broken) = verdicts(
            3,
            vec![
                outcome("2", OutcomeResult::ProcessingFailed, b""),
                outcome("0", OutcomeResult::Ok, b"a"),
                outcome("1", OutcomeResult::Dropped, b""),
            ],
        );
        assert!(!broken);
        assert_eq!(
            found,
            [
                Verdict::Ok(b"a".to_vec(), vec![]),
                Verdict::Dropped,
                Verdict::Failed(PROCESSING_FAILED, "bad".into())
            ]
        );
    }

    #[test]
    fn missing_duplicated_and_unknown_ids_are_failures() {
        let (found, broken) = verdicts(
            3,
            vec![
                outcome("0", OutcomeResult::Ok, b"a"),
                outcome("0", OutcomeResult::Ok, b"a"),
                outcome("2", OutcomeResult::Ok, b"c"),
            ],
        );
        assert!(broken);
        assert!(matches!(found[0], Verdict::Failed(DUPLICATE_RECORD_ID, _)));
        assert!(matches!(found[1], Verdict::Failed(MISSING_RECORD_ID, _)));
        assert_eq!(found[2], Verdict::Ok(b"c".to_vec(), vec![]));

        let (found, broken) = verdicts(
            2,
            vec![
                outcome("0", OutcomeResult::Ok, b"a"),
                outcome("01", OutcomeResult::Ok, b"b"),
                outcome("7", OutcomeResult::Ok, b"b"),
            ],
        );
        assert!(broken);
        assert_eq!(found[0], Verdict::Ok(b"a".to_vec(), vec![]));
        assert!(matches!(found[1], Verdict::Failed(UNKNOWN_RECORD_ID, _)));
    }
}
