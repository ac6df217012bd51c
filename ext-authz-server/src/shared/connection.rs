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

/// The role the node `client` reaches answers `ROLE` with, within [`ASK_BUDGET`]: `Some(true)`
/// for a primary, `Some(false)` for anything else, `None` when it does not answer.
pub(super) async fn answers_as_primary(client: &redis::Client) -> Option<bool> {
    let asked = tokio::time::timeout(ASK_BUDGET, async {
        let mut conn = connect(client, ASK_BUDGET).await?;
        redis::cmd("ROLE")
            .query_async::<redis::Value>(&mut conn)
            .await
    })
    .await;
    match asked {
        Ok(Ok(role)) => Some(is_primary(&role)),
        _ => None,
    }
}

/// What the sentinels say of a session's primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PrimaryCheck {
    /// A majority of the sentinels name it, and it answers as a primary.
    Same,
    /// A majority name another, or it answers as a replica: the session must end.
    Moved,
    /// No majority names anything, or it does not answer: nothing vouches for it now.
    Unknown,
}

/// Votes of the sentinels for a primary (`host:port`), counted as their answers arrive. A
/// majority of all configured sentinels is needed, not of those that answered: a sentinel on
/// the minority side of a partition (which still names the old primary) must not decide alone,
/// which is also the rule Sentinel itself follows to fail over.
#[derive(Debug)]
pub(super) struct Tally {
    needed: usize,
    votes: std::collections::HashMap<String, usize>,
}

impl Tally {
    pub(super) fn of(configured: usize) -> Tally {
        Tally {
            needed: configured / 2 + 1,
            votes: std::collections::HashMap::new(),
        }
    }

    /// One sentinel's answer (`None`: it did not answer, or knows no primary); the address a
    /// majority now names, if any.
    pub(super) fn vote(&mut self, answer: Option<String>) -> Option<String> {
        let named = answer?;
        let votes = self.votes.entry(named.clone()).or_default();
        *votes += 1;
        (*votes >= self.needed).then_some(named)
    }
}

impl Sentinels {
    /// A client for `host:port` with the primary's database and password.
    fn node_client(&self, address: &str) -> Option<redis::Client> {
        let (host, port) = address.rsplit_once(':')?;
        redis::Client::open(ConnectionInfo {
            addr: ConnectionAddr::Tcp(host.to_owned(), port.parse().ok()?),
            redis: self.node.clone(),
        })
        .ok()
    }

    /// What one sentinel names as the primary (`host:port`), within [`ASK_BUDGET`].
    async fn ask(&self, address: &ConnectionInfo) -> Option<String> {
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
        let (host, port) = asked.ok()?.ok()??;
        Some(format!("{host}:{port}"))
    }

    /// The primary a majority of the sentinels name: all asked at once, each within
    /// [`ASK_BUDGET`], the answer known as soon as a majority agrees (a sentinel on a dead
    /// node costs nothing while the others answer).
    async fn majority(&self) -> Option<String> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut asks: FuturesUnordered<_> = self.addresses.iter().map(|a| self.ask(a)).collect();
        let mut tally = Tally::of(self.addresses.len());
        while let Some(answer) = asks.next().await {
            if let Some(named) = tally.vote(answer) {
                return Some(named);
            }
        }
        None
    }

    /// The primary a majority of the sentinels name, once it answers `ROLE` as one.
    async fn primary(&self) -> Result<redis::Client, RedisError> {
        let Some(named) = self.majority().await else {
            return Err(no_primary("no majority of the sentinels names one primary"));
        };
        match self.node_client(&named) {
            Some(client) if answers_as_primary(&client).await == Some(true) => Ok(client),
            _ => Err(no_primary(
                "the primary the sentinels name does not answer as one",
            )),
        }
    }

    /// Whether `session_primary` (`host:port`) is still the primary: a majority of the
    /// sentinels name it, and it answers `ROLE` as one.
    async fn check(&self, session_primary: &str) -> PrimaryCheck {
        let role = async {
            match self.node_client(session_primary) {
                Some(client) => answers_as_primary(&client).await,
                None => None,
            }
        };
        match tokio::join!(self.majority(), role) {
            (_, Some(false)) => PrimaryCheck::Moved,
            (Some(named), _) if named != session_primary => PrimaryCheck::Moved,
            (Some(_), Some(true)) => PrimaryCheck::Same,
            _ => PrimaryCheck::Unknown,
        }
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

    /// How often a session asks the sentinels about its primary: a third of the confirmation
    /// window, so that a vouch (dated when it was asked, which takes at most [`ASK_BUDGET`])
    /// is always younger than the window while the sentinels answer.
    fn primary_check_every(&self) -> Duration {
        Duration::from_millis((self.config.max_unconfirmed_ms / 3).max(100))
    }

    /// Whether a session's primary needs the sentinels' vouch (one Redis needs none).
    pub(super) fn vouched_by_sentinels(&self) -> bool {
        matches!(self.endpoint, Endpoint::Sentinel(_))
    }

    /// For a session on `session_primary`: asks the sentinels about it every
    /// [`Shared::primary_check_every`], records in `vouched_ms` when a question they answered
    /// `Same` was asked, and returns when they answer `Moved` (the session must end). Never
    /// returns for one Redis.
    pub(super) async fn watch_primary(
        &self,
        session_primary: &str,
        vouched_ms: &std::sync::atomic::AtomicU64,
    ) {
        if !self.vouched_by_sentinels() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(self.primary_check_every()).await;
            let asked_ms = self.clock.now_ms();
            match self.check_primary(session_primary).await {
                PrimaryCheck::Same => {
                    vouched_ms.fetch_max(asked_ms, std::sync::atomic::Ordering::Relaxed);
                }
                PrimaryCheck::Moved => return,
                PrimaryCheck::Unknown => {}
            }
        }
    }

    /// The connection publications and their `WAIT` use, for session `session`: its own, so
    /// a `WAIT` never holds up the check path's commands (the manager's). Named
    /// `authz-publisher` (`CLIENT LIST`).
    pub(super) async fn connect_publisher(
        &self,
        primary: &redis::Client,
        session: u64,
    ) -> Result<(), RedisError> {
        let budget = self.config.op_timeout.max(Duration::from_secs(1)) + self.config.replica_wait;
        let mut publisher = connect(primary, budget).await?;
        name_connection(&mut publisher, "authz-publisher").await?;
        *self.publisher.write().unwrap_or_else(|p| p.into_inner()) = Some((session, publisher));
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
    fn a_primary_needs_a_majority_of_the_configured_sentinels() {
        let named = |s: &str| Some(s.to_owned());
        let mut tally = Tally::of(3);
        assert_eq!(tally.vote(named("old:1")), None, "one of three");
        assert_eq!(tally.vote(None), None, "a sentinel that did not answer");
        assert_eq!(tally.vote(named("new:2")), None);
        assert_eq!(
            tally.vote(named("new:2")),
            Some("new:2".into()),
            "two of three"
        );

        let mut tally = Tally::of(4);
        assert_eq!(tally.vote(named("a:1")), None);
        assert_eq!(tally.vote(named("a:1")), None, "two of four is no majority");
        assert_eq!(tally.vote(named("a:1")), Some("a:1".into()));

        let mut alone = Tally::of(1);
        assert_eq!(alone.vote(named("a:1")), Some("a:1".into()), "one sentinel");
        let mut none_answer = Tally::of(3);
        assert_eq!(none_answer.vote(None), None);
    }

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
