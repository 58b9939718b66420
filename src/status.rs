//! `imgate status`: the figures of logic's `/status` page, in the terminal. Two readings of
//! `/status.json` `interval` apart give the rates.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::client::http::HttpClient;

/// Reads `/status.json` from logic at `http`.
pub fn fetch(http: &SocketAddr, api_key: Option<&str>) -> anyhow::Result<Value> {
    let mut client = HttpClient::new(*http).timeout(Duration::from_secs(5));
    let auth = api_key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let response = client
        .request("GET", "/status.json", &headers, b"")
        .with_context(|| format!("asking http://{http}/status.json"))?;
    match response.status {
        200 => {}
        401 => bail!("http://{http}/status.json needs the API key (--api-key or IMGATE_API_KEY)"),
        status => bail!("http://{http}/status.json answered {status}"),
    }
    serde_json::from_slice(&response.body).context("reading /status.json")
}

/// Prints the figures.
pub fn print(http: &SocketAddr, api_key: Option<&str>, interval: Duration) -> anyhow::Result<()> {
    let before = fetch(http, api_key)?;
    std::thread::sleep(interval);
    let now = fetch(http, api_key)?;
    print!("{}", render(&before, &now));
    Ok(())
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn pushes(s: &Value) -> u64 {
    s["logic"]["pushes"]
        .as_object()
        .map_or(0, |p| p.values().map(|k| u(&k["accepted"])).sum())
}

fn local(s: &Value) -> Vec<Value> {
    s["comets"].as_array().cloned().unwrap_or_default()
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or("–".into(), |s| format!("{:.2} ms", s * 1000.0))
}

/// The figures of two readings as text.
pub fn render(before: &Value, now: &Value) -> String {
    let dt = (u(&now["time_ms"]).saturating_sub(u(&before["time_ms"])) as f64 / 1000.0).max(1e-3);
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
    let mut out = String::new();
    let ready: Vec<String> = now["ready"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"] != Value::Bool(true))
        .map(|c| {
            format!(
                "{} ({})",
                c["check"].as_str().unwrap_or("?"),
                c["error"].as_str().unwrap_or("")
            )
        })
        .collect();
    if ready.is_empty() {
        out += "ready\n";
    } else {
        let _ = writeln!(out, "NOT READY: {}", ready.join(", "));
    }
    let here = local(now);
    let registry = now["logic"]["comets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let connections: u64 = if here.is_empty() {
        registry.iter().map(|c| u(&c["connections"])).sum()
    } else {
        here.iter().map(|c| u(&c["connections"])).sum()
    };
    let _ = writeln!(out, "connections   {connections}");
    let _ = writeln!(out, "rooms         {}", u(&now["logic"]["rooms"]));
    let _ = writeln!(
        out,
        "pushes/s      {:.1}",
        rate(pushes(before), pushes(now))
    );
    for c in &here {
        let id = c["id"].as_str().unwrap_or("?");
        let old = local(before)
            .into_iter()
            .find(|b| b["id"] == c["id"])
            .unwrap_or(Value::Null);
        let _ = writeln!(
            out,
            "comet {id} ({}): {} connections, {} rooms, {:.1} writes/s, {:.1} messages/s, push latency p50 <= {} p99 <= {}",
            c["io"].as_str().unwrap_or("?"),
            u(&c["connections"]),
            u(&c["rooms"]),
            rate(u(&old["writes"]), u(&c["writes"])),
            rate(u(&old["messages_sent"]), u(&c["messages_sent"])),
            ms(&c["latency"]["p50"]),
            ms(&c["latency"]["p99"]),
        );
    }
    for c in registry {
        if here.iter().any(|h| h["id"] == c["id"]) {
            continue;
        }
        let _ = writeln!(
            out,
            "comet {}: {} connections (registry)",
            c["id"].as_str().unwrap_or("?"),
            u(&c["connections"])
        );
    }
    if let Some(rooms) = now["logic"]["busiest_rooms"].as_array() {
        if !rooms.is_empty() {
            out += "busiest rooms:\n";
            for r in rooms {
                let _ = writeln!(
                    out,
                    "  {:<30} {}",
                    r["room"].as_str().unwrap_or("?"),
                    u(&r["online"])
                );
            }
        }
    }
    let p = &now["process"];
    let _ = writeln!(
        out,
        "process: {:.1} s CPU, {} MiB resident, {} of {} files open",
        p["cpu_seconds"].as_f64().unwrap_or(0.0),
        u(&p["resident_bytes"]) >> 20,
        u(&p["open_fds"]),
        u(&p["max_fds"])
    );
    out
}
