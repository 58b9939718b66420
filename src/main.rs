//! `imgate`: run the whole gateway, one of its services, or a test subscriber.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use imgate::client::{Client, ClientError, TlsClient, Transport};
use imgate::standalone::{Gateway, Services};
use imgate_shared::config::{parse_duration, BusConfig, Config, LogFormat};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "imgate",
    version,
    about = "goim-compatible IM and push gateway",
    // `imgate --tcp-bind X comet` would otherwise ignore the options before `comet`.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    service: ServiceArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run only the connection server; it joins logic over the cluster link.
    Comet(ServiceArgs),
    /// Run logic (with job beside it while the bus is the embedded one).
    Logic(ServiceArgs),
    /// Run job alone (needs a bus shared between processes).
    Job(ServiceArgs),
    /// Connect as a goim client and print every pushed message as a line.
    Sub(SubArgs),
    /// Mint a signed client token (HS256) from the configured secret, for trying things.
    Token(TokenArgs),
    /// Print a running gateway's figures (what its /status page shows) in the terminal.
    Status(StatusArgs),
}

#[derive(Args)]
struct StatusArgs {
    /// logic's HTTP address.
    #[arg(long, default_value = "127.0.0.1:3111")]
    http: SocketAddr,
    /// The API key, when the gateway has one.
    #[arg(long, env = "IMGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Time between the two readings the rates are computed from.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// User id the token is for (its `sub`).
    #[arg(long)]
    mid: i64,
    /// Rooms the token allows joining, comma-separated (default: any).
    #[arg(long, value_delimiter = ',')]
    rooms: Option<Vec<String>>,
    /// How long the token is valid.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    ttl: Duration,
}

#[derive(Args, Clone, Default)]
struct ServiceArgs {
    /// TOML configuration file (see imgate.example.toml); defaults apply without one.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// comet TCP listen address (repeatable).
    #[arg(long)]
    tcp_bind: Vec<SocketAddr>,
    /// comet WebSocket listen address (repeatable).
    #[arg(long)]
    ws_bind: Vec<SocketAddr>,
    /// comet cluster-link listen address (job delivers pushes here).
    #[arg(long)]
    comet_link_bind: Option<SocketAddr>,
    /// logic HTTP API listen address.
    #[arg(long)]
    http_bind: Option<SocketAddr>,
    /// logic cluster-link listen address (comets connect here).
    #[arg(long)]
    logic_link_bind: Option<SocketAddr>,
    /// logic cluster-link `host:port` a comet joins (repeatable).
    #[arg(long)]
    join: Vec<String>,
    /// comet id in the registry.
    #[arg(long)]
    comet_id: Option<String>,
    /// Number of comet shards (0 = one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// What comet's event loops park in: auto, io_uring or epoll (overrides comet.io; the
    /// environment variable IMGATE_COMET_IO overrides both).
    #[arg(long)]
    comet_io: Option<imgate_shared::config::IoEngine>,
    /// HS256 secret clients' tokens are signed with (overrides auth.jwt_secret).
    #[arg(long, env = "IMGATE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Key the business API requires as `Authorization: Bearer` (overrides auth.api_key).
    #[arg(long, env = "IMGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Args)]
struct SubArgs {
    /// comet address [default: 127.0.0.1:3101, or 127.0.0.1:3102 with --ws].
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Speak WebSocket (ws://ADDR/sub) instead of raw TCP.
    #[arg(long)]
    ws: bool,
    /// Connect over TLS (wss:// with --ws), trusting the certificates of this PEM file.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Server name the TLS certificate must carry.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
    /// User id.
    #[arg(long, default_value_t = 0)]
    mid: i64,
    /// Connection key; empty lets logic assign one.
    #[arg(long, default_value = "")]
    key: String,
    /// Room to join, `type://id`.
    #[arg(long, default_value = "")]
    room: String,
    /// Business ops to receive for key/mid pushes and broadcasts, comma-separated.
    #[arg(long, default_value = "1000,1001,1002", value_delimiter = ',')]
    accepts: Vec<i32>,
    /// Exit after this many pushed messages (0 = run until interrupted).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Heartbeat interval.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Signed token (from `imgate token`), for deployments that require one.
    #[arg(long)]
    token: Option<String>,
}

impl ServiceArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if !self.tcp_bind.is_empty() {
            config.comet.tcp_bind = self.tcp_bind.clone();
        }
        if !self.ws_bind.is_empty() {
            config.comet.ws_bind = self.ws_bind.clone();
        }
        if !self.join.is_empty() {
            config.comet.logic_addrs = self.join.clone();
        }
        if let Some(addr) = self.comet_link_bind {
            config.comet.link_bind = addr;
        }
        if let Some(addr) = self.http_bind {
            config.logic.http_bind = addr;
        }
        if let Some(addr) = self.logic_link_bind {
            config.logic.link_bind = addr;
        }
        if let Some(id) = &self.comet_id {
            config.comet.id = Some(id.clone());
        }
        if let Some(shards) = self.shards {
            config.comet.shards = shards;
        }
        if let Some(io) = self.comet_io {
            config.comet.io = io;
        }
        // An empty variable, like an empty option in a file, sets nothing.
        for (value, target) in [
            (&self.jwt_secret, &mut config.auth.jwt_secret),
            (&self.api_key, &mut config.auth.api_key),
        ] {
            if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
                *target = Some(value.clone());
            }
        }
        if !self.configured(&config) {
            // Development mode: the demo is what a newcomer opens first.
            config.logic.demo = true;
        }
        config.validate()?;
        Ok(config)
    }

    /// A config file, or a secret or API key in the environment, makes a configured
    /// deployment; without any, imgate runs in goim's development mode.
    fn configured(&self, config: &Config) -> bool {
        let auth = &config.auth;
        self.config.is_some() || auth.tokens_required() || auth.api_key.is_some()
    }

    /// Secure by default: a configured deployment (a config file, or a secret or API key in
    /// the environment) runs logic only with signed tokens and an API key, unless its config
    /// says `auth.insecure = true`. Returns whether this is goim's insecure development mode.
    fn check_auth(&self, config: &Config) -> anyhow::Result<bool> {
        let auth = &config.auth;
        if !self.configured(config) || auth.insecure {
            return Ok(true);
        }
        if !auth.clients_verified() || auth.api_key.is_none() {
            bail!(
                "a configured deployment needs signed client tokens and an API key: set \
                 auth.jwt_secret (or IMGATE_JWT_SECRET, or auth.jwt_public_key_file, or a \
                 connect hook, auth.connect_url) and auth.api_key (or IMGATE_API_KEY), or say \
                 auth.insecure = true to run goim's trust model"
            );
        }
        Ok(false)
    }
}

/// Turns transparent huge pages off for this process unless `IMGATE_THP=1`: mimalloc would
/// otherwise back its heap with 2 MiB pages, and many small per-connection allocations then
/// cost about 0.5 KB more RSS per idle connection (BENCHMARKS.md, per-connection memory).
fn disable_transparent_huge_pages() {
    if std::env::var_os("IMGATE_THP").is_some_and(|v| v == "1") {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and touches no memory of ours.
    let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if done != 0 {
        tracing::debug!(
            "could not turn transparent huge pages off: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs the command; any error is printed on one line that names what failed and why, and the
/// process exits with status 1.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", imgate::describe_error(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr as `log.format` says, at the level `RUST_LOG` says (default info).
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads a service's configuration and starts logging as it says.
fn load(args: &ServiceArgs) -> anyhow::Result<Config> {
    let config = args.load()?;
    init_logging(config.log.format);
    log_panics();
    Ok(config)
}

/// Panics go to the log, at most one every 10 s (with a count of the ones held back), instead
/// of the default hook's lines on stderr for each: comet survives a connection's panic and
/// counts every one (`imgate_task_panics_total`), so a panic that client input can trigger
/// must not flood the log. A panic that ends the process is logged on its own line too.
fn log_panics() {
    use imgate_shared::log_limit::RateLimit;
    std::panic::set_hook(Box::new(|info| {
        static LOGGED: RateLimit = RateLimit::per_secs(10);
        if let Some(suppressed) = LOGGED.check() {
            let thread = std::thread::current();
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(
                suppressed,
                thread = thread.name().unwrap_or("unnamed"),
                "panic at {at}: {message}"
            );
        }
    }));
}

fn run() -> anyhow::Result<()> {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    let only = |comet, logic, job| Services { comet, logic, job };
    let mut insecure = false;
    // Only the services wait for a signal; `imgate sub` keeps the default Ctrl-C.
    let serving = matches!(
        cli.command,
        None | Some(Command::Comet(_) | Command::Logic(_) | Command::Job(_))
    );
    let stop = if serving {
        Some(StopSignals::register()?)
    } else {
        None
    };
    let gateway = match cli.command {
        None => {
            let config = load(&cli.service)?;
            insecure = cli.service.check_auth(&config)?;
            Gateway::start(config)?
        }
        Some(Command::Comet(args)) => Gateway::run(load(&args)?, only(true, false, false))?,
        Some(Command::Logic(args)) => {
            let config = load(&args)?;
            insecure = args.check_auth(&config)?;
            // The embedded bus only connects logic and job inside one process.
            let job = matches!(config.bus, BusConfig::Embedded(_));
            if job {
                tracing::info!("bus is embedded: job runs inside this logic process");
            }
            Gateway::run(config, only(false, true, job))?
        }
        Some(Command::Job(args)) => {
            let config = load(&args)?;
            if matches!(config.bus, BusConfig::Embedded(_)) {
                bail!(
                    "job needs a bus shared between processes; with bus.kind = \"embedded\" job \
                     runs inside the logic process (`imgate logic` or `imgate`)"
                );
            }
            Gateway::run(config, only(false, false, true))?
        }
        Some(Command::Sub(args)) => {
            init_logging(LogFormat::Text);
            return subscribe(&args);
        }
        Some(Command::Token(args)) => return mint_token(&args),
        Some(Command::Status(args)) => {
            return imgate::status::print(&args.http, args.api_key.as_deref(), args.interval)
        }
    };
    for line in gateway.describe() {
        tracing::info!("{line}");
    }
    if insecure {
        tracing::warn!(
            "INSECURE development mode: clients are trusted (goim's unsigned JSON auth: any \
             client may claim any mid) and the HTTP API is open; set IMGATE_JWT_SECRET and \
             IMGATE_API_KEY (or auth.* in a config file) to require signed tokens and an API key"
        );
    }
    if let Some(stop) = stop {
        stop.wait();
    }
    tracing::info!("shutting down");
    gateway.shutdown();
    Ok(())
}

/// SIGINT and SIGTERM, registered before the services start: a process that runs out of file
/// descriptors under load can still be stopped.
struct StopSignals {
    runtime: tokio::runtime::Runtime,
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn register() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (interrupt, terminate) = runtime.block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })?;
        Ok(StopSignals {
            runtime,
            interrupt,
            terminate,
        })
    }

    /// Waits for either signal.
    fn wait(mut self) {
        self.runtime.block_on(async {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        });
    }
}

fn mint_token(args: &TokenArgs) -> anyhow::Result<()> {
    let config = args.service.load()?;
    let Some(secret) = &config.auth.jwt_secret else {
        bail!("no secret to sign with: set IMGATE_JWT_SECRET or auth.jwt_secret");
    };
    let token =
        imgate_logic::mint_hs256(secret.as_bytes(), args.mid, args.rooms.clone(), args.ttl)?;
    println!("{token}");
    Ok(())
}

fn subscribe(args: &SubArgs) -> anyhow::Result<()> {
    let tls = args
        .tls_ca
        .as_ref()
        .map(|ca| TlsClient::from_ca_file(ca, &args.tls_name))
        .transpose()?;
    // goim's ports: 3101 TCP, 3102 ws, 3103 wss; TLS TCP has no goim port, so --addr it.
    let (transport, default_port) = match (args.ws, tls.is_some()) {
        (true, false) => (Transport::WebSocket, 3102),
        (true, true) => (Transport::WebSocket, 3103),
        (false, _) => (Transport::Tcp, 3101),
    };
    let addr = args
        .addr
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], default_port)));
    let mut client = Client::connect_with(addr, transport, tls.as_ref())
        .with_context(|| format!("connecting to {addr}"))?;
    let mut auth = serde_json::json!({
        "mid": args.mid,
        "key": args.key,
        "room_id": args.room,
        "platform": "cli",
        "accepts": args.accepts,
    });
    if let Some(token) = &args.token {
        auth["token"] = serde_json::json!(token);
    }
    client.auth(&auth.to_string()).context("authenticating")?;
    eprintln!("authenticated to {addr} as mid {}", args.mid);
    let mut next_heartbeat = Instant::now();
    let mut seq = 1;
    let mut printed = 0u64;
    loop {
        if Instant::now() >= next_heartbeat {
            client.send(1, imgate_shared::frame::op::HEARTBEAT, seq, &[])?;
            seq += 1;
            next_heartbeat = Instant::now() + args.heartbeat;
        }
        let wait = next_heartbeat.saturating_duration_since(Instant::now());
        match client.recv(wait) {
            Ok(frame) if frame.op == imgate_shared::frame::op::HEARTBEAT_REPLY => {
                let online = frame
                    .body
                    .get(..4)
                    .map_or(0, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                eprintln!("heartbeat reply: room online {online}");
            }
            Ok(frame) => {
                println!(
                    "op={} seq={} body={}",
                    frame.op,
                    frame.seq,
                    String::from_utf8_lossy(&frame.body)
                );
                printed += 1;
                if args.count > 0 && printed >= args.count {
                    return Ok(());
                }
            }
            Err(ClientError::Timeout) => {}
            Err(e) => return Err(e).context("connection ended"),
        }
    }
}
