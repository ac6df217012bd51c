//! Who a token speaks for: its `sub`, or, for tokens without one (client-credentials tokens of
//! many IdPs), the client it was issued to (`client_id`, RFC 9068 / RFC 7662; `azp` where an IdP
//! uses that instead). The filter and the server both name the principal this way, so subject
//! revocation, per-subject limits, the decision cache and the `x-auth-subject` header see the
//! same identity on every path; `x-auth-subject-kind` says which claim it came from.
//!
//! What this module does not do: decide whether a principal may do anything.

/// Which claim named the principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// The token's `sub`.
    Subject,
    /// The token had no `sub`: its `client_id` (or `azp`).
    Client,
}

impl PrincipalKind {
    /// The value of the subject-kind context header: the claim the principal came from.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Subject => "sub",
            PrincipalKind::Client => "client_id",
        }
    }
}

/// A token's principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal<'a> {
    pub id: &'a str,
    pub kind: PrincipalKind,
}

/// The principal of a token with these claims: `sub` when present and not empty, else the
/// client id, else none.
pub fn principal<'a>(
    subject: Option<&'a str>,
    client_id: Option<&'a str>,
) -> Option<Principal<'a>> {
    match (subject, client_id) {
        (Some(id), _) if !id.is_empty() => Some(Principal {
            id,
            kind: PrincipalKind::Subject,
        }),
        (_, Some(id)) if !id.is_empty() => Some(Principal {
            id,
            kind: PrincipalKind::Client,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_first_then_the_client() {
        assert_eq!(
            principal(Some("alice"), Some("app")),
            Some(Principal {
                id: "alice",
                kind: PrincipalKind::Subject
            })
        );
        assert_eq!(
            principal(None, Some("app")),
            Some(Principal {
                id: "app",
                kind: PrincipalKind::Client
            })
        );
        assert_eq!(
            principal(Some(""), Some("app")).map(|p| p.kind),
            Some(PrincipalKind::Client)
        );
        assert_eq!(principal(None, None), None);
        assert_eq!(principal(Some(""), Some("")), None);
    }
}
