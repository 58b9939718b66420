//! The client's side of the WebSocket upgrade: the `GET /sub` request, and the check of the
//! server's `101 Switching Protocols` answer (parsed with httparse).

use imgate_shared::ws;

/// `Sec-WebSocket-Key` every client of this crate sends: masking and this key are there for
/// proxies, not secrecy, so a fixed one serves.
pub const WS_KEY: &str = "YmVuY2gtaGFybmVzcy1rZXk=";

/// Longest upgrade answer accepted.
const MAX_ANSWER_HEAD: usize = 8192;

/// The upgrade request for `host` (`host:port`).
pub fn upgrade_request(host: &str) -> String {
    format!(
        "GET /sub HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Checks an upgrade answer at the start of `buf`: `Ok(Some(n))` when the 101 with the right
/// accept key is complete in the first `n` bytes (WebSocket frames may follow), `Ok(None)`
/// when more bytes are needed.
pub fn upgrade_response(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut answer = httparse::Response::new(&mut headers);
    let head_len = match answer.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_ANSWER_HEAD => {
            return Err(format!(
                "upgrade answer longer than {MAX_ANSWER_HEAD} bytes"
            ))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed upgrade answer: {e}")),
    };
    if answer.code != Some(101) {
        return Err(format!(
            "upgrade refused: {} {}",
            answer.code.unwrap_or_default(),
            answer.reason.unwrap_or_default()
        ));
    }
    let accept = ws::accept_key(WS_KEY);
    let accepted = answer.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value == accept.as_bytes()
    });
    if !accepted {
        return Err("wrong or missing Sec-WebSocket-Accept".into());
    }
    Ok(Some(head_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_answer_is_checked() {
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\nrest",
            ws::accept_key(WS_KEY)
        );
        let n = good.len() - 4;
        assert_eq!(upgrade_response(good.as_bytes()), Ok(Some(n)));
        assert_eq!(upgrade_response(&good.as_bytes()[..20]), Ok(None));
        let refused = upgrade_response(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap_err();
        assert_eq!(refused, "upgrade refused: 404 Not Found");
        assert!(upgrade_response(
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n"
        )
        .is_err());
        assert!(upgrade_response(&[b'a'; MAX_ANSWER_HEAD + 1]).is_err());
    }

    #[test]
    fn the_request_is_what_the_server_accepts() {
        let request = upgrade_request("127.0.0.1:3102");
        let upgrade = ws::parse_upgrade(request.as_bytes(), 8192)
            .unwrap()
            .unwrap();
        assert_eq!(upgrade.key, WS_KEY);
        assert_eq!(upgrade.consumed, request.len());
    }
}
