//! Resource rules for batch authorization (list endpoints): the policy's `resources:` section
//! ([`ResourcesConfig`] → [`ResourceRules`]) and the decision for each item of a batch
//! ([`ResourceRules::decide_all`]): which rule covers a resource type and action, the tier
//! its caller's token must have been checked at, and what must hold between the caller and
//! the resource (scopes and claims as on routes, the resource's tenant among the caller's,
//! the caller owning it, a role per resource type, attributes matching claims).
//!
//! Request-scoped memoization: within one batch (one caller, one action) the part of a
//! decision that depends on the rule and the resource's tenant and attributes is computed
//! once per distinct (rule, tenant, attributes) and reused; only the owner comparison is made
//! per item.
//!
//! What it does not do: establish who the caller is (the server verifies or introspects the
//! token once per batch, or verifies a signed context), fetch anything or read a clock.

use crate::claims::Claims;
use crate::config::{parse_requirements, parse_tier, Problems, RequireConfig};
use crate::routes::{ClaimRule, Requirements};
use crate::tier::Tier;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;

pub mod defaults {
    /// Resources one batch may name.
    pub const MAX_ITEMS: usize = 1_000;
}

/// The most resources a batch may name whatever `max_items` says.
pub const MAX_ITEMS_LIMIT: usize = 10_000;
/// Longest resource type, id, tenant, owner, attribute name or value (bytes).
pub const MAX_FIELD_BYTES: usize = 512;
/// Most attributes one resource may carry.
pub const MAX_ATTRIBUTES: usize = 32;

/// `resources:` as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResourcesConfig {
    /// Resources one batch may name, 1–10000; a larger batch is refused whole (400).
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::MAX_ITEMS)))]
    pub max_items: Option<usize>,
    /// One rule per resource type and set of actions; a resource no rule covers is denied.
    #[serde(default)]
    pub rules: Vec<ResourceRuleConfig>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// One resource rule as written.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResourceRuleConfig {
    /// Required: the resource type it covers (`order`, `document`, ...).
    #[serde(rename = "type")]
    pub resource_type: Option<String>,
    /// Required: the actions it covers (`read`, `update`, ...).
    #[serde(default)]
    pub actions: Vec<String>,
    /// Required: the tier the caller's token is checked at (freshness and fallback as for a
    /// route of that tier): `authenticated`, `standard_write`, `privileged` or `regulated`.
    pub tier: Option<String>,
    /// Scopes and claim rules the caller's token must satisfy, as on a route (`tenant` is a
    /// route matter: use `tenant_claim`); `introspect` (privileged and regulated rules): the
    /// IdP is asked even about a JWT the server could verify, for the whole batch.
    pub require: Option<RequireConfig>,
    /// The resource's `tenant` must be one the caller's token carries in this claim (a string,
    /// or an array of them); a resource without a tenant is denied.
    pub tenant_claim: Option<String>,
    /// The resource's `owner` must be the caller: a user (`sub`); a client's own token owns
    /// nothing (a client id equal to a user's `sub` is not that user).
    #[serde(default)]
    pub owner: bool,
    /// A role for this resource type: the caller's token must carry one of `any_of` in
    /// `claim` (an array, or a space-delimited string).
    pub roles: Option<RolesConfig>,
    /// Resource attribute → token claim: the attribute must be a value the claim carries.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// `roles: {claim: roles, any_of: [editor, admin]}`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RolesConfig {
    pub claim: Option<String>,
    #[serde(default)]
    pub any_of: Vec<String>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct ResourceRule {
    pub resource_type: String,
    pub actions: Vec<String>,
    pub tier: Tier,
    pub require: Requirements,
    pub tenant_claim: Option<String>,
    pub owner: bool,
    /// (claim, any of these roles).
    pub roles: Option<(String, Vec<String>)>,
    /// (resource attribute, token claim), in name order.
    pub attributes: Vec<(String, String)>,
}

/// The validated `resources:` section.
#[derive(Debug, Clone, Default)]
pub struct ResourceRules {
    pub max_items: usize,
    pub rules: Vec<ResourceRule>,
}

impl ResourcesConfig {
    /// The rules; every problem is added to `problems` with `at` before it.
    pub fn settings(&self, at: &str, problems: &mut Vec<String>) -> ResourceRules {
        let mut p = Problems(std::mem::take(problems));
        p.unknown(at, &self.unknown);
        let max_items = self.max_items.unwrap_or(defaults::MAX_ITEMS);
        if !(1..=MAX_ITEMS_LIMIT).contains(&max_items) {
            p.add(
                &format!("{at}.max_items"),
                format_args!("{max_items} is outside 1–{MAX_ITEMS_LIMIT}"),
            );
        }
        if self.rules.is_empty() {
            p.add(
                &format!("{at}.rules"),
                "empty (a batch could allow nothing)",
            );
        }
        let mut rules: Vec<ResourceRule> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("{at}.rules[{i}]");
            if let Some(rule) = parse_rule(&mut p, &at, rule) {
                for action in &rule.actions {
                    if rules.iter().any(|r| {
                        r.resource_type == rule.resource_type && r.actions.contains(action)
                    }) {
                        p.add(
                            &at,
                            format_args!(
                                "type \"{}\" action \"{action}\" is covered by an earlier rule",
                                rule.resource_type
                            ),
                        );
                    }
                }
                rules.push(rule);
            }
        }
        *problems = p.0;
        ResourceRules { max_items, rules }
    }
}

fn parse_rule(p: &mut Problems, at: &str, rule: &ResourceRuleConfig) -> Option<ResourceRule> {
    p.unknown(at, &rule.unknown);
    let resource_type = p.required(at, "type", &rule.resource_type).cloned();
    let tier = parse_tier(p, at, &rule.tier);
    if tier == Tier::Public {
        p.add(
            at,
            "a resource rule needs a token: public is not a tier for it",
        );
    }
    if rule.actions.is_empty() {
        p.add(at, "\"actions\" is required (at least one)");
    }
    let require = parse_requirements(p, &format!("{at}.require"), tier, &rule.require);
    if require.tenant.is_some() {
        p.add(
            &format!("{at}.require"),
            "tenant is a route setting: use tenant_claim here",
        );
    }
    let roles = rule.roles.as_ref().and_then(|r| {
        let at = format!("{at}.roles");
        p.unknown(&at, &r.unknown);
        if r.any_of.is_empty() {
            p.add(&at, "\"any_of\" is required (at least one role)");
        }
        p.required(&at, "claim", &r.claim)
            .map(|claim| (claim.clone(), r.any_of.clone()))
    });
    for name in [resource_type.as_deref(), rule.tenant_claim.as_deref()]
        .into_iter()
        .flatten()
        .chain(rule.actions.iter().map(String::as_str))
    {
        if name.is_empty() || name.len() > MAX_FIELD_BYTES {
            p.add(at, format_args!("\"{name}\" is not a name"));
        }
    }
    Some(ResourceRule {
        resource_type: resource_type?,
        actions: rule.actions.clone(),
        tier,
        require,
        tenant_claim: rule.tenant_claim.clone(),
        owner: rule.owner,
        roles,
        attributes: rule
            .attributes
            .iter()
            .map(|(a, c)| (a.clone(), c.clone()))
            .collect(),
    })
}

/// One resource of a batch, as the caller describes it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub id: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// Why an item was allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemReason {
    Allowed,
    /// No rule covers the resource type and action.
    NoRule,
    InsufficientScope,
    ClaimMismatch,
    TenantMismatch,
    OwnerMismatch,
    RoleMissing,
    AttributeMismatch,
    /// The caller was established at a lower tier than the rule needs (a signed context
    /// from a weaker decision).
    TierTooLow,
    /// The item's fields are too long or too many.
    InvalidResource,
}

impl ItemReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemReason::Allowed => "allowed",
            ItemReason::NoRule => "no_rule",
            ItemReason::InsufficientScope => "insufficient_scope",
            ItemReason::ClaimMismatch => "claim_mismatch",
            ItemReason::TenantMismatch => "tenant_mismatch",
            ItemReason::OwnerMismatch => "owner_mismatch",
            ItemReason::RoleMissing => "role_missing",
            ItemReason::AttributeMismatch => "attribute_mismatch",
            ItemReason::TierTooLow => "tier_too_low",
            ItemReason::InvalidResource => "invalid_resource",
        }
    }

    pub fn allowed(self) -> bool {
        self == ItemReason::Allowed
    }
}

/// Who asks, as the server established it once for the batch.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub claims: &'a Claims,
    /// The user the token speaks for (`sub`), what an `owner` rule compares; `None` for a
    /// client's own token.
    pub user: Option<&'a str>,
    /// The tier the caller's token was checked at.
    pub tier: Tier,
}

/// The decisions of a batch, in input order, and how many were computed rather than reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchDecisions {
    pub reasons: Vec<ItemReason>,
    /// Distinct (rule, tenant, attributes) evaluations made.
    pub computed: usize,
}

/// What a rule's shared part of a decision depends on: the rule, the resource's tenant, and
/// the values of the attributes the rule reads.
type SharedPart<'a> = (usize, Option<&'a str>, Vec<Option<&'a str>>);

/// Whether the token's `claim` carries `value` (a string equal to it, an array holding it).
fn claim_carries(claims: &Claims, claim: &str, value: &str) -> bool {
    match claims.raw.get(claim) {
        Some(Value::String(s)) => s == value,
        Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(value)),
        _ => false,
    }
}

impl ResourceRules {
    /// The rule covering `resource_type` and `action`.
    pub fn rule_for(&self, resource_type: &str, action: &str) -> Option<(usize, &ResourceRule)> {
        self.rules.iter().enumerate().find(|(_, r)| {
            r.resource_type == resource_type && r.actions.iter().any(|a| a == action)
        })
    }

    /// The tier a batch's token must be checked at: the strictest of the rules its resources
    /// fall under (`None`: no resource has a rule, nothing can be allowed).
    pub fn batch_tier(&self, action: &str, resources: &[Resource]) -> Option<Tier> {
        resources
            .iter()
            .filter_map(|r| self.rule_for(&r.resource_type, action))
            .map(|(_, rule)| rule.tier)
            .max()
    }

    /// Whether a rule the batch's resources fall under asks the IdP even about a JWT
    /// (`require.introspect`).
    pub fn batch_introspects(&self, action: &str, resources: &[Resource]) -> bool {
        resources
            .iter()
            .filter_map(|r| self.rule_for(&r.resource_type, action))
            .any(|(_, rule)| rule.require.introspect)
    }

    /// One decision per resource, in input order.
    pub fn decide_all(
        &self,
        caller: &Caller<'_>,
        action: &str,
        resources: &[Resource],
    ) -> BatchDecisions {
        let mut memo: HashMap<SharedPart<'_>, ItemReason> = HashMap::new();
        let mut reasons = Vec::with_capacity(resources.len());
        for resource in resources {
            if !valid(resource) {
                reasons.push(ItemReason::InvalidResource);
                continue;
            }
            let Some((index, rule)) = self.rule_for(&resource.resource_type, action) else {
                reasons.push(ItemReason::NoRule);
                continue;
            };
            let attributes: Vec<Option<&str>> = rule
                .attributes
                .iter()
                .map(|(name, _)| resource.attributes.get(name).map(String::as_str))
                .collect();
            let key = (index, resource.tenant.as_deref(), attributes);
            let shared = match memo.get(&key) {
                Some(reason) => *reason,
                None => {
                    let reason = rule_holds(rule, caller, resource);
                    memo.insert(key, reason);
                    reason
                }
            };
            let reason = if shared.allowed() && rule.owner && !owns(caller, resource) {
                ItemReason::OwnerMismatch
            } else {
                shared
            };
            reasons.push(reason);
        }
        BatchDecisions {
            reasons,
            computed: memo.len(),
        }
    }
}

fn valid(resource: &Resource) -> bool {
    let short = |s: &str| s.len() <= MAX_FIELD_BYTES;
    !resource.resource_type.is_empty()
        && short(&resource.resource_type)
        && short(&resource.id)
        && resource.tenant.as_deref().is_none_or(short)
        && resource.owner.as_deref().is_none_or(short)
        && resource.attributes.len() <= MAX_ATTRIBUTES
        && resource
            .attributes
            .iter()
            .all(|(k, v)| short(k) && short(v))
}

fn owns(caller: &Caller<'_>, resource: &Resource) -> bool {
    matches!((caller.user, resource.owner.as_deref()), (Some(user), Some(o)) if user == o)
}

/// What a rule demands of the caller and the resource's tenant and attributes (the part of a
/// decision shared by every resource with the same ones).
fn rule_holds(rule: &ResourceRule, caller: &Caller<'_>, resource: &Resource) -> ItemReason {
    if caller.tier < rule.tier {
        return ItemReason::TierTooLow;
    }
    if !rule
        .require
        .scopes
        .iter()
        .all(|s| caller.claims.has_scope(s))
    {
        return ItemReason::InsufficientScope;
    }
    if !rule
        .require
        .claims
        .iter()
        .all(|c: &ClaimRule| c.holds(caller.claims))
    {
        return ItemReason::ClaimMismatch;
    }
    if let Some((claim, any_of)) = &rule.roles {
        let held = any_of
            .iter()
            .any(|role| match caller.claims.raw.get(claim) {
                Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(role)),
                Some(Value::String(s)) => s.split(' ').any(|w| w == role),
                _ => false,
            });
        if !held {
            return ItemReason::RoleMissing;
        }
    }
    if let Some(claim) = &rule.tenant_claim {
        let ok = resource
            .tenant
            .as_deref()
            .is_some_and(|t| claim_carries(caller.claims, claim, t));
        if !ok {
            return ItemReason::TenantMismatch;
        }
    }
    for (attribute, claim) in &rule.attributes {
        let ok = resource
            .attributes
            .get(attribute)
            .is_some_and(|v| claim_carries(caller.claims, claim, v));
        if !ok {
            return ItemReason::AttributeMismatch;
        }
    }
    ItemReason::Allowed
}

#[cfg(test)]
mod tests;
