//! gRPC wire details the proxy needs without pulling in a gRPC library:
//! status codes, `grpc-timeout`, `grpc-message` encoding and trailers-only responses.

use crate::body::{self, Body};
use http::{HeaderMap, HeaderValue, Response};
use std::time::Duration;

/// gRPC status codes (numbers as on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Code {
    /// The call succeeded.
    Ok = 0,
    /// The caller cancelled the call.
    Cancelled = 1,
    /// An error with no better code (also unmapped HTTP statuses).
    Unknown = 2,
    /// The request itself is malformed, whatever the server's state.
    InvalidArgument = 3,
    /// The deadline passed before the call finished.
    DeadlineExceeded = 4,
    /// The requested entity does not exist.
    NotFound = 5,
    /// The entity to create already exists.
    AlreadyExists = 6,
    /// The caller is known but not allowed to make this call.
    PermissionDenied = 7,
    /// A quota, rate limit or bound was hit.
    ResourceExhausted = 8,
    /// The system is not in the state the call requires.
    FailedPrecondition = 9,
    /// The call lost a concurrency conflict; retrying at a higher level may help.
    Aborted = 10,
    /// A value is past the valid range.
    OutOfRange = 11,
    /// The method is not served here.
    Unimplemented = 12,
    /// The server broke an invariant.
    Internal = 13,
    /// The endpoint cannot serve now; safe to retry elsewhere.
    Unavailable = 14,
    /// Data was lost or corrupted.
    DataLoss = 15,
    /// The caller could not be identified.
    Unauthenticated = 16,
}

const NAMES: [(&str, Code); 17] = [
    ("OK", Code::Ok),
    ("CANCELLED", Code::Cancelled),
    ("UNKNOWN", Code::Unknown),
    ("INVALID_ARGUMENT", Code::InvalidArgument),
    ("DEADLINE_EXCEEDED", Code::DeadlineExceeded),
    ("NOT_FOUND", Code::NotFound),
    ("ALREADY_EXISTS", Code::AlreadyExists),
    ("PERMISSION_DENIED", Code::PermissionDenied),
    ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
    ("FAILED_PRECONDITION", Code::FailedPrecondition),
    ("ABORTED", Code::Aborted),
    ("OUT_OF_RANGE", Code::OutOfRange),
    ("UNIMPLEMENTED", Code::Unimplemented),
    ("INTERNAL", Code::Internal),
    ("UNAVAILABLE", Code::Unavailable),
    ("DATA_LOSS", Code::DataLoss),
    ("UNAUTHENTICATED", Code::Unauthenticated),
];

impl Code {
    /// The code for a wire number; None outside 0–16.
    pub fn from_u16(n: u16) -> Option<Code> {
        NAMES.get(usize::from(n)).map(|(_, c)| *c)
    }
    /// The code for a canonical name such as `UNAVAILABLE` (case-insensitive, as in config and fault headers).
    pub fn from_name(s: &str) -> Option<Code> {
        let up = s.trim().to_ascii_uppercase();
        NAMES.iter().find(|(n, _)| *n == up).map(|(_, c)| *c)
    }
    /// The canonical upper-case name, as used in metric labels and logs.
    pub fn name(self) -> &'static str {
        NAMES[self as usize].0
    }
    /// The wire number, as sent in `grpc-status`.
    pub fn as_u16(self) -> u16 {
        self as u16
    }
    /// The gRPC code for an HTTP status, per the gRPC HTTP-to-gRPC mapping.
    pub fn from_http(status: u16) -> Code {
        match status {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

/// Reads `grpc-status` from a header or trailer map. `None` when absent; malformed values read as UNKNOWN.
pub fn status_of(map: &HeaderMap) -> Option<Code> {
    let v = map.get("grpc-status")?;
    Some(
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
            .and_then(Code::from_u16)
            .unwrap_or(Code::Unknown),
    )
}

/// Parses a `grpc-timeout` value (`1-8 digits` + unit `H M S m u n`). `None` when malformed.
pub fn parse_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 || !v.is_ascii() {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes a duration as `grpc-timeout`, with the finest unit that fits in 8 digits.
pub fn encode_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    if nanos <= MAX {
        return format!("{nanos}n");
    }
    let micros = d.as_micros();
    if micros <= MAX {
        return format!("{micros}u");
    }
    let millis = d.as_millis();
    if millis <= MAX {
        return format!("{millis}m");
    }
    let secs = u128::from(d.as_secs());
    if secs <= MAX {
        return format!("{secs}S");
    }
    let mins = secs / 60;
    if mins <= MAX {
        return format!("{mins}M");
    }
    format!("{}H", (secs / 3600).min(MAX))
}

/// Percent-encodes a `grpc-message` as the gRPC spec asks.
pub fn encode_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A trailers-only response: HTTP 200 with `grpc-status`/`grpc-message` in the headers and no body.
pub fn trailers_only(code: Code, message: &str) -> Response<Body> {
    let mut rsp = Response::new(body::empty());
    let h = rsp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code.as_u16()));
    if let Ok(v) = HeaderValue::from_str(&encode_message(message)) {
        h.insert("grpc-message", v);
    }
    rsp
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (svc, method) = rest.split_once('/')?;
    if svc.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((svc, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("m"), None);
        assert_eq!(parse_timeout("123456789m"), None);
        assert_eq!(parse_timeout("-1m"), None);
        assert_eq!(parse_timeout("10x"), None);
    }

    #[test]
    fn timeout_round_trips() {
        for ms in [1u64, 999, 100_000, 3_600_000, 90_000_000_000] {
            let d = Duration::from_millis(ms);
            let back = parse_timeout(&encode_timeout(d)).unwrap();
            assert!(back <= d && d - back < Duration::from_secs(3600), "{ms}");
        }
    }

    #[test]
    fn codes_by_name_and_number() {
        assert_eq!(Code::from_name("unavailable"), Some(Code::Unavailable));
        assert_eq!(Code::from_u16(8), Some(Code::ResourceExhausted));
        assert_eq!(Code::from_u16(17), None);
        assert_eq!(Code::DeadlineExceeded.name(), "DEADLINE_EXCEEDED");
    }

    #[test]
    fn message_is_percent_encoded() {
        assert_eq!(encode_message("a b%ü"), "a b%25%C3%BC");
    }
}
