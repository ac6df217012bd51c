//! Connections to Redis: the manager the check path and publishing share (reconnects on its
//! own), the dedicated connection that blocks on the stream, and the backoff between sessions.

use super::Shared;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, RedisError};
use std::time::Duration;

impl Shared {
    pub(super) async fn ensure_manager(&self) -> Result<(), RedisError> {
        if self.connection().is_some() {
            return Ok(());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(self.config.op_timeout.max(Duration::from_millis(500)))
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        let manager = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *self.manager.write().unwrap_or_else(|p| p.into_inner()) = Some(manager);
        Ok(())
    }

    pub(super) async fn reader(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(self.config.block + Duration::from_secs(2));
        self.client
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
