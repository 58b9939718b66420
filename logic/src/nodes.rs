//! The node list handed to clients by `/goim/nodes/weighted`.
//!
//! Instead of goim's stateful balancer (docs/goim-compatibility.md, "Node lists") the order is recomputed from the registry
//! on each call: highest `weight / (1 + connections)` first, so a lightly loaded or heavier
//! comet is offered first and load evens out as comets report. Comets with weight 0 are never
//! offered (an operator's way to drain one).

use std::cmp::Ordering;

use imgate_shared::config::LogicConfig;
use imgate_shared::link::CometInfo;
use imgate_store::CometStatus;

/// Most entries in `nodes`.
pub(crate) const MAX_NODES: usize = 5;

/// Comets in the order clients should try them.
pub(crate) fn weighted_order(comets: &[CometStatus]) -> Vec<&CometStatus> {
    let mut order: Vec<&CometStatus> = comets.iter().filter(|c| c.info.weight > 0).collect();
    order.sort_by(|a, b| by_weighted_load(a, b).then_with(|| a.info.id.cmp(&b.info.id)));
    order
}

/// Descending `weight / (1 + conn_count)`, compared exactly by cross-multiplying.
fn by_weighted_load(a: &CometStatus, b: &CometStatus) -> Ordering {
    let score_a = u128::from(a.info.weight) * (1 + u128::from(b.conn_count));
    let score_b = u128::from(b.info.weight) * (1 + u128::from(a.conn_count));
    score_b.cmp(&score_a)
}

/// What `/goim/nodes/weighted` tells a client: where to connect and on which ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Nodes {
    /// `<id><host_domain>` for web clients, the hosts of each comet's TCP addresses
    /// otherwise; at most [`MAX_NODES`], `[default_domain]` when no comet qualifies.
    pub names: Vec<String>,
    pub tcp_port: u16,
    pub ws_port: u16,
    pub wss_port: u16,
}

/// The nodes for `platform`. Ports are the configured ones where set (not 0), otherwise those
/// the first comet in weighted order advertises (0 when it has no such listener, or no comet
/// is known). goim's answer has one port per protocol for every node, so when the ports come
/// from the comets, only comets listening on the advertised port of the client's protocol
/// (TCP; WebSocket for web) are listed.
pub(crate) fn nodes(comets: &[CometStatus], platform: &str, config: &LogicConfig) -> Nodes {
    let order = weighted_order(comets);
    let first = order.first().map(|c| &c.info);
    let port = |configured: u16, addrs: Addrs| {
        if configured != 0 {
            configured
        } else {
            first.map_or(0, |info| port_of(addrs(info)))
        }
    };
    let tcp_port = port(config.tcp_port, |i| &i.tcp_addrs);
    let ws_port = port(config.ws_port, |i| &i.ws_addrs);
    let wss_port = port(config.wss_port, |i| &i.wss_addrs);
    let web = platform == "web";
    // The protocol this platform speaks, and whether its port came from the comets.
    let (wanted, addrs, from_comets): (u16, Addrs, bool) = if web {
        (ws_port, |i| &i.ws_addrs, config.ws_port == 0)
    } else {
        (tcp_port, |i| &i.tcp_addrs, config.tcp_port == 0)
    };
    let mut names: Vec<String> = Vec::new();
    for comet in order {
        if from_comets && port_of(addrs(&comet.info)) != wanted {
            continue;
        }
        let candidates: Vec<String> = if web {
            vec![format!("{}{}", comet.info.id, config.host_domain)]
        } else {
            comet
                .info
                .tcp_addrs
                .iter()
                .map(|a| host_of(a).to_owned())
                .collect()
        };
        for name in candidates {
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
        if names.len() >= MAX_NODES {
            break;
        }
    }
    names.truncate(MAX_NODES);
    if names.is_empty() {
        names.push(config.default_domain.clone());
    }
    Nodes {
        names,
        tcp_port,
        ws_port,
        wss_port,
    }
}

/// Which of a comet's advertised address lists.
type Addrs = fn(&CometInfo) -> &[String];

/// The port of the first of `addrs` (`host:port`), 0 if there is none.
fn port_of(addrs: &[String]) -> u16 {
    addrs
        .first()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(0)
}

/// `1.2.3.4:3101` → `1.2.3.4`, `[::1]:3101` → `::1`, `host` → `host`.
pub(crate) fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_names(comets: &[CometStatus], platform: &str, config: &LogicConfig) -> Vec<String> {
        nodes(comets, platform, config).names
    }

    fn comet(id: &str, weight: u32, conns: u64, addrs: &[&str]) -> CometStatus {
        CometStatus {
            info: CometInfo {
                id: id.into(),
                weight,
                tcp_addrs: addrs.iter().map(|a| a.to_string()).collect(),
                ws_addrs: addrs.iter().map(|a| a.replace(":3101", ":3102")).collect(),
                ..Default::default()
            },
            conn_count: conns,
            ..Default::default()
        }
    }

    fn ids(order: Vec<&CometStatus>) -> Vec<&str> {
        order.into_iter().map(|c| c.info.id.as_str()).collect()
    }

    #[test]
    fn lighter_and_heavier_comets_come_first() {
        let comets = [
            comet("busy", 10, 1000, &[]),
            comet("idle", 10, 0, &[]),
            comet("half", 10, 500, &[]),
            comet("big", 40, 1000, &[]),
            comet("drained", 0, 0, &[]),
        ];
        assert_eq!(
            ids(weighted_order(&comets)),
            vec!["idle", "big", "half", "busy"]
        );
    }

    #[test]
    fn ties_are_broken_by_id() {
        let comets = [comet("b", 1, 0, &[]), comet("a", 1, 0, &[])];
        assert_eq!(ids(weighted_order(&comets)), vec!["a", "b"]);
    }

    #[test]
    fn web_gets_domains_others_get_hosts() {
        let config = LogicConfig::default();
        let comets = [
            comet("c1", 10, 5, &["10.0.0.1:3101", "10.0.0.2:3101"]),
            comet("c2", 10, 0, &["[fd00::1]:3101", "10.0.0.1:3101"]),
        ];
        assert_eq!(
            node_names(&comets, "web", &config),
            vec!["c2.goim.io", "c1.goim.io"]
        );
        assert_eq!(
            node_names(&comets, "android", &config),
            vec!["fd00::1", "10.0.0.1", "10.0.0.2"]
        );
        assert_eq!(node_names(&[], "web", &config), vec!["conn.goim.io"]);
    }

    /// The advertised ports are the ones the comets listen on, not fixed ones.
    #[test]
    fn ports_are_the_comets_unless_configured() {
        let mut config = LogicConfig::default();
        let mut other = comet("other", 10, 0, &["10.0.0.1:4101"]);
        other.info.ws_addrs = vec!["10.0.0.1:4102".into()];
        other.info.wss_addrs = vec!["10.0.0.1:4103".into()];
        let busy = comet("busy", 10, 50, &["10.0.0.2:3101"]);
        let comets = [busy, other];
        let told = nodes(&comets, "android", &config);
        assert_eq!(
            (told.tcp_port, told.ws_port, told.wss_port),
            (4101, 4102, 4103)
        );
        // Only comets on the advertised port are offered: a client would dial it everywhere.
        assert_eq!(told.names, vec!["10.0.0.1"]);
        assert_eq!(nodes(&comets, "web", &config).names, vec!["other.goim.io"]);
        // Configured ports (a load balancer in front) win, and then every comet is offered.
        config.tcp_port = 443;
        let told = nodes(&comets, "android", &config);
        assert_eq!((told.tcp_port, told.ws_port), (443, 4102));
        assert_eq!(told.names, vec!["10.0.0.1", "10.0.0.2"]);
        // No comet: nothing is listening that logic knows of.
        let told = nodes(&[], "ios", &LogicConfig::default());
        assert_eq!((told.tcp_port, told.ws_port, told.wss_port), (0, 0, 0));
        assert_eq!(told.names, vec!["conn.goim.io"]);
    }

    #[test]
    fn at_most_five_nodes() {
        let config = LogicConfig::default();
        let comets: Vec<CometStatus> = (0..8)
            .map(|i| comet(&format!("c{i}"), 10, i, &[]))
            .collect();
        assert_eq!(
            node_names(&comets, "web", &config),
            vec![
                "c0.goim.io",
                "c1.goim.io",
                "c2.goim.io",
                "c3.goim.io",
                "c4.goim.io"
            ]
        );
    }

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("1.2.3.4:3101"), "1.2.3.4");
        assert_eq!(host_of("[::1]:3101"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
        assert_eq!(host_of("example.com:80"), "example.com");
    }
}
