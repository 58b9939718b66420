//! `tuning/apply.sh` and `tuning/check.sh` on a sysctl tree of their own (`SYSCTL_ROOT`), so
//! the host is left alone: widening the ephemeral port range must reserve imgate's ports, or an
//! outgoing connection could hold 3101 or 3111 and the next imgate start would fail to bind;
//! check.sh must notice when they are not reserved.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fake `/proc/sys` with what the scripts read, as a freshly booted host has it.
struct SysctlTree {
    root: PathBuf,
    /// Holds `root`; removed with the tree.
    _dir: tempfile::TempDir,
}

impl SysctlTree {
    fn new(name: &str) -> SysctlTree {
        let dir = tempfile::Builder::new()
            .prefix(&format!("imgate-tuning-{name}-"))
            .tempdir()
            .unwrap();
        let tree = SysctlTree {
            root: dir.path().to_path_buf(),
            _dir: dir,
        };
        for (key, value) in [
            ("fs.file-max", "9223372036854775807"),
            ("fs.nr_open", "1048576"),
            ("net.ipv4.ip_local_port_range", "32768\t60999"),
            ("net.ipv4.ip_local_reserved_ports", ""),
            ("net.core.somaxconn", "4096"),
            ("net.ipv4.tcp_max_syn_backlog", "2048"),
            ("net.core.netdev_max_backlog", "1000"),
            ("net.ipv4.tcp_mem", "188232\t250979\t376464"),
            ("net.ipv4.tcp_rmem", "4096\t131072\t6291456"),
            ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
            ("net.ipv4.tcp_tw_reuse", "2"),
        ] {
            tree.set(key, value);
        }
        tree
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.replace('.', "/"))
    }

    fn set(&self, key: &str, value: &str) {
        let path = self.path(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{value}\n")).unwrap();
    }

    fn get(&self, key: &str) -> String {
        std::fs::read_to_string(self.path(key))
            .unwrap()
            .trim()
            .to_string()
    }

    fn run(&self, script: &str, args: &[&str]) -> (bool, String) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tuning")
            .join(script);
        let out: Output = Command::new("bash")
            .arg(script)
            .args(args)
            .env("SYSCTL_ROOT", &self.root)
            .env("IMGATE_SYSCTL_CONF", self.root.join("90-imgate.conf"))
            .output()
            .expect("bash runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// check.sh's line about the reserved ports.
fn reserved_line(output: &str) -> &str {
    output
        .lines()
        .find(|l| l.contains("net.ipv4.ip_local_reserved_ports"))
        .unwrap_or_else(|| panic!("check.sh says nothing about reserved ports:\n{output}"))
}

#[test]
fn apply_reserves_imgates_ports_in_the_widened_range_and_check_verifies_it() {
    let tree = SysctlTree::new("apply");
    // Something else on the host reserves a port already; it must stay reserved.
    tree.set("net.ipv4.ip_local_reserved_ports", "5000,40000-40010");
    let config = tree.root.join("imgate.toml");
    std::fs::write(
        &config,
        "[comet]\ntcp_bind = [\"0.0.0.0:7101\"]\nws_bind = [\"0.0.0.0:7102\", \"[::]:0\"]\n\
         [logic]\nhttp_bind = \"0.0.0.0:7111\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let (ok, out) = tree.run("apply.sh", &[config]);
    assert!(ok, "{out}");
    assert_eq!(tree.get("net.ipv4.ip_local_port_range"), "1024 65535");
    assert_eq!(
        tree.get("net.ipv4.ip_local_reserved_ports"),
        "3101-3104,3109,3111,3119,3201-3202,3209,3211,3219,3309,3409,3509,5000,7101-7102,7111,40000-40010"
    );
    let conf = std::fs::read_to_string(tree.root.join("90-imgate.conf")).unwrap();
    assert!(
        conf.contains("net.ipv4.ip_local_reserved_ports = 3101-3104,"),
        "{conf}"
    );
    // Applying again changes nothing.
    let (ok, again) = tree.run("apply.sh", &[config]);
    assert!(
        ok && again.contains("ok    net.ipv4.ip_local_reserved_ports"),
        "{again}"
    );

    let (_, out) = tree.run("check.sh", &["10", config]);
    assert!(reserved_line(&out).starts_with("ok"), "{out}");
}

#[test]
fn check_fails_when_imgates_ports_can_be_taken_as_ephemeral_ports() {
    let tree = SysctlTree::new("check");
    tree.set("net.ipv4.ip_local_port_range", "1024\t65535");
    tree.set("net.ipv4.ip_local_reserved_ports", "3101-3104");
    let (ok, out) = tree.run("check.sh", &["10"]);
    assert!(!ok, "check.sh passed:\n{out}");
    let line = reserved_line(&out);
    assert!(
        line.starts_with("MISSING") && line.contains("3109,3111,3119") && !line.contains("3101"),
        "{line}"
    );
    // A range clear of imgate's ports is fine without reserving them.
    tree.set("net.ipv4.ip_local_port_range", "32768\t60999");
    tree.set("net.ipv4.ip_local_reserved_ports", "");
    let (_, out) = tree.run("check.sh", &["10"]);
    assert!(reserved_line(&out).starts_with("ok"), "{out}");
}
