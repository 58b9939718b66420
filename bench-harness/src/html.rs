//! The HTML report written beside every JSON report (same name, `.html`): the run's figures
//! in a table and its charts as inline SVG, drawn by plotters' SVG backend. No script, no
//! stylesheet, font or image from elsewhere: it opens from disk with no network.
//!
//! Charts: latency percentiles (per phase, or per system for a peers report), connected
//! clients over time (what an `idle` run is about), server CPU per delivered message against
//! the socket floor, and messages received per second.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

/// Where the HTML report of the JSON report at `json` goes.
pub fn path_beside(json: &Path) -> PathBuf {
    json.with_extension("html")
}

/// Series colours, in turn.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];
const WIDTH: u32 = 760;
const HEIGHT: u32 = 340;

/// A grouped bar chart: one group per category, one bar per series in each.
struct Bars<'a> {
    title: &'a str,
    y_label: &'a str,
    groups: Vec<String>,
    series: Vec<(String, Vec<Option<f64>>)>,
    /// A horizontal reference line across the chart (the floor), with its label.
    line: Option<(String, f64)>,
}

/// A line chart: (x, y) points per series.
struct Lines<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    series: Vec<(String, Vec<(f64, f64)>)>,
}

fn chart_error(e: impl std::fmt::Display) -> String {
    format!("drawing the chart: {e}")
}

/// Draws a bar chart as an SVG document.
fn bar_svg(b: &Bars<'_>) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let top = b
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().flatten())
            .copied()
            .chain(b.line.as_ref().map(|l| l.1))
            .fold(0.0f64, f64::max);
        let top = if top > 0.0 { top * 1.2 } else { 1.0 };
        let n = b.groups.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(b.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(72)
            .build_cartesian_2d(0f64..n, 0f64..top)
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(b.y_label)
            .y_label_formatter(&|v| short(*v))
            .draw()
            .map_err(chart_error)?;
        let k = b.series.len().max(1) as f64;
        let width = 0.8 / k;
        for (s, (name, values)) in b.series.iter().enumerate() {
            let colour = COLOURS[s % COLOURS.len()];
            let bars = values.iter().enumerate().filter_map(|(g, v)| {
                let x0 = g as f64 + 0.1 + s as f64 * width;
                v.map(|v| Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], colour.filled()))
            });
            let drawn = chart.draw_series(bars).map_err(chart_error)?;
            if b.series.len() > 1 {
                drawn.label(name.as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
            }
            let labels = values.iter().enumerate().filter_map(|(g, v)| {
                let x = g as f64 + 0.1 + (s as f64 + 0.46) * width;
                v.map(|v| {
                    Text::new(
                        short(v),
                        (x, v),
                        ("sans-serif", 11)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
                })
            });
            chart.draw_series(labels).map_err(chart_error)?;
        }
        if let Some((label, y)) = &b.line {
            let red = COLOURS[3];
            chart
                .draw_series(LineSeries::new([(0.0, *y), (n, *y)], red.stroke_width(2)))
                .map_err(chart_error)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], red));
        }
        if b.series.len() > 1 || b.line.is_some() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.85))
                .draw()
                .map_err(chart_error)?;
        }
        // Group names under the axis, centred on their groups.
        for (g, name) in b.groups.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                name.clone(),
                (x, y + 8),
                ("sans-serif", 13)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(chart_error)?;
        }
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}

/// Draws a line chart as an SVG document.
fn line_svg(l: &Lines<'_>) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let points = || l.series.iter().flat_map(|(_, p)| p.iter());
        let right = points().map(|p| p.0).fold(0.0f64, f64::max).max(1.0);
        let top = points().map(|p| p.1).fold(0.0f64, f64::max);
        let top = if top > 0.0 { top * 1.15 } else { 1.0 };
        let mut chart = ChartBuilder::on(&root)
            .caption(l.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(72)
            .build_cartesian_2d(0f64..right, 0f64..top)
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .x_desc(l.x_label)
            .y_desc(l.y_label)
            .y_label_formatter(&|v| short(*v))
            .draw()
            .map_err(chart_error)?;
        for (s, (name, points)) in l.series.iter().enumerate() {
            let colour = COLOURS[s % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(chart_error)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], colour));
        }
        if l.series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.85))
                .draw()
                .map_err(chart_error)?;
        }
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}

/// 1234567 → "1.23M", 1234 → "1,234", 0.123 → "0.12".
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000_000.0 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1_000_000.0 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 100.0 {
        grouped(v.round() as i64)
    } else if a >= 10.0 || v == v.trunc() {
        format!("{v:.1}").trim_end_matches(".0").to_string()
    } else {
        format!("{v:.2}")
    }
}

fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A JSON value as a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), short),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

fn ms(us: &Value) -> Option<f64> {
    us.as_f64().map(|v| v / 1000.0)
}

/// A chart's SVG inline, or what went wrong drawing it.
fn figure(out: &mut String, svg: Result<String, String>, caption: &str) {
    match svg {
        Ok(svg) => {
            // Inline in HTML the SVG namespace is implied: leave the attribute out, so the
            // page names no address at all.
            let svg = svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1);
            let _ = writeln!(
                out,
                "<figure>{svg}<figcaption>{}</figcaption></figure>",
                esc(caption)
            );
        }
        Err(e) => {
            let _ = writeln!(out, "<p class=\"error\">{}</p>", esc(&e));
        }
    }
}

const STYLE: &str = "body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}\
th{background:#eee}td:first-child,th:first-child{text-align:left}figure{margin:1.5em 0}\
figcaption{font-size:.9em;color:#555}code{font-size:.85em;word-break:break-all}.error{color:#b00}";

fn page_start(out: &mut String, title: &str, report: &Value) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
    let m = &report["machine"];
    let _ = writeln!(
        out,
        "<p>{} · commit {} · {} CPUs ({}), {} GiB, Linux {}</p>",
        cell(&report["date"]),
        cell(&report["commit"]),
        cell(&m["cpus"]),
        cell(&m["cpu_model"]),
        m["memory_bytes"]
            .as_f64()
            .map_or("–".into(), |b| format!("{:.0}", b / (1u64 << 30) as f64)),
        cell(&m["kernel"])
    );
    let _ = writeln!(out, "<p><code>{}</code></p>", cell(&report["command"]));
}

fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    out.push_str("<table><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>\n");
    for row in rows {
        out.push_str("<tr>");
        for c in row {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// The HTML of a report: a peers comparison (it has `rows`) or one run.
pub fn render(report: &Value) -> String {
    if report["rows"].is_array() {
        render_peers(report)
    } else {
        render_run(report)
    }
}

fn render_peers(r: &Value) -> String {
    let rows = r["rows"].as_array().cloned().unwrap_or_default();
    let s = &r["settings"];
    let title = format!(
        "imgate beside Redis and NATS: {} subscribers, {}/s, {} s",
        cell(&s["clients"]),
        cell(&s["rate"]),
        cell(&s["duration_s"])
    );
    let mut out = String::new();
    page_start(&mut out, &title, r);
    let _ = writeln!(
        out,
        "<p>One channel, every subscriber in it; server on CPUs {}, harness on {}; CPU per delivery from {}.</p>",
        cell(&s["server_cpus"]),
        cell(&s["harness_cpus"]),
        cell(&r["server_cpu_source"])
    );
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                cell(&row["system"]),
                format!("{} of {}", cell(&row["connected"]), cell(&row["clients"])),
                cell(&row["delivered"]),
                cell(&row["expected"]),
                cell(&row["server_cpu_ns_per_delivery"]),
                cell(&row["server_process_cpu_ns_per_delivery"]),
                cell(&row["p50_ms"]),
                cell(&row["p99_ms"]),
                cell(&row["max_ms"]),
                cell(&row["publish_rate"]),
                cell(&row["backlog_at_push_end"]),
                cell(&row["server_rss_bytes_per_conn"]),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "system",
            "connected",
            "delivered",
            "expected",
            "server CPU ns / delivery",
            "process CPU ns / delivery",
            "p50 ms",
            "p99 ms",
            "max ms",
            "publishes / s",
            "behind at push end",
            "server RSS B / conn",
        ],
        &body,
    );
    let systems: Vec<String> = rows
        .iter()
        .map(|row| row["system"].as_str().unwrap_or("?").to_string())
        .collect();
    let pick =
        |key: &str| -> Vec<Option<f64>> { rows.iter().map(|row| row[key].as_f64()).collect() };
    let latency = Bars {
        title: "End-to-end latency (publish to subscriber)",
        y_label: "ms",
        groups: systems.clone(),
        series: [
            ("p50", "p50_ms"),
            ("p90", "p90_ms"),
            ("p99", "p99_ms"),
            ("p99.9", "p999_ms"),
        ]
        .iter()
        .map(|(name, key)| (name.to_string(), pick(key)))
        .collect(),
        line: None,
    };
    figure(&mut out, bar_svg(&latency), "Latency percentiles per system, from the stamp each message carries (CLOCK_MONOTONIC at publish) to the subscriber's read.");
    let floor = r["floor_cpu_ns_per_write"].as_f64();
    let cpu = Bars {
        title: "Server CPU per delivered message",
        y_label: "ns",
        groups: systems.clone(),
        series: vec![("server".into(), pick("server_cpu_ns_per_delivery"))],
        line: floor.map(|f| {
            (
                format!(
                    "socket floor: one {}-byte write",
                    cell(&r["floor"]["frame_bytes"])
                ),
                f,
            )
        }),
    };
    figure(&mut out, bar_svg(&cpu), "The server's CPU over the push window and its drain, divided by the messages delivered; the line is what one plain loopback write of a message's size costs (the floor).");
    let memory = Bars {
        title: "Server memory per connection",
        y_label: "bytes",
        groups: systems.clone(),
        series: vec![("RSS".into(), pick("server_rss_bytes_per_conn"))],
        line: None,
    };
    figure(&mut out, bar_svg(&memory), "Server RSS after every subscriber connected, less before, divided by the subscribers (kernel socket memory not included).");
    let rate = Lines {
        title: "Messages received per second",
        x_label: "seconds of pushing",
        y_label: "messages / s",
        series: rows
            .iter()
            .map(|row| {
                let points = row["samples_msgs_per_sec"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, v)| (i as f64 + 1.0, v.as_f64().unwrap_or(0.0)))
                    .collect();
                (row["system"].as_str().unwrap_or("?").to_string(), points)
            })
            .collect(),
    };
    figure(&mut out, line_svg(&rate), "What the subscribers read each second while the publisher ran: flat at subscribers × rate when the server keeps up.");
    out.push_str("</body></html>\n");
    out
}

fn render_run(r: &Value) -> String {
    let title = format!(
        "{} on {}: {} clients",
        r["scenario"].as_str().unwrap_or("?"),
        r["system"].as_str().unwrap_or("imgate"),
        cell(&r["clients"])
    );
    let mut out = String::new();
    page_start(&mut out, &title, r);
    let c = &r["connect"];
    let mut rows = vec![
        vec![
            "connected".into(),
            format!(
                "{} of {} in {} s",
                cell(&c["connected"]),
                cell(&c["attempted"]),
                cell(&c["seconds"])
            ),
        ],
        vec![
            "expected / delivered".into(),
            format!("{} / {}", cell(&r["expected"]), cell(&r["delivered"])),
        ],
        vec![
            "lost / duplicated".into(),
            format!("{} / {}", cell(&r["lost"]), cell(&r["duplicated"])),
        ],
        vec!["messages / s".into(), cell(&r["msgs_per_sec"])],
        vec![
            "server CPU ns / message (process)".into(),
            cell(&r["server_cpu_ns_per_msg"]),
        ],
        vec![
            "server CPU ns / message (its cores)".into(),
            cell(&r["server_core_cpu_ns_per_msg"]),
        ],
        vec![
            "server CPU ns / write".into(),
            cell(&r["server_cpu_ns_per_write"]),
        ],
        vec![
            "floor ratio per write".into(),
            cell(&r["floor_ratio_per_write"]),
        ],
        vec![
            "server RSS B / connection".into(),
            cell(&r["rss_bytes_per_conn"]),
        ],
        vec!["errors".into(), cell(&r["errors"]["total"])],
    ];
    if let Some(idle) = r.get("idle") {
        rows.push(vec![
            "held (s), fewest connected".into(),
            format!(
                "{}, {}",
                cell(&idle["seconds"]),
                cell(&idle["min_connected"])
            ),
        ]);
        rows.push(vec![
            "server CPU % while idle".into(),
            cell(&idle["server_cpu_percent"]),
        ]);
    }
    table(&mut out, &["figure", "value"], &rows);

    let phases = r["phases"].as_array().cloned().unwrap_or_default();
    if !phases.is_empty() {
        let names: Vec<String> = phases
            .iter()
            .map(|p| p["name"].as_str().unwrap_or("?").to_string())
            .collect();
        let latency = Bars {
            title: "End-to-end latency per phase",
            y_label: "ms",
            groups: names,
            series: [
                ("p50", "p50"),
                ("p90", "p90"),
                ("p99", "p99"),
                ("p99.9", "p999"),
            ]
            .iter()
            .map(|(name, key)| {
                (
                    name.to_string(),
                    phases.iter().map(|p| ms(&p["latency_us"][key])).collect(),
                )
            })
            .collect(),
            line: None,
        };
        figure(&mut out, bar_svg(&latency), "From the stamp each push carries (CLOCK_MONOTONIC when it was sent) to the client's read.");
    }
    if let Some(points) = r["connections_over_time"]
        .as_array()
        .filter(|p| p.len() > 1)
    {
        let line = Lines {
            title: "Connected clients over time",
            x_label: "seconds since the first connect",
            y_label: "connected",
            series: vec![(
                "connected".into(),
                points
                    .iter()
                    .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                    .collect(),
            )],
        };
        figure(&mut out, line_svg(&line), "Authenticated connections open, sampled about once a second through the connects, the hold (idle) or the pushes.");
    }
    let floor = &r["floor"];
    let floor_at = |label: &str| floor[label]["cpu_ns_per_write"].as_f64();
    let cpu_bars: Vec<(String, Option<f64>)> = vec![
        (
            "server per message".into(),
            r["server_cpu_ns_per_msg"].as_f64(),
        ),
        (
            "server per write".into(),
            r["server_cpu_ns_per_write"].as_f64(),
        ),
        (
            "floor, message size".into(),
            floor_at("message").or(floor_at("given")),
        ),
        ("floor, write size".into(), floor_at("write")),
    ]
    .into_iter()
    .filter(|(_, v)| v.is_some())
    .collect();
    if !cpu_bars.is_empty() {
        let cpu = Bars {
            title: "Server CPU per delivery against the socket floor",
            y_label: "ns",
            groups: cpu_bars.iter().map(|b| b.0.clone()).collect(),
            series: vec![("ns".into(), cpu_bars.iter().map(|b| b.1).collect())],
            line: None,
        };
        figure(&mut out, bar_svg(&cpu), "The server's CPU per message and per socket write, beside what plain loopback writes of the same sizes cost a writer process on the server's CPUs (the floor).");
    }
    if !phases.is_empty() {
        let rate = Lines {
            title: "Messages received per second",
            x_label: "seconds of pushing",
            y_label: "messages / s",
            series: phases
                .iter()
                .map(|p| {
                    let points = p["samples_msgs_per_sec"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, v)| (i as f64 + 1.0, v.as_f64().unwrap_or(0.0)))
                        .collect();
                    (p["name"].as_str().unwrap_or("?").to_string(), points)
                })
                .collect(),
        };
        figure(
            &mut out,
            line_svg(&rate),
            "What the clients read each second of each push phase.",
        );
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_print_short() {
        assert_eq!(short(1_234_567.0), "1.23M");
        assert_eq!(short(12_345_678.0), "12.3M");
        assert_eq!(short(1754.4), "1,754");
        assert_eq!(short(12.0), "12");
        assert_eq!(short(0.126), "0.13");
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }

    #[test]
    fn a_peers_report_draws_every_chart_inline() {
        let row = |system: &str, p99: f64| {
            json!({"system": system, "connected": 10, "clients": 10, "delivered": 400, "expected": 400,
                   "server_cpu_ns_per_delivery": 2000.0, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": p99,
                   "p999_ms": 9.0, "server_rss_bytes_per_conn": 4000, "samples_msgs_per_sec": [400, 400]})
        };
        let r = json!({"rows": [row("imgate", 3.0), row("redis", 4.0), row("nats", 5.0)],
                       "settings": {"clients": 10, "rate": 40.0, "duration_s": 1.0},
                       "floor": {"cpu_ns_per_write": 900.0, "frame_bytes": 76},
                       "floor_cpu_ns_per_write": 900.0,
                       "command": "bench.sh peers <x>"});
        let html = render(&r);
        assert_eq!(html.matches("<svg").count(), 4, "{html}");
        assert!(html.contains("redis") && html.contains("nats"));
        assert!(html.contains("bench.sh peers &lt;x&gt;"));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}
