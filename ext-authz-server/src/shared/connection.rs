//! Connections to Redis: where the nodes are (one URL, the primary the sentinels name now, or a
//! Redis Cluster), the connections of one session (the stream reader, which blocks; the
//! publisher, which waits for replicas), the check path's connection that outlives sessions
//! (replaced when the primary moves), and the backoff between sessions.

use super::cluster::Cluster;
use super::link::Link;
use super::sentinel::{PrimaryCheck, Sentinels};
use super::Shared;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, RedisError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where the nodes are.
pub(super) enum Endpoint {
    /// One Redis (`redis.url`).
    Direct(redis::Client),
    /// The primary the sentinels name now: asked at every session and every
    /// `max_unconfirmed_ms / 3` during one (a majority must name it), its `ROLE` checked.
    Sentinel(Box<Sentinels>),
    /// A Redis Cluster (`redis.cluster`): a session pins its reader and publisher to the
    /// primary that serves the stream's slot now, which it asks periodically.
    Cluster(Box<Cluster>),
}

/// A client for the node at `host:port`, with `node`'s database and password.
pub(super) fn node_client(
    node: &redis::RedisConnectionInfo,
    address: &str,
) -> Option<redis::Client> {
    let (host, port) = address.rsplit_once(':')?;
    redis::Client::open(redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp(host.to_owned(), port.parse().ok()?),
        redis: node.clone(),
    })
    .ok()
}

/// A connection to the node `client` reaches, every answer within `budget`.
pub(super) async fn connect(
    client: &redis::Client,
    budget: Duration,
) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(budget)
        .set_response_timeout(budget);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

impl Shared {
    /// Connects session `session`: its stream reader (returned, with the primary's
    /// `host:port` and a client for it, to connect the publisher again), its publisher, and
    /// the check path's connection if the primary moved.
    pub(super) async fn open_session(
        &self,
        session: u64,
    ) -> Result<(Link, String, redis::Client), RedisError> {
        let primary = match &self.endpoint {
            Endpoint::Direct(client) => client.clone(),
            Endpoint::Sentinel(sentinels) => sentinels.primary().await?,
            Endpoint::Cluster(cluster) => cluster.primary(&self.keys.events).await?,
        };
        let address = primary.get_connection_info().addr.to_string();
        let reader = self.reader(&primary).await?;
        self.reopen_publisher(&primary, session).await?;
        match &self.endpoint {
            Endpoint::Cluster(cluster) => {
                if self.connection().is_none() {
                    let manager = cluster.seeds.get_async_connection().await?;
                    self.set_manager(Link::Cluster(manager), "cluster");
                }
                tracing::info!(primary = %address, "shared_stream_primary");
            }
            _ => self.ensure_manager(&primary, &address).await?,
        }
        Ok((Link::Node(reader), address, primary))
    }

    /// A new publisher connection to the session's primary, for session `session`: its own,
    /// so a `WAIT` never holds up the check path's commands. Named `authz-publisher` (`CLIENT
    /// LIST`).
    pub(super) async fn reopen_publisher(
        &self,
        primary: &redis::Client,
        session: u64,
    ) -> Result<(), RedisError> {
        let mut publisher = connect(primary, self.command_budget()).await?;
        name_connection(&mut publisher, "authz-publisher").await?;
        *self.publisher.write().unwrap_or_else(|p| p.into_inner()) =
            Some((session, Link::Node(publisher)));
        Ok(())
    }

    /// How long a publication and its `WAIT` may take.
    pub(super) fn command_budget(&self) -> Duration {
        self.config.op_timeout.max(Duration::from_secs(1)) + self.config.replica_wait
    }

    /// Whether the session's primary (`host:port`) is still the one to read and write: with
    /// Sentinel, the one a majority of the sentinels name, answering as a primary; with a
    /// cluster, the one that says it serves the stream's slot in a cluster that is up. A
    /// failover moved it, it was demoted, or it is cut off and another was elected: the
    /// session must end, or it would go on confirming state the fleet no longer writes to.
    /// One Redis: always `Same`.
    pub(super) async fn check_primary(&self, session_primary: &str) -> PrimaryCheck {
        match &self.endpoint {
            Endpoint::Direct(_) => PrimaryCheck::Same,
            Endpoint::Sentinel(sentinels) => sentinels.check(session_primary).await,
            Endpoint::Cluster(cluster) => cluster.check(session_primary, &self.keys.events).await,
        }
    }

    /// How often a session asks about its primary: a quarter of the
    /// confirmation window. A question takes at most [`super::sentinel::ask_budget`] (a
    /// sixth), so even after one that went unanswered the next vouch (dated when it was asked)
    /// comes within 5/6 of the window.
    fn primary_check_every(&self) -> Duration {
        Duration::from_millis((self.config.max_unconfirmed_ms / 4).max(50))
    }

    /// Whether a session's primary needs a periodic vouch (the sentinels', or its own as a
    /// cluster node); one Redis needs none.
    pub(super) fn vouched(&self) -> bool {
        !matches!(self.endpoint, Endpoint::Direct(_))
    }

    /// For a session on `session_primary`: asks the sentinels (or the cluster node) about it
    /// every
    /// [`Shared::primary_check_every`], records in `vouched_ms` when a question they answered
    /// `Same` was asked (and confirms the state as of then and the last read, `read_ms`), and
    /// returns when they answer `Moved` (the session must end). Never returns for one Redis.
    pub(super) async fn watch_primary(
        &self,
        session_primary: &str,
        vouched_ms: &AtomicU64,
        read_ms: &AtomicU64,
    ) {
        if !self.vouched() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(self.primary_check_every()).await;
            let asked_ms = self.clock.now_ms();
            match self.check_primary(session_primary).await {
                PrimaryCheck::Same => {
                    vouched_ms.fetch_max(asked_ms, Ordering::Relaxed);
                    self.confirm_read(
                        read_ms.load(Ordering::Relaxed),
                        vouched_ms.load(Ordering::Relaxed),
                    );
                }
                PrimaryCheck::Moved => return,
                PrimaryCheck::Unknown => {}
            }
        }
    }

    fn set_manager(&self, manager: Link, address: &str) {
        *self.manager.write().unwrap_or_else(|p| p.into_inner()) = Some(manager);
        tracing::info!(primary = %address, "shared_primary");
        self.metrics.inc("authz_shared_primary_changes_total", &[]);
        *crate::lock(&self.primary_address) = address.to_owned();
    }

    /// The check path's connection to `primary`: kept while the primary stays where it is,
    /// replaced when it moved (a failover), so the check path never writes to a demoted node.
    async fn ensure_manager(
        &self,
        primary: &redis::Client,
        address: &str,
    ) -> Result<(), RedisError> {
        if self.connection().is_some() && *crate::lock(&self.primary_address) == address {
            return Ok(());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(self.config.op_timeout.max(Duration::from_millis(500)))
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        let manager = ConnectionManager::new_with_config(primary.clone(), config).await?;
        self.set_manager(Link::Managed(manager), address);
        Ok(())
    }

    /// The session's stream reader on one node, named `authz-reader`.
    async fn reader(&self, primary: &redis::Client) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(self.config.block + Duration::from_secs(2));
        let mut reader = primary
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        name_connection(&mut reader, "authz-reader").await?;
        Ok(reader)
    }
}

/// Names a connection (`CLIENT SETNAME`), so an operator's `CLIENT LIST` tells the stream
/// reader and the publisher apart.
async fn name_connection(conn: &mut MultiplexedConnection, name: &str) -> Result<(), RedisError> {
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name)
        .query_async::<()>(conn)
        .await
}

/// First delay before reconnecting after a healthy session ends.
pub(super) const FIRST_RECONNECT: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
pub(super) const MAX_RECONNECT: Duration = Duration::from_secs(2);

/// The delay before the next session: short after a session that confirmed our state (a
/// blip), doubling while sessions keep failing before they confirm anything.
pub(super) fn next_reconnect_delay(previous: Duration, session_confirmed: bool) -> Duration {
    if session_confirmed {
        FIRST_RECONNECT
    } else {
        (previous * 2).min(MAX_RECONNECT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_resets_after_a_session_that_confirmed() {
        let mut delay = FIRST_RECONNECT;
        for _ in 0..10 {
            delay = next_reconnect_delay(delay, false);
        }
        assert_eq!(delay, MAX_RECONNECT, "failing sessions back off to the cap");
        assert_eq!(
            next_reconnect_delay(delay, true),
            FIRST_RECONNECT,
            "a healthy session that ends (a Redis blip) reconnects quickly"
        );
    }
}
