//! The `imgate` binary itself: `imgate sub` against a running gateway, and `imgate` started
//! as a process on the ports its command line names, stopped with SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imgate_testkit::free_port;
use support::*;

const IMGATE: &str = env!("CARGO_BIN_EXE_imgate");

#[test]
fn sub_prints_pushed_messages_and_stops_after_count() {
    let g = gateway();
    let mut sub = Command::new(IMGATE)
        .args([
            "sub",
            "--addr",
            &g.ws_addr().to_string(),
            "--ws",
            "--mid",
            "77",
            "--key",
            "sub-77",
            "--room",
            "live://sub",
            "--count",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("imgate sub starts");
    // The subscriber is ready once its session exists. Probe by key: pushes by mid are stored
    // and would all arrive once it connects.
    eventually(
        Duration::from_secs(10),
        "imgate sub to authenticate",
        || {
            push(
                g.http_addr(),
                "/goim/push/keys?operation=1000&keys=sub-77",
                "probe",
            )["data"]["connections"]
                == 1
        },
    );
    push(
        g.http_addr(),
        "/goim/push/room?operation=1001&type=live&room=sub",
        "{\"room\":true}",
    );
    let status = wait_with_timeout(&mut sub, Duration::from_secs(10));
    assert!(status.success(), "imgate sub exited with {status}");
    let out = std::io::read_to_string(sub.stdout.take().unwrap()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "output: {out}");
    assert_eq!(lines[0], "op=1000 seq=0 body=probe");
    // Probes sent before it authenticated reached nobody, so the room push comes next.
    assert_eq!(lines[1], "op=1001 seq=0 body={\"room\":true}");
    g.shutdown();
}

fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_binary_serves_goim_clients_and_stops_on_sigterm() {
    let (tcp, ws, http_port, comet_link, logic_link) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let mut child = Command::new(IMGATE)
        .args([
            "--tcp-bind",
            &format!("127.0.0.1:{tcp}"),
            "--ws-bind",
            &format!("127.0.0.1:{ws}"),
            "--http-bind",
            &format!("127.0.0.1:{http_port}"),
            "--comet-link-bind",
            &format!("127.0.0.1:{comet_link}"),
            "--logic-link-bind",
            &format!("127.0.0.1:{logic_link}"),
            "--shards",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("imgate starts");
    // Wait for the start-up log line that lists the listeners.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("imgate logs its listeners");
        if line.contains("logic http") {
            break;
        }
    }
    let http_addr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let tcp_addr = format!("127.0.0.1:{tcp}").parse().unwrap();
    let mut c = client(tcp_addr, imgate::client::Transport::Tcp, 5, "", "", &[1000]);
    push(
        http_addr,
        "/goim/push/mids?operation=1000&mids=5",
        "from the binary",
    );
    assert_eq!(next_push(&mut c).1, "from the binary");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_with_timeout(&mut child, Duration::from_secs(15));
    assert!(status.success(), "imgate exited with {status}");
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "clients are disconnected at shutdown"
    );
}

/// Starts `imgate` with `args` and returns (exit status, stderr), within 20 s.
fn run_to_exit(args: &[String]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(IMGATE)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("imgate starts");
    let status = wait_with_timeout(&mut child, Duration::from_secs(20));
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    (status, stderr)
}

/// A second `imgate` on the ports of a first says which listener failed and why on one line,
/// never an empty cause.
#[test]
fn a_start_up_failure_names_what_failed_and_why_and_exits_non_zero() {
    let ports: Vec<String> = (0..5).map(|_| free_port().to_string()).collect();
    let listen = |flag: &str, port: &str| [flag.to_string(), format!("127.0.0.1:{port}")];
    let args: Vec<String> = [
        listen("--tcp-bind", &ports[0]),
        listen("--ws-bind", &ports[1]),
        listen("--http-bind", &ports[2]),
        listen("--comet-link-bind", &ports[3]),
        listen("--logic-link-bind", &ports[4]),
    ]
    .concat();
    let mut first = Command::new(IMGATE)
        .args(&args)
        .args(["--shards", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the first imgate starts");
    imgate_testkit::wait_for_port(
        ports[2].parse().unwrap(),
        Duration::from_secs(20),
        "the first imgate's HTTP API",
    );

    let (status, stderr) = run_to_exit(&args);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let http = format!("127.0.0.1:{}", ports[2]);
    assert!(
        stderr.contains("starting logic")
            && stderr.contains(&http)
            && stderr.contains("Address already in use"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Caused by") && !stderr.contains("backtrace"),
        "{stderr}"
    );

    // comet on its own, its client port held by a socket that does not share it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = held.local_addr().unwrap().to_string();
    let comet_args: Vec<String> = [
        vec![
            "comet".to_string(),
            "--join".into(),
            format!("127.0.0.1:{}", ports[4]),
        ],
        listen("--tcp-bind", held.rsplit(':').next().unwrap()).to_vec(),
        listen("--ws-bind", "0").to_vec(),
        listen("--comet-link-bind", "0").to_vec(),
    ]
    .concat();
    let (status, stderr) = run_to_exit(&comet_args);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("starting comet")
            && stderr.contains(&held)
            && stderr.contains("Address already in use"),
        "{stderr}"
    );
    let _ = first.kill();
    let _ = first.wait();
}

/// A bad configuration stops imgate before it binds anything, with one line that names the
/// file, the option and what is wrong with it.
#[test]
fn a_bad_configuration_names_the_file_and_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgate.toml");
    let file_arg = file.display().to_string();
    for (text, expected) in [
        (
            "[comet]\nmax_body = 0\n",
            "comet.max_body: must be between 1 and 16 MiB",
        ),
        (
            "[comet]\ntcp_bind = [\"localhost:3101\"]\n",
            "comet.tcp_bind: invalid socket address syntax",
        ),
        (
            "[store]\nkind = \"postgres\"\n",
            "store.kind: unknown variant `postgres`",
        ),
        (
            "[logic]\nheartbeat = \"4\"\n",
            "logic.heartbeat: invalid value",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let (status, stderr) = run_to_exit(&["--config".into(), file_arg.clone()]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("Error: "))
            .unwrap_or_else(|| panic!("no error line in {stderr:?}"));
        assert!(
            line.starts_with(&format!("Error: {file_arg}: {expected}")),
            "{line}"
        );
    }
}
