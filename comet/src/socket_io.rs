//! Small helpers over a stream shared through a `RefCell` (a runtime socket, or a client's
//! [`crate::stream::ClientStream`]): every borrow lives inside one poll, never
//! across an await.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::future::poll_fn;
use futures_lite::{AsyncRead, AsyncWrite};

/// Reads once into the shard's `scratch` buffer and hands the bytes to `on_bytes` inside the
/// same poll. The stream copies synchronously into the caller's buffer, so the scratch is
/// borrowed only while this poll runs and no connection owns a read buffer.
///
/// Returns `Ok(None)` at end of stream.
pub(crate) async fn read_with<S: AsyncRead + Unpin, R>(
    stream: &RefCell<S>,
    scratch: &RefCell<Vec<u8>>,
    mut on_bytes: impl FnMut(&mut [u8]) -> R,
) -> io::Result<Option<R>> {
    poll_fn(|cx| {
        let mut buf = scratch.borrow_mut();
        let polled = Pin::new(&mut *stream.borrow_mut()).poll_read(cx, &mut buf[..]);
        match polled {
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(None)),
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(Some(on_bytes(&mut buf[..n])))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// One write attempt.
pub(crate) fn poll_write<S: AsyncWrite + Unpin>(
    stream: &RefCell<S>,
    cx: &mut Context<'_>,
    data: &[u8],
) -> Poll<io::Result<usize>> {
    Pin::new(&mut *stream.borrow_mut()).poll_write(cx, data)
}

/// Pushes out what the stream still buffers (a TLS stream's encrypted records; nothing for
/// plain TCP).
pub(crate) fn poll_flush<S: AsyncWrite + Unpin>(
    stream: &RefCell<S>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    Pin::new(&mut *stream.borrow_mut()).poll_flush(cx)
}

/// Writes all of `data` and flushes it.
pub(crate) async fn write_all<S: AsyncWrite + Unpin>(
    stream: &RefCell<S>,
    mut data: &[u8],
) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| poll_write(stream, cx, data)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    poll_fn(|cx| poll_flush(stream, cx)).await
}
