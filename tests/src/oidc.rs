//! The certified OpenID provider of the end-to-end tests: `panva/oidc-provider` (pinned in
//! `tests/oidc-provider/package.json`, installed by `make test` with `npm ci`) run by Node with
//! `tests/oidc-provider/provider.mjs`. It proves interoperability; the dev IdP stays for fault
//! injection.
//!
//! The provider issues client-credentials tokens to the client `app`: JWT access tokens signed
//! RS256 or ES256, or opaque ones, chosen by resource indicator ([`TokenFormat`]). The ext_authz
//! server introspects as the client `authz-server`, whose secret needs form-urlencoding.

use crate::{must_exist, repo_root, request, start_command, Process, Reply};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// The audience of the provider's access tokens.
pub const AUDIENCE: &str = "api";
/// The client the ext_authz server introspects as.
pub const SERVER_CLIENT_ID: &str = "authz-server";
/// Its secret: `+`, `/` and `=` must be form-urlencoded under `client_secret_basic`.
pub const SERVER_CLIENT_SECRET: &str = "b64+like/secret=";
const APP_CLIENT_ID: &str = "app";
const APP_CLIENT_SECRET: &str = "app-secret-0123456789abcdef";

/// The access token formats the provider issues (by RFC 8707 resource indicator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    Rs256,
    Es256,
    Opaque,
}

impl TokenFormat {
    fn resource(self) -> &'static str {
        match self {
            TokenFormat::Rs256 => "urn:authz:rs256",
            TokenFormat::Es256 => "urn:authz:es256",
            TokenFormat::Opaque => "urn:authz:opaque",
        }
    }
}

/// A running provider. Killed on drop.
pub struct OidcProvider {
    process: Option<Process>,
    /// The plain port (the harness gets and revokes tokens there).
    pub port: u16,
    /// `http://127.0.0.1:PORT`, or with TLS `https://127.0.0.1:TLS_PORT`: its tokens' `iss`.
    pub issuer: String,
    /// The TLS port, when started with a certificate.
    pub tls_port: Option<u16>,
}

fn script() -> PathBuf {
    let dir = repo_root().join("tests/oidc-provider");
    must_exist(
        dir.join("node_modules/oidc-provider/package.json"),
        "run `make test` (it installs oidc-provider with npm ci in tests/oidc-provider)",
    );
    dir.join("provider.mjs")
}

/// `client_secret_basic` as RFC 6749 §2.3.1 has it (the server's own encoder).
fn basic(id: &str, secret: &str) -> String {
    ext_authz_server::idp_client::basic_authorization(id, secret)
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", ext_authz_server::idp_client::form_urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl OidcProvider {
    /// Starts a provider on a free port. `env` sets its options (`OP_RSA_KID`, `OP_EC_KID`,
    /// `OP_SERVER_SECRET`, `OP_TTL`, `OP_SERVER_JWKS`: see `provider.mjs`).
    pub fn start(env: &[(&str, &str)]) -> OidcProvider {
        Self::start_on(0, env)
    }

    fn start_on(port: u16, env: &[(&str, &str)]) -> OidcProvider {
        let mut command = Command::new("node");
        command.arg(script()).env("OP_PORT", port.to_string());
        for (k, v) in env {
            command.env(k, v);
        }
        let (process, line) = start_command("oidc-provider", command);
        let announced: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("oidc-provider printed {line:?}: {e}"));
        let port = announced["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        OidcProvider {
            process: Some(process),
            port,
            issuer: announced["issuer"].as_str().unwrap_or_default().to_owned(),
            tls_port: announced["tls_port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok()),
        }
    }

    /// Starts a provider whose issuer is served over TLS with `cert`/`key` (PEM files).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> OidcProvider {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        Self::start_on(0, &[("OP_TLS_CERT", &cert), ("OP_TLS_KEY", &key)])
    }

    /// Stops it and starts a new one on the same port (same issuer) with `env`: new key
    /// material, and every token and revocation of the old one forgotten.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        self.process.take();
        let port = self.port;
        let mut last = None;
        // The port may take a moment to be free again.
        for _ in 0..50 {
            match std::panic::catch_unwind(|| Self::start_on(port, env)) {
                Ok(started) => {
                    *self = started;
                    return;
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if let Some(e) = last {
            std::panic::resume_unwind(e);
        }
    }

    /// `path` on the plain port (the harness's own calls).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A client-credentials access token for `app` in `format` with `scope`.
    pub fn token(&self, format: TokenFormat, scope: &str) -> String {
        let reply = self.post_form(
            "/token",
            &basic(APP_CLIENT_ID, APP_CLIENT_SECRET),
            &[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                ("resource", format.resource()),
            ],
        );
        assert_eq!(reply.status, 200, "token: {}", reply.body);
        reply.json()["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {}", reply.body))
            .to_owned()
    }

    /// Revokes `token` (RFC 7009) as the client it was issued to.
    pub fn revoke(&self, token: &str) {
        let reply = self.post_form(
            "/token/revocation",
            &basic(APP_CLIENT_ID, APP_CLIENT_SECRET),
            &[("token", token), ("token_type_hint", "access_token")],
        );
        assert_eq!(reply.status, 200, "revocation: {}", reply.body);
    }

    /// The provider's own introspection answer for `token`, as the server's client.
    pub fn introspect(&self, token: &str) -> Reply {
        self.post_form(
            "/token/introspection",
            &basic(SERVER_CLIENT_ID, SERVER_CLIENT_SECRET),
            &[("token", token)],
        )
    }

    fn post_form(&self, path: &str, authorization: &str, pairs: &[(&str, &str)]) -> Reply {
        request(
            "POST",
            &self.url(path),
            &[
                ("authorization", authorization),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(&form(pairs)),
        )
    }
}
