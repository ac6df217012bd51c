//! The fallback matrix: per tier, how old introspection data may be, whether a bounded stale
//! answer may be served while the IdP is failing, and whether step-up authentication is
//! required. Plus the pure decisions built on it: when a cached result may be used, when it
//! should be refreshed ahead of time, what happens on an IdP error, and how long a result may
//! be cached at all.
//!
//! | tier | max staleness | stale-if-error | on IdP failure |
//! |---|---|---|---|
//! | `public` | n/a | n/a | n/a (no token) |
//! | `authenticated` | 60 s | 300 s | serve cached answer ≤ 60 + 300 s old, else 503 |
//! | `standard_write` | 30 s | 30 s | serve cached answer ≤ 30 + 30 s old, else 503 |
//! | `privileged` | 5 s | 0 | 503 + `Retry-After` (fail closed) |
//! | `regulated` | 1 s | 0 | 503 + `Retry-After` (fail closed) |
//!
//! All times are milliseconds; no clock is read here.

use crate::introspection::Introspection;
use crate::tier::Tier;

/// Step-up requirements (RFC 9470) of a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    /// `auth_time` must be at most this many seconds ago.
    pub max_auth_age_seconds: Option<i64>,
    /// When non-empty, `acr` must be one of these.
    pub acr_values: Vec<String>,
    /// Whether client tokens (no user behind them) must meet it too.
    pub applies_to: StepUpAppliesTo,
}

/// Which tokens a tier's step-up rules apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepUpAppliesTo {
    /// Tokens a user signed in for. A client's own token (client credentials: no `sub`, or a
    /// `sub` equal to its `client_id`) has no `auth_time` or `acr` to meet the rules with and is
    /// not challenged; scopes and claims still decide what it may do.
    #[default]
    UserTokens,
    /// Every token: client tokens are refused on the tier.
    AllTokens,
}

/// The rules of one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierRules {
    /// A cached introspection result older than this is not used while the IdP answers.
    pub max_staleness_ms: u64,
    /// Extra age a cached result may have when the IdP is failing. 0 = fail closed.
    pub stale_if_error_ms: u64,
    pub step_up: Option<StepUp>,
}

impl TierRules {
    /// The defaults of the table above.
    pub fn default_for(tier: Tier) -> TierRules {
        let (max_staleness_ms, stale_if_error_ms) = match tier {
            Tier::Public => (0, 0),
            Tier::Authenticated => (60_000, 300_000),
            Tier::StandardWrite => (30_000, 30_000),
            Tier::Privileged => (5_000, 0),
            Tier::Regulated => (1_000, 0),
        };
        TierRules {
            max_staleness_ms,
            stale_if_error_ms,
            step_up: None,
        }
    }

    /// Whether this tier may ever serve a stale answer.
    pub fn fails_closed(&self) -> bool {
        self.stale_if_error_ms == 0
    }
}

/// What to do with a cached result (or none) before asking the IdP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePlan {
    /// Use it; if `refresh_ahead`, also re-introspect in the background.
    Use { refresh_ahead: bool },
    /// Introspect now (nothing cached, or too old for this tier).
    Introspect,
}

/// Decides whether a cached result of age `age_ms` serves this tier. `refresh_ahead_fraction`
/// (0..1) is the point in the freshness window after which a hot entry is refreshed early.
pub fn plan(age_ms: Option<u64>, rules: &TierRules, refresh_ahead_fraction: f64) -> CachePlan {
    match age_ms {
        Some(age) if age < rules.max_staleness_ms => {
            let threshold = (rules.max_staleness_ms as f64 * refresh_ahead_fraction) as u64;
            CachePlan::Use {
                refresh_ahead: age >= threshold,
            }
        }
        _ => CachePlan::Introspect,
    }
}

/// What to do when the IdP failed (error, timeout, bad response, open circuit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPlan {
    /// Serve the cached result, which is within the tier's stale-if-error window.
    ServeStale,
    /// 503 with `Retry-After`.
    FailClosed,
}

pub fn on_idp_error(age_ms: Option<u64>, rules: &TierRules) -> ErrorPlan {
    match age_ms {
        Some(age)
            if !rules.fails_closed() && age < rules.max_staleness_ms + rules.stale_if_error_ms =>
        {
            ErrorPlan::ServeStale
        }
        _ => ErrorPlan::FailClosed,
    }
}

/// How long a result may stay in the cache: never past the token's `exp`, never longer than
/// the longest window any tier could use it for, never longer than `cap_ms`. Inactive results
/// stay `inactive_ttl_ms`.
pub fn cache_ttl_ms(
    result: &Introspection,
    now_ms: u64,
    longest_window_ms: u64,
    cap_ms: u64,
    inactive_ttl_ms: u64,
) -> u64 {
    if !result.active {
        return inactive_ttl_ms.min(cap_ms);
    }
    let until_exp = match result.expires_at {
        Some(exp) => (exp.max(0) as u64)
            .saturating_mul(1000)
            .saturating_sub(now_ms),
        None => u64::MAX,
    };
    until_exp.min(longest_window_ms).min(cap_ms)
}

/// A failed step-up check: what the client must come back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUpChallenge {
    pub max_age: Option<i64>,
    pub acr_values: Vec<String>,
}

impl StepUpChallenge {
    /// The `WWW-Authenticate` value (RFC 9470 §3).
    pub fn www_authenticate(&self, realm: &str) -> String {
        let mut value = format!("Bearer realm=\"{realm}\", error=\"insufficient_user_authentication\", error_description=\"a more recent or stronger authentication is required\"");
        if let Some(max_age) = self.max_age {
            value.push_str(&format!(", max_age=\"{max_age}\""));
        }
        if !self.acr_values.is_empty() {
            value.push_str(&format!(", acr_values=\"{}\"", self.acr_values.join(" ")));
        }
        value
    }
}

/// Checks `auth_time` and `acr` against a tier's step-up rule. `now` in seconds.
pub fn check_step_up(
    step_up: &StepUp,
    result: &Introspection,
    now: i64,
) -> Result<(), StepUpChallenge> {
    if step_up.applies_to == StepUpAppliesTo::UserTokens && !result.is_user_token() {
        return Ok(());
    }
    let challenge = || StepUpChallenge {
        max_age: step_up.max_auth_age_seconds,
        acr_values: step_up.acr_values.clone(),
    };
    if let Some(max_age) = step_up.max_auth_age_seconds {
        match result.auth_time {
            Some(t) if now - t <= max_age && t <= now + 60 => {}
            _ => return Err(challenge()),
        }
    }
    if !step_up.acr_values.is_empty()
        && !result
            .acr
            .as_ref()
            .is_some_and(|a| step_up.acr_values.contains(a))
    {
        return Err(challenge());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn active(exp: Option<i64>) -> Introspection {
        Introspection {
            active: true,
            expires_at: exp,
            ..Introspection::inactive()
        }
    }

    #[test]
    fn privileged_and_regulated_fail_closed_by_default() {
        for tier in [Tier::Privileged, Tier::Regulated] {
            let rules = TierRules::default_for(tier);
            assert!(rules.fails_closed());
            assert_eq!(on_idp_error(Some(0), &rules), ErrorPlan::FailClosed);
        }
        let auth = TierRules::default_for(Tier::Authenticated);
        assert_eq!(on_idp_error(Some(100_000), &auth), ErrorPlan::ServeStale);
        assert_eq!(on_idp_error(Some(360_000), &auth), ErrorPlan::FailClosed);
        assert_eq!(on_idp_error(None, &auth), ErrorPlan::FailClosed);
    }

    #[test]
    fn refresh_ahead_starts_late_in_the_window() {
        let rules = TierRules::default_for(Tier::Privileged);
        assert_eq!(
            plan(Some(1_000), &rules, 0.5),
            CachePlan::Use {
                refresh_ahead: false
            }
        );
        assert_eq!(
            plan(Some(3_000), &rules, 0.5),
            CachePlan::Use {
                refresh_ahead: true
            }
        );
        assert_eq!(plan(Some(5_000), &rules, 0.5), CachePlan::Introspect);
        assert_eq!(plan(None, &rules, 0.5), CachePlan::Introspect);
    }

    #[test]
    fn ttl_never_outlives_the_token() {
        let now = 1_000_000_000;
        assert_eq!(
            cache_ttl_ms(&active(Some(1_000_010)), now, 60_000, 300_000, 5_000),
            10_000
        );
        assert_eq!(
            cache_ttl_ms(&active(Some(999_000)), now, 60_000, 300_000, 5_000),
            0
        );
        assert_eq!(
            cache_ttl_ms(&active(None), now, 60_000, 30_000, 5_000),
            30_000
        );
        assert_eq!(
            cache_ttl_ms(&Introspection::inactive(), now, 60_000, 300_000, 5_000),
            5_000
        );
    }

    #[test]
    fn step_up_checks_auth_age_and_acr() {
        let rule = StepUp {
            max_auth_age_seconds: Some(300),
            acr_values: vec!["mfa".into()],
            applies_to: StepUpAppliesTo::UserTokens,
        };
        let mut r = active(None);
        r.subject = Some("alice".into());
        r.client_id = Some("web-app".into());
        r.auth_time = Some(1_000);
        r.acr = Some("mfa".into());
        assert!(check_step_up(&rule, &r, 1_200).is_ok());
        assert!(check_step_up(&rule, &r, 1_400).is_err(), "too old");
        r.acr = Some("pwd".into());
        let challenge = check_step_up(&rule, &r, 1_200).unwrap_err();
        let header = challenge.www_authenticate("api");
        assert!(header.contains("error=\"insufficient_user_authentication\""));
        assert!(header.contains("max_age=\"300\"") && header.contains("acr_values=\"mfa\""));
        r.auth_time = None;
        r.acr = Some("mfa".into());
        assert!(check_step_up(&rule, &r, 1_200).is_err(), "no auth_time");
    }

    #[test]
    fn step_up_leaves_client_tokens_alone_unless_told_otherwise() {
        let rule = StepUp {
            max_auth_age_seconds: Some(300),
            acr_values: Vec::new(),
            applies_to: StepUpAppliesTo::UserTokens,
        };
        // Client credentials: no sub; no auth_time.
        let mut no_sub = active(None);
        no_sub.client_id = Some("batch-job".into());
        let mut own_id = no_sub.clone();
        own_id.subject = Some("batch-job".into());
        let mut user = no_sub.clone();
        user.subject = Some("alice".into());
        assert!(check_step_up(&rule, &no_sub, 1_200).is_ok());
        // A `sub` equal to the client's id is no sign of a client: a user whose `sub` matches
        // a client id would skip step-up. Such a token is held to it.
        assert!(check_step_up(&rule, &own_id, 1_200).is_err());
        assert!(
            check_step_up(&rule, &user, 1_200).is_err(),
            "a user token without auth_time"
        );
        let everyone = StepUp {
            applies_to: StepUpAppliesTo::AllTokens,
            ..rule
        };
        assert!(check_step_up(&everyone, &no_sub, 1_200).is_err());
        assert!(check_step_up(&everyone, &own_id, 1_200).is_err());
    }

    proptest! {
        /// A cached result is never used past the tier's window, with or without IdP errors.
        #[test]
        fn stale_answers_are_bounded(age in 0u64..1_000_000, staleness in 0u64..100_000, grace in 0u64..100_000, fraction in 0.0f64..1.0) {
            let rules = TierRules { max_staleness_ms: staleness, stale_if_error_ms: grace, step_up: None };
            if let CachePlan::Use { .. } = plan(Some(age), &rules, fraction) {
                prop_assert!(age < staleness);
            }
            if on_idp_error(Some(age), &rules) == ErrorPlan::ServeStale {
                prop_assert!(grace > 0 && age < staleness + grace);
            }
        }
    }
}
