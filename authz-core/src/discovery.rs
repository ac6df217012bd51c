//! Provider metadata: OpenID Connect Discovery (`/.well-known/openid-configuration`) and
//! RFC 8414 (`/.well-known/oauth-authorization-server`). A provider configured by its issuer
//! alone is found through it: where its keys are (`jwks_uri`), where tokens are introspected
//! and revoked, and which client authentication methods it takes.
//!
//! The document's `issuer` must equal the configured issuer exactly (OpenID Connect Discovery
//! §4.3, RFC 8414 §3.3): otherwise a compromised or mistaken metadata host could point us at
//! another provider's keys. Endpoint URLs must be absolute `http`/`https` URLs.
//!
//! Pure: fetching (and when to refetch: like a JWKS, see [`crate::jwks_refresh`]) is the host's.

use serde_json::Value;

/// OpenID Connect Discovery's metadata path under an issuer.
pub const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";

/// The metadata path under an issuer: OpenID Connect first, then RFC 8414.
pub const WELL_KNOWN_PATHS: [&str; 2] = [
    OPENID_CONFIGURATION,
    "/.well-known/oauth-authorization-server",
];

/// The URL of a metadata document for `issuer` (`which` indexes [`WELL_KNOWN_PATHS`]): the
/// well-known path appended to the issuer without its trailing slash.
pub fn metadata_url(issuer: &str, which: usize) -> Option<String> {
    WELL_KNOWN_PATHS
        .get(which)
        .map(|path| format!("{}{path}", issuer.trim_end_matches('/')))
}

/// What this project uses of a provider's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub introspection_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    /// `introspection_endpoint_auth_methods_supported`, else
    /// `token_endpoint_auth_methods_supported` (empty: the document did not say).
    pub auth_methods: Vec<String>,
}

/// Why a metadata document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the metadata is not a JSON object")]
    NotObject,
    #[error("the metadata names issuer {found:?}, not the configured {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error("metadata field {0} is not an absolute http(s) URL")]
    BadUrl(&'static str),
}

fn url_field(doc: &Value, name: &'static str) -> Result<Option<String>, DiscoveryError> {
    match doc.get(name) {
        None | Some(Value::Null) => Ok(None),
        // An http(s) URL with a host: `https:///path` names none.
        Some(Value::String(url)) if authority_and_path(url).is_some() => Ok(Some(url.clone())),
        Some(_) => Err(DiscoveryError::BadUrl(name)),
    }
}

fn string_list(doc: &Value, name: &str) -> Vec<String> {
    doc.get(name)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a metadata document, checking it is `expected_issuer`'s.
pub fn parse(document: &[u8], expected_issuer: &str) -> Result<ProviderMetadata, DiscoveryError> {
    let doc: Value = serde_json::from_slice(document).map_err(|_| DiscoveryError::NotObject)?;
    if !doc.is_object() {
        return Err(DiscoveryError::NotObject);
    }
    let issuer = doc
        .get("issuer")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !crate::verify::same_issuer(issuer, expected_issuer) {
        return Err(DiscoveryError::IssuerMismatch {
            expected: expected_issuer.to_owned(),
            found: issuer.to_owned(),
        });
    }
    let mut auth_methods = string_list(&doc, "introspection_endpoint_auth_methods_supported");
    if auth_methods.is_empty() {
        auth_methods = string_list(&doc, "token_endpoint_auth_methods_supported");
    }
    Ok(ProviderMetadata {
        issuer: issuer.to_owned(),
        jwks_uri: url_field(&doc, "jwks_uri")?,
        introspection_endpoint: url_field(&doc, "introspection_endpoint")?,
        revocation_endpoint: url_field(&doc, "revocation_endpoint")?,
        token_endpoint: url_field(&doc, "token_endpoint")?,
        auth_methods,
    })
}

/// The origin of an absolute http(s) URL: scheme and authority, the host lower-cased and the
/// scheme's default port made explicit.
fn origin(url: &str) -> Option<(&'static str, String)> {
    let (scheme, default_port) = if url.starts_with("https://") {
        ("https", "443")
    } else if url.starts_with("http://") {
        ("http", "80")
    } else {
        return None;
    };
    let (authority, _) = authority_and_path(url)?;
    let authority = authority.to_ascii_lowercase();
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    let authority = if has_port {
        authority
    } else {
        format!("{authority}:{default_port}")
    };
    Some((scheme, authority))
}

/// Whether `url` is on the same scheme, host and port as `issuer`.
pub fn same_origin(url: &str, issuer: &str) -> bool {
    matches!((origin(url), origin(issuer)), (Some(a), Some(b)) if a == b)
}

impl ProviderMetadata {
    /// The first endpoint the document names on another origin than the issuer's (scheme,
    /// host and port), among those the caller takes from it (`jwks_uri`,
    /// `introspection_endpoint`, `revocation_endpoint`): a metadata host must not send our
    /// client secret, our tokens or our key fetches elsewhere. The filter applies the same rule
    /// (keys on the issuer's host), and so does the server unless an endpoint is configured.
    pub fn foreign_endpoint(&self, taken: &[&'static str]) -> Option<(&'static str, &str)> {
        [
            ("jwks_uri", &self.jwks_uri),
            ("introspection_endpoint", &self.introspection_endpoint),
            ("revocation_endpoint", &self.revocation_endpoint),
        ]
        .into_iter()
        .filter(|(name, _)| taken.contains(name))
        .find_map(|(name, url)| {
            let url = url.as_deref()?;
            (!same_origin(url, &self.issuer)).then_some((name, url))
        })
    }
}

/// The authority (`host[:port]`) and path (with query) of an absolute http(s) URL, for a
/// proxy that fetches it through a cluster.
pub fn authority_and_path(url: &str) -> Option<(&str, &str)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i)?, rest.get(i..)?),
        None => (rest, "/"),
    };
    (!authority.is_empty()).then_some((authority, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_what_we_use_and_checks_the_issuer() {
        let doc = json!({
            "issuer": "https://idp.example",
            "jwks_uri": "https://idp.example/jwks",
            "introspection_endpoint": "https://idp.example/token/introspection",
            "revocation_endpoint": "https://idp.example/token/revocation",
            "token_endpoint": "https://idp.example/token",
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"]
        });
        let bytes = doc.to_string().into_bytes();
        let m = parse(&bytes, "https://idp.example").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.jwks_uri.as_deref(), Some("https://idp.example/jwks"));
        assert_eq!(m.auth_methods, ["client_secret_basic", "private_key_jwt"]);
        assert!(
            parse(&bytes, "https://idp.example/").is_ok(),
            "one trailing slash either way names the same issuer"
        );
        assert_eq!(
            parse(&bytes, "https://idp.example/realms"),
            Err(DiscoveryError::IssuerMismatch {
                expected: "https://idp.example/realms".into(),
                found: "https://idp.example".into()
            }),
            "not a prefix or any other normalisation"
        );
        // Found by the fuzz smoke run: `https:///…` names no host.
        for url in ["file:///etc/passwd", "https:///idp.example/keys", "http://"] {
            let mut bad = doc.clone();
            bad["jwks_uri"] = json!(url);
            assert_eq!(
                parse(bad.to_string().as_bytes(), "https://idp.example"),
                Err(DiscoveryError::BadUrl("jwks_uri")),
                "{url}"
            );
        }
        assert_eq!(
            parse(b"[1]", "https://idp.example"),
            Err(DiscoveryError::NotObject)
        );
        assert!(parse(b"{}", "https://idp.example").is_err());
    }

    #[test]
    fn metadata_urls_and_url_parts() {
        assert_eq!(
            metadata_url("https://idp.example/realms/a/", 0).as_deref(),
            Some("https://idp.example/realms/a/.well-known/openid-configuration")
        );
        assert_eq!(
            authority_and_path("https://idp.example:8443/keys?x=1"),
            Some(("idp.example:8443", "/keys?x=1"))
        );
        assert_eq!(
            authority_and_path("http://idp.example"),
            Some(("idp.example", "/"))
        );
        assert_eq!(authority_and_path("ftp://x/y"), None);
        assert_eq!(authority_and_path("https:///y"), None);
    }

    #[test]
    fn endpoints_must_share_the_issuers_origin() {
        let issuer = "https://IdP.example/realms/a";
        assert!(same_origin("https://idp.example:443/keys", issuer));
        assert!(same_origin("https://idp.example/other/path", issuer));
        assert!(!same_origin("http://idp.example/keys", issuer), "scheme");
        assert!(
            !same_origin("https://idp.example:8443/keys", issuer),
            "port"
        );
        assert!(
            !same_origin("https://idp.example.evil/keys", issuer),
            "host"
        );
        assert!(
            !same_origin("https://evil@idp.example/keys", issuer),
            "userinfo"
        );
        let metadata = ProviderMetadata {
            issuer: issuer.into(),
            jwks_uri: Some("https://idp.example/keys".into()),
            introspection_endpoint: Some("https://collector.example/introspect".into()),
            revocation_endpoint: None,
            token_endpoint: Some("https://anywhere.example/token".into()),
            auth_methods: vec![],
        };
        assert_eq!(metadata.foreign_endpoint(&["jwks_uri"]), None);
        assert_eq!(
            metadata.foreign_endpoint(&["jwks_uri", "introspection_endpoint"]),
            Some((
                "introspection_endpoint",
                "https://collector.example/introspect"
            ))
        );
    }
}
