//! What the destinations that speak HTTP share.

/// A transport error with its causes (reqwest's own message is often just "error sending
/// request").
pub(crate) fn describe_transport_error(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        text.push_str(" (timed out)");
    }
    text
}
