//! Real servers for tests: a Redis server, a Redis Cluster, a Kafka-protocol broker (nisshi).
//!
//! Each starts on a free loopback port in its own temporary directory, waits until it answers,
//! and is killed when dropped. A missing binary is a test failure with a message saying how to
//! install it (`scripts/test.sh` installs both), never a skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound and released; the window for a clash is tiny).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn temp_dir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "imgate-test-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

fn find_binary(name: &str, env: &str, extra: &[&str], install: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(extra.iter().map(PathBuf::from));
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} is not installed (set {env} or put it on PATH): {install}");
}

/// Waits until `port` accepts a TCP connection.
pub fn wait_for_port(port: u16, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the process has already exited (reaping it).
fn exited(child: &mut Option<Child>) -> bool {
    let gone = child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
    if gone {
        *child = None;
    }
    gone
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Sends one inline Redis command and returns the raw reply.
pub fn redis_command(port: u16, command: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).to_string())
}

/// A redis-server on a loopback port.
pub struct Redis {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    /// Starts a standalone server with no persistence.
    pub fn start() -> Redis {
        Self::start_with(free_port(), &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> Redis {
        let mut r = Redis {
            port,
            dir: temp_dir("redis"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        // A port from `free_port` can be taken by another socket before the server binds it;
        // the server then exits at once: try another port.
        for _ in 0..5 {
            if r.spawn() {
                return r;
            }
            r.port = free_port();
        }
        panic!("redis-server did not start on any of five free ports");
    }

    /// Starts the server; false if it exited at once (its port was taken).
    fn spawn(&mut self) -> bool {
        let bin = find_binary(
            "redis-server",
            "IMGATE_REDIS_SERVER",
            &["/usr/bin/redis-server"],
            "run scripts/test.sh or `apt-get install redis-server`",
        );
        let child = Command::new(bin)
            .current_dir(&self.dir)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis_command(self.port, "PING").is_ok_and(|r| r.starts_with("+PONG")) {
            if exited(&mut self.child) {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: nothing is saved).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the server again on the same port (empty, unless it is a cluster node).
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "could not start again on port {}", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of `n` primaries, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        let nodes: Vec<Redis> = (0..n)
            .map(|_| {
                Redis::start_with(
                    free_port(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ],
                )
            })
            .collect();
        let cli = find_binary(
            "redis-cli",
            "IMGATE_REDIS_CLI",
            &["/usr/bin/redis-cli"],
            "run scripts/test.sh or `apt-get install redis-tools`",
        );
        let addrs: Vec<String> = nodes
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        let out = Command::new(cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            while !redis_command(node.port, "CLUSTER INFO")
                .is_ok_and(|r| r.contains("cluster_state:ok"))
            {
                assert!(Instant::now() < deadline, "cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }
}

/// The Kafka-protocol broker nisshi on a loopback port, with in-memory storage.
pub struct Kafka {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Where scripts/test.sh installs nisshi.
pub fn nisshi_default_path() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/imgate-tools/bin/nisshi")
}

impl Kafka {
    pub fn start() -> Kafka {
        let mut k = Kafka {
            port: free_port(),
            dir: temp_dir("kafka"),
            child: None,
        };
        // As for Redis: a taken port makes the broker exit at once; try another.
        for _ in 0..5 {
            if k.spawn() {
                return k;
            }
            k.port = free_port();
        }
        panic!(
            "nisshi did not start on any of five free ports; log: {:?}",
            k.log_path()
        );
    }

    /// Starts the broker; false if it exited before listening (its port was taken).
    fn spawn(&mut self) -> bool {
        let default = nisshi_default_path();
        let bin = find_binary(
            "nisshi",
            "IMGATE_NISSHI",
            &[default.to_str().unwrap_or_default()],
            "run scripts/install-deps.sh (builds it once per machine)",
        );
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(bin)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://nisshi/",
                "--group-initial-rebalance-delay",
                "0s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.join("nisshi.log")).expect("log file"),
            ))
            .spawn()
            .expect("nisshi starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if exited(&mut self.child) {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "nisshi did not listen on port {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log, for failure messages.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("nisshi.log")
    }

    /// Kills the broker (in-memory storage: its topics are gone).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the broker again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "could not start again on port {}", self.port);
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Path of this repository's root (for tests that run scripts).
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_starts_restarts_and_answers() {
        let mut r = Redis::start();
        assert!(redis_command(r.port(), "SET a 1")
            .unwrap()
            .starts_with("+OK"));
        r.restart();
        assert!(
            redis_command(r.port(), "GET a").unwrap().starts_with("$-1"),
            "restart loses data"
        );
    }

    #[test]
    fn a_taken_port_moves_redis_to_another() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let r = Redis::start_with(port, &[]);
        assert_ne!(r.port(), port);
        assert!(redis_command(r.port(), "PING")
            .unwrap()
            .starts_with("+PONG"));
    }

    #[test]
    fn redis_cluster_forms() {
        let c = RedisCluster::start(3);
        assert_eq!(c.urls().len(), 3);
        let info = redis_command(c.nodes[0].port(), "CLUSTER INFO").unwrap();
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }

    #[test]
    fn kafka_broker_listens() {
        let k = Kafka::start();
        assert!(
            TcpStream::connect(k.bootstrap()).is_ok(),
            "log: {:?}",
            std::fs::read_to_string(k.log_path())
        );
    }
}
