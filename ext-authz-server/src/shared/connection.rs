//! Connections to Redis: where the primary is (one URL, or the one the sentinels name now),
//! the manager the check path and publishing share (reconnects on its own, replaced when the
//! primary moves), the dedicated connection that blocks on the stream, and the backoff between
//! sessions.

use super::Shared;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, RedisConnectionInfo, RedisError};
use std::time::Duration;

/// Where the primary is.
pub(super) enum Endpoint {
    /// One Redis (`redis.url`).
    Direct(redis::Client),
    /// The primary the sentinels name now: asked at every session, its `ROLE` checked.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Endpoint {
    /// The sentinels of `redis.sentinel`, asking for the primary `master_name` (with its
    /// password and database).
    pub(super) fn sentinel(config: &crate::config::SentinelConfig) -> Result<Endpoint, RedisError> {
        let node = SentinelNodeConnectionInfo {
            tls_mode: None,
            redis_connection_info: Some(RedisConnectionInfo {
                db: config.db,
                password: config.password.clone(),
                ..RedisConnectionInfo::default()
            }),
        };
        let client = SentinelClient::build(
            config.addresses.iter().map(String::as_str).collect(),
            config.master_name.clone(),
            Some(node),
            SentinelServerType::Master,
        )?;
        Ok(Endpoint::Sentinel(tokio::sync::Mutex::new(client)))
    }
}

impl Shared {
    /// A client for the primary now (with Sentinel: the one the sentinels name, which answered
    /// `ROLE` as a primary).
    pub(super) async fn primary(&self) -> Result<redis::Client, RedisError> {
        match &self.endpoint {
            Endpoint::Direct(client) => Ok(client.clone()),
            Endpoint::Sentinel(sentinels) => {
                let budget = Duration::from_secs(2);
                let asked = tokio::time::timeout(budget, async {
                    sentinels.lock().await.async_get_client().await
                })
                .await;
                let client = match asked {
                    Ok(result) => result?,
                    Err(_) => {
                        return Err(RedisError::from((
                            redis::ErrorKind::IoError,
                            "no sentinel named a primary in time",
                        )))
                    }
                };
                let address = client.get_connection_info().addr.to_string();
                if *crate::lock(&self.primary_address) != address {
                    tracing::info!(primary = %address, "shared_primary");
                    self.metrics.inc("authz_shared_primary_changes_total", &[]);
                }
                Ok(client)
            }
        }
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
