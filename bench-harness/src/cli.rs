//! The command line and what each preset means.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::cpus::{self, CpuSet};
use crate::metrics::Endpoint;
use crate::pusher::PushKind;
use imgate_client::Transport;

/// Scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// Connect N clients and hold them with heartbeats: connect rate, connect times, server
    /// memory per connection.
    Idle,
    /// goim's published benchmark scaled to N: every client in one room, 40 room pushes per
    /// second, messages received counted once per second for 30 samples.
    Goim,
    /// Room pushes at --rate (like goim, any rate).
    Room,
    /// One user: pushes through the HTTP API as fast as answers come, then at a fixed rate of
    /// --latency-fraction of that peak for latency percentiles (or only --rate if given).
    SinglePush,
    /// Pushes by key, one client per push, round robin, at --rate.
    Keys,
    /// Pushes by user id, one client per push, round robin, at --rate.
    Mids,
    /// Broadcasts to every client at --rate.
    All,
    /// Only the socket floor (see --floor).
    Floor,
}

/// Which server the clients talk to, in its own protocol: imgate (goim's protocol, pushes
/// through logic's HTTP API), Redis pub/sub (RESP `SUBSCRIBE`, `PUBLISH`) or NATS core (`SUB`,
/// `PUB`). The peers answer only the one-channel case (`goim`, `room`) and `idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum System {
    #[default]
    Imgate,
    Redis,
    Nats,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Imgate => "imgate",
            System::Redis => "redis",
            System::Nats => "nats",
        }
    }
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Idle => "idle",
            Preset::Goim => "goim",
            Preset::Room => "room",
            Preset::SinglePush => "single-push",
            Preset::Keys => "keys",
            Preset::Mids => "mids",
            Preset::All => "all",
            Preset::Floor => "floor",
        }
    }
}

/// imgate's (goim-compatible) load generator.
///
/// Simulates up to a million goim clients from one host over TCP or WebSocket, spread over
/// worker processes (each under the open-file limit, each from its own 127.0.0.x address),
/// drives pushes through logic's HTTP API, counts every message on the client side, reads
/// comet's own count of its socket writes from imgate's metrics, and writes one JSON report
/// per run.
///
/// scripts/bench.sh runs it end to end; with SERVER_CPUS and HARNESS_CPUS set it runs imgate
/// under `taskset -c SERVER_CPUS`, this harness under `taskset -c HARNESS_CPUS` (its executors
/// stay in that set) and passes `--floor-writer-cpus SERVER_CPUS --floor-reader-cpus
/// HARNESS_CPUS`.
#[derive(Debug, Clone, Parser)]
#[command(name = "bench-harness", version)]
pub struct Args {
    /// Scenario.
    #[arg(long, value_enum, default_value = "goim")]
    pub preset: Preset,
    /// Simulated clients [default: 1000; single-push: 1].
    #[arg(long)]
    pub clients: Option<u64>,
    /// Seconds to push (per phase) or, for idle, to hold the connections.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Server process(es) whose CPU time and memory to sample (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Server the clients talk to: imgate, or a peer on the same case, Redis pub/sub or NATS
    /// core, at --tcp-addr (the publisher connects there too). Peers take `goim`, `room` and
    /// `idle`, over TCP; the channel (Redis) or subject (NATS) is `ROOM_TYPE.ROOM_ID`.
    #[arg(long, value_enum, default_value = "imgate")]
    pub system: System,
    /// Transport the clients speak.
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: Transport,
    /// comet TCP address(es), or the Redis or NATS server's; client g uses the (g mod n)-th
    /// [default: 127.0.0.1:3101].
    #[arg(long, value_delimiter = ',')]
    pub tcp_addr: Vec<SocketAddr>,
    /// comet WebSocket address(es) [default: 127.0.0.1:3102].
    #[arg(long, value_delimiter = ',')]
    pub ws_addr: Vec<SocketAddr>,
    /// logic's HTTP API.
    #[arg(long, default_value = "127.0.0.1:3111")]
    pub http: SocketAddr,
    /// Connects per second, all workers together (0: as fast as --max-in-flight allows).
    #[arg(long, default_value_t = 10000.0)]
    pub connect_rate: f64,
    /// Workers connect one after another, each at the whole --connect-rate, instead of all
    /// together: on a host with far fewer cores than workers, fewer processes wake per connect.
    #[arg(long)]
    pub staggered: bool,
    /// Seconds a client may take from connect to the auth reply.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Connects in progress at once, per executor.
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    /// Seconds between a client's heartbeats (0: none; goim's benchmark client: 240).
    #[arg(long, default_value_t = 30.0)]
    pub heartbeat: f64,
    /// Reconnect a client whose connection ends (otherwise it is counted and stays down).
    #[arg(long)]
    pub reconnect: bool,
    /// Worker processes [default: clients / --per-worker, rounded up].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Most clients per worker process (each needs a descriptor; the hard limit here is 20,000).
    #[arg(long, default_value_t = 19_000)]
    pub per_worker: u64,
    /// glommio executors per worker [default: cores / workers, at least 1].
    #[arg(long)]
    pub executors: Option<usize>,
    /// Do not pin executors to cores (nor the floor, unless --floor-*-cpus say where). Pinned
    /// executors take the CPUs this process may run on in turn, so under `taskset -c LIST` they
    /// stay in LIST.
    #[arg(long)]
    pub no_pin: bool,
    /// Source addresses, one per worker in turn [default: 127.0.0.2, 127.0.0.3, …].
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Pushes per second [goim: 40; keys, mids: 1000; single-push: as fast as answered].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Push API to drive (overrides the preset's).
    #[arg(long, value_enum)]
    pub push: Option<PushKind>,
    /// HTTP connections pushing in parallel [1 for room and broadcast, so order can be checked;
    /// single-push: 16; keys, mids: 4].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Business op of the pushes (clients accept it).
    #[arg(long, default_value_t = 1000)]
    pub op: i32,
    /// Room type and id of room pushes (clients join `type://id`).
    #[arg(long, default_value = "live")]
    pub room_type: String,
    #[arg(long, default_value = "1000")]
    pub room_id: String,
    /// Size of each push body in bytes (0: the natural ~60-byte stamped `{"test":1,...}`).
    #[arg(long, default_value_t = 0)]
    pub body_bytes: usize,
    /// Client g authenticates as mid `mid_base + g`.
    #[arg(long, default_value_t = 1)]
    pub mid_base: i64,
    /// Client g's connection key is `key_prefix` followed by g.
    #[arg(long, default_value = "bh-")]
    pub key_prefix: String,
    /// single-push: the latency phase runs at this fraction of the measured peak.
    #[arg(long, default_value_t = 0.5)]
    pub latency_fraction: f64,
    /// Most seconds to wait after a phase for messages still on their way.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Seconds between the last connect and the first push (or the memory sample).
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// imgate metrics endpoint(s) to read comet's own write counters from
    /// (`imgate_writes_total`, `imgate_bytes_sent_total`), at the start and end of each push
    /// phase, summed over endpoints: `http://HOST:PORT/metrics` or `HOST:PORT` (repeated or
    /// comma-separated; one per comet process) [default: /metrics on --http]. When one does not
    /// answer, writes are counted as client reads; the report's `writes_source` says which.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    pub metrics: Vec<Endpoint>,
    /// CPUs the server runs on (`taskset -c` list): their busy time in /proc/stat (user,
    /// system, irq and softirq, whoever ran there) over each push window is the server's CPU
    /// measured at the core (`server_core_cpu_ns_per_msg`), beside its processes' own.
    #[arg(long, value_name = "LIST")]
    pub server_cpus: Option<CpuSet>,
    /// Merge the JSON reports of a `scripts/bench.sh peers` run (one per system) into one
    /// report with a row per system, written with --json (and its HTML beside it); runs
    /// nothing.
    #[arg(long, value_delimiter = ',', value_name = "REPORT")]
    pub merge_peers: Vec<PathBuf>,
    /// Do not read metrics endpoints: count writes as client reads.
    #[arg(long, conflicts_with = "metrics")]
    pub no_metrics: bool,
    /// Server threads whose names start with this are comet's (imgate's `comet-shard-N` and
    /// `comet-epoll-N`): CPU per write is theirs. Empty, or no such thread: the whole
    /// --server-pid processes'. The report's `server_cpu_source` says which.
    #[arg(long, default_value = "comet-", value_name = "PREFIX")]
    pub server_threads: String,
    /// Also measure the socket floor in this run, after the scenario: writes of one message's
    /// size and of comet's mean write size (`floor_ratio_per_write` is comet's CPU per write
    /// over the floor's at that size).
    #[arg(long)]
    pub floor: bool,
    /// Floor: loopback connections written in turn [default: as many as the scenario's
    /// connected clients, the sockets comet wrote to; --preset floor: 1000].
    #[arg(long)]
    pub floor_connections: Option<usize>,
    /// Floor: bytes per write [default: one message and comet's mean write (from its metrics,
    /// else the clients' mean read); --preset floor: 76, one 60-byte message].
    #[arg(long)]
    pub floor_bytes: Option<usize>,
    /// Floor: seconds to write.
    #[arg(long, default_value_t = 5.0)]
    pub floor_seconds: f64,
    /// Floor: CPUs of the writer process(es), `taskset -c` list: the server's CPUs, where comet
    /// writes [default: the first CPU this process may use].
    #[arg(long, value_name = "LIST")]
    pub floor_writer_cpus: Option<CpuSet>,
    /// Floor: CPUs of the reader process(es): the harness's [default: the second CPU this
    /// process may use].
    #[arg(long, value_name = "LIST")]
    pub floor_reader_cpus: Option<CpuSet>,
    /// Floor: most sockets one writer or reader process holds; more connections split over
    /// more processes (lowered to fit the open-file limit).
    #[arg(long, default_value_t = 19_000)]
    pub floor_per_process: usize,
    /// Internal: run as a worker process (reads its configuration on stdin).
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Internal: run as a floor writer or reader (reads its configuration on stdin).
    #[arg(long, hide = true)]
    pub floor_part: bool,
}

impl Args {
    pub fn clients(&self) -> u64 {
        self.clients.unwrap_or(match self.preset {
            Preset::SinglePush => 1,
            Preset::Floor => 0,
            _ => 1000,
        })
    }

    /// The push API of the run, if it pushes.
    pub fn push_kind(&self) -> Option<PushKind> {
        self.push.or(match self.preset {
            Preset::Idle | Preset::Floor => None,
            Preset::Goim | Preset::Room => Some(PushKind::Room),
            Preset::SinglePush | Preset::Mids => Some(PushKind::Mids),
            Preset::Keys => Some(PushKind::Keys),
            Preset::All => Some(PushKind::All),
        })
    }

    /// Fixed push rate, or `None` for "as fast as answered".
    pub fn fixed_rate(&self) -> Option<f64> {
        match self.rate {
            Some(r) if r > 0.0 => Some(r),
            Some(_) => None,
            None => match self.preset {
                Preset::SinglePush => None,
                Preset::Keys | Preset::Mids => Some(1000.0),
                _ => Some(40.0),
            },
        }
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or_else(|| match self.push_kind() {
            Some(PushKind::Room | PushKind::All) if self.fixed_rate().is_some() => 1,
            Some(PushKind::Keys | PushKind::Mids) if self.preset != Preset::SinglePush => 4,
            _ => 16,
        })
    }

    /// The Redis channel or NATS subject of the room: `ROOM_TYPE.ROOM_ID`.
    pub fn channel(&self) -> String {
        format!("{}.{}", self.room_type, self.room_id)
    }

    /// Why this run cannot go to a peer, if it cannot.
    pub fn peer_problem(&self) -> Option<String> {
        if self.system == System::Imgate {
            return None;
        }
        if self.transport != Transport::Tcp {
            return Some(format!("{} clients speak TCP only", self.system.name()));
        }
        match self.push_kind() {
            None | Some(PushKind::Room) => None,
            Some(kind) => Some(format!(
                "{} has one channel per room here: {kind:?} pushes are imgate's only (use goim, room or idle)",
                self.system.name()
            )),
        }
    }

    /// Whether every client gets every push, in order, so each client's sequence is checked.
    pub fn ordered(&self) -> bool {
        self.concurrency() == 1
            && match self.push_kind() {
                Some(PushKind::Room | PushKind::All) => true,
                Some(PushKind::Keys | PushKind::Mids) => self.clients() == 1,
                None => false,
            }
    }

    pub fn targets(&self) -> Vec<SocketAddr> {
        let (given, default) = match self.transport {
            Transport::Tcp => (&self.tcp_addr, "127.0.0.1:3101"),
            Transport::WebSocket => (&self.ws_addr, "127.0.0.1:3102"),
        };
        if given.is_empty() {
            vec![default.parse().expect("valid default address")]
        } else {
            given.clone()
        }
    }

    /// Where the floor's writers and readers run: the given sets, else (unless --no-pin) the
    /// first and second CPU this process may use.
    pub fn floor_cpus(&self) -> (CpuSet, CpuSet) {
        let allowed = cpus::allowed();
        let default = |i: usize| {
            if self.no_pin {
                CpuSet::default()
            } else {
                CpuSet::new(allowed.nth_wrapping(i).into_iter().collect())
            }
        };
        (
            self.floor_writer_cpus.clone().unwrap_or_else(|| default(0)),
            self.floor_reader_cpus.clone().unwrap_or_else(|| default(1)),
        )
    }

    /// The metrics endpoints to read comet's write counters from (none for a peer).
    pub fn metrics_endpoints(&self) -> Vec<Endpoint> {
        if self.no_metrics || self.system != System::Imgate {
            Vec::new()
        } else if self.metrics.is_empty() {
            vec![Endpoint::at(self.http)]
        } else {
            self.metrics.clone()
        }
    }

    /// Source address of worker `i`: the given list in turn, else 127.0.0.(2 + i) onwards
    /// through 127.0.0.0/8.
    pub fn source_ip(&self, i: usize) -> IpAddr {
        if !self.source_ips.is_empty() {
            return self.source_ips[i % self.source_ips.len()];
        }
        let n = (2 + i as u32) % (1 << 24);
        IpAddr::from([127, (n >> 16) as u8, (n >> 8) as u8, n as u8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Args {
        Args::parse_from(std::iter::once("bench-harness").chain(args.split_whitespace()))
    }

    #[test]
    fn goim_preset_is_one_room_at_40_per_second_in_order() {
        let a = parse("--preset goim --clients 5000 --duration 30 --server-pid 7,8");
        assert_eq!(a.push_kind(), Some(PushKind::Room));
        assert_eq!(a.fixed_rate(), Some(40.0));
        assert_eq!(a.concurrency(), 1);
        assert!(a.ordered());
        assert_eq!(a.server_pid, [7, 8]);
        assert_eq!(a.targets(), ["127.0.0.1:3101".parse().unwrap()]);
    }

    #[test]
    fn single_push_defaults_to_one_user_at_full_speed() {
        let a = parse("--preset single-push");
        assert_eq!(a.clients(), 1);
        assert_eq!(a.push_kind(), Some(PushKind::Mids));
        assert_eq!(a.fixed_rate(), None);
        assert_eq!(a.concurrency(), 16);
        assert!(!a.ordered());
        let fixed = parse("--preset single-push --rate 100 --concurrency 1");
        assert_eq!(fixed.fixed_rate(), Some(100.0));
        assert!(fixed.ordered());
    }

    #[test]
    fn idle_pushes_nothing_and_sources_walk_the_loopback_range() {
        let a = parse("--preset idle --transport ws");
        assert_eq!(a.push_kind(), None);
        assert_eq!(a.targets(), ["127.0.0.1:3102".parse().unwrap()]);
        assert_eq!(a.source_ip(0), "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(a.source_ip(300), "127.0.1.46".parse::<IpAddr>().unwrap());
        let given = parse("--source-ips 127.0.0.9,127.0.0.10");
        assert_eq!(given.source_ip(3), "127.0.0.10".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn metrics_default_to_logic_and_take_one_endpoint_per_comet() {
        let a = parse("--http 127.0.0.1:4111");
        assert_eq!(
            a.metrics_endpoints(),
            [Endpoint::at("127.0.0.1:4111".parse().unwrap())]
        );
        let a = parse(
            "--metrics http://127.0.0.1:3111/metrics --metrics 127.0.0.1:3308,127.0.0.1:3408",
        );
        let urls: Vec<String> = a
            .metrics_endpoints()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:3111/metrics",
                "http://127.0.0.1:3308/metrics",
                "http://127.0.0.1:3408/metrics"
            ]
        );
        assert!(parse("--no-metrics").metrics_endpoints().is_empty());
        assert!(Args::try_parse_from(["bench-harness", "--metrics", "ftp://x:1/"]).is_err());
    }

    #[test]
    fn floor_cpus_are_the_given_sets_or_this_process_s_first_two() {
        let a = parse("--floor --floor-writer-cpus 1 --floor-reader-cpus 0,2-3");
        let (w, r) = a.floor_cpus();
        assert_eq!((w.cpus(), r.cpus()), (&[1][..], &[0, 2, 3][..]));
        let allowed = cpus::allowed();
        let (w, r) = parse("--floor").floor_cpus();
        assert_eq!(w.cpus(), [allowed.cpus()[0]]);
        assert_eq!(r.cpus(), [allowed.nth_wrapping(1).unwrap()]);
        let (w, r) = parse("--floor --no-pin").floor_cpus();
        assert!(w.is_empty() && r.is_empty());
        let (w, _) = parse("--no-pin --floor-writer-cpus 1").floor_cpus();
        assert_eq!(w.cpus(), [1]);
    }
}
