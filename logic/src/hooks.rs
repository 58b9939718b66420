//! Calls to the business: client messages (op 4), the connect hook and connect/disconnect
//! events, each a JSON POST over HTTP/1.1 with a deadline and a cap on the answer it reads.
//!
//! The client is hyper's connection API on a fresh TCP connection per call: no pool, no
//! redirects, `http://` only. The URLs come from the operator's configuration (SECURITY.md).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where a hook POSTs: an `http://host[:port]/path` URL, checked once at start.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Endpoint {
    /// Parses an operator-configured URL; `what` names the option in the error.
    pub(crate) fn parse(what: &str, url: &str) -> Result<Endpoint, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{what}: {url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{what}: {url:?}: only http:// URLs are supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{what}: {url:?} names no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Endpoint {
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        })
    }
}

/// Why a POST brought back no usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Failed(String),
}

/// Aborts the connection task when the call ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// POSTs `body` as JSON and returns the answer's body, if it came with a 2xx status within
/// `timeout` and is at most `max_body` bytes.
pub(crate) async fn post_json(
    endpoint: &Endpoint,
    body: Vec<u8>,
    timeout: Duration,
    max_body: usize,
) -> Result<Bytes, PostError> {
    let call = async {
        let failed = |e: &dyn std::fmt::Display| PostError::Failed(e.to_string());
        let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| failed(&e))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(&e))?;
        let _conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let request = Request::post(endpoint.path.as_str())
            .header(HOST, endpoint.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| failed(&e))?;
        let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(PostError::Status(status.as_u16()));
        }
        let announced = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if announced.is_some_and(|len| len > max_body) {
            return Err(PostError::TooLarge(max_body));
        }
        let mut body = response.into_body();
        let mut out = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| failed(&e))?;
            if let Some(data) = frame.data_ref() {
                if out.len() + data.len() > max_body {
                    return Err(PostError::TooLarge(max_body));
                }
                out.extend_from_slice(data);
            }
        }
        Ok(out.freeze())
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| PostError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_at_start() {
        let e = Endpoint::parse("x", "http://127.0.0.1:8080/up?a=1").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 8080, "/up?a=1")
        );
        let e = Endpoint::parse("x", "http://[::1]/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 80));
        assert!(Endpoint::parse("x", "https://example.com/").is_err());
        assert!(Endpoint::parse("x", "not a url").is_err());
        assert!(Endpoint::parse("x", "/path-only").is_err());
    }
}
