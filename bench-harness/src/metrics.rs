//! comet's own count of its socket writes, read from imgate's metrics endpoints.
//!
//! imgate serves Prometheus text at `GET /metrics` (logic's HTTP address; each extra `imgate
//! comet` process on its own `comet.metrics_bind`), with two counters summed over comets and
//! shards: `imgate_writes_total`, the socket write syscalls that sent bytes to clients, and
//! `imgate_bytes_sent_total`. The harness reads both from every endpoint at the start and at
//! the end of a measured window; the difference, summed over the endpoints, is what comet
//! wrote in it. Client reads only approximate that (a read may take several writes, or part
//! of one), so they are the fallback when an endpoint does not answer.
//!
//! Only the part of the exposition format these counters need is parsed: comment lines,
//! `name{label="value",…} value [timestamp]`, label values with `\\`, `\"` and `\n` escapes.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use imgate_client::http::HttpClient;
use serde::Serialize;

/// Socket writes that sent bytes to clients.
pub const WRITES: &str = "imgate_writes_total";
/// Bytes those writes sent.
pub const BYTES: &str = "imgate_bytes_sent_total";

/// How long one scrape may take, connect included.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// A metrics endpoint: `http://host:port/path` (plain HTTP; `host:port` alone means
/// `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub path: String,
}

impl Endpoint {
    /// `/metrics` on an HTTP address (logic's).
    pub fn at(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            path: "/metrics".into(),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Endpoint, String> {
        let rest = match s.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => return Err(format!("`{s}`: only http:// is read, not {scheme}")),
            None => s,
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let addr = host
            .to_socket_addrs()
            .map_err(|e| format!("`{s}`: `{host}` is not host:port ({e})"))?
            .next()
            .ok_or_else(|| format!("`{s}`: `{host}` has no address"))?;
        Ok(Endpoint {
            addr,
            path: path.into(),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.addr, self.path)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// comet's write counters at one moment (or gained over a window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Writes {
    pub writes: u64,
    pub bytes: u64,
}

impl Writes {
    /// What was gained since `earlier` (a counter that went back, a restarted comet, gains 0).
    pub fn since(&self, earlier: &Writes) -> Writes {
        Writes {
            writes: self.writes.saturating_sub(earlier.writes),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }

    pub fn add(&mut self, other: &Writes) {
        self.writes += other.writes;
        self.bytes += other.bytes;
    }

    /// Mean bytes per write.
    pub fn mean_bytes(&self) -> Option<u64> {
        self.bytes.checked_div(self.writes)
    }
}

/// Every endpoint's counters at one moment, or why an endpoint gave none.
pub type Scrape = Vec<Result<Writes, String>>;

/// Reads the counters from every endpoint (one after another, each bounded in time).
pub fn scrape(endpoints: &[Endpoint]) -> Scrape {
    endpoints.iter().map(read).collect()
}

/// What comet wrote over a window, from the scrapes at its start and end: `None` unless
/// every endpoint answered both times (a missing comet would make the count too small), with
/// the reasons in `notes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub writes: Option<Writes>,
    pub notes: Vec<String>,
}

impl Window {
    pub fn between(endpoints: &[Endpoint], start: &Scrape, end: &Scrape) -> Window {
        if endpoints.is_empty() {
            return Window::default();
        }
        let mut total = Writes::default();
        let mut notes = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            match (start.get(i), end.get(i)) {
                (Some(Ok(a)), Some(Ok(b))) => total.add(&b.since(a)),
                (Some(Err(e)), _) | (_, Some(Err(e))) => notes.push(format!("{endpoint}: {e}")),
                _ => notes.push(format!("{endpoint}: not read")),
            }
        }
        Window {
            writes: notes.is_empty().then_some(total),
            notes,
        }
    }
}

/// One endpoint's counters.
fn read(endpoint: &Endpoint) -> Result<Writes, String> {
    // One connection per scrape: scrapes are seconds apart.
    let headers = [("Accept", "text/plain"), ("Connection", "close")];
    let answer = HttpClient::new(endpoint.addr)
        .timeout(SCRAPE_TIMEOUT)
        .request("GET", &endpoint.path, &headers, b"")
        .map_err(|e| e.to_string())?;
    if answer.status != 200 {
        return Err(format!("HTTP {}", answer.status));
    }
    let text = String::from_utf8_lossy(&answer.body);
    let sum = |name: &str| match sum(&text, name) {
        Ok(Some(v)) if v.is_finite() && v >= 0.0 => Ok(v.round() as u64),
        Ok(Some(v)) => Err(format!("{name} is {v}")),
        Ok(None) => Err(format!("no {name} in the answer")),
        Err(e) => Err(e.to_string()),
    };
    Ok(Writes {
        writes: sum(WRITES)?,
        bytes: sum(BYTES)?,
    })
}

/// A sample's labels, `(name, value)`, in the order written.
pub type Labels = Vec<(String, String)>;

/// One sample line of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

/// A line that is not a sample, a comment or blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metrics line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// The sum of every sample of metric `name` (whatever its labels), or `None` if it has
/// none. Lines of other metrics are not looked at closely; a broken line of this one is an
/// error.
pub fn sum(text: &str, name: &str) -> Result<Option<f64>, ParseError> {
    let mut total = None;
    for (n, line) in text.lines().enumerate() {
        if !line.trim_start().starts_with(name) {
            continue;
        }
        let parsed = parse_line(line).map_err(|reason| ParseError {
            line: n + 1,
            reason,
        })?;
        if let Some(sample) = parsed.filter(|s| s.name == name) {
            *total.get_or_insert(0.0) += sample.value;
        }
    }
    Ok(total)
}

/// Parses one line: `None` for a comment or a blank line.
pub fn parse_line(line: &str) -> Result<Option<Sample>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("no metric name at the start of `{line}`"));
    }
    let mut rest = line[name_end..].trim_start();
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inside)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| format!("no value in `{line}`"))?;
    let value = parse_value(value).ok_or_else(|| format!("`{value}` is not a number"))?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("`{timestamp}` is not a timestamp"))?;
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected `{extra}` after the value"));
    }
    Ok(Some(Sample {
        name: name.into(),
        labels,
        value,
    }))
}

/// Parses `label="value",…}` (the text after `{`); returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("a label without `=`")?;
        let label = s[..eq].trim();
        if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`{label}` is not a label name"));
        }
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value without quotes")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    Some((_, c)) => return Err(format!("unknown escape `\\{c}`")),
                    None => return Err("a label value without its closing quote".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("a label value without its closing quote".into()),
            }
        };
        labels.push((label.to_string(), value));
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("labels not closed with `}`".into());
        }
    }
}

/// A sample value: a float, `NaN`, `+Inf` or `-Inf`.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    const EXPOSITION: &str = "\
# HELP imgate_writes_total Socket writes that sent bytes to clients.
# TYPE imgate_writes_total counter
imgate_writes_total{comet=\"comet-1\",shard=\"0\"} 1200
imgate_writes_total{comet=\"comet-1\",shard=\"1\"} 34 1700000000000
imgate_writes_total_created{comet=\"comet-1\"} 1.7e9
# a comment that mentions imgate_writes_total 99
imgate_bytes_sent_total{comet=\"c \\\"quoted\\\", with } and \\\\\",shard=\"0\",} 3.5e5
imgate_bytes_sent_total 500
other_metric{le=\"+Inf\"} +Inf

";

    #[test]
    fn sums_every_sample_of_a_metric_whatever_its_labels() {
        assert_eq!(sum(EXPOSITION, WRITES), Ok(Some(1234.0)));
        assert_eq!(sum(EXPOSITION, BYTES), Ok(Some(350_500.0)));
        assert_eq!(sum(EXPOSITION, "imgate_writes"), Ok(None));
        assert_eq!(sum(EXPOSITION, "absent_total"), Ok(None));
        assert_eq!(sum("", WRITES), Ok(None));
    }

    #[test]
    fn lines_parse_with_labels_escapes_and_timestamps() {
        assert_eq!(parse_line("# TYPE x counter"), Ok(None));
        assert_eq!(parse_line("   "), Ok(None));
        let s = parse_line(r#"a:b_c{x="1\n2",y="q\"\\"} -Inf 17"#)
            .unwrap()
            .unwrap();
        assert_eq!(s.name, "a:b_c");
        assert_eq!(
            s.labels,
            [("x".into(), "1\n2".into()), ("y".into(), "q\"\\".into())]
        );
        assert_eq!(s.value, f64::NEG_INFINITY);
        let s = parse_line("plain 4.25e2").unwrap().unwrap();
        assert!(s.labels.is_empty());
        assert_eq!(s.value, 425.0);
        assert!(parse_line("nan_value NaN").unwrap().unwrap().value.is_nan());
        assert_eq!(
            parse_line("empty{} 3").unwrap().unwrap().labels,
            Labels::new()
        );
    }

    #[test]
    fn broken_lines_of_the_metric_wanted_are_errors() {
        for bad in [
            "imgate_writes_total",
            "imgate_writes_total{shard=\"0\"}",
            "imgate_writes_total{shard=\"0} 1",
            "imgate_writes_total{shard=0} 1",
            "imgate_writes_total{shard=\"0\" 1",
            "imgate_writes_total{=\"0\"} 1",
            "imgate_writes_total{s=\"\\x\"} 1",
            "imgate_writes_total twelve",
            "imgate_writes_total 1 2 3",
            "imgate_writes_total 1 soon",
        ] {
            let text = format!("ok_metric 1\n{bad}\n");
            let e = sum(&text, WRITES).expect_err(bad);
            assert_eq!(e.line, 2, "{bad}: {e}");
        }
        // Another metric's broken line does not matter.
        assert_eq!(
            sum("broken{ 1\nimgate_writes_total 2\n", WRITES),
            Ok(Some(2.0))
        );
        assert!(parse_line("9lives 1").is_err());
    }

    #[test]
    fn endpoints_parse_from_urls_or_addresses() {
        let e: Endpoint = "http://127.0.0.1:3111/metrics".parse().unwrap();
        assert_eq!(e, Endpoint::at("127.0.0.1:3111".parse().unwrap()));
        let e: Endpoint = "127.0.0.1:3308".parse().unwrap();
        assert_eq!(e.to_string(), "http://127.0.0.1:3308/metrics");
        let e: Endpoint = "http://127.0.0.1:9/x/y".parse().unwrap();
        assert_eq!(e.path, "/x/y");
        assert!("https://127.0.0.1:1/metrics".parse::<Endpoint>().is_err());
        assert!("http://127.0.0.1/metrics".parse::<Endpoint>().is_err());
    }

    /// Serves `answers` in turn, one per connection.
    fn server(answers: Vec<String>) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                assert!(head.starts_with(b"GET /metrics HTTP/1.1\r\n"));
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        Endpoint::at(addr)
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn a_window_sums_every_endpoint_or_says_which_did_not_answer() {
        let comet1 = server(vec![
            ok("imgate_writes_total{shard=\"0\"} 10\nimgate_bytes_sent_total 1000\n"),
            ok("imgate_writes_total{shard=\"0\"} 60\nimgate_bytes_sent_total 21000\n"),
        ]);
        let comet2 = server(vec![
            ok("imgate_writes_total 5\nimgate_bytes_sent_total 50\n"),
            ok("imgate_writes_total 55\nimgate_bytes_sent_total 10050\n"),
        ]);
        let both = [comet1, comet2];
        let start = scrape(&both);
        let end = scrape(&both);
        let w = Window::between(&both, &start, &end);
        assert_eq!(w.notes, Vec::<String>::new());
        let writes = w.writes.unwrap();
        assert_eq!(
            writes,
            Writes {
                writes: 100,
                bytes: 30_000
            }
        );
        assert_eq!(writes.mean_bytes(), Some(300));

        // Today's imgate: logic answers 404; another endpoint has no such counter.
        let logic = server(vec![
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into(),
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into(),
        ]);
        let other = server(vec![ok("x 1\n"), ok("x 2\n")]);
        let partial = [logic, other];
        let w = Window::between(&partial, &scrape(&partial), &scrape(&partial));
        assert_eq!(w.writes, None);
        assert_eq!(w.notes.len(), 2, "{:?}", w.notes);
        assert!(w.notes[0].contains("HTTP 404"), "{:?}", w.notes);
        assert!(
            w.notes[1].contains("no imgate_writes_total"),
            "{:?}",
            w.notes
        );

        // Nothing listening at all.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let gone = [Endpoint::at(closed)];
        let w = Window::between(&gone, &scrape(&gone), &scrape(&gone));
        assert_eq!(w.writes, None);
        assert_eq!(w.notes.len(), 1);
        assert_eq!(Window::between(&[], &vec![], &vec![]), Window::default());
    }
}
