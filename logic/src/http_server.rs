//! The HTTP/1.1 server under the business API: hyper's connection driver with a deadline on
//! reading each request head (slowloris clients are closed), over plain TCP or TLS, with a
//! graceful shutdown that lets requests in flight finish, and a reason in every error hyper
//! answers by itself ([`Explained`]).

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::http::StatusCode;
use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// Accepts until `shutdown` changes, serving each connection on its own task.
pub(crate) async fn serve<L>(
    mut listener: L,
    app: Router,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    L: Listener<Addr = SocketAddr>,
{
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let service = TowerToHyperService::new(app.clone());
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(Explained::new(io)), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
}

/// A connection's socket as hyper sees it, which gives hyper's own error answers a reason.
///
/// hyper answers a request it cannot parse by itself, before the router sees anything: 400
/// (malformed), 414 (a URI over 65,534 bytes) or 431 (a head too large), each with an empty
/// body, and then closes the connection. The API's own responses always carry a JSON body, so
/// a response head with an error status and `content-length: 0` is one of hyper's: it is
/// replaced by the same status with the API's `{code, message}` envelope saying what was
/// wrong and what to do instead.
pub(crate) struct Explained<Io> {
    io: Io,
    /// The replacement answer not yet written.
    pending: Vec<u8>,
    written: usize,
}

impl<Io> Explained<Io> {
    pub(crate) fn new(io: Io) -> Self {
        Explained {
            io,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// The API's answer for one of hyper's own bodiless error heads, if `head` is one.
fn explain(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    if !text.ends_with("\r\n\r\n") {
        return None;
    }
    let status: u16 = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    if !(400..600).contains(&status)
        || !text
            .to_ascii_lowercase()
            .contains("\r\ncontent-length: 0\r\n")
    {
        return None;
    }
    let status = StatusCode::from_u16(status).ok()?;
    let message = match status {
        StatusCode::URI_TOO_LONG => {
            "request URI too long (at most 65534 bytes): send long target lists (keys, mids) in \
             the request body instead, as a form or JSON body with the message in \"message\" \
             (see the README, \"Pushing to many targets\")"
        }
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request head too large",
        StatusCode::BAD_REQUEST => "malformed HTTP request",
        other => other.canonical_reason().unwrap_or("request refused"),
    };
    let body = serde_json::json!({ "code": -400, "message": message }).to_string();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<Io: AsyncWrite + Unpin> Explained<Io> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `head` over if it is one of hyper's bodiless error heads: the replacement is
    /// written instead, and hyper is told its bytes were.
    fn replace(
        &mut self,
        head: &[u8],
        cx: &mut Context<'_>,
    ) -> Option<Poll<std::io::Result<usize>>> {
        let answer = explain(head)?;
        self.pending = answer;
        self.written = 0;
        Some(match self.poll_pending(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Whatever is left goes out on hyper's flush.
            _ => Poll::Ready(Ok(head.len())),
        })
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Explained<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Explained<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(done) = self.replace(buf, cx) {
            return done;
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(head), None) = (filled.next(), filled.next()) {
            if let Some(done) = self.replace(head, cx) {
                return done;
            }
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bodiless_error_heads_are_explained() {
        let answer = explain(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n")
            .expect("explained");
        let text = String::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["code"], -400);
        assert!(json["message"].as_str().unwrap().contains("request body"));
        assert!(explain(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").is_some());
        // The API's own answers (a body), successes, partial heads and bodies are left alone.
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 40\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n",
            b"{\"code\":0}",
        ] {
            assert_eq!(explain(other), None, "{}", String::from_utf8_lossy(other));
        }
    }
}
