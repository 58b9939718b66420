//! The body of every push the harness sends: goim's `{"test":1}` with the run, the phase, the
//! push's sequence number and its send time added, so a client can tell which push a message
//! is, whether it belongs to this run, and how long it took.
//!
//! ```text
//! {"test":1,"run":3141592,"ph":0,"seq":17,"ts":123456789012345}
//! ```
//!
//! `ts` is CLOCK_MONOTONIC in nanoseconds, which every process on one host shares.

/// What a push body says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Random per harness run: messages left over from an earlier run are told apart.
    pub run: u32,
    /// Which push phase of the run (single-push has a peak phase and a fixed-rate phase).
    pub phase: u32,
    /// Sequence number of the push within the run, from 0.
    pub seq: u32,
    /// CLOCK_MONOTONIC nanoseconds when the HTTP request was written.
    pub sent_ns: u64,
}

/// CLOCK_MONOTONIC in nanoseconds (the same clock in every process on this host).
pub fn now_ns() -> u64 {
    crate::procstat::clock_ns(libc::CLOCK_MONOTONIC)
}

/// Encodes a push body. `pad_to` > the natural length adds a `"pad"` string so the body has
/// exactly that many bytes (to measure with bigger messages).
pub fn encode(stamp: Stamp, pad_to: usize) -> Vec<u8> {
    let body = format!(
        "{{\"test\":1,\"run\":{},\"ph\":{},\"seq\":{},\"ts\":{}}}",
        stamp.run, stamp.phase, stamp.seq, stamp.sent_ns
    );
    // `,"pad":""` is 9 bytes.
    if pad_to < body.len() + 9 {
        return body.into_bytes();
    }
    let mut out = Vec::with_capacity(pad_to);
    out.extend_from_slice(&body.as_bytes()[..body.len() - 1]);
    out.extend_from_slice(b",\"pad\":\"");
    out.resize(pad_to - 2, b'x');
    out.extend_from_slice(b"\"}");
    out
}

/// Reads a stamp back from a body; `None` if the body is not one of ours.
pub fn parse(body: &[u8]) -> Option<Stamp> {
    let rest = body.strip_prefix(b"{\"test\":1,\"run\":")?;
    let (run, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"ph\":")?;
    let (phase, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"seq\":")?;
    let (seq, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"ts\":")?;
    let (sent_ns, _) = number(rest)?;
    Some(Stamp {
        run: u32::try_from(run).ok()?,
        phase: u32::try_from(phase).ok()?,
        seq: u32::try_from(seq).ok()?,
        sent_ns,
    })
}

/// A decimal number at the start of `bytes` and what follows it.
fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut value = 0u64;
    for b in &bytes[..digits] {
        value = value * 10 + u64::from(b - b'0');
    }
    Some((value, &bytes[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        run: 4_000_000_000,
        phase: 1,
        seq: 17,
        sent_ns: 123_456_789_012_345,
    };

    #[test]
    fn round_trips() {
        let body = encode(STAMP, 0);
        assert_eq!(
            body,
            b"{\"test\":1,\"run\":4000000000,\"ph\":1,\"seq\":17,\"ts\":123456789012345}"
        );
        assert_eq!(parse(&body), Some(STAMP));
    }

    #[test]
    fn padding_gives_the_exact_size_and_still_parses() {
        for size in [80, 81, 200, 4000] {
            let body = encode(STAMP, size);
            assert_eq!(body.len(), size);
            assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
            assert_eq!(parse(&body), Some(STAMP));
        }
        // Too small to pad: the natural body.
        assert_eq!(encode(STAMP, 10), encode(STAMP, 0));
    }

    #[test]
    fn foreign_bodies_are_not_stamps() {
        assert_eq!(parse(b"{\"test\":1}"), None);
        assert_eq!(parse(b""), None);
        assert_eq!(
            parse(b"{\"test\":1,\"run\":,\"ph\":0,\"seq\":1,\"ts\":1}"),
            None
        );
        assert_eq!(
            parse(b"{\"test\":1,\"run\":99999999999,\"ph\":0,\"seq\":1,\"ts\":1}"),
            None
        );
    }

    #[test]
    fn clock_moves_forward() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a && a > 0);
    }
}
