//! Redis Cluster: which node serves the revocation stream. The stream and its snapshot share
//! one hash tag, so one slot, so one primary at a time. A session pins its stream reader and
//! its publisher to that primary (plain connections, never redirected: a failover ends the
//! session, and the next one runs the checks that find what the failover lost), and asks the
//! node periodically whether it still serves the slot in a cluster that is up (a primary cut
//! off on the minority side reports the cluster down once `cluster-node-timeout` passes, even
//! where it still answers reads). The check path's cache commands use a cluster connection,
//! which routes each key to its node.

use super::connection::{connect, node_client};
use super::sentinel::PrimaryCheck;
use redis::cluster::ClusterClient;
use redis::{RedisConnectionInfo, RedisError};
use std::time::Duration;

/// `redis.cluster`, ready to ask.
pub(super) struct Cluster {
    /// Connects to the cluster through its seed nodes (discovery, and the check path).
    pub(super) seeds: ClusterClient,
    /// How to talk to one node (password).
    node: RedisConnectionInfo,
    /// Budget for one question to a node.
    budget: Duration,
}

/// The primary that serves a slot, as one `CLUSTER NODES` reply tells.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Serving {
    /// `host:port` (as the node that answered knows it).
    pub(super) address: String,
    /// Whether it is the node that answered (`myself`).
    pub(super) itself: bool,
}

/// The primary that serves `slot` in a `CLUSTER NODES` reply, unless the reply marks it
/// failing (`fail`, `fail?`; not `nofailover`, a setting) or without an address (`noaddr`).
pub(super) fn primary_for_slot(nodes: &str, slot: u16) -> Option<Serving> {
    nodes.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags: Vec<&str> = fields.get(2)?.split(',').collect();
        if !flags.contains(&"master")
            || flags
                .iter()
                .any(|f| *f == "fail" || *f == "fail?" || *f == "noaddr")
        {
            return None;
        }
        // Slot ranges (`0-5460`, `42`); `[slot->-id]` migration markers do not parse.
        let serves = fields.iter().skip(8).any(|range| {
            let (from, to) = range.split_once('-').unwrap_or((range, range));
            matches!(
                (from.parse::<u16>(), to.parse::<u16>()),
                (Ok(from), Ok(to)) if from <= slot && slot <= to
            )
        });
        // `ip:port@cport[,hostname]`
        let address = fields.get(1)?.split(['@', ',']).next()?;
        serves.then(|| Serving {
            address: address.to_owned(),
            itself: flags.contains(&"myself"),
        })
    })
}

fn no_primary(why: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::IoError, why))
}

impl Cluster {
    pub(super) fn new(
        config: &crate::config::ClusterConfig,
        command_budget: Duration,
        budget: Duration,
    ) -> Result<Cluster, RedisError> {
        let mut seeds = redis::cluster::ClusterClientBuilder::new(config.addresses.clone())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(command_budget)
            .retries(2);
        if let Some(password) = &config.password {
            seeds = seeds.password(password.clone());
        }
        Ok(Cluster {
            seeds: seeds.build()?,
            node: RedisConnectionInfo {
                password: config.password.clone(),
                ..RedisConnectionInfo::default()
            },
            budget,
        })
    }

    /// A client for the node at `host:port`.
    fn node_client(&self, address: &str) -> Option<redis::Client> {
        node_client(&self.node, address)
    }

    /// What the node at `address` says, within the budget: whether the cluster is up there,
    /// and which primary serves `key`'s slot.
    async fn ask(&self, address: &str, key: &str) -> Option<(bool, Option<Serving>)> {
        let client = self.node_client(address)?;
        let asked = tokio::time::timeout(self.budget, async {
            let mut conn = connect(&client, self.budget).await?;
            redis::pipe()
                .cmd("CLUSTER")
                .arg("INFO")
                .cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .cmd("CLUSTER")
                .arg("NODES")
                .query_async::<(String, u16, String)>(&mut conn)
                .await
        })
        .await;
        let (info, slot, nodes) = asked.ok()?.ok()?;
        Some((
            info.lines().any(|l| l.trim() == "cluster_state:ok"),
            primary_for_slot(&nodes, slot),
        ))
    }

    /// The primary that serves `key`'s slot now, as the cluster tells (through its seeds) and
    /// as that node confirms itself.
    pub(super) async fn primary(&self, key: &str) -> Result<redis::Client, RedisError> {
        let mut seeds = self.seeds.get_async_connection().await?;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut seeds)
            .await?;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut seeds)
            .await?;
        let address = primary_for_slot(&nodes, slot)
            .ok_or_else(|| no_primary("no primary serves the stream's slot"))?
            .address;
        if self.check(&address, key).await != PrimaryCheck::Same {
            return Err(no_primary(
                "the primary of the stream's slot does not confirm it serves it",
            ));
        }
        self.node_client(&address)
            .ok_or_else(|| no_primary("the primary's address is not host:port"))
    }

    /// Whether `session_primary` still serves `key`'s slot in a cluster that is up, as it
    /// says itself (`myself` in its own `CLUSTER NODES`: no address comparison, so announced
    /// or translated addresses do not matter): `Moved` when it names another primary for the
    /// slot (a failover), `Unknown` when it does not answer, names none, or reports the
    /// cluster down (cut off from the majority).
    pub(super) async fn check(&self, session_primary: &str, key: &str) -> PrimaryCheck {
        match self.ask(session_primary, key).await {
            Some((true, Some(Serving { itself: true, .. }))) => PrimaryCheck::Same,
            Some((_, Some(Serving { itself: false, .. }))) => PrimaryCheck::Moved,
            _ => PrimaryCheck::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1 2 connected 5461-10922
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
292f 127.0.0.1:30003@40003 master,fail - 0 1 3 disconnected 10923-16383
";

    fn address(nodes: &str, slot: u16) -> Option<String> {
        primary_for_slot(nodes, slot).map(|s| s.address)
    }

    #[test]
    fn the_primary_of_a_slot_is_read_from_cluster_nodes() {
        assert_eq!(
            primary_for_slot(NODES, 0),
            Some(Serving {
                address: "127.0.0.1:30001".into(),
                itself: true
            })
        );
        assert_eq!(address(NODES, 5460).as_deref(), Some("127.0.0.1:30001"));
        assert_eq!(
            primary_for_slot(NODES, 5461),
            Some(Serving {
                address: "127.0.0.1:30002".into(),
                itself: false
            })
        );
        assert_eq!(address(NODES, 12000), None, "its primary is failing");
        assert_eq!(address("", 1), None);
        let single = "a 10.0.0.1:6379@16379,node-a.example myself,master - 0 0 1 connected 42\n";
        assert_eq!(address(single, 42).as_deref(), Some("10.0.0.1:6379"));
        assert_eq!(address(single, 43), None);
    }

    #[test]
    fn failing_flags_are_told_from_settings_and_markers_are_skipped() {
        let nodes = "\
a 127.0.0.1:1@2 myself,master,nofailover - 0 0 1 connected 0-99 [100->-b]
b 127.0.0.1:3@4 master,fail? - 0 0 2 connected 100-199
c :0@0 master,noaddr - 0 0 3 disconnected 200-299
d 127.0.0.1:5@6 slave,nofailover a 0 0 1 connected
";
        assert_eq!(
            address(nodes, 5).as_deref(),
            Some("127.0.0.1:1"),
            "nofailover is a setting"
        );
        assert_eq!(
            address(nodes, 100),
            None,
            "a migration marker is not a range; b is fail?"
        );
        assert_eq!(address(nodes, 150), None, "possibly failing");
        assert_eq!(address(nodes, 250), None, "no address");
    }
}
