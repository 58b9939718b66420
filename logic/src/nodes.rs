//! The node list handed to clients by `/goim/nodes/weighted`.
//!
//! Instead of goim's stateful balancer (reference §3.6) the order is recomputed from the registry
//! on each call: highest `weight / (1 + connections)` first, so a lightly loaded or heavier
//! comet is offered first and load evens out as comets report. Comets with weight 0 are never
//! offered (an operator's way to drain one).

use std::cmp::Ordering;

use imgate_shared::config::LogicConfig;
use imgate_shared::store::CometStatus;

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

/// The `nodes` list: `<id><host_domain>` for web clients, the hosts of each comet's TCP
/// addresses otherwise; at most [`MAX_NODES`], `[default_domain]` when no comet qualifies.
pub(crate) fn node_names(
    comets: &[CometStatus],
    platform: &str,
    config: &LogicConfig,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for comet in weighted_order(comets) {
        let candidates: Vec<String> = if platform == "web" {
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
    names
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
    use imgate_shared::link::CometInfo;

    fn comet(id: &str, weight: u32, conns: u64, addrs: &[&str]) -> CometStatus {
        CometStatus {
            info: CometInfo {
                id: id.into(),
                weight,
                tcp_addrs: addrs.iter().map(|a| a.to_string()).collect(),
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
