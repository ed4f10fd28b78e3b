//! Reading a `_bulk` response: one outcome per document, in the order they were sent.

use serde::Deserialize;
use serde_json::value::RawValue;

/// What the cluster did with one document of a bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Indexed (created or updated).
    Indexed,
    /// Refused for now (the cluster is overloaded or a shard is unavailable): send it again.
    Retry(ItemError),
    /// Refused for good (a mapping conflict, a malformed document): it goes to the error
    /// output.
    Failed(ItemError),
}

/// Why the cluster refused a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// The item's HTTP status (`400`, `429`, ...).
    pub status: u16,
    /// The error object as the cluster sent it (`{"type":...,"reason":...}`), or a
    /// description when there was none.
    pub message: String,
}

#[derive(Deserialize)]
struct BulkResponse<'a> {
    #[serde(default)]
    errors: bool,
    #[serde(borrow)]
    items: &'a RawValue,
}

/// One entry of `items`: its only key is the action (`index`, `create`, ...).
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, alias = "create", alias = "update", alias = "delete")]
    index: ItemResult<'a>,
}

#[derive(Deserialize)]
struct ItemResult<'a> {
    status: u16,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ErrorType<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
}

/// Statuses worth sending a document again for: the cluster is overloaded or unavailable.
fn retryable(status: u16, error_type: Option<&str>) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
        || matches!(
            error_type,
            Some("es_rejected_execution_exception" | "rejected_execution_exception")
        )
}

/// The outcome of each of the `documents` documents of a request from the response `body`;
/// an error when the body is not a bulk response for exactly that many documents.
pub fn parse_bulk_response(body: &[u8], documents: usize) -> Result<Vec<ItemOutcome>, String> {
    let response: BulkResponse<'_> = serde_json::from_slice(body)
        .map_err(|e| format!("the response is not a bulk response: {e}"))?;
    let outcomes = if response.errors {
        let items: Vec<Item<'_>> = serde_json::from_str(response.items.get())
            .map_err(|e| format!("the bulk response's `items` cannot be read: {e}"))?;
        items.into_iter().map(|item| outcome(item.index)).collect()
    } else {
        // Nothing failed: the items only need counting.
        let items: Vec<serde::de::IgnoredAny> = serde_json::from_str(response.items.get())
            .map_err(|e| format!("the bulk response's `items` cannot be read: {e}"))?;
        vec![ItemOutcome::Indexed; items.len()]
    };
    if outcomes.len() != documents {
        return Err(format!(
            "the bulk response has {} items for {documents} documents",
            outcomes.len()
        ));
    }
    Ok(outcomes)
}

fn outcome(item: ItemResult<'_>) -> ItemOutcome {
    if (200..300).contains(&item.status) && item.error.is_none() {
        return ItemOutcome::Indexed;
    }
    let error_type = item
        .error
        .and_then(|raw| serde_json::from_str::<ErrorType<'_>>(raw.get()).ok())
        .and_then(|e| e.kind);
    let error = ItemError {
        status: item.status,
        message: item.error.map_or_else(
            || format!("status {} without an error", item.status),
            |raw| raw.get().to_string(),
        ),
    };
    if retryable(item.status, error_type) {
        ItemOutcome::Retry(error)
    } else {
        ItemOutcome::Failed(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_without_errors_is_all_indexed_and_counted() {
        let body = br#"{"took":3,"errors":false,"items":[{"index":{"_id":"a","status":201}},{"create":{"_id":"b","status":200}}]}"#;
        assert_eq!(
            parse_bulk_response(body, 2).unwrap(),
            vec![ItemOutcome::Indexed, ItemOutcome::Indexed]
        );
        let error = parse_bulk_response(body, 3).unwrap_err();
        assert!(error.contains("2 items for 3 documents"), "{error}");
    }

    #[test]
    fn failed_items_are_sorted_into_retryable_and_permanent() {
        let body = br#"{"errors":true,"items":[
            {"index":{"_id":"1","status":201}},
            {"index":{"_id":"2","status":429,"error":{"type":"too_many_requests","reason":"slow down"}}},
            {"index":{"_id":"3","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [x]"}}},
            {"index":{"_id":"4","status":500,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"index":{"_id":"5","status":503,"error":{"type":"unavailable_shards_exception","reason":"no primary"}}},
            {"index":{"_id":"6","status":404,"error":{"type":"index_not_found_exception","reason":"no such index"}}}
        ]}"#;
        let outcomes = parse_bulk_response(body, 6).unwrap();
        assert_eq!(outcomes[0], ItemOutcome::Indexed);
        let kinds: Vec<&str> = outcomes
            .iter()
            .map(|o| match o {
                ItemOutcome::Indexed => "ok",
                ItemOutcome::Retry(_) => "retry",
                ItemOutcome::Failed(_) => "failed",
            })
            .collect();
        assert_eq!(kinds, ["ok", "retry", "failed", "retry", "retry", "failed"]);
        let ItemOutcome::Failed(error) = &outcomes[2] else {
            unreachable!()
        };
        assert_eq!(error.status, 400);
        assert!(error.message.contains("mapper_parsing_exception"));
        assert!(error.message.contains("failed to parse field [x]"));
    }

    #[test]
    fn a_body_that_is_not_a_bulk_response_is_an_error() {
        for body in [&b"<html>bad gateway</html>"[..], b"{\"errors\":true}", b""] {
            assert!(parse_bulk_response(body, 1).is_err());
        }
    }
}
