//! The route table: which tier and which requirements apply to a request, by path and method.
//!
//! Matching is first-match-wins over the configured routes, then the explicit default.
//! Safe by default, because many upstreams treat other spellings of a path as the same
//! resource: routes see the [`match_path`] (no query or fragment, no `;` path parameters in any
//! segment, percent-encoded unreserved characters decoded), a `prefix` matches on path-segment
//! boundaries (`/admin` and `/admin/` both cover `/admin`, `/admin/…` and `/admin;x/…`, never
//! `/administrators`), matching ignores ASCII case unless a route sets `ignore_case: false`,
//! and methods are compared upper-case. `regex` must match the whole match path.
//! The proxy must still normalise paths before this runs (Envoy: `normalize_path`,
//! `merge_slashes`), so `/public/../admin` never reaches the matcher unresolved.
//!
//! Requirements are checked against already-verified claims; this module never looks at a
//! token.

use crate::claims::Claims;
use crate::tier::Tier;
use serde_json::Value;

/// How a route matches the request path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Anchored at both ends when compiled.
    Regex(regex::Regex),
}

impl PathMatch {
    /// Whether `path` (a [`match_path`]) matches; `ignore_case` compares ASCII letters without
    /// case (a regex carries its own flag, set when it was compiled).
    fn matches(&self, path: &str, ignore_case: bool) -> bool {
        let same = |a: &str, b: &str| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            PathMatch::Exact(p) => same(path, p),
            PathMatch::Prefix(p) => {
                let base = p.strip_suffix('/').unwrap_or(p);
                if base.is_empty() {
                    return true;
                }
                let head_matches = path.get(..base.len()).is_some_and(|head| same(head, base));
                head_matches && matches!(path.as_bytes().get(base.len()), None | Some(b'/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// Whether `path` is an origin-form request target (RFC 9112 §3.2.1: it starts with `/`).
/// Anything else (`*`, `;/admin`, an empty or missing `:path`, an absolute URI the proxy did not
/// rewrite) is a bad request in every host: an upstream may resolve such a target in ways the
/// route table cannot see (`;/healthz` canonicalises to `/healthz`, but a server that ignores
/// the leading `;` segment differently would not agree on what was asked for).
pub fn is_origin_form(path: &str) -> bool {
    path.starts_with('/')
}

/// The path routes are matched against: `path` without query string or fragment, without `;`
/// parameters in any segment (`/admin;x/users` → `/admin/users`: servlet containers and others
/// strip them), with percent-encoded unreserved characters decoded (`/%61dmin` → `/admin`).
///
/// The result is a fixpoint (`match_path(match_path(p)) == match_path(p)`): decoding is repeated
/// while it changes anything, so `/%%36%31dmin` (which decodes to `/%61dmin`) is matched as
/// `/admin`, the way an upstream that decodes twice would read it. (Found by the `routes` fuzz
/// target.) Each pass that changes the path shortens it, so this ends.
pub fn match_path(path: &str) -> String {
    let path = path_only(path);
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or(""));
    }
    // Decoding yields only unreserved characters, never `/` or `;`, so it can follow the
    // parameter stripping; most paths have no `%` and skip it.
    while out.contains('%') {
        let mut again = String::with_capacity(out.len());
        decode_unreserved(&out, &mut again);
        if again == out {
            break;
        }
        out = again;
    }
    out
}

/// Appends `text` with `%XX` decoded where XX is an unreserved character (RFC 3986 §2.3:
/// decoding those never changes what a URI means); every other escape stays as written.
pub(crate) fn decode_unreserved(text: &str, out: &mut String) {
    let bytes = text.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(c) = hex.filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c)) {
                out.push_str(text.get(copied..i).unwrap_or(""));
                out.push(char::from(c));
                i += 3;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(text.get(copied..).unwrap_or(""));
}

/// A claim requirement.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimRule {
    /// The claim equals this JSON value exactly.
    Equals { claim: String, value: Value },
    /// The claim is an array holding this string, or a space-delimited string with this word.
    Contains { claim: String, value: String },
}

impl ClaimRule {
    /// Whether the token's claims satisfy the rule.
    pub fn holds(&self, claims: &Claims) -> bool {
        match self {
            ClaimRule::Equals { claim, value } => claims.raw.get(claim) == Some(value),
            ClaimRule::Contains { claim, value } => match claims.raw.get(claim) {
                Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(value)),
                Some(Value::String(s)) => s.split(' ').any(|w| w == value),
                _ => false,
            },
        }
    }
}

/// The tenant named by a path segment must be one the token carries in `claim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRule {
    pub claim: String,
    /// 1-based index of the segment: in `/tenants/acme/orders`, segment 2 is `acme`.
    pub path_segment: usize,
}

impl TenantRule {
    /// The tenant `path` (a [`match_path`]) names.
    pub fn tenant_of<'p>(&self, path: &'p str) -> Option<&'p str> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .nth(self.path_segment.saturating_sub(1))
    }

    fn holds(&self, claims: &Claims, path: &str) -> bool {
        let Some(tenant) = self.tenant_of(path) else {
            return false;
        };
        match claims.raw.get(&self.claim) {
            Some(Value::String(s)) => s == tenant,
            Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(tenant)),
            _ => false,
        }
    }
}

/// What a verified token must also satisfy on a route.
#[derive(Debug, Clone, Default)]
pub struct Requirements {
    /// Every one of these scopes must be granted.
    pub scopes: Vec<String>,
    /// Every one of these rules must hold.
    pub claims: Vec<ClaimRule>,
    pub tenant: Option<TenantRule>,
    /// Ask the IdP even about a token the server could verify itself (`require.introspect`).
    pub introspect: bool,
}

/// Which requirement was not met (for logs and metrics only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmet {
    Scope,
    Claim,
    Tenant,
}

impl Requirements {
    /// Checks the requirements in a fixed order: scopes, claims, tenant.
    pub fn check(&self, claims: &Claims, path: &str) -> Result<(), Unmet> {
        if !self.scopes.iter().all(|s| claims.has_scope(s)) {
            return Err(Unmet::Scope);
        }
        if !self.claims.iter().all(|rule| rule.holds(claims)) {
            return Err(Unmet::Claim);
        }
        match &self.tenant {
            Some(rule) if !rule.holds(claims, path) => Err(Unmet::Tenant),
            _ => Ok(()),
        }
    }
}

/// One route rule.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// `None` only for the default route.
    pub path: Option<PathMatch>,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
    /// Compare the path without ASCII case (default true; see the module doc).
    pub ignore_case: bool,
    pub tier: Tier,
    pub require: Requirements,
    /// Set: the filter asks the server for this (locally decidable) route and reuses a
    /// decision at most this long (ms).
    pub fresh_cache_ms: Option<u64>,
    /// Set: allowed from the local verification at once, then checked by the server in the
    /// background, at most once per token in this long (ms).
    pub background_check_ms: Option<u64>,
}

impl Route {
    /// Whether this route covers `method` and `path` (a [`match_path`]).
    fn matches(&self, method: &str, path: &str) -> bool {
        let method_ok =
            self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method));
        method_ok
            && self
                .path
                .as_ref()
                .is_none_or(|p| p.matches(path, self.ignore_case))
    }
}

/// The ordered routes and the default.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pub routes: Vec<Route>,
    pub default: Route,
}

/// The path without query string or fragment.
pub fn path_only(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(end) => path.get(..end).unwrap_or(path),
        None => path,
    }
}

impl RouteTable {
    /// The first route that matches, or the default. `path` may carry a query string.
    pub fn find(&self, method: &str, path: &str) -> &Route {
        self.find_matched(method, &match_path(path))
    }

    /// The route named `name` (the default's is `default`), as a decision names it.
    pub fn named(&self, name: &str) -> Option<&Route> {
        self.routes
            .iter()
            .chain(std::iter::once(&self.default))
            .find(|r| r.name == name)
    }

    /// [`RouteTable::find`] for a path already turned into its [`match_path`].
    pub fn find_matched(&self, method: &str, match_path: &str) -> &Route {
        self.routes
            .iter()
            .find(|r| r.matches(method, match_path))
            .unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn route(name: &str, path: PathMatch, methods: &[&str], tier: Tier) -> Route {
        Route {
            name: name.into(),
            path: Some(path),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            ignore_case: true,
            tier,
            require: Requirements::default(),
            fresh_cache_ms: None,
            background_check_ms: None,
        }
    }

    fn table() -> RouteTable {
        RouteTable {
            routes: vec![
                route(
                    "health",
                    PathMatch::Exact("/healthz".into()),
                    &[],
                    Tier::Public,
                ),
                route(
                    "read",
                    PathMatch::Prefix("/api/".into()),
                    &["GET", "HEAD"],
                    Tier::Authenticated,
                ),
                route(
                    "write",
                    PathMatch::Prefix("/api/".into()),
                    &[],
                    Tier::StandardWrite,
                ),
                route(
                    "admin",
                    PathMatch::Regex(regex::Regex::new("^(?:/admin/[a-z]+)$").unwrap()),
                    &[],
                    Tier::Privileged,
                ),
            ],
            default: Route {
                name: "default".into(),
                path: None,
                methods: vec![],
                ignore_case: true,
                tier: Tier::Authenticated,
                require: Requirements::default(),
                fresh_cache_ms: None,
                background_check_ms: None,
            },
        }
    }

    #[test]
    fn first_match_wins_and_methods_narrow() {
        let t = table();
        assert_eq!(t.named("write").map(|r| r.tier), Some(Tier::StandardWrite));
        assert_eq!(
            t.named("default").map(|r| r.tier),
            Some(Tier::Authenticated)
        );
        assert!(t.named("nothing").is_none());
        assert_eq!(t.find("GET", "/api/items?x=1").name, "read");
        assert_eq!(t.find("POST", "/api/items").name, "write");
        assert_eq!(t.find("GET", "/healthz").name, "health");
        assert_eq!(t.find("GET", "/healthz/x").name, "default");
        assert_eq!(t.find("GET", "/admin/users").name, "admin");
        assert_eq!(
            t.find("GET", "/admin/users/1").name,
            "default",
            "regex is anchored"
        );
    }

    #[test]
    fn other_spellings_of_a_route_match_it() {
        let mut t = table();
        t.routes.push(route(
            "payments",
            PathMatch::Prefix("/payments/".into()),
            &[],
            Tier::Privileged,
        ));
        t.routes.push(route(
            "admin-any",
            PathMatch::Prefix("/admin".into()),
            &[],
            Tier::Privileged,
        ));
        for path in [
            "/payments",
            "/payments/",
            "/PAYMENTS/x",
            "/Payments/x?y=1",
            "/payments;jsessionid=1/x",
            "/payments;x",
            "/%70ayments/x",
        ] {
            assert_eq!(t.find("GET", path).name, "payments", "{path}");
        }
        for path in [
            "/admin",
            "/ADMIN/users",
            "/admin;x/users",
            "/admin/",
            "/Admin/x/y",
        ] {
            assert_eq!(t.find("get", path).tier, Tier::Privileged, "{path}");
        }
        // Segment boundaries: a prefix never covers a longer segment.
        assert_eq!(t.find("GET", "/paymentsx/1").name, "default");
        assert_eq!(t.find("GET", "/administrators").name, "default");
        // Methods compare upper-case.
        assert_eq!(t.find("get", "/api/items").name, "read");
        assert_eq!(t.find("Post", "/api/items").name, "write");
        // An escape of a reserved character stays an escape.
        assert_eq!(match_path("/a%2Fb/%7e;p?q"), "/a%2Fb/~");
        assert!(is_origin_form("/"));
        assert!(!is_origin_form(";/healthz"));
        assert!(!is_origin_form("*"));
        assert!(!is_origin_form(""));
        assert!(!is_origin_form("http://x/admin"));
        assert_eq!(match_path("/x%"), "/x%");
        assert_eq!(match_path("/x%4"), "/x%4");
        // Fuzz finding (routes target): an escape that decodes into another escape.
        assert_eq!(match_path("/%%36%31dmin/users"), "/admin/users");
        assert_eq!(match_path(" di/%%6ad1"), " di/%jd1");
        assert_eq!(t.find("GET", "/%%36%31dmin/users").tier, Tier::Privileged);
    }

    #[test]
    fn case_sensitive_routes_stay_exact() {
        let mut t = table();
        let mut r = route("exact", PathMatch::Exact("/Docs".into()), &[], Tier::Public);
        r.ignore_case = false;
        t.routes.insert(0, r);
        assert_eq!(t.find("GET", "/Docs").name, "exact");
        assert_eq!(t.find("GET", "/docs").name, "default");
    }

    fn claims(json: serde_json::Value) -> Claims {
        Claims::from_json(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn requirements_check_scopes_claims_and_tenant() {
        let req = Requirements {
            scopes: vec!["orders:write".into()],
            claims: vec![
                ClaimRule::Contains {
                    claim: "roles".into(),
                    value: "editor".into(),
                },
                ClaimRule::Equals {
                    claim: "email_verified".into(),
                    value: json!(true),
                },
            ],
            tenant: Some(TenantRule {
                claim: "tenant".into(),
                path_segment: 2,
            }),
            introspect: false,
        };
        let good = claims(
            json!({"scope": "orders:write", "roles": ["viewer", "editor"], "email_verified": true, "tenant": "acme"}),
        );
        assert_eq!(req.check(&good, "/tenants/acme/orders"), Ok(()));
        assert_eq!(
            req.check(&good, "/tenants/globex/orders"),
            Err(Unmet::Tenant)
        );
        assert_eq!(req.check(&good, "/tenants"), Err(Unmet::Tenant));
        let no_scope = claims(
            json!({"scope": "orders:read", "roles": ["editor"], "email_verified": true, "tenant": "acme"}),
        );
        assert_eq!(
            req.check(&no_scope, "/tenants/acme/orders"),
            Err(Unmet::Scope)
        );
        let no_role = claims(
            json!({"scope": "orders:write", "roles": "viewer", "email_verified": true, "tenant": "acme"}),
        );
        assert_eq!(
            req.check(&no_role, "/tenants/acme/orders"),
            Err(Unmet::Claim)
        );
        let string_true = claims(
            json!({"scope": "orders:write", "roles": "editor", "email_verified": "true", "tenant": "acme"}),
        );
        assert_eq!(
            req.check(&string_true, "/tenants/acme/orders"),
            Err(Unmet::Claim),
            "equals is type-exact"
        );
    }

    proptest! {
        /// The canonical path is a fixpoint, whatever the escapes.
        #[test]
        fn match_path_is_stable(path in "[/a-z%0-9;?]{0,24}") {
            let once = match_path(&path);
            prop_assert_eq!(match_path(&once), once);
        }

        /// The table is total: every method and path finds exactly the first matching route.
        #[test]
        fn find_returns_the_first_matching_route(method in "(GET|POST|PUT|DELETE|HEAD)", path in "/[a-z/]{0,20}(\\?[a-z=]{0,5})?") {
            let t = table();
            let found = t.find(&method, &path);
            let bare = match_path(&path);
            let expected = t.routes.iter().find(|r| r.matches(&method, &bare)).map(|r| r.name.as_str()).unwrap_or("default");
            prop_assert_eq!(found.name.as_str(), expected);
            if let Some(p) = &found.path { prop_assert!(p.matches(&bare, true)); }
        }

        /// Prefix routes never match a path that lacks the prefix.
        #[test]
        fn prefix_never_matches_without_the_prefix(path in "/[a-z]{0,10}") {
            prop_assume!(!path.starts_with("/api/"));
            let t = table();
            let name = t.find("GET", &path).name.clone();
            prop_assert!(name != "read" && name != "write");
        }
    }
}
