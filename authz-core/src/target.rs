//! What a request asks for, read the way an upstream framework might read it: the rules that
//! refuse (or neutralise) requests whose meaning depends on who reads them. One set of rules
//! for every host: the filter reads headers through `filter_core::read_request`, the server
//! through its phase 1, and both apply [`RequestRules`].
//!
//! - **Method override.** Many frameworks (Rails, Laravel, Express' `method-override`, Spring's
//!   `HiddenHttpMethodFilter` for forms, ASP.NET) act on `X-HTTP-Method-Override`,
//!   `X-HTTP-Method` or `X-Method-Override` instead of the request line's method. A read-only
//!   token's `GET` carrying `X-HTTP-Method-Override: DELETE` would be decided as a read and
//!   executed as a delete. `X-Original-URL` / `X-Rewrite-URL` do the same for the path (IIS,
//!   Symfony, Zend). By default such a request is refused (400); `strip` removes the headers
//!   instead, so the upstream acts on the method and path that were decided. A `_method` query
//!   parameter (Express, Laravel) is refused either way: a query cannot be stripped.
//! - **Encoded reserved characters in the path.** Upstreams that decode a path before routing
//!   see `/public/%2e%2e/admin` as `/admin`, `/admin%2Fusers` as `/admin/users`, `%5C` as a
//!   separator, `%25` as a second round of escapes. The route table matches the path as Envoy
//!   passes it, so such a path could reach a privileged resource under a weaker route. By
//!   default a path holding one is refused (400), as Spring Security's `StrictHttpFirewall`
//!   and Envoy's `path_with_escaped_slashes_action: REJECT_REQUEST` do; `allow` keeps today's
//!   reading (for upstreams known not to decode).

use serde::Deserialize;

/// The headers frameworks read as "the real method" (the first three) or "the real path"
/// (`X-Original-URL`, `X-Rewrite-URL`: IIS, Symfony, Zend).
pub const METHOD_OVERRIDE_HEADERS: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// The query parameter frameworks read as "the real method" (Express' `method-override`
/// with a query getter, Laravel and Rails for forms): a query cannot be stripped by a header
/// rule, so it is refused in either mode.
pub const METHOD_OVERRIDE_PARAMETER: &str = "_method";

/// What to do with a request that carries a method-override header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum MethodOverride {
    /// Refuse the request (400).
    #[default]
    Refuse,
    /// Remove the override headers before the upstream sees them; decide on the request
    /// line's method.
    Strip,
}

/// What to do with a path holding encoded reserved characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum EncodedPath {
    /// Refuse the request (400).
    #[default]
    Refuse,
    /// Match the path as written (only for upstreams that never decode before routing).
    Allow,
}

/// How requests that upstreams may read differently are handled (`requests` in the filter's
/// and the server's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RequestRules {
    /// `refuse` (default): a request with `X-HTTP-Method-Override`, `X-HTTP-Method`,
    /// `X-Method-Override`, `X-Original-URL` or `X-Rewrite-URL` is a 400. `strip`: those
    /// headers are removed and the request is decided on its own method and path. A `_method`
    /// query parameter is a 400 either way.
    #[serde(default)]
    pub method_override: MethodOverride,
    /// `refuse` (default): a path with an encoded `/`, `\`, `%`, `.` or `;`, an encoded control
    /// character, a literal `\`, an empty segment (`//`) or a `.`/`..` segment is a 400.
    /// `allow`: matched as written.
    #[serde(default)]
    pub encoded_paths: EncodedPath,
}

/// Why a request target is refused (for logs; the client gets the one 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    MethodOverride,
    /// A percent-escape of a character upstreams decode into a different path.
    EncodedReserved,
    /// `\`, `//`, `/./` or `/../`: a path that is not in normal form.
    NotNormalised,
}

impl Ambiguity {
    pub fn as_str(self) -> &'static str {
        match self {
            Ambiguity::MethodOverride => "method_override",
            Ambiguity::EncodedReserved => "encoded_reserved_path",
            Ambiguity::NotNormalised => "path_not_normalised",
        }
    }
}

/// Whether `name` (any case) is one of [`METHOD_OVERRIDE_HEADERS`].
pub fn is_method_override(name: &[u8]) -> bool {
    METHOD_OVERRIDE_HEADERS
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// An escape that decodes to a character that changes a path's structure or is decoded
/// again: `/`, `\`, `%`, `.`, `;`, control characters (and DEL).
fn reserved_escape(hex: &[u8]) -> bool {
    let Some(byte) = std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u8::from_str_radix(h, 16).ok())
    else {
        return false;
    };
    matches!(byte, b'/' | b'\\' | b'%' | b'.' | b';') || byte < 0x20 || byte == 0x7f
}

/// The first thing in `path` (its path part: before `?` and `#`) an upstream may read
/// differently than the route table does, if any. Every layer of escapes is looked at, the
/// way [`crate::routes::match_path`] decodes them (`%%32%65` is `%2e` once decoded, then `.`).
pub fn path_ambiguity(path: &str) -> Option<Ambiguity> {
    let mut layer = crate::routes::path_only(path).to_owned();
    loop {
        if let Some(found) = layer_ambiguity(&layer) {
            return Some(found);
        }
        let mut next = String::with_capacity(layer.len());
        crate::routes::decode_unreserved(&layer, &mut next);
        // Each change shortens the text, so this ends.
        if next == layer {
            return None;
        }
        layer = next;
    }
}

/// Whether the query names [`METHOD_OVERRIDE_PARAMETER`] (any case, escapes of unreserved
/// characters decoded).
fn query_overrides_method(path: &str) -> bool {
    let Some((_, query)) = path.split_once('?') else {
        return false;
    };
    let query = query.split('#').next().unwrap_or("");
    query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        let mut decoded = String::with_capacity(name.len());
        crate::routes::decode_unreserved(name, &mut decoded);
        decoded.eq_ignore_ascii_case(METHOD_OVERRIDE_PARAMETER)
    })
}

/// [`path_ambiguity`] of one layer of escapes.
fn layer_ambiguity(path: &str) -> Option<Ambiguity> {
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' if bytes.get(i + 1..i + 3).is_some_and(reserved_escape) => {
                return Some(Ambiguity::EncodedReserved)
            }
            b'\\' => return Some(Ambiguity::NotNormalised),
            _ => {}
        }
    }
    // No segment may be `.` or `..` (the text before the first `/` included: a target that is
    // not origin-form is refused anyway, but this answer must not depend on it), and none
    // after the leading `/` may be empty but the last (`/a/`).
    let mut segments = path.split('/').enumerate().peekable();
    while let Some((i, segment)) = segments.next() {
        let segment = segment.split(';').next().unwrap_or("");
        let last = segments.peek().is_none();
        let empty_inside = segment.is_empty() && i > 0 && !last;
        if empty_inside || segment == "." || segment == ".." {
            return Some(Ambiguity::NotNormalised);
        }
    }
    None
}

impl RequestRules {
    /// Checks a request target: `overridden` says whether a method-override header came with
    /// it. `Err` is a 400 in every host.
    pub fn screen(&self, path: &str, overridden: bool) -> Result<(), Ambiguity> {
        if overridden && self.method_override == MethodOverride::Refuse {
            return Err(Ambiguity::MethodOverride);
        }
        if query_overrides_method(path) {
            return Err(Ambiguity::MethodOverride);
        }
        match self.encoded_paths {
            EncodedPath::Refuse => path_ambiguity(path).map_or(Ok(()), Err),
            EncodedPath::Allow => Ok(()),
        }
    }

    /// Whether a host removes header `name` from the request (the override headers, when
    /// they are stripped rather than refused).
    pub fn strips(&self, name: &[u8]) -> bool {
        self.method_override == MethodOverride::Strip && is_method_override(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_reserved_characters_are_ambiguous() {
        for path in [
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/admin%2Fusers",
            "/admin%2fusers",
            "/a%5Cb",
            "/a%255Cb",
            "/a%3Bb",
            "/a%00b",
            "/a%0d%0ab",
            "/a%7f",
        ] {
            assert_eq!(
                path_ambiguity(path),
                Some(Ambiguity::EncodedReserved),
                "{path}"
            );
        }
    }

    #[test]
    fn escapes_inside_escapes_are_read_layer_by_layer() {
        for path in [
            "/x/%%32%65%%32%65/admin",
            "/x/%2%65%2%65/admin",
            "/a%%32%66b",
            "/a/%%32%45%%32%45/b",
        ] {
            assert_eq!(
                path_ambiguity(path),
                Some(Ambiguity::EncodedReserved),
                "{path}"
            );
        }
    }

    #[test]
    fn a_method_in_the_query_is_refused_in_either_mode() {
        let strip = RequestRules {
            method_override: MethodOverride::Strip,
            encoded_paths: EncodedPath::Refuse,
        };
        for path in [
            "/api/items?_method=DELETE",
            "/api/items?a=1&_METHOD=delete",
            "/api/items?%5Fmethod=DELETE",
        ] {
            assert_eq!(
                strip.screen(path, false),
                Err(Ambiguity::MethodOverride),
                "{path}"
            );
        }
        assert_eq!(
            strip.screen("/api/items?x_method=1&method=2", false),
            Ok(())
        );
    }

    #[test]
    fn paths_not_in_normal_form_are_ambiguous() {
        for path in [
            "/a\\b",
            "/public/../admin",
            "/./admin",
            "//admin",
            "/a//b",
            "/a/..",
            "/a/..;x/b",
            // Found by the `routes` fuzz target: a dot segment before any `/`.
            "./t`P",
            "..",
        ] {
            assert_eq!(
                path_ambiguity(path),
                Some(Ambiguity::NotNormalised),
                "{path}"
            );
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/",
            "/admin",
            "/admin/",
            "/api/items?q=%2F..%2F&x=a//b",
            "/api/%61bc",
            "/api/caf%C3%A9",
            "/api/a%20b",
            "/api/a;jsessionid=1/b",
            "/api/file.tar.gz",
            "/api/...",
            "/tenants/acme/orders#x//y",
        ] {
            assert_eq!(path_ambiguity(path), None, "{path}");
        }
    }

    #[test]
    fn the_rules_refuse_or_strip_overrides_and_refuse_or_allow_paths() {
        let strict = RequestRules::default();
        assert_eq!(strict.screen("/a", true), Err(Ambiguity::MethodOverride));
        assert_eq!(strict.screen("/a", false), Ok(()));
        assert_eq!(
            strict.screen("/a%2fb", false),
            Err(Ambiguity::EncodedReserved)
        );
        assert!(!strict.strips(b"X-HTTP-Method-Override"));
        let lenient = RequestRules {
            method_override: MethodOverride::Strip,
            encoded_paths: EncodedPath::Allow,
        };
        assert_eq!(lenient.screen("/a%2fb", true), Ok(()));
        for name in METHOD_OVERRIDE_HEADERS {
            assert!(lenient.strips(name.to_ascii_uppercase().as_bytes()));
        }
        assert!(!lenient.strips(b"x-http-methods"));
    }
}
