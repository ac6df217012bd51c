//! Connections to Redis: where the primary is (one URL, or the one the sentinels name now),
//! the manager the check path and publishing share (reconnects on its own, replaced when the
//! primary moves), the dedicated connection that blocks on the stream, and the backoff between
//! sessions.

use super::Shared;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, RedisConnectionInfo, RedisError,
};
use std::time::Duration;

/// Budget for one question to one sentinel, and for the `ROLE` check of the primary it names.
const ASK_BUDGET: Duration = Duration::from_millis(500);

/// Where the primary is.
pub(super) enum Endpoint {
    /// One Redis (`redis.url`).
    Direct(redis::Client),
    /// The primary the sentinels name now: asked at every session and every
    /// `max_unconfirmed_ms / 2` during one, its `ROLE` checked.
    Sentinel(Sentinels),
}

/// `redis.sentinel`, ready to ask.
pub(super) struct Sentinels {
    addresses: Vec<ConnectionInfo>,
    /// The sentinel that answered last: asked first next time (a dead one costs its budget
    /// once, not at every question).
    answered: std::sync::atomic::AtomicUsize,
    master_name: String,
    /// How to talk to the primary (database, password).
    node: RedisConnectionInfo,
}

impl Endpoint {
    /// The sentinels of `redis.sentinel`, asking for the primary `master_name` (with its
    /// password and database).
    pub(super) fn sentinel(config: &crate::config::SentinelConfig) -> Result<Endpoint, RedisError> {
        let addresses = config
            .addresses
            .iter()
            .map(|a| redis::IntoConnectionInfo::into_connection_info(a.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Endpoint::Sentinel(Sentinels {
            addresses,
            answered: std::sync::atomic::AtomicUsize::new(0),
            master_name: config.master_name.clone(),
            node: RedisConnectionInfo {
                db: config.db,
                password: config.password.clone(),
                ..RedisConnectionInfo::default()
            },
        }))
    }
}

fn no_primary(why: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::IoError, why))
}

async fn connect(
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

/// Whether a `ROLE` reply is a primary's (`master`, …).
fn is_primary(role: &redis::Value) -> bool {
    match role {
        redis::Value::Array(items) => {
            matches!(
                items.first(),
                Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
            ) || matches!(items.first(), Some(redis::Value::SimpleString(s)) if s == "master")
        }
        _ => false,
    }
}

/// Whether the node `client` reaches answers `ROLE` as a primary.
pub(super) async fn answers_as_primary(client: &redis::Client) -> bool {
    let asked = tokio::time::timeout(ASK_BUDGET, async {
        let mut conn = connect(client, ASK_BUDGET).await?;
        redis::cmd("ROLE")
            .query_async::<redis::Value>(&mut conn)
            .await
    })
    .await;
    matches!(asked, Ok(Ok(role)) if is_primary(&role))
}

/// What the sentinels say of a session's primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PrimaryCheck {
    /// Still the primary they name, and it answers as one.
    Same,
    /// They name another, or it no longer answers as a primary: the session must end.
    Moved,
    /// No sentinel answered: nothing vouches for it now.
    Unknown,
}

impl Sentinels {
    /// A client for `host:port` with the primary's database and password.
    fn node_client(&self, host: String, port: u16) -> Option<redis::Client> {
        redis::Client::open(ConnectionInfo {
            addr: ConnectionAddr::Tcp(host, port),
            redis: self.node.clone(),
        })
        .ok()
    }

    /// The sentinels in the order to ask them: the one that answered last first.
    fn in_turn(&self) -> impl Iterator<Item = (usize, &ConnectionInfo)> {
        let first = self.answered.load(std::sync::atomic::Ordering::Relaxed);
        let n = self.addresses.len();
        (0..n).filter_map(move |i| {
            let at = (first + i) % n.max(1);
            self.addresses.get(at).map(|a| (at, a))
        })
    }

    /// What one sentinel names as the primary, within [`ASK_BUDGET`].
    async fn ask(&self, address: &ConnectionInfo) -> Option<(String, u16)> {
        let sentinel = redis::Client::open(address.clone()).ok()?;
        let asked = tokio::time::timeout(ASK_BUDGET, async {
            let mut conn = connect(&sentinel, ASK_BUDGET).await?;
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.master_name)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        })
        .await;
        asked.ok()?.ok()?
    }

    /// The primary the first sentinel that answers names, and that answers `ROLE` as one;
    /// each sentinel gets [`ASK_BUDGET`] (a sentinel on a dead node does not hold up the
    /// others), the next is asked on any failure.
    async fn primary(&self) -> Result<redis::Client, RedisError> {
        for (at, address) in self.in_turn() {
            let Some((host, port)) = self.ask(address).await else {
                continue;
            };
            self.answered
                .store(at, std::sync::atomic::Ordering::Relaxed);
            let Some(client) = self.node_client(host, port) else {
                continue;
            };
            if answers_as_primary(&client).await {
                return Ok(client);
            }
        }
        Err(no_primary(
            "no sentinel named a primary that answers as one",
        ))
    }

    /// Whether `session_primary` (`host:port`) is still the primary: the first sentinel that
    /// answers names it, and it answers `ROLE` as one.
    async fn check(&self, session_primary: &str) -> PrimaryCheck {
        for (at, address) in self.in_turn() {
            let Some((host, port)) = self.ask(address).await else {
                continue;
            };
            self.answered
                .store(at, std::sync::atomic::Ordering::Relaxed);
            if format!("{host}:{port}") != session_primary {
                return PrimaryCheck::Moved;
            }
            return match self.node_client(host, port) {
                Some(client) if answers_as_primary(&client).await => PrimaryCheck::Same,
                _ => PrimaryCheck::Moved,
            };
        }
        PrimaryCheck::Unknown
    }
}

impl Shared {
    /// A client for the primary now (with Sentinel: the one the sentinels name, which answered
    /// `ROLE` as a primary).
    pub(super) async fn primary(&self) -> Result<redis::Client, RedisError> {
        match &self.endpoint {
            Endpoint::Direct(client) => Ok(client.clone()),
            Endpoint::Sentinel(sentinels) => sentinels.primary().await,
        }
    }

    /// With Sentinel: whether the session's primary (`host:port`) is still the one the
    /// sentinels name and still answers as a primary. A failover moved it, it was demoted, or
    /// it is cut off from the sentinels and another was elected: the session must end, or it
    /// would go on confirming state the fleet no longer writes to. One Redis: always `Same`.
    pub(super) async fn check_primary(&self, session_primary: &str) -> PrimaryCheck {
        match &self.endpoint {
            Endpoint::Direct(_) => PrimaryCheck::Same,
            Endpoint::Sentinel(sentinels) => sentinels.check(session_primary).await,
        }
    }

    /// How often a session asks the sentinels about its primary (half the confirmation
    /// window, so a moved primary ends the session before state unconfirmed elsewhere is
    /// confirmed here for long).
    pub(super) fn primary_check_every(&self) -> Duration {
        Duration::from_millis((self.config.max_unconfirmed_ms / 2).max(100))
    }

    /// The connection publications and their `WAIT` use, for one session: its own, so a
    /// `WAIT` never holds up the check path's commands (the manager's).
    pub(super) async fn connect_publisher(
        &self,
        primary: &redis::Client,
    ) -> Result<(), RedisError> {
        let budget = self.config.op_timeout.max(Duration::from_secs(1)) + self.config.replica_wait;
        let publisher = connect(primary, budget).await?;
        *self.publisher.write().unwrap_or_else(|p| p.into_inner()) = Some(publisher);
        Ok(())
    }

    /// The manager for `primary`: kept while the primary stays where it is, replaced when it
    /// moved (a failover), so the check path and publishing never write to a demoted node.
    pub(super) async fn ensure_manager(&self, primary: &redis::Client) -> Result<(), RedisError> {
        let address = primary.get_connection_info().addr.to_string();
        if self.connection().is_some() && *crate::lock(&self.primary_address) == address {
            return Ok(());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(self.config.op_timeout.max(Duration::from_millis(500)))
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        let manager = ConnectionManager::new_with_config(primary.clone(), config).await?;
        *self.manager.write().unwrap_or_else(|p| p.into_inner()) = Some(manager);
        tracing::info!(primary = %address, "shared_primary");
        self.metrics.inc("authz_shared_primary_changes_total", &[]);
        *crate::lock(&self.primary_address) = address;
        Ok(())
    }

    pub(super) async fn reader(
        &self,
        primary: &redis::Client,
    ) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(self.config.block + Duration::from_secs(2));
        primary
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
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
