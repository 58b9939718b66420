//! A small blocking HTTP/1.1 client for logic's API: the load generator's pushes and metrics
//! scrapes, and the tests' requests. One kept-alive connection, opened again when the server
//! closed it; answers framed by `Content-Length`, by chunks, or by the end of the connection;
//! heads parsed with httparse.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest answer accepted, head and body.
const MAX_ANSWER: usize = 32 << 20;
/// Most headers an answer may carry.
const MAX_HEADERS: usize = 64;

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// A client of one server.
pub struct HttpClient {
    addr: SocketAddr,
    timeout: Duration,
    stream: Option<TcpStream>,
    /// Bytes read and not yet part of an answer.
    buf: Vec<u8>,
}

impl HttpClient {
    /// A client of `addr`; a request and its answer take at most 10 s.
    pub fn new(addr: SocketAddr) -> HttpClient {
        HttpClient {
            addr,
            timeout: Duration::from_secs(10),
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// The same client with another bound on each request and its answer.
    pub fn timeout(mut self, timeout: Duration) -> HttpClient {
        self.timeout = timeout;
        self
    }

    /// POSTs a JSON (or goim raw) `body` to `path`.
    pub fn post(&mut self, path: &str, body: &[u8]) -> io::Result<Response> {
        self.request("POST", path, &[("Content-Type", "application/json")], body)
    }

    /// GETs `path`.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.request("GET", path, &[], b"")
    }

    /// Sends one request with `headers` (beside `Host` and `Content-Length`) and reads its
    /// answer. A kept-alive connection the server has closed fails on first use: the request
    /// is then sent once more on a new one.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut request = request.into_bytes();
        request.extend_from_slice(body);
        let reused = self.stream.is_some();
        match self.exchange(&request) {
            Err(_) if reused => self.exchange(&request),
            other => other,
        }
    }

    fn exchange(&mut self, request: &[u8]) -> io::Result<Response> {
        let deadline = Instant::now() + self.timeout;
        let result = self.exchange_until(request, deadline);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange_until(&mut self, request: &[u8], deadline: Instant) -> io::Result<Response> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect_timeout(&self.addr, self.timeout)?;
                stream.set_nodelay(true)?;
                stream.set_write_timeout(Some(self.timeout))?;
                self.buf.clear();
                self.stream.insert(stream)
            }
        };
        stream.write_all(request)?;
        let mut ended = false;
        loop {
            if let Some((response, used, close)) = parse_response(&self.buf, ended)? {
                self.buf.drain(..used);
                if close || ended {
                    self.stream = None;
                }
                return Ok(response);
            }
            if ended {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before answering",
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
            }
            stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 16 * 1024];
            let n = stream.read(&mut chunk)?;
            ended = n == 0;
            self.buf.extend_from_slice(&chunk[..n]);
            if self.buf.len() > MAX_ANSWER {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "answer above 32 MiB",
                ));
            }
        }
    }
}

/// Splits the answer at the start of `buf`: `Ok(Some((response, bytes used, connection
/// closing)))` once it is complete, `Ok(None)` while more bytes are needed. `ended`: the server
/// closed the connection, which ends a body that has neither a length nor chunks.
pub fn parse_response(buf: &[u8], ended: bool) -> io::Result<Option<(Response, usize, bool)>> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Response::new(&mut headers);
    let head_len = match head.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if ended => {
            return Err(bad("the connection ended inside the answer's head".into()))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(format!("malformed answer head: {e}"))),
    };
    let status = head.code.unwrap_or_default();
    let (mut length, mut chunked, mut close) = (None, false, head.version == Some(0));
    for header in head.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or_default().trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad(format!("Content-Length {value:?}")))?,
            );
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let rest = &buf[head_len..];
    let (body, used) = if chunked {
        match dechunk(rest).map_err(bad)? {
            Some((body, used)) => (body, used),
            None if ended => return Err(bad("the connection ended inside a chunk".into())),
            None => return Ok(None),
        }
    } else if let Some(length) = length.or((status == 204 || status == 304).then_some(0)) {
        match rest.get(..length) {
            Some(body) => (body.to_vec(), length),
            None if ended => return Err(bad("answer shorter than its Content-Length".into())),
            None => return Ok(None),
        }
    } else if ended {
        (rest.to_vec(), rest.len())
    } else {
        // The body runs to the end of the connection.
        return Ok(None);
    };
    let close = close || (!chunked && length.is_none());
    Ok(Some((Response { status, body }, head_len + used, close)))
}

/// Decodes a chunked body at the start of `buf` (extensions and trailers ignored): the body
/// and the bytes it took, `None` while incomplete, an error when it is not chunked encoding.
fn dechunk(mut buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let start = buf.len();
    let mut body = Vec::new();
    loop {
        let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(&buf[..line_end]).map_err(|_| "chunk size")?;
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("chunk size {size_text:?}"))?;
        buf = &buf[line_end + 2..];
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                buf = &buf[line_end + 2..];
                if line_end == 0 {
                    return Ok(Some((body, start - buf.len())));
                }
            }
        }
        let Some(chunk) = buf.get(..size + 2) else {
            return Ok(None);
        };
        if &chunk[size..] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        body.extend_from_slice(&chunk[..size]);
        buf = &buf[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn parsed(answer: &[u8], ended: bool) -> Option<(u16, Vec<u8>, usize, bool)> {
        parse_response(answer, ended)
            .unwrap()
            .map(|(r, used, close)| (r.status, r.body, used, close))
    }

    #[test]
    fn answers_are_framed_by_length_chunks_or_the_end_of_the_connection() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcdef";
        assert_eq!(
            parsed(answer, false),
            Some((200, b"abc".to_vec(), answer.len() - 3, false))
        );
        assert_eq!(parsed(&answer[..20], false), None);
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nimg\r\n3;x=y\r\nate\r\n0\r\n\r\nnext";
        assert_eq!(
            parsed(chunked, false),
            Some((200, b"imgate".to_vec(), chunked.len() - 4, false))
        );
        assert_eq!(parsed(&chunked[..60], false), None);
        let unframed = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert_eq!(
            parsed(unframed, false),
            None,
            "runs to the end of the connection"
        );
        assert_eq!(
            parsed(unframed, true),
            Some((404, b"nope".to_vec(), unframed.len(), true))
        );
        let closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(parsed(closing, false).unwrap().3);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false).is_err());
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            false
        )
        .is_err());
    }

    /// A keep-alive server that answers two requests on one connection, then closes it: the
    /// client must send the third on a new connection.
    #[test]
    fn keeps_alive_and_reconnects_after_a_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for conn in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = Vec::new();
                let requests = if conn == 0 { 2 } else { 1 };
                for _ in 0..requests {
                    loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("Content-Length: "))
                                .unwrap()
                                .parse()
                                .unwrap();
                            if buf.len() >= end + 4 + len {
                                seen.push(head.lines().next().unwrap().to_string());
                                buf.drain(..end + 4 + len);
                                break;
                            }
                        }
                        let mut chunk = [0u8; 1024];
                        let n = s.read(&mut chunk).unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = b"{\"code\":0,\"data\":{\"connections\":1}}";
                    write!(
                        s,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    )
                    .unwrap();
                    s.write_all(body).unwrap();
                }
            }
            seen
        });
        let mut client = HttpClient::new(addr);
        for i in 0..3 {
            let answer = client.post(&format!("/p{i}"), b"{}").unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body, b"{\"code\":0,\"data\":{\"connections\":1}}");
        }
        assert_eq!(
            server.join().unwrap(),
            [
                "POST /p0 HTTP/1.1",
                "POST /p1 HTTP/1.1",
                "POST /p2 HTTP/1.1"
            ]
        );
    }
}
