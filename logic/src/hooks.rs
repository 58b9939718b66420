//! Calls to the business: client messages (op 4), the connect hook and connect/disconnect
//! events, each a JSON POST over HTTP/1.1 with a deadline and a cap on the answer it reads.
//!
//! The client is hyper's connection API over TCP: an answered call's connection is kept for the
//! next call to the same endpoint (at most [`MAX_IDLE`] idle per endpoint), any other is closed.
//! No redirects, `http://` only. The URLs come from the operator's configuration (SECURITY.md).

use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections kept per endpoint, at most.
const MAX_IDLE: usize = 32;
/// An idle connection is not used again after this long: servers close idle keep-alive
/// connections (Node.js after 5 s), and one closing just as a call goes out would fail it.
const IDLE_REUSE: Duration = Duration::from_secs(4);

/// Where a hook POSTs: an `http://host[:port]/path` URL, checked once at start, and its idle
/// connections.
pub(crate) struct Endpoint {
    host: String,
    port: u16,
    authority: String,
    path: String,
    idle: Mutex<Vec<Pooled>>,
}

/// An open HTTP/1.1 connection: the handle requests go through and the task driving it.
struct Pooled {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    _conn: AbortOnDrop,
    idle_since: std::time::Instant,
}

impl Endpoint {
    /// An idle connection that is still open, or a new one.
    async fn connection(&self) -> Result<Pooled, PostError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match idle {
                Some(pooled)
                    if !pooled.sender.is_closed() && pooled.idle_since.elapsed() < IDLE_REUSE =>
                {
                    return Ok(pooled)
                }
                Some(_) => continue,
                None => break,
            }
        }
        let unreachable = |e: &dyn std::fmt::Display| PostError::Unreachable(e.to_string());
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unreachable(&e))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        let conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        Ok(Pooled {
            sender,
            _conn: conn,
            idle_since: std::time::Instant::now(),
        })
    }

    /// Keeps a connection whose exchange completed, for the next call.
    fn put_back(&self, mut pooled: Pooled) {
        if pooled.sender.is_closed() {
            return;
        }
        pooled.idle_since = std::time::Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(pooled);
        }
    }
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
            idle: Mutex::new(Vec::new()),
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
    /// No connection could be opened (refused, no route, …).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The exchange broke off (reset, not HTTP, …).
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
        let mut pooled = endpoint.connection().await?;
        pooled.sender.ready().await.map_err(|e| failed(&e))?;
        let request = Request::post(endpoint.path.as_str())
            .header(HOST, endpoint.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| failed(&e))?;
        let response = pooled
            .sender
            .send_request(request)
            .await
            .map_err(|e| failed(&e))?;
        // Any early return below drops the connection (its answer was not read to the end).
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
        endpoint.put_back(pooled);
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

    /// A keep-alive server answering `ok` to every request on each connection; counts the
    /// connections it accepted.
    async fn keep_alive_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + 4 + len {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..end + 4 + len);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn an_answered_connection_is_used_again() {
        let (url, accepted) = keep_alive_server().await;
        let endpoint = Endpoint::parse("x", &url).unwrap();
        for _ in 0..3 {
            let answer = post_json(&endpoint, b"{}".to_vec(), Duration::from_secs(5), 16)
                .await
                .unwrap();
            assert_eq!(&answer[..], b"ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // An answer over the cap drops its connection; the next call opens another.
        assert!(matches!(
            post_json(&endpoint, b"{}".to_vec(), Duration::from_secs(5), 1).await,
            Err(PostError::TooLarge(1))
        ));
        post_json(&endpoint, b"{}".to_vec(), Duration::from_secs(5), 16)
            .await
            .unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
