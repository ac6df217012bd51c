//! `GET /admin/canary` and `POST /admin/canary`: a candidate route policy in dry-run, its
//! promotion, its abandonment, and the revert of a promotion (`authz_core::canary`). Each is
//! one or more incident-switch changes (`canary`, `policy`), so it reaches every server through
//! the shared tier and every filter through its change feed within the feed's bound, is kept
//! across restarts like the other switches, and is logged (`switch_changed`: who, what, when)
//! and counted (`authz_switch_changes_total{switch="canary"|"policy"}`).
//!
//! | action | body | changes |
//! |---|---|---|
//! | `start` | `canary` (`candidate`: `{id, routes, default}` in the filter's syntax, `per_million`, `sticky`, `log_per_million`), optional `for_seconds` | the `canary` switch; a running candidate is replaced |
//! | `promote` | `id` of the running candidate | the `policy` switch to it, the `canary` switch off, the policy version bumped (every cached decision was made under the other routes) |
//! | `abandon` | | the `canary` switch off |
//! | `revert` | | the `policy` switch off (the configured routes again), the policy version bumped |
//!
//! Every action needs `by` (who asks). A candidate is checked with the filter's route rules
//! before it is accepted; a filter whose own configuration cannot apply it does not run it and
//! counts `authz_proxy_canary_refused_total`.

use crate::admin::{by_problem, Admin, MAX_SWITCH_SECONDS};
use crate::versions::Change;
use authz_core::canary::Canary;
use authz_core::switches::Setting;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    action: String,
    by: Option<String>,
    canary: Option<Canary>,
    id: Option<String>,
    for_seconds: Option<u64>,
}

/// `GET /admin/canary`: the candidate running and the promoted policy.
pub async fn get_canary(State(admin): State<Admin>) -> Response {
    let now_ms = admin.service.clock.now_ms();
    let switches = admin.service.versions.switches();
    Json(json!({
        "now_ms": now_ms,
        "canary": switches.canary_at(now_ms),
        "promoted": switches.policy,
        "enforced": switches.policy.as_ref().map_or("configured", |p| p.id.as_str()),
    }))
    .into_response()
}

fn refused(status: StatusCode, problems: Vec<String>) -> Response {
    (
        status,
        Json(json!({"error": "canary change refused", "problems": problems})),
    )
        .into_response()
}

/// The settings an action asks for at `now_ms`, or every problem with it.
fn settings_for(
    admin: &Admin,
    body: CanaryBody,
    now_ms: u64,
) -> Result<Vec<Setting>, (StatusCode, Vec<String>)> {
    let bad = StatusCode::BAD_REQUEST;
    let mut problems: Vec<String> = by_problem(body.by.as_deref()).into_iter().collect();
    let switches = admin.service.versions.switches();
    let running = switches.canary_at(now_ms);
    let only_for_start = |field: &str, present: bool, problems: &mut Vec<String>| {
        if present && body.action != "start" {
            problems.push(format!("{field}: only with action start"));
        }
    };
    only_for_start("canary", body.canary.is_some(), &mut problems);
    only_for_start("for_seconds", body.for_seconds.is_some(), &mut problems);
    if body.id.is_some() && body.action != "promote" {
        problems.push("id: only with action promote".to_owned());
    }
    // Promotion names a candidate by id: one id, one set of routes.
    let id_taken = match (&body.canary, running) {
        (Some(asked), Some(running)) => {
            asked.candidate.id == running.candidate.id && asked.candidate != running.candidate
        }
        _ => false,
    };
    let settings = match body.action.as_str() {
        "start" if id_taken => {
            return Err((
                StatusCode::CONFLICT,
                vec!["canary.candidate.id: a candidate with this id and other routes is running; abandon it first, or use another id".into()],
            ))
        }
        "start" => match body.canary {
            None => {
                problems.push("canary: required to start".to_owned());
                Vec::new()
            }
            Some(mut canary) => {
                problems.extend(canary.problems());
                match body.for_seconds {
                    Some(s) if !(1..=MAX_SWITCH_SECONDS).contains(&s) => {
                        problems.push(format!("for_seconds: 1 to {MAX_SWITCH_SECONDS}"))
                    }
                    Some(s) => canary.until_ms = Some(now_ms.saturating_add(s * 1000)),
                    None => canary.until_ms = None,
                }
                vec![Setting::Canary {
                    canary: Some(canary),
                }]
            }
        },
        "promote" => match (running, body.id.as_deref()) {
            (_, None) => {
                problems.push("id: the running candidate's id is required".to_owned());
                Vec::new()
            }
            (Some(canary), Some(id)) if canary.candidate.id == id => vec![
                Setting::Policy {
                    policy: Some(canary.candidate.clone()),
                },
                Setting::Canary { canary: None },
            ],
            (_, Some(id)) => {
                return Err((
                    StatusCode::CONFLICT,
                    vec![format!("id: no candidate \"{id}\" is running")],
                ))
            }
        },
        "abandon" if running.is_none() => {
            return Err((StatusCode::CONFLICT, vec!["no candidate is running".into()]))
        }
        "abandon" => vec![Setting::Canary { canary: None }],
        "revert" if switches.policy.is_none() => {
            return Err((
                StatusCode::CONFLICT,
                vec!["no route policy is promoted".into()],
            ))
        }
        "revert" => vec![Setting::Policy { policy: None }],
        other => {
            problems.push(format!(
                "action: \"{other}\" is not one of start, promote, abandon, revert"
            ));
            Vec::new()
        }
    };
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err((bad, problems))
    }
}

/// `POST /admin/canary`.
pub async fn set_canary(State(admin): State<Admin>, body: Bytes) -> Response {
    let body: CanaryBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return refused(StatusCode::BAD_REQUEST, vec![format!("body: {e}")]),
    };
    let now_ms = admin.service.clock.now_ms();
    let (action, by) = (body.action.clone(), body.by.clone().unwrap_or_default());
    let settings = match settings_for(&admin, body, now_ms) {
        Ok(settings) => settings,
        Err((status, problems)) => return refused(status, problems),
    };
    let changes_policy = settings.iter().any(|s| matches!(s, Setting::Policy { .. }));
    let mut last = None;
    for setting in settings {
        last = Some(admin.record_switch(setting, by.clone(), now_ms).await);
    }
    if changes_policy {
        // Every cached result was decided under the other routes.
        last = Some(admin.record(Change::BumpPolicy { version: None }).await);
    }
    let (version, shared) = last.map_or((0, "local"), |(applied, delivery)| {
        (applied.stamp, delivery.as_str())
    });
    let switches = admin.service.versions.switches();
    Json(json!({
        "action": action,
        "version": version,
        "shared": shared,
        "canary": switches.canary_at(now_ms),
        "enforced": switches.policy.as_ref().map_or("configured", |p| p.id.as_str()),
    }))
    .into_response()
}
