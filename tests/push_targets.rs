//! Pushes to many targets: a URI holds about 5,000 mids before hyper answers 414, short of
//! `logic.max_push_targets` (10,000), so targets may travel in a form or JSON body beside the
//! message; and hyper's own error answers carry a reason.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use imgate::client::{http, Transport};
use support::*;

const MAX_TARGETS: usize = 10_000;

/// One POST with a content type; returns the status and the JSON body.
fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Answer {
    request(addr, "POST", path, &[("Content-Type", content_type)], body)
}

#[test]
fn a_uri_too_long_is_refused_with_a_reason() {
    let g = gateway();
    let mids: Vec<String> = (1..=MAX_TARGETS).map(|m| format!("mids={m}")).collect();
    let path = format!("/goim/push/mids?operation=1000&{}", mids.join("&"));
    assert!(path.len() > 65_534, "{} bytes", path.len());
    let mut s = TcpStream::connect(g.http_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi");
    // The server may answer and close before it has read all of it.
    let _ = s.write_all(request.as_bytes());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let (answer, _, _) = http::parse_response(&raw, true)
        .expect("an HTTP answer")
        .expect("a complete HTTP answer");
    let answer = Answer::from(answer);
    assert_eq!(answer.status, 414, "{:?}", answer.json);
    assert_eq!(answer.json["code"], -400);
    let message = answer.json["message"].as_str().unwrap();
    assert!(message.contains("request body"), "{message}");
    // The server still serves others.
    assert_eq!(
        http(g.http_addr(), "GET", "/goim/online/total", b"").status,
        200
    );
    g.shutdown();
}

#[test]
fn ten_thousand_mids_in_a_json_body_are_pushed_and_one_more_is_refused() {
    let g = gateway();
    let online = 4_321i64;
    let mut c = client(g.tcp_addr(), Transport::Tcp, online, "", "", &[1000]);
    let mids: Vec<i64> = (1..=MAX_TARGETS as i64).collect();
    let body = serde_json::json!({"mids": mids, "message": "to ten thousand"});
    let a = post(
        g.http_addr(),
        "/goim/push/mids?operation=1000",
        "application/json",
        body.to_string().as_bytes(),
    );
    assert_eq!(a.status, 200, "{:?}", a.json["message"]);
    assert_eq!(a.json["data"]["connections"], 1);
    assert_eq!(
        a.json["data"]["stored"].as_object().unwrap().len(),
        MAX_TARGETS
    );
    assert_eq!(
        a.json["data"]["offline"].as_array().unwrap().len(),
        MAX_TARGETS - 1
    );
    let f = c
        .recv(Duration::from_secs(5))
        .expect("the online user gets it");
    assert_eq!((f.op, f.body.as_slice()), (1000, &b"to ten thousand"[..]));

    let one_more: Vec<i64> = (1..=MAX_TARGETS as i64 + 1).collect();
    let body = serde_json::json!({"mids": one_more, "message": "too many"});
    let a = post(
        g.http_addr(),
        "/goim/push/mids?operation=1000",
        "application/json",
        body.to_string().as_bytes(),
    );
    assert_eq!(a.status, 400);
    let message = a.json["message"].as_str().unwrap();
    assert!(
        message.contains("too many mids: 10001 given, at most 10000"),
        "{message}"
    );
    g.shutdown();
}

#[test]
fn ten_thousand_keys_in_a_form_body_are_pushed_and_one_more_is_refused() {
    let g = gateway();
    let mut c = client(g.tcp_addr(), Transport::Tcp, 1, "the-key", "", &[1000]);
    let form = |n: usize| {
        let mut body: Vec<String> = (1..n).map(|i| format!("keys=key-{i}")).collect();
        body.push("keys=the-key".into());
        body.push("message=to%20many%20keys".into());
        body.join("&")
    };
    let a = post(
        g.http_addr(),
        "/goim/push/keys?operation=1000",
        "application/x-www-form-urlencoded",
        form(MAX_TARGETS).as_bytes(),
    );
    assert_eq!(a.status, 200, "{:?}", a.json["message"]);
    assert_eq!(a.json["data"]["connections"], 1);
    assert_eq!(next_push(&mut c), (1000, "to many keys".to_string()));

    let a = post(
        g.http_addr(),
        "/goim/push/keys?operation=1000",
        "application/x-www-form-urlencoded",
        form(MAX_TARGETS + 1).as_bytes(),
    );
    assert_eq!(a.status, 400);
    assert!(
        a.json["message"]
            .as_str()
            .unwrap()
            .contains("too many keys: 10001 given, at most 10000"),
        "{:?}",
        a.json
    );
    g.shutdown();
}

/// goim's form is unchanged: targets in the query, the body is the message, whatever its
/// content type (curl's `-d` sends a form content type).
#[test]
fn targets_in_the_query_keep_the_body_as_the_message() {
    let g = gateway();
    let mut c = client(g.tcp_addr(), Transport::Tcp, 9, "k9", "", &[1000]);
    let a = post(
        g.http_addr(),
        "/goim/push/mids?operation=1000&mids=9",
        "application/x-www-form-urlencoded",
        b"mids=1&message=not parsed",
    );
    assert_eq!(a.status, 200, "{:?}", a.json);
    assert_eq!(next_push(&mut c).1, "mids=1&message=not parsed");
    let a = post(
        g.http_addr(),
        "/goim/push/keys?operation=1000&keys=k9",
        "application/json",
        br#"{"keys":["x"],"message":"m"}"#,
    );
    assert_eq!(a.status, 200, "{:?}", a.json);
    assert_eq!(next_push(&mut c).1, r#"{"keys":["x"],"message":"m"}"#);
    // No targets anywhere: a reason that says where they go.
    let a = post(
        g.http_addr(),
        "/goim/push/mids?operation=1000",
        "application/x-www-form-urlencoded",
        b"hello",
    );
    assert_eq!(a.status, 400);
    assert!(
        a.json["message"]
            .as_str()
            .unwrap()
            .starts_with("mids is required: in the query"),
        "{:?}",
        a.json
    );
    // A body carrying targets is bounded by logic.max_push_request, its message by
    // logic.max_push_body.
    let big = "x".repeat(64 * 1024 + 1);
    let a = post(
        g.http_addr(),
        "/goim/push/mids?operation=1000",
        "application/json",
        serde_json::json!({"mids": [9], "message": big})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(a.status, 413, "{:?}", a.json);
    g.shutdown();
}
