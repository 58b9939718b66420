//! `imgate` itself as a process on free loopback ports: its log lines, its exit, its metrics.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use imgate_testkit::free_port;

const IMGATE: &str = env!("CARGO_BIN_EXE_imgate");

/// An `imgate` process on free loopback ports, its log lines on a channel.
pub struct Imgate {
    child: Child,
    log: Receiver<String>,
    seen: Vec<String>,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub http: SocketAddr,
}

impl Imgate {
    /// Starts `imgate` (development mode: no config, no secret) with `shards` shards, `extra`
    /// arguments and environment `env`, under the io_uring-refusing filter when
    /// `refuse_io_uring`.
    pub fn start(
        refuse_io_uring: bool,
        shards: usize,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Imgate {
        let port = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
        let [tcp, ws, http, comet_link, logic_link]: [SocketAddr; 5] = std::array::from_fn(port);
        let mut command = Command::new(IMGATE);
        command
            .args(["--tcp-bind", &tcp.to_string(), "--ws-bind", &ws.to_string()])
            .args(["--http-bind", &http.to_string()])
            .args(["--comet-link-bind", &comet_link.to_string()])
            .args(["--logic-link-bind", &logic_link.to_string()])
            .args(["--shards", &shards.to_string()])
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            // The suite's own engine switch must not decide what this test checks.
            .env_remove(imgate_comet::IO_ENV)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if refuse_io_uring {
            // SAFETY: refuse_io_uring makes only prctl calls, allowed between fork and exec.
            unsafe { command.pre_exec(imgate_testkit::seccomp::refuse_io_uring) };
        }
        let mut child = command.spawn().expect("imgate starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Imgate {
            child,
            log,
            seen: Vec::new(),
            tcp,
            ws,
            http,
        }
    }

    /// Waits for a log line containing `text`; returns it.
    pub fn wait_log(&mut self, text: &str, timeout: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {text:?} within {timeout:?}; log so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the process to exit (within `timeout`); returns its status and its log.
    pub fn exit_within(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("imgate did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.log.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(line);
        }
        (status, self.seen.join("\n"))
    }

    /// Sends SIGTERM: a graceful stop.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    }

    /// `/readyz`: its status and text.
    pub fn readyz(&self) -> (u16, String) {
        let answer = imgate::client::http::HttpClient::new(self.http)
            .timeout(Duration::from_secs(10))
            .request("GET", "/readyz", &[], b"")
            .expect("/readyz answers");
        (
            answer.status,
            String::from_utf8_lossy(&answer.body).into_owned(),
        )
    }

    pub fn metrics(&self) -> String {
        let answer = imgate::client::http::HttpClient::new(self.http)
            .timeout(Duration::from_secs(10))
            .request("GET", "/metrics", &[], b"")
            .expect("/metrics answers");
        assert_eq!(answer.status, 200);
        String::from_utf8(answer.body).expect("text")
    }
}

impl Drop for Imgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the one sample of `metric` whose labels include `label`.
pub fn sample(metrics: &str, metric: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}
