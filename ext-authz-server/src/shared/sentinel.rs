//! Redis Sentinel: which node is the primary. All the configured sentinels are asked at once;
//! the primary is the node a majority of them names (not a majority of those that answered: a
//! sentinel on the minority side of a partition still names the old primary), once it answers
//! `ROLE` as a primary. A session asks again periodically (`Shared::watch_primary`).

use super::connection::{connect, node_client};
use redis::{ConnectionInfo, RedisConnectionInfo, RedisError};
use std::time::Duration;

/// Budget for one question to one sentinel, and for the `ROLE` check of the primary it names:
/// a sixth of the confirmation window, between 50 and 500 ms (so a question that times out
/// still leaves the next one time to vouch within the window; see `Shared::watch_primary`).
pub(super) fn ask_budget(max_unconfirmed_ms: u64) -> Duration {
    Duration::from_millis((max_unconfirmed_ms / 6).clamp(50, 500))
}

/// `redis.sentinel`, ready to ask.
pub(super) struct Sentinels {
    addresses: Vec<ConnectionInfo>,
    /// Budget for one question (see [`ask_budget`]).
    budget: Duration,
    master_name: String,
    /// How to talk to the primary (database, password).
    node: RedisConnectionInfo,
}

fn no_primary(why: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::IoError, why))
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

/// The role the node `client` reaches answers `ROLE` with, within `budget`: `Some(true)`
/// for a primary, `Some(false)` for anything else, `None` when it does not answer.
async fn answers_as_primary(client: &redis::Client, budget: Duration) -> Option<bool> {
    let asked = tokio::time::timeout(budget, async {
        let mut conn = connect(client, budget).await?;
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
    /// The sentinels of `redis.sentinel`, asking for the primary `master_name` (with its
    /// password and database).
    pub(super) fn new(
        config: &crate::config::SentinelConfig,
        budget: Duration,
    ) -> Result<Sentinels, RedisError> {
        let addresses = config
            .addresses
            .iter()
            .map(|a| redis::IntoConnectionInfo::into_connection_info(a.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Sentinels {
            addresses,
            budget,
            master_name: config.master_name.clone(),
            node: RedisConnectionInfo {
                db: config.db,
                password: config.password.clone(),
                ..RedisConnectionInfo::default()
            },
        })
    }

    /// A client for the node at `host:port`.
    fn node_client(&self, address: &str) -> Option<redis::Client> {
        node_client(&self.node, address)
    }

    /// What one sentinel names as the primary (`host:port`), within the budget.
    async fn ask(&self, address: &ConnectionInfo) -> Option<String> {
        let sentinel = redis::Client::open(address.clone()).ok()?;
        let asked = tokio::time::timeout(self.budget, async {
            let mut conn = connect(&sentinel, self.budget).await?;
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
    /// the budget, the answer known as soon as a majority agrees (a sentinel on a dead
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
    pub(super) async fn primary(&self) -> Result<redis::Client, RedisError> {
        let Some(named) = self.majority().await else {
            return Err(no_primary("no majority of the sentinels names one primary"));
        };
        match self.node_client(&named) {
            Some(client) if answers_as_primary(&client, self.budget).await == Some(true) => {
                Ok(client)
            }
            _ => Err(no_primary(
                "the primary the sentinels name does not answer as one",
            )),
        }
    }

    /// Whether `session_primary` (`host:port`) is still the primary: a majority of the
    /// sentinels name it, and it answers `ROLE` as one.
    pub(super) async fn check(&self, session_primary: &str) -> PrimaryCheck {
        let role = async {
            match self.node_client(session_primary) {
                Some(client) => answers_as_primary(&client, self.budget).await,
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
}
