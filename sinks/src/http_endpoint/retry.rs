//! Which answers count as delivered. Firehose's specification: only `200` with a JSON body
//! echoing the request's `requestId` is success; every other answer, and no answer, is a
//! failure worth retrying until the retry duration runs out.

use serde::Deserialize;

use crate::destination::Outcome;
use crate::error::{Service, SinkError, SinkErrorKind};

/// The response body fields the specification defines.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseBody {
    request_id: Option<String>,
    #[serde(default)]
    error_message: Option<String>,
}

/// What the answer `status` / `body` to request `request_id` means.
pub fn classify(
    destination: &str,
    request_id: &str,
    status: u16,
    body: &[u8],
) -> Result<(), SinkError> {
    let text = || String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
    let fail = |kind, reason: String| {
        SinkError::new(kind, Service::HttpEndpoint, destination, request_id, reason)
            .with_status(status)
            .retriable(true)
    };
    if status != 200 {
        return Err(fail(
            SinkErrorKind::Rejected,
            format!(
                "the following response was received from the endpoint: {status}: {}",
                text()
            ),
        ));
    }
    match serde_json::from_slice::<ResponseBody>(body) {
        Ok(ResponseBody {
            request_id: Some(echoed),
            ..
        }) if echoed == request_id => Ok(()),
        Ok(ResponseBody {
            request_id: Some(echoed),
            ..
        }) => Err(fail(
            SinkErrorKind::InvalidResponse,
            format!("the response names request `{echoed}`, not the one sent"),
        )),
        Ok(ResponseBody {
            request_id: None,
            error_message,
        }) => Err(fail(
            SinkErrorKind::InvalidResponse,
            format!(
                "the response has no `requestId`{}",
                error_message
                    .map(|m| format!(" (errorMessage: {m})"))
                    .unwrap_or_default()
            ),
        )),
        Err(error) => Err(fail(
            SinkErrorKind::InvalidResponse,
            format!(
                "the response is not the JSON the protocol requires ({error}): {}",
                text()
            ),
        )),
    }
}

/// The outcome of a send: delivered, or retried later (every failure of this protocol is).
pub fn outcome(result: Result<(), SinkError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Delivered,
        Err(error) => Outcome::Retry(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_200_echoing_the_request_id_is_success() {
        let id = "a-b";
        assert!(classify("d", id, 200, br#"{"requestId":"a-b","timestamp":1}"#).is_ok());
        let cases: [(u16, &[u8], &str); 6] = [
            (
                200,
                br#"{"requestId":"other"}"#,
                "HttpEndpoint.InvalidResponseFromDestination",
            ),
            (
                200,
                br#"{"timestamp":1}"#,
                "HttpEndpoint.InvalidResponseFromDestination",
            ),
            (200, b"ok", "HttpEndpoint.InvalidResponseFromDestination"),
            (
                201,
                br#"{"requestId":"a-b"}"#,
                "HttpEndpoint.DestinationException",
            ),
            (
                413,
                br#"{"errorMessage":"too large"}"#,
                "HttpEndpoint.DestinationException",
            ),
            (500, b"", "HttpEndpoint.DestinationException"),
        ];
        for (status, body, code) in cases {
            let error = classify("d", id, status, body).unwrap_err();
            assert_eq!(error.code(), code, "{status} {body:?}");
            assert_eq!(error.status, Some(status));
            assert!(error.retriable, "Firehose retries every failure");
        }
    }
}
