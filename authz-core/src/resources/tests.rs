//! Resource rules: parsing with every problem named, each rule kind, memoization.

use super::*;

fn rules(v: Value) -> Result<ResourceRules, Vec<String>> {
    let config: ResourcesConfig = serde_json::from_value(v).unwrap();
    let mut problems = Vec::new();
    let rules = config.settings("resources", &mut problems);
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems)
    }
}

fn example() -> ResourceRules {
    rules(serde_json::json!({"max_items": 100, "rules": [
        {"type": "order", "actions": ["read"], "tier": "authenticated",
         "require": {"scopes": ["orders"]}, "tenant_claim": "tenant"},
        {"type": "order", "actions": ["update", "delete"], "tier": "standard_write",
         "require": {"scopes": ["orders"]}, "tenant_claim": "tenant", "owner": true},
        {"type": "report", "actions": ["read"], "tier": "authenticated",
         "roles": {"claim": "roles", "any_of": ["analyst", "admin"]},
         "attributes": {"region": "regions"}}
    ]}))
    .unwrap()
}

fn claims(v: Value) -> Claims {
    Claims::from_json(v.to_string().as_bytes()).unwrap()
}

fn item(t: &str, id: &str, tenant: Option<&str>, owner: Option<&str>) -> Resource {
    Resource {
        resource_type: t.into(),
        id: id.into(),
        tenant: tenant.map(Into::into),
        owner: owner.map(Into::into),
        attributes: Default::default(),
    }
}

#[test]
fn each_rule_kind_decides_and_reasons_come_in_input_order() {
    let r = example();
    let c = claims(serde_json::json!({"sub": "alice", "scope": "orders",
        "tenant": ["acme", "globex"], "roles": ["analyst"], "regions": "eu"}));
    let caller = Caller {
        claims: &c,
        user: Some("alice"),
        tier: Tier::StandardWrite,
    };
    let mut report_eu = item("report", "r1", None, None);
    report_eu.attributes.insert("region".into(), "eu".into());
    let mut report_us = item("report", "r2", None, None);
    report_us.attributes.insert("region".into(), "us".into());
    let items = vec![
        item("order", "o1", Some("acme"), None),
        item("order", "o2", Some("initech"), None),
        item("order", "o3", None, None),
        item("invoice", "i1", Some("acme"), None),
        report_eu,
        report_us,
    ];
    let read = r.decide_all(&caller, "read", &items);
    assert_eq!(
        read.reasons,
        vec![
            ItemReason::Allowed,
            ItemReason::TenantMismatch,
            ItemReason::TenantMismatch,
            ItemReason::NoRule,
            ItemReason::Allowed,
            ItemReason::AttributeMismatch,
        ]
    );
    let writes = vec![
        item("order", "o1", Some("acme"), Some("alice")),
        item("order", "o2", Some("acme"), Some("bob")),
        item("order", "o3", Some("acme"), None),
    ];
    assert_eq!(
        r.decide_all(&caller, "delete", &writes).reasons,
        vec![
            ItemReason::Allowed,
            ItemReason::OwnerMismatch,
            ItemReason::OwnerMismatch
        ]
    );
    // A caller established at a lower tier than the rule's.
    let weaker = Caller {
        tier: Tier::Authenticated,
        ..caller
    };
    assert_eq!(
        r.decide_all(&weaker, "delete", &writes[..1]).reasons,
        vec![ItemReason::TierTooLow]
    );
    // Without the scope, or the role.
    let plain = claims(serde_json::json!({"sub": "bob", "scope": "read", "tenant": "acme"}));
    let bob = Caller {
        claims: &plain,
        user: Some("bob"),
        tier: Tier::Regulated,
    };
    let mut report = item("report", "r1", None, None);
    report.attributes.insert("region".into(), "eu".into());
    assert_eq!(
        r.decide_all(
            &bob,
            "read",
            &[item("order", "o1", Some("acme"), None), report]
        )
        .reasons,
        vec![ItemReason::InsufficientScope, ItemReason::RoleMissing]
    );
    assert_eq!(r.batch_tier("delete", &writes), Some(Tier::StandardWrite));
    assert_eq!(r.batch_tier("read", &writes), Some(Tier::Authenticated));
    assert_eq!(r.batch_tier("archive", &writes), None);
}

#[test]
fn identical_sub_decisions_are_computed_once_per_batch() {
    let r = example();
    let c = claims(serde_json::json!({"sub": "alice", "scope": "orders", "tenant": "acme"}));
    let caller = Caller {
        claims: &c,
        user: Some("alice"),
        tier: Tier::Authenticated,
    };
    let items: Vec<Resource> = (0..100)
        .map(|i| {
            let tenant = if i % 2 == 0 { "acme" } else { "globex" };
            item("order", &format!("o{i}"), Some(tenant), None)
        })
        .collect();
    let decided = r.decide_all(&caller, "read", &items);
    assert_eq!(decided.computed, 2, "one per (rule, tenant)");
    assert_eq!(decided.reasons.iter().filter(|r| r.allowed()).count(), 50);
}

#[test]
fn oversized_items_are_denied_not_evaluated() {
    let r = example();
    let c = claims(serde_json::json!({"sub": "alice", "scope": "orders", "tenant": "acme"}));
    let caller = Caller {
        claims: &c,
        user: Some("alice"),
        tier: Tier::Regulated,
    };
    let long = "x".repeat(MAX_FIELD_BYTES + 1);
    let mut many = item("order", "o", Some("acme"), None);
    for i in 0..=MAX_ATTRIBUTES {
        many.attributes.insert(format!("a{i}"), "v".into());
    }
    let decided = r.decide_all(
        &caller,
        "read",
        &[
            item("order", &long, Some("acme"), None),
            item("", "o", Some("acme"), None),
            many,
        ],
    );
    assert_eq!(decided.reasons, vec![ItemReason::InvalidResource; 3]);
}

#[test]
fn a_bad_section_is_refused_with_every_problem_named() {
    let problems = rules(serde_json::json!({"max_items": 0, "extra": 1, "rules": [
        {"actions": ["read"], "tier": "authenticated"},
        {"type": "order", "tier": "public", "actions": ["read"]},
        {"type": "order", "tier": "gold", "actions": []},
        {"type": "doc", "actions": ["read"], "tier": "authenticated",
         "require": {"tenant": {"claim": "t", "path_segment": 1}}, "roles": {"claim": "r"}},
        {"type": "doc", "actions": ["read"], "tier": "privileged"}
    ]}))
    .unwrap_err()
    .join("\n");
    for expected in [
        "resources.max_items: 0 is outside",
        "resources: unknown field \"extra\"",
        "resources.rules[0]: \"type\" is required",
        "resources.rules[1]: a resource rule needs a token",
        "resources.rules[2]: unknown tier",
        "resources.rules[2]: \"actions\" is required",
        "resources.rules[3].require: tenant is a route setting",
        "resources.rules[3].roles: \"any_of\" is required",
        "resources.rules[4]: type \"doc\" action \"read\" is covered by an earlier rule",
    ] {
        assert!(problems.contains(expected), "{expected} not in\n{problems}");
    }
    assert!(rules(serde_json::json!({"rules": []})).is_err());
}

#[test]
fn a_clients_own_token_owns_nothing_and_introspection_is_asked_for_by_a_rule() {
    let r = rules(serde_json::json!({"rules": [
        {"type": "order", "actions": ["update"], "tier": "privileged", "owner": true,
         "require": {"introspect": true}},
        {"type": "order", "actions": ["read"], "tier": "authenticated"}
    ]}))
    .unwrap();
    let c = claims(serde_json::json!({"client_id": "alice"}));
    // A client whose id is a user's `sub`: not that user.
    let client = Caller {
        claims: &c,
        user: None,
        tier: Tier::Regulated,
    };
    let owned = [item("order", "o1", None, Some("alice"))];
    assert_eq!(
        r.decide_all(&client, "update", &owned).reasons,
        vec![ItemReason::OwnerMismatch]
    );
    let user = Caller {
        user: Some("alice"),
        ..client
    };
    assert_eq!(
        r.decide_all(&user, "update", &owned).reasons,
        vec![ItemReason::Allowed]
    );
    assert!(r.batch_introspects("update", &owned));
    assert!(!r.batch_introspects("read", &owned));
    // `introspect` needs a server tier, as on routes.
    let problems = rules(serde_json::json!({"rules": [
        {"type": "order", "actions": ["read"], "tier": "authenticated", "require": {"introspect": true}}
    ]}))
    .unwrap_err()
    .join("\n");
    assert!(
        problems.contains("introspect: needs a server-decided tier"),
        "{problems}"
    );
}
