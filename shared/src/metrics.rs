//! Prometheus exposition: each service hands a [`Hub`] a collector that reads its counters at
//! scrape time (summing per-shard sets), and the hub renders them all in the OpenMetrics text
//! format with `prometheus-client`. Nothing here runs on a hot path: writers only add to
//! relaxed atomics ([`crate::counters`], [`Histogram`]).
//!
//! Counter names are given without `_total`; the encoder adds it.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder as Encoder;

/// The content type of [`Hub::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of one sample: `(name, value)` pairs.
pub type Labels<'a> = &'a [(&'a str, Cow<'a, str>)];

/// Writes one family of counters (`name` without `_total`), one sample per label set.
pub fn counter_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'a str, Cow<'a, str>)>, u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            metric.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        } else {
            metric
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
    }
    Ok(())
}

/// Writes one family of gauges, one sample per label set.
pub fn gauge_family<'a, V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'a str, Cow<'a, str>)>, V)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            metric.encode_gauge(&value)?;
        } else {
            metric.encode_family(&labels)?.encode_gauge(&value)?;
        }
    }
    Ok(())
}

/// Writes every sample of a `counters!` snapshot as `{prefix}_{field}`, counters or gauges as
/// declared: the full set a service counts, beside the named metrics it also exports.
pub fn snapshot_samples(
    encoder: &mut DescriptorEncoder,
    prefix: &str,
    labels: Labels,
    samples: impl Iterator<Item = crate::counters::Sample>,
) -> std::fmt::Result {
    for sample in samples {
        let name = format!("{prefix}_{}", sample.name);
        let help = sample.help.trim();
        let labels = labels.to_vec();
        match sample.kind {
            crate::counters::Kind::Counter => {
                counter_family(encoder, &name, help, [(labels, sample.value)])?
            }
            crate::counters::Kind::Gauge => {
                gauge_family(encoder, &name, help, [(labels, sample.value)])?
            }
        }
    }
    Ok(())
}

/// Bucket bounds of [`Histogram`], in microseconds: 100 µs to 10 s.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram of relaxed atomics: one per writer (per shard), summed at scrape time
/// like the counters. Observations are microseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A [`Histogram`]'s values, summable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub buckets: [u64; LATENCY_BOUNDS_US.len() + 1],
    pub sum_us: u64,
}

impl Histogram {
    /// Records one observation of `us` microseconds.
    pub fn observe_us(&self, us: u64) {
        let i = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Adds this histogram's values to `total`.
    pub fn add_to(&self, total: &mut HistogramSnapshot) {
        for (t, b) in total.buckets.iter_mut().zip(&self.buckets) {
            *t += b.load(Ordering::Relaxed);
        }
        total.sum_us += self.sum_us.load(Ordering::Relaxed);
    }
}

impl HistogramSnapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The upper bound (seconds) of the bucket holding quantile `q` (0..=1): an upper estimate;
    /// `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let us = LATENCY_BOUNDS_US
                    .get(i)
                    .copied()
                    .unwrap_or(*LATENCY_BOUNDS_US.last().unwrap());
                return Some(us as f64 / 1e6);
            }
        }
        None
    }

    /// Writes this histogram as `name` (seconds) with `labels`.
    pub fn encode(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        labels: Labels,
    ) -> std::fmt::Result {
        // prometheus-client takes per-bucket counts, accumulates them itself, and writes
        // f64::MAX as +Inf.
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let bound = LATENCY_BOUNDS_US
                    .get(i)
                    .map_or(f64::MAX, |&us| us as f64 / 1e6);
                (bound, n)
            })
            .collect();
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        let (sum, count) = (self.sum_us as f64 / 1e6, self.count());
        if labels.is_empty() {
            return metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None);
        }
        let labels = labels.to_vec();
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// The collectors of one process, rendered together at each scrape. Services add theirs as
/// they start.
#[derive(Clone, Default)]
pub struct Hub {
    collectors: Arc<Mutex<Vec<Arc<dyn Collector>>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

/// Hands a shared collector to a scrape's registry.
#[derive(Debug)]
struct Shared(Arc<dyn Collector>);

impl Collector for Shared {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        self.0.encode(encoder)
    }
}

impl Hub {
    /// A hub with the process collector (CPU, memory, open files).
    pub fn new() -> Hub {
        let hub = Hub::default();
        hub.add(Arc::new(ProcessCollector));
        hub
    }

    /// Adds a collector read at every scrape.
    pub fn add(&self, collector: Arc<dyn Collector>) {
        self.collectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(collector);
    }

    /// Every collector's metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        for c in self
            .collectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            registry.register_collector(Box::new(Shared(c.clone())));
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The process's CPU time, resident memory and open files, read from `/proc/self` at scrape
/// time (the standard `process_*` names).
#[derive(Debug)]
pub struct ProcessCollector;

/// What [`ProcessCollector`] reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
}

impl ProcessStats {
    /// Reads `/proc/self`; what cannot be read stays 0.
    pub fn read() -> ProcessStats {
        let mut s = ProcessStats::default();
        // SAFETY: sysconf takes an integer and touches no memory of ours.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces) in parentheses.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                // rest starts at field 3 (state): utime is field 14, stime 15, threads 20,
                // rss 24.
                let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
                s.cpu_seconds = (num(14).unwrap_or(0) + num(15).unwrap_or(0)) as f64 / ticks;
                s.threads = num(20).unwrap_or(0);
                s.resident_bytes = num(24).unwrap_or(0) * page;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            s.open_fds = dir.count() as u64;
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            s.max_fds = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        s
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = ProcessStats::read();
        let none = || Vec::<(&str, Cow<str>)>::new();
        counter_family_f64(
            &mut encoder,
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds.",
            s.cpu_seconds,
        )?;
        gauge_family(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            [(none(), s.resident_bytes)],
        )?;
        gauge_family(
            &mut encoder,
            "process_open_fds",
            "Open file descriptors.",
            [(none(), s.open_fds)],
        )?;
        gauge_family(
            &mut encoder,
            "process_max_fds",
            "The limit on open file descriptors.",
            [(none(), s.max_fds)],
        )?;
        gauge_family(
            &mut encoder,
            "process_threads",
            "Threads of this process.",
            [(none(), s.threads)],
        )
    }
}

fn counter_family_f64(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    prometheus_client::metrics::counter::ConstCounter::new(value).encode(metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Two;

    impl Collector for Two {
        fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
            counter_family(
                &mut encoder,
                "imgate_things",
                "Things.",
                [
                    (vec![("reason", Cow::Borrowed("slow"))], 2),
                    (vec![("reason", Cow::Borrowed("malformed"))], 3),
                ],
            )?;
            let h = Histogram::default();
            h.observe_us(50);
            h.observe_us(3_000);
            h.observe_us(20_000_000);
            let mut snap = HistogramSnapshot::default();
            h.add_to(&mut snap);
            snap.encode(&mut encoder, "imgate_lat_seconds", "Latency.", &[])
        }
    }

    #[test]
    fn renders_labelled_counters_histograms_and_process_figures() {
        let hub = Hub::new();
        hub.add(Arc::new(Two));
        let text = hub.render();
        assert!(
            text.contains("imgate_things_total{reason=\"slow\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("imgate_things_total{reason=\"malformed\"} 3\n"));
        assert!(text.contains("imgate_lat_seconds_count 3\n"), "{text}");
        assert!(
            text.contains("imgate_lat_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("imgate_lat_seconds_bucket{le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("imgate_lat_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("process_open_fds "));
        assert!(text.ends_with("# EOF\n"));
        let rss = ProcessStats::read().resident_bytes;
        assert!(rss > 0);
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let h = Histogram::default();
        for _ in 0..99 {
            h.observe_us(400);
        }
        h.observe_us(90_000);
        let mut s = HistogramSnapshot::default();
        h.add_to(&mut s);
        assert_eq!(s.quantile(0.5), Some(0.0005));
        assert_eq!(s.quantile(1.0), Some(0.1));
        assert_eq!(HistogramSnapshot::default().quantile(0.5), None);
    }
}
