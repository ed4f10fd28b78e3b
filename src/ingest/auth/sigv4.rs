//! Checking an AWS Signature Version 4 the way AWS does: the canonical request rebuilt from
//! what arrived (method, path, query, the signed headers, the SHA-256 of the body), the
//! string to sign under the credential scope, the signing key derived from the secret, and
//! the signature compared in constant time.

use axum::http::{HeaderMap, Method};
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};

use super::AuthFailure;

/// The only algorithm AWS SDKs sign Firehose calls with.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The service name signatures must be scoped to.
pub const SERVICE: &str = "firehose";

/// How far a request's time may be from the service's clock, as AWS allows.
const MAX_SKEW: TimeDelta = TimeDelta::minutes(15);

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    /// The access key id.
    pub access_key: &'a str,
    /// `YYYYMMDD` of the credential scope.
    pub date: &'a str,
    /// Region of the credential scope.
    pub region: &'a str,
    /// Service of the credential scope.
    pub service: &'a str,
    /// Lower-case names of the signed headers, in the order signed.
    pub signed_headers: Vec<&'a str>,
    /// The signature, in hex.
    pub signature: &'a str,
}

/// Parses the value of an `Authorization` header that starts with [`ALGORITHM`].
pub fn parse_header(value: &str) -> Result<SignatureHeader<'_>, AuthFailure> {
    let incomplete = |what: &str| AuthFailure::Incomplete(what.to_string());
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|rest| rest.starts_with(' '))
        .ok_or_else(|| incomplete("the Authorization header must start with AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((name, value)) = part.trim().split_once('=') else {
            return Err(incomplete(
                "Authorization header parameters must be name=value pairs separated by commas",
            ));
        };
        match name {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed = Some(value),
            "Signature" => signature = Some(value),
            _ => {}
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(incomplete(
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, terminator] = scope[..] else {
        return Err(incomplete(
            "Credential must have the form <key id>/<YYYYMMDD>/<region>/<service>/aws4_request",
        ));
    };
    if terminator != "aws4_request" || access_key.is_empty() {
        return Err(incomplete(
            "Credential must have the form <key id>/<YYYYMMDD>/<region>/<service>/aws4_request",
        ));
    }
    Ok(SignatureHeader {
        access_key,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

/// A request as it arrived, for checking its signature.
pub struct ArrivedRequest<'a> {
    /// Its method.
    pub method: &'a Method,
    /// Its path, as sent (still percent-encoded).
    pub path: &'a str,
    /// Its query string, as sent.
    pub query: Option<&'a str>,
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// Its whole body.
    pub body: &'a [u8],
}

/// Checks that `request`, whose `Authorization` header is `header`, was signed with
/// `secret` within [`MAX_SKEW`] of `now`, for `required_region` if set.
pub fn verify(
    request: &ArrivedRequest<'_>,
    header: &SignatureHeader<'_>,
    secret: &str,
    required_region: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), AuthFailure> {
    if header.service != SERVICE {
        return Err(AuthFailure::InvalidSignature(format!(
            "Credential should be scoped to correct service: '{SERVICE}'."
        )));
    }
    if let Some(region) = required_region
        && header.region != region
    {
        return Err(AuthFailure::InvalidSignature(format!(
            "Credential should be scoped to a valid region, not '{}'; this service takes '{region}'.",
            header.region
        )));
    }
    let amz_date = request
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            AuthFailure::Incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header"
                    .to_string(),
            )
        })?;
    let signed_at = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| {
            AuthFailure::Incomplete(format!(
                "X-Amz-Date '{amz_date}' must have the form YYYYMMDD'T'HHMMSS'Z'"
            ))
        })?
        .and_utc();
    if !amz_date.starts_with(header.date) || header.date.len() != 8 {
        return Err(AuthFailure::InvalidSignature(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{amz_date}'.",
            header.date,
            &amz_date[..amz_date.len().min(8)]
        )));
    }
    let stamp = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    if signed_at < now - MAX_SKEW {
        return Err(AuthFailure::InvalidSignature(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 15 min.)",
            stamp(now - MAX_SKEW),
            stamp(now)
        )));
    }
    if signed_at > now + MAX_SKEW {
        return Err(AuthFailure::InvalidSignature(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 15 min.)",
            stamp(now + MAX_SKEW),
            stamp(now)
        )));
    }
    if !header.signed_headers.contains(&"host") {
        return Err(AuthFailure::InvalidSignature(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.".to_string(),
        ));
    }
    let payload_hash = hex(&Sha256::digest(request.body));
    if let Some(claimed) = request.headers.get("x-amz-content-sha256")
        && claimed.as_bytes() != payload_hash.as_bytes()
    {
        return Err(AuthFailure::InvalidSignature(
            "The provided 'x-amz-content-sha256' header does not match what was computed."
                .to_string(),
        ));
    }
    let canonical = canonical_request(request, &header.signed_headers, &payload_hash);
    let scope = format!(
        "{}/{}/{}/aws4_request",
        header.date, header.region, header.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), header.date.as_bytes());
    for part in [header.region, header.service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let given = unhex(header.signature).ok_or_else(mismatch)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given).map_err(|_| mismatch())
}

fn mismatch() -> AuthFailure {
    AuthFailure::InvalidSignature(
        "The request signature we calculated does not match the signature you provided. Check \
         your AWS Secret Access Key and signing method. Consult the service documentation for \
         details."
            .to_string(),
    )
}

/// The canonical request of SigV4 for a service other than S3 (the path encoded once more).
fn canonical_request(
    request: &ArrivedRequest<'_>,
    signed_headers: &[&str],
    payload_hash: &str,
) -> String {
    let path = if request.path.is_empty() {
        "/"
    } else {
        request.path
    };
    let mut query: Vec<(String, String)> = request
        .query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                uri_encode(&percent_decode(name), true),
                uri_encode(&percent_decode(value), true),
            )
        })
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = request
            .headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&values.join(","));
        headers.push('\n');
    }
    format!(
        "{}\n{}\n{query}\n{headers}\n{}\n{payload_hash}",
        request.method,
        uri_encode(path, false),
        signed_headers.join(";")
    )
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters kept, everything else `%XX`;
/// `/` kept when encoding a path.
fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// The headers of a Firehose call as an SDK signs them.
    fn signed_example() -> (HeaderMap, String) {
        let mut headers = HeaderMap::new();
        headers.insert(
            "host",
            HeaderValue::from_static("firehose.us-east-1.amazonaws.com"),
        );
        headers.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        (headers, String::new())
    }

    #[test]
    fn the_authorization_header_is_parsed_and_bad_ones_are_incomplete() {
        let parsed = parse_header(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/firehose/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature=abcd",
        )
        .unwrap();
        assert_eq!(parsed.access_key, "AKIDEXAMPLE");
        assert_eq!(
            parsed.signed_headers,
            ["content-type", "host", "x-amz-date"]
        );
        for bad in [
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/firehose/aws4_request",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/firehose, SignedHeaders=host, Signature=ab",
            "AWS4-HMAC-SHA256X Credential=a",
        ] {
            assert!(
                matches!(parse_header(bad), Err(AuthFailure::Incomplete(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_signature_from_the_documented_algorithm_verifies_and_any_change_breaks_it() {
        let (headers, _) = signed_example();
        let body = br#"{"DeliveryStreamName":"s"}"#;
        let method = Method::POST;
        let request = ArrivedRequest {
            method: &method,
            path: "/",
            query: None,
            headers: &headers,
            body,
        };
        let signed = ["content-type", "host", "x-amz-date"];
        // Built by hand from the SigV4 documentation, independently of `verify`.
        let canonical = format!(
            "POST\n/\n\ncontent-type:application/x-amz-json-1.1\nhost:firehose.us-east-1.amazonaws.com\n\
             x-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n{}",
            hex(&Sha256::digest(body))
        );
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/firehose/aws4_request\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let k_date = hmac(format!("AWS4{secret}").as_bytes(), b"20150830");
        let k_region = hmac(&k_date, b"us-east-1");
        let k_service = hmac(&k_region, b"firehose");
        let k_signing = hmac(&k_service, b"aws4_request");
        let signature = hex(&hmac(&k_signing, to_sign.as_bytes()));
        let header = SignatureHeader {
            access_key: "AKIDEXAMPLE",
            date: "20150830",
            region: "us-east-1",
            service: "firehose",
            signed_headers: signed.to_vec(),
            signature: &signature,
        };
        let now = DateTime::parse_from_rfc3339("2015-08-30T12:40:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(verify(&request, &header, secret, None, now), Ok(()));
        assert_eq!(
            verify(&request, &header, secret, Some("us-east-1"), now),
            Ok(())
        );

        let wrong = |result: Result<(), AuthFailure>, words: &str| match result {
            Err(AuthFailure::InvalidSignature(message)) => {
                assert!(message.contains(words), "{message}")
            }
            other => panic!("{other:?}"),
        };
        wrong(
            verify(&request, &header, "another secret", None, now),
            "does not match the signature you provided",
        );
        let tampered = ArrivedRequest {
            body: br#"{"DeliveryStreamName":"t"}"#,
            ..request
        };
        wrong(
            verify(&tampered, &header, secret, None, now),
            "does not match",
        );
        wrong(
            verify(&request, &header, secret, Some("eu-west-1"), now),
            "scoped to a valid region",
        );
        wrong(
            verify(
                &request,
                &header,
                secret,
                None,
                now + TimeDelta::minutes(20),
            ),
            "Signature expired: 20150830T123600Z is now earlier than 20150830T124500Z (20150830T130000Z - 15 min.)",
        );
        wrong(
            verify(
                &request,
                &header,
                secret,
                None,
                now - TimeDelta::minutes(30),
            ),
            "Signature not yet current",
        );
        let other_service = SignatureHeader {
            service: "kinesis",
            ..header.clone()
        };
        wrong(
            verify(&request, &other_service, secret, None, now),
            "scoped to correct service",
        );
        let mut lying_hash = headers.clone();
        lying_hash.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static("UNSIGNED-PAYLOAD"),
        );
        let lying = ArrivedRequest {
            headers: &lying_hash,
            ..request
        };
        wrong(
            verify(&lying, &header, secret, None, now),
            "x-amz-content-sha256",
        );
    }

    #[test]
    fn paths_and_queries_are_canonicalised_as_aws_does() {
        assert_eq!(
            uri_encode("/streams/a b/records", false),
            "/streams/a%20b/records"
        );
        assert_eq!(uri_encode("a/b~c", true), "a%2Fb~c");
        assert_eq!(percent_decode("a%20b+c%2"), "a b c%2");
        let (headers, _) = signed_example();
        let method = Method::GET;
        let request = ArrivedRequest {
            method: &method,
            path: "/streams/a%20b/stats",
            query: Some("b=2&a=x%2Fy&a=1"),
            headers: &headers,
            body: b"",
        };
        let canonical = canonical_request(&request, &["host"], "h");
        assert_eq!(
            canonical,
            "GET\n/streams/a%2520b/stats\na=1&a=x%2Fy&b=2\nhost:firehose.us-east-1.amazonaws.com\n\nhost\nh"
        );
    }

    mod hostile {
        use proptest::prelude::*;

        use super::*;

        const VALID: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/firehose/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=00ff";

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn hostile_authorization_headers_parse_or_are_incomplete(
                text in prop_oneof![
                    ".{0,200}",
                    (0usize..VALID.len(), ".{0,20}").prop_map(|(at, junk)| {
                        let at = (0..=at).rev().find(|&i| VALID.is_char_boundary(i)).unwrap_or(0);
                        format!("{}{junk}", &VALID[..at])
                    }),
                ]
            ) {
                if let Err(error) = parse_header(&text) {
                    prop_assert!(matches!(error, AuthFailure::Incomplete(_)), "{:?}", error);
                }
            }

            #[test]
            fn hostile_requests_never_verify_and_never_panic(
                date in "[0-9TZ]{0,20}",
                signature in "[0-9a-fA-F]{0,70}",
                path in "/[ -~]{0,40}",
                query in prop::option::of("[ -~]{0,40}"),
                body in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut headers = HeaderMap::new();
                headers.insert("host", HeaderValue::from_static("h"));
                if let Ok(value) = HeaderValue::from_str(&date) {
                    headers.insert("x-amz-date", value);
                }
                let method = Method::POST;
                let request = ArrivedRequest { method: &method, path: &path, query: query.as_deref(), headers: &headers, body: &body };
                let header = SignatureHeader {
                    access_key: "AKID",
                    date: date.get(..8).unwrap_or(""),
                    region: "us-east-1",
                    service: "firehose",
                    signed_headers: vec!["host", "x-amz-date"],
                    signature: &signature,
                };
                prop_assert!(verify(&request, &header, "secret", None, Utc::now()).is_err());
            }
        }
    }
}
