//! Plain HTTP/1.1 requests to the admin and metrics listeners of real
//! processes: one request per connection, written by hand because tests
//! need nothing more than a status and a body.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// How long the whole answer may take.
pub const HTTP_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a refused connection is tried again: a listener an instance
/// just restarted (by `tally up`) is not listening at once.
pub const HTTP_CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// Between two tries of a refused connection.
const CONNECT_RETRY: Duration = Duration::from_millis(100);

/// An HTTP/1.1 answer.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code (0 if the status line did not parse).
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    /// The body, de-chunked if it was sent chunked.
    pub body: String,
}

/// `GET path` with no extra headers.
pub async fn http_get(addr: &str, path: &str) -> HttpReply {
    http_request(addr, "GET", path, &[], "").await
}

/// A request to a proxy's admin API: a JSON body, and the admin token as a
/// bearer token when given.
pub async fn admin_request(
    addr: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> HttpReply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    http_request(addr, method, path, &headers, body).await
}

/// One request over a fresh connection (`Connection: close`, a
/// `Content-Length` always); panics if `addr` cannot be reached within
/// [`HTTP_CONNECT_WITHIN`] or does not answer within [`HTTP_ANSWER_TIMEOUT`].
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpReply {
    let deadline = Instant::now() + HTTP_CONNECT_WITHIN;
    let mut stream = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            Err(e) => panic!("connect {addr}: {e}"),
        }
    };
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    let mut raw = Vec::new();
    tokio::time::timeout(HTTP_ANSWER_TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("{addr} did not answer {method} {path} in time"))
        .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    HttpReply {
        status,
        head: head.to_string(),
        body: if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    }
}

/// The data of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn chunks_are_joined_and_the_last_one_ends_the_body() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
        assert_eq!(dechunk("0\r\n\r\n"), "");
    }
}
