//! Request bodies: received from the connection once, by the API's middleware, then read
//! again by the handlers without a copy.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;

use super::aws_error::{AwsError, AwsErrorType};

/// Receives a request body of at most `limit` bytes from the connection into one buffer
/// sized for `expected` (its Content-Length; never more than `limit` is reserved), copying
/// each piece as it arrives: the connection's read buffer is then free for the next read,
/// where joining the pieces at the end kept every read buffer they came from alive until then.
pub(super) async fn receive_body(
    body: Body,
    expected: usize,
    limit: usize,
) -> Result<Bytes, AwsError> {
    let mut received = BytesMut::with_capacity(expected.min(limit));
    let mut pieces = body.into_data_stream();
    while let Some(piece) = pieces.next().await {
        let piece = piece.map_err(|error| unreadable_body(limit, &error))?;
        if received.len() + piece.len() > limit {
            return Err(unreadable_body(limit, &"length limit exceeded"));
        }
        received.extend_from_slice(&piece);
    }
    Ok(received.freeze())
}

/// A body the middleware already received, within the handler's own `limit` (without a copy:
/// it is one piece).
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, AwsError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|error| unreadable_body(limit, &error))
}

/// The answer to a body that could not be read whole within `limit` bytes, and why.
fn unreadable_body(limit: usize, reason: &dyn std::fmt::Display) -> AwsError {
    AwsError::new(
        AwsErrorType::InvalidArgument,
        format!("cannot read the request body (at most {limit} bytes are accepted): {reason}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that arrives as these pieces, as a slow or chunked upload does.
    fn in_pieces(pieces: &[&'static [u8]]) -> Body {
        let pieces: Vec<Result<Bytes, std::io::Error>> =
            pieces.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Body::from_stream(futures_util::stream::iter(pieces))
    }

    #[tokio::test]
    async fn a_body_is_joined_from_its_pieces_in_order_whatever_length_was_announced() {
        for expected in [0, 4, 17, 1 << 20] {
            let body = receive_body(
                in_pieces(&[b"{\"a\":1}\n", b"{\"b\"", b":2}\n"]),
                expected,
                64,
            )
            .await
            .unwrap();
            assert_eq!(&body[..], b"{\"a\":1}\n{\"b\":2}\n");
        }
    }

    #[tokio::test]
    async fn a_body_may_reach_the_limit_but_not_pass_it() {
        let body = receive_body(in_pieces(&[b"1234", b"5678"]), 8, 8)
            .await
            .unwrap();
        assert_eq!(&body[..], b"12345678");
        let error = receive_body(in_pieces(&[b"1234", b"56789"]), 8, 8)
            .await
            .unwrap_err();
        assert_eq!(error.kind, AwsErrorType::InvalidArgument);
        assert!(
            error.message.contains("at most 8 bytes"),
            "{}",
            error.message
        );
    }
}
