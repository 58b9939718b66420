//! Real servers for tests: a Redis server, a Redis Cluster, a Kafka-protocol broker (nisshi),
//! a PostgreSQL server to give that broker durable storage, and nats-server with JetStream.
//!
//! Each starts on a free loopback port in its own temporary directory, waits until it answers,
//! and is killed when dropped. A missing binary is a test failure with a message saying how to
//! install it (`scripts/install-deps.sh`, which `scripts/test.sh` runs, installs them all),
//! never a skip.

#[cfg(feature = "bus")]
pub mod bus;
pub mod seccomp;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A free loopback port (bound and released; the window for a clash is tiny).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A fresh directory for one server, removed with it.
fn temp_dir(what: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("imgate-test-{what}-"))
        .tempdir()
        .expect("create a temporary directory")
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
    dir: TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

/// Redis arguments for no persistence: a restart comes back empty.
const REDIS_EPHEMERAL: &[&str] = &["--save", "", "--appendonly", "no"];

/// Redis arguments for an append-only file synced before every reply: what Redis
/// acknowledged survives SIGKILL and a restart.
const REDIS_DURABLE: &[&str] = &[
    "--save",
    "",
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
];

impl Redis {
    /// Starts a standalone server with no persistence.
    pub fn start() -> Redis {
        Self::start_with(free_port(), REDIS_EPHEMERAL)
    }

    /// Starts a standalone server that writes every change to an append-only file, fsynced
    /// before it answers, so a restart (even after SIGKILL) comes back with its data.
    pub fn start_durable() -> Redis {
        Self::start_with(free_port(), REDIS_DURABLE)
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
            .current_dir(self.dir.path())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
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

    /// Starts the server again on the same port and in the same directory: empty, unless it
    /// was started with [`Redis::start_durable`] (or is a cluster node, which keeps its
    /// `nodes.conf`).
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "could not start again on port {}", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
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
                let args = [
                    REDIS_EPHEMERAL,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ],
                ]
                .concat();
                Redis::start_with(free_port(), &args)
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

/// The Kafka-protocol broker nisshi on a loopback port, with in-memory storage
/// ([`Kafka::start`]) or durable storage in PostgreSQL ([`Kafka::start_durable`]).
pub struct Kafka {
    port: u16,
    dir: TempDir,
    /// `--storage-engine`: `memory://nisshi/` or a `postgres://` URL.
    storage: String,
    child: Option<Child>,
}

/// Where scripts/test.sh installs nisshi.
pub fn nisshi_default_path() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/imgate-tools/bin/nisshi")
}

impl Kafka {
    /// Starts a broker that keeps its log in memory: a restart loses every topic, message
    /// and committed offset.
    pub fn start() -> Kafka {
        Self::start_with_storage("memory://nisshi/".into())
    }

    /// Starts a broker that keeps its log, groups and committed offsets in `postgres`: a
    /// restart (even after SIGKILL) comes back with everything it acknowledged. The broker
    /// creates its schema in the database itself.
    pub fn start_durable(postgres: &Postgres) -> Kafka {
        Self::start_with_storage(postgres.url())
    }

    fn start_with_storage(storage: String) -> Kafka {
        let mut k = Kafka {
            port: free_port(),
            dir: temp_dir("kafka"),
            storage,
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
            "nisshi did not start on any of five free ports with storage {}; its log:\n{}",
            k.storage,
            k.log()
        );
    }

    /// The nisshi binary: `IMGATE_NISSHI`, else on `PATH`, else where install-deps puts it.
    fn binary() -> PathBuf {
        let default = nisshi_default_path();
        find_binary(
            "nisshi",
            "IMGATE_NISSHI",
            &[default.to_str().unwrap_or_default()],
            "run scripts/install-deps.sh (builds it once per machine)",
        )
    }

    /// Starts the broker; false if it exited before listening (its port was taken).
    fn spawn(&mut self) -> bool {
        let bin = Self::binary();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(bin)
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &self.storage,
                "--group-initial-rebalance-delay",
                "0s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.path().join("nisshi.log")).expect("log file"),
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
        self.dir.path().join("nisshi.log")
    }

    /// The text of the broker's log since it was last (re)started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the broker (SIGKILL). With in-memory storage its topics are gone.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the broker again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "nisshi could not start again on port {}; its log:\n{}",
            self.port,
            self.log()
        );
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nats-server with JetStream on a loopback port, storing in a directory of its own that
/// survives [`Nats::restart`] (so a restart comes back with its streams, consumers and
/// key-value buckets), with its monitoring endpoint on a second port ([`Nats::jsz`]).
pub struct Nats {
    port: u16,
    monitor_port: u16,
    dir: TempDir,
    /// More options, kept for restarts.
    args: Vec<String>,
    child: Option<Child>,
}

impl Nats {
    /// Starts a server with JetStream enabled.
    pub fn start() -> Nats {
        Self::start_with(&[])
    }

    /// Starts a server with JetStream enabled and these more options (`--user`, `--tls`, …).
    pub fn start_with(args: &[&str]) -> Nats {
        Self::start_in(
            temp_dir("nats"),
            args.iter().map(|a| a.to_string()).collect(),
        )
    }

    /// Starts a server with JetStream enabled and `config` (nats-server's configuration
    /// format: `ping_interval`, limits, …) as its configuration file.
    pub fn start_with_config(config: &str) -> Nats {
        let dir = temp_dir("nats");
        let file = dir.path().join("nats.conf");
        std::fs::write(&file, config).expect("nats-server configuration written");
        Self::start_in(dir, vec!["-c".into(), file.display().to_string()])
    }

    fn start_in(dir: TempDir, args: Vec<String>) -> Nats {
        let mut n = Nats {
            port: free_port(),
            monitor_port: free_port(),
            dir,
            args,
            child: None,
        };
        // As for Redis: a taken port makes the server exit at once; try others.
        for _ in 0..5 {
            if n.spawn() {
                return n;
            }
            n.port = free_port();
            n.monitor_port = free_port();
        }
        panic!(
            "nats-server did not start on any of five free ports; its log:\n{}",
            n.log()
        );
    }

    /// `IMGATE_NATS_SERVER`, else on `PATH`, else where Debian's package puts it (`/usr/sbin`,
    /// which is not on every user's `PATH`).
    fn binary() -> PathBuf {
        find_binary(
            "nats-server",
            "IMGATE_NATS_SERVER",
            &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
            "run scripts/install-deps.sh or `apt-get install nats-server`",
        )
    }

    /// Starts the server; false if it exited before listening (a port was taken).
    fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(Self::binary())
            .current_dir(self.dir.path())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Ready once the monitoring endpoint says JetStream is enabled (the client port may
        // open before JetStream has recovered its store).
        while !self.jsz().is_ok_and(|j| j.contains("\"config\"")) {
            if exited(&mut self.child) {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} did not enable JetStream within 20 s; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        wait_for_port(self.port, Duration::from_secs(10), "nats-server");
        true
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream report of the monitoring endpoint (`/jsz`, with streams and consumers),
    /// as JSON text: what an operator's `curl` sees.
    pub fn jsz(&self) -> std::io::Result<String> {
        http_get(self.monitor_port, "/jsz?streams=true&consumers=true")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// The server's log (every run of it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server as `systemctl stop` does: SIGTERM, then SIGKILL if it has not exited
    /// within 10 s; a server stopped this way has written out its store.
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(&mut self.child);
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the server again on the same ports, without its store: every stream, consumer
    /// and key-value bucket is gone, as on a new machine.
    pub fn restart_empty(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(self.dir.path().join("store"));
        assert!(
            self.spawn(),
            "nats-server could not start again on port {}; its log:\n{}",
            self.port,
            self.log()
        );
    }

    /// Starts the server again on the same ports and store.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "nats-server could not start again on port {}; its log:\n{}",
            self.port,
            self.log()
        );
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// One plain HTTP/1.0 GET on a loopback port; the body.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(std::io::Error::other(format!("GET {path}: {answer:?}"))),
    }
}

/// A PostgreSQL server on a loopback port (no Unix socket), in a data directory of its own
/// that survives [`Postgres::restart`]; trust authentication for the `postgres` user.
///
/// PostgreSQL refuses to run as root: when the tests run as root, the server runs as the
/// `postgres` system user (which Debian's package creates) and owns its data directory.
pub struct Postgres {
    port: u16,
    dir: TempDir,
    bin: PathBuf,
    /// uid and gid the server runs as, when the tests run as root.
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

/// The directory holding `initdb`, `postgres`, `pg_isready` and `psql`: `IMGATE_POSTGRES_BIN`,
/// else the one `initdb` on `PATH` lives in, else
/// the newest `/usr/lib/postgresql/<version>/bin` (where Debian puts them, off `PATH`).
fn postgres_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IMGATE_POSTGRES_BIN") {
        return PathBuf::from(dir);
    }
    // An `initdb` on PATH may be a link into the real directory, which also holds the
    // client tools (`pg_isready`, `psql`): follow it.
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = std::env::split_paths(&path)
        .filter_map(|d| std::fs::canonicalize(d.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|d| d.join("postgres").is_file() && d.join("pg_isready").is_file())
    {
        return dir;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (set IMGATE_POSTGRES_BIN to the directory holding \
             initdb and postgres, or put them on PATH): run scripts/install-deps.sh or \
             `apt-get install postgresql`"
        ),
    }
}

/// The effective uid of this process (from /proc, to need no libc binding).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The uid and gid of the `postgres` system user.
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => (uid, gid),
        _ => panic!(
            "the tests run as root and PostgreSQL refuses to: a `postgres` system user is \
             needed to run it (run scripts/install-deps.sh or `apt-get install postgresql`)"
        ),
    }
}

impl Postgres {
    /// Creates a database cluster in a temporary directory and starts the server on it.
    pub fn start() -> Postgres {
        use std::os::unix::process::CommandExt;
        let bin = postgres_bin_dir();
        let user = (effective_uid() == Some(0)).then(postgres_user);
        let dir = temp_dir("postgres");
        if user.is_some() {
            // The server, running as the postgres user, must reach its data directory.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("open the temporary directory to the postgres user");
        }
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("create the data directory");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))
                .expect("give the data directory to the postgres user");
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .current_dir(dir.path())
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "--pgdata"])
            .arg(&data);
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            port: free_port(),
            dir,
            bin,
            user,
            child: None,
        };
        // As for Redis: a taken port makes the server exit at once; try another.
        for _ in 0..5 {
            if pg.spawn() {
                return pg;
            }
            pg.port = free_port();
        }
        panic!(
            "postgres did not start on any of five free ports; its log:\n{}",
            pg.log()
        );
    }

    /// Starts the server; false if it exited before accepting connections (port taken).
    fn spawn(&mut self) -> bool {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(self.log_path()).expect("log file");
        if let Some((uid, gid)) = self.user {
            let _ = std::os::unix::fs::chown(self.log_path(), Some(uid), Some(gid));
        }
        let mut server = Command::new(self.bin.join("postgres"));
        server
            .current_dir(self.dir.path())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            // Durable against a killed process (the OS keeps the written pages), which is
            // what the tests need; fsync would only guard against the machine crashing.
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if let Some((uid, gid)) = self.user {
            server.uid(uid).gid(gid);
        }
        self.child = Some(server.spawn().expect("postgres starts"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ready() {
            if exited(&mut self.child) {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "postgres on port {} did not accept connections within 30 s; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Whether the server accepts connections (not merely listens: it may still be starting).
    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["--quiet", "--host=127.0.0.1", "--timeout=2"])
            .arg(format!("--port={}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server's log since it was last (re)started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs one SQL statement with `psql` and returns its unaligned output.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "--no-psqlrc",
                "--tuples-only",
                "--no-align",
                "--command",
                sql,
            ])
            .arg(self.url())
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server: a fast shutdown with `pg_ctl` (clients are disconnected, everything
    /// committed is kept), SIGKILL if that has not ended it within 10 s.
    pub fn stop(&mut self) {
        use std::os::unix::process::CommandExt;
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let mut pg_ctl = Command::new(self.bin.join("pg_ctl"));
        pg_ctl
            .current_dir(self.dir.path())
            .args(["stop", "--mode=fast", "--wait", "--timeout=10", "--pgdata"])
            .arg(self.dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.user {
            pg_ctl.uid(uid).gid(gid);
        }
        let _ = pg_ctl.status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(&mut self.child);
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "postgres could not start again on port {}; its log:\n{}",
            self.port,
            self.log()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
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
        let r = Redis::start_with(port, REDIS_EPHEMERAL);
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
    fn durable_redis_keeps_its_data_across_a_kill() {
        let mut r = Redis::start_durable();
        assert!(redis_command(r.port(), "SET a 1")
            .unwrap()
            .starts_with("+OK"));
        r.restart();
        assert!(
            redis_command(r.port(), "GET a").unwrap().contains("\r\n1"),
            "the durable server came back without its data"
        );
    }

    #[test]
    fn postgres_starts_and_keeps_its_data_across_a_restart() {
        let mut pg = Postgres::start();
        pg.query("CREATE TABLE t (n int); INSERT INTO t VALUES (7)");
        pg.restart();
        assert_eq!(pg.query("SELECT n FROM t"), "7");
    }

    /// Runs `nisshi topic <args>` against the broker and returns its output.
    fn topic_command(k: &Kafka, args: &[&str]) -> String {
        let out = Command::new(Kafka::binary())
            .current_dir(k.dir.path())
            .arg("topic")
            .args(args)
            .args(["--broker", &format!("tcp://{}", k.bootstrap())])
            .output()
            .expect("nisshi topic runs");
        assert!(
            out.status.success(),
            "nisshi topic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    #[test]
    fn a_durable_broker_keeps_its_topics_across_a_kill() {
        let pg = Postgres::start();
        let mut k = Kafka::start_durable(&pg);
        topic_command(&k, &["create", "kept", "--partitions", "2"]);
        k.restart();
        let topics = topic_command(&k, &["list"]);
        assert!(
            topics.contains("kept"),
            "topics after the restart: {topics}"
        );
    }

    #[test]
    fn nats_keeps_its_store_across_a_restart() {
        let mut n = Nats::start();
        let jsz = n.jsz().unwrap();
        assert!(jsz.contains("\"streams\": 0"), "{jsz}");
        n.restart();
        assert!(TcpStream::connect(("127.0.0.1", n.port())).is_ok());
        assert!(n.jsz().is_ok(), "monitoring answers after the restart");
        n.kill();
        assert!(TcpStream::connect(("127.0.0.1", n.port())).is_err());
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
