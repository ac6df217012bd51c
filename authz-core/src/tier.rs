//! The five risk tiers a route can belong to, and what each one demands before an allow.
//!
//! | tier             | token | local JWT enough? | needs the authorization server |
//! |------------------|-------|-------------------|--------------------------------|
//! | `public`         | no    | n/a               | no                             |
//! | `authenticated`  | yes   | yes               | no                             |
//! | `standard_write` | yes   | yes               | no                             |
//! | `privileged`     | yes   | no                | yes (fresh introspection)      |
//! | `regulated`      | yes   | no                | yes (fresh introspection)      |
//!
//! This module only states the rules; the filter and the server enforce them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A route's risk tier, lowest risk first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Public,
    Authenticated,
    StandardWrite,
    Privileged,
    Regulated,
}

impl Tier {
    /// Every tier, lowest risk first.
    pub const ALL: [Tier; 5] = [
        Tier::Public,
        Tier::Authenticated,
        Tier::StandardWrite,
        Tier::Privileged,
        Tier::Regulated,
    ];

    /// Whether a request on this tier must carry a valid token.
    pub fn requires_token(self) -> bool {
        self != Tier::Public
    }

    /// Whether an allow on this tier needs a fresh answer from the authorization server
    /// (token introspection), not only a locally verified JWT.
    pub fn requires_server(self) -> bool {
        matches!(self, Tier::Privileged | Tier::Regulated)
    }

    /// The tier's name as written in configuration, headers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Public => "public",
            Tier::Authenticated => "authenticated",
            Tier::StandardWrite => "standard_write",
            Tier::Privileged => "privileged",
            Tier::Regulated => "regulated",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_goes_without_a_token() {
        for tier in Tier::ALL {
            assert_eq!(tier.requires_token(), tier != Tier::Public, "{tier}");
        }
    }

    #[test]
    fn privileged_and_regulated_need_the_server() {
        let needing: Vec<_> = Tier::ALL
            .into_iter()
            .filter(|t| t.requires_server())
            .collect();
        assert_eq!(needing, vec![Tier::Privileged, Tier::Regulated]);
    }

    #[test]
    fn names_round_trip_through_serde() {
        for tier in Tier::ALL {
            let json = serde_json::to_string(&tier).unwrap();
            assert_eq!(json, format!("\"{}\"", tier.as_str()));
            assert_eq!(serde_json::from_str::<Tier>(&json).unwrap(), tier);
        }
    }
}

/// A name that is not a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTier(pub String);

impl fmt::Display for UnknownTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown tier \"{}\" (expected one of public, authenticated, standard_write, privileged, regulated)",
            self.0
        )
    }
}

impl FromStr for Tier {
    type Err = UnknownTier;

    /// A tier by its configuration name (exactly as [`Tier::as_str`] writes it).
    fn from_str(name: &str) -> Result<Tier, UnknownTier> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| UnknownTier(name.to_owned()))
    }
}

#[cfg(test)]
mod from_str_tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_else_parses() {
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>(), Ok(tier));
            assert_eq!(
                serde_json::to_value(tier).ok(),
                Some(serde_json::Value::String(tier.as_str().to_owned()))
            );
        }
        for bad in ["", "Public", "gold", "privileged ", "standard-write"] {
            assert!(bad.parse::<Tier>().is_err(), "{bad:?}");
        }
    }
}
