//! What the peers' protocols (Redis pub/sub in [`crate::resp`], NATS core in [`crate::nats`])
//! have in common for a subscriber: the [`Event`]s a read decodes to, the [`PeerError`] that
//! ends a connection, and [`feed`], which keeps only an unfinished tail between reads as
//! goim's decoder does, so an idle subscriber holds no buffer.

/// Largest reply (or message) the harness accepts from a peer: only stops a runaway.
pub const MAX_PEER_REPLY: usize = 16 << 20;

/// One thing a subscriber's server said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The subscription is in place (Redis `subscribe` reply; NATS: the `PONG` to the `PING`
    /// sent after `SUB`, which the server answers only once it processed the `SUB`).
    Subscribed,
    /// A published message's payload.
    Message(&'a [u8]),
    /// The answer to a heartbeat `PING` (NATS: also the one that confirms the subscription).
    Pong,
    /// The server's own `PING` (NATS): answer `PONG` or be dropped.
    Ping,
    /// Something to read past (NATS `INFO`, `+OK`).
    Other,
}

/// Why a peer's bytes cannot be read any further.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerError {
    /// The server answered with an error (Redis `-ERR …`, NATS `-ERR '…'`), e.g. too many
    /// clients.
    Server(String),
    /// Bytes that are not the protocol: what was expected, what arrived.
    Invalid(String),
    /// This many bytes pending without a complete reply.
    TooLarge(usize),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Server(text) => write!(f, "server error: {text}"),
            PeerError::Invalid(what) => write!(f, "bad reply: {what}"),
            PeerError::TooLarge(n) => write!(f, "{n} bytes pending without a complete reply"),
        }
    }
}

impl std::error::Error for PeerError {}

/// A server's error text, cut to a length a report line can hold.
pub(crate) fn server_error(text: &[u8]) -> PeerError {
    let text = String::from_utf8_lossy(text);
    let text = text.trim();
    match text.char_indices().nth(160) {
        Some((cut, _)) => PeerError::Server(format!("{}…", &text[..cut])),
        None => PeerError::Server(text.to_string()),
    }
}

/// A short, printable excerpt of bytes that did not parse.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(40)];
    format!("{:?}", String::from_utf8_lossy(cut))
}

/// The line at the start of `buf` without its CRLF, and the bytes it took; `None` until the
/// CRLF arrives. A line longer than `max` without one is an error.
pub(crate) fn line(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, PeerError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&buf[..end], end + 2))),
        None if buf.len() > max => Err(PeerError::Invalid(format!(
            "no line end within {max} bytes: {}",
            excerpt(buf)
        ))),
        None => Ok(None),
    }
}

/// A decimal number (optionally negative) that is the whole of `text`.
pub(crate) fn number(text: &[u8]) -> Option<i64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Decodes the bytes of one read with `decode` (which consumes every complete reply at the
/// start of a buffer, reports each, and returns the bytes it took). `pending` holds the
/// unfinished tail of earlier reads and is left holding this read's (and no allocation when
/// there is none).
pub fn feed(
    pending: &mut Vec<u8>,
    data: &[u8],
    mut decode: impl FnMut(&[u8]) -> Result<usize, PeerError>,
) -> Result<(), PeerError> {
    if pending.is_empty() {
        let used = decode(data)?;
        if used < data.len() {
            pending.extend_from_slice(&data[used..]);
        }
    } else {
        pending.extend_from_slice(data);
        let used = decode(pending)?;
        pending.drain(..used);
        if pending.is_empty() {
            *pending = Vec::new();
        }
    }
    if pending.len() > MAX_PEER_REPLY + 64 {
        return Err(PeerError::TooLarge(pending.len()));
    }
    Ok(())
}
