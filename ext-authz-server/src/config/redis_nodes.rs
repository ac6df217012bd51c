//! Where the shared tier's Redis nodes are: `redis.url` (one Redis), `redis.sentinel` (the
//! sentinels that name the primary) or `redis.cluster` (seed nodes of a Redis Cluster); exactly
//! one of them, each validated with every problem named.

use super::{ClusterConfig, ClusterFile, Problems, SentinelConfig, SentinelFile};

/// Exactly one of `url`, `sentinel` and `cluster`.
pub(super) fn one_mode(p: &mut Problems, url: &str, sentinel: bool, cluster: bool) {
    let given = usize::from(!url.is_empty()) + usize::from(sentinel) + usize::from(cluster);
    if given > 1 {
        p.add(
            "redis",
            "url, sentinel and cluster are alternatives: one Redis, the sentinels that name its primary, or a cluster's nodes",
        );
    } else if given == 0
        || !(sentinel || cluster || url.starts_with("redis://") || url.starts_with("rediss://"))
    {
        p.add(
            "redis.url",
            "is required (or sentinel, or cluster): redis://host:port[/db] or rediss://…",
        );
    }
}

/// Node addresses (`field[i]`): `redis://host:port` each, at least one.
fn addresses(p: &mut Problems, field: &str, addresses: &[String], what: &str) {
    if addresses.is_empty() {
        p.add(
            field,
            format_args!("needs at least one {what}: redis://host:port"),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, address) in addresses.iter().enumerate() {
        let node = redis::IntoConnectionInfo::into_connection_info(address.as_str())
            .map(|info| info.addr.to_string());
        if let Ok(node) = &node {
            if !seen.insert(node.clone()) {
                p.add(
                    &format!("{field}[{i}]"),
                    format_args!("{node} is listed twice (a {what} must count once)"),
                );
            }
        }
        if address.starts_with("rediss://") {
            p.add(
                &format!("{field}[{i}]"),
                format_args!("TLS to {what}s is not supported: redis://host:port"),
            );
        } else if !address.starts_with("redis://")
            || redis::IntoConnectionInfo::into_connection_info(address.as_str()).is_err()
        {
            p.add(
                &format!("{field}[{i}]"),
                format_args!("{address:?} is not redis://host:port"),
            );
        }
    }
}

/// `redis.cluster`, validated.
pub(super) fn cluster_section(p: &mut Problems, c: &ClusterFile) -> ClusterConfig {
    p.unknown("redis.cluster", &c.unknown);
    addresses(p, "redis.cluster.addresses", &c.addresses, "node");
    ClusterConfig {
        addresses: c.addresses.clone(),
        password: c.password.clone().filter(|p| !p.is_empty()),
    }
}

/// `redis.sentinel`, validated.
pub(super) fn sentinel_section(p: &mut Problems, s: &SentinelFile) -> SentinelConfig {
    p.unknown("redis.sentinel", &s.unknown);
    let master_name = s.master_name.clone().unwrap_or_default();
    if master_name.is_empty() || master_name.contains(char::is_whitespace) {
        p.add(
            "redis.sentinel.master_name",
            "is required: the name the sentinels monitor the primary under",
        );
    }
    addresses(p, "redis.sentinel.addresses", &s.addresses, "sentinel");
    let db = s.db.unwrap_or(0);
    if !(0..=15).contains(&db) {
        p.add("redis.sentinel.db", "must be between 0 and 15");
    }
    SentinelConfig {
        master_name,
        addresses: s.addresses.clone(),
        password: s.password.clone().filter(|p| !p.is_empty()),
        db,
    }
}
