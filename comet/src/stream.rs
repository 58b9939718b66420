//! A client's byte stream: plain TCP, or TLS over TCP for the `wss://` and TLS TCP listeners.
//! Both are driven the same way through [`crate::socket_io`]; a TLS stream additionally needs
//! its encrypted output flushed once the writer has nothing more to give it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::server::TlsStream;

use imgate_runtime::net::Socket;

pub(crate) enum ClientStream {
    Plain(Socket),
    /// Boxed: rustls' state is large, and plain connections should not pay for it.
    Tls(Box<TlsStream<Socket>>),
    /// The connection ended and its socket is closed, though something may still hold the
    /// connection's state for a moment.
    Closed,
}

fn closed<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            ClientStream::Closed => closed(),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            ClientStream::Closed => closed(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // A plain socket buffers nothing.
            ClientStream::Plain(_) | ClientStream::Closed => Poll::Ready(Ok(())),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_close(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_close(cx),
            ClientStream::Closed => Poll::Ready(Ok(())),
        }
    }
}
